"""File-system operations on a pod's metadata replica: the rules every change obeys.

Each operation validates against the local replica, then writes new versions of the rows it touches in one
transaction (a rename that replaces its target writes both). A directory's mtime is not moved by changes
to its listing: that would be a new version of the directory row, and a concurrent rename of the
directory on another pod would then lose to a mere create inside it. Errors are ``MeshError`` with the errno name
FUSE and the CLI report.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence

from ecliptic.mesh.clock import HybridClock
from ecliptic.mesh.entries import ROOT_ID, Entry, Kind
from ecliptic.mesh.manifest import Block, size_of
from ecliptic.mesh.meta import MetaStore
from ecliptic.mesh.wire import MeshError

MAX_NAME = 255


def check_name(name: str) -> None:
    if not name or name in (".", "..") or "/" in name or "\0" in name:
        raise MeshError("EINVAL", f"{name!r} is not a valid file name")
    if len(name.encode()) > MAX_NAME:
        raise MeshError("ENAMETOOLONG", f"{name[:40]!r}…: names are at most {MAX_NAME} bytes")


class Namespace:
    def __init__(self, meta: MetaStore, clock: HybridClock) -> None:
        self.meta = meta
        self.clock = clock
        self.node_id = meta.node_id

    def _dir(self, entry_id: str) -> Entry:
        entry = self.meta.live(entry_id)
        if entry.kind != "dir":
            raise MeshError("ENOTDIR", f"{self.meta.path_of(entry)} is not a directory")
        return entry

    def _stamp(self, entry: Entry, **changes: object) -> Entry:
        now = time.time_ns()
        return entry.evolve(hlc=self.clock.now(), origin=self.node_id, ctime_ns=now, **changes)

    def create(
        self,
        parent: str,
        name: str,
        kind: Kind,
        *,
        mode: int,
        uid: int = 0,
        gid: int = 0,
        target: str = "",
        exclusive: bool = True,
        mtime_ns: int | None = None,
        blocks: Sequence[Block] = (),
    ) -> Entry:
        """A new entry; a file may come with its content, so no pod ever sees it empty first."""
        check_name(name)
        folder = self._dir(parent)
        existing = self.meta.child(folder.id, name)
        if existing is not None:
            if exclusive or existing.kind != kind:
                raise MeshError("EEXIST", f"{self.meta.path_of(existing)} already exists")
            return existing
        now = time.time_ns()
        entry = Entry(
            id=uuid.uuid4().hex,
            parent=folder.id,
            name=name,
            kind=kind,
            mode=mode & 0o7777,
            uid=uid,
            gid=gid,
            size=len(target.encode()) if kind == "symlink" else size_of(blocks),
            blocks=tuple(blocks) if kind == "file" else (),
            mtime_ns=now if mtime_ns is None else mtime_ns,
            ctime_ns=now,
            target=target,
            hlc=self.clock.now(),
            origin=self.node_id,
            holders=(self.node_id,) if kind == "file" else (),
        )
        entry = entry.evolve(loc_hlc=entry.hlc, loc_origin=self.node_id)
        return self.meta.put_local(entry)[0]

    def commit(self, entry_id: str, blocks: Sequence[Block], *, mtime_ns: int | None = None) -> Entry:
        """A new content version of a file whose blocks this pod now holds."""
        entry = self.meta.live(entry_id)
        if entry.kind != "file":
            raise MeshError(
                "EISDIR" if entry.kind == "dir" else "EINVAL", f"{self.meta.path_of(entry)} is not a file"
            )
        stamped = self._stamp(
            entry,
            blocks=tuple(blocks),
            size=size_of(blocks),
            mtime_ns=time.time_ns() if mtime_ns is None else mtime_ns,
            holders=(self.node_id,),
        )
        stamped = stamped.evolve(loc_hlc=stamped.hlc, loc_origin=self.node_id)
        return self.meta.put_local(stamped)[0]

    def setattr(
        self,
        entry_id: str,
        *,
        mode: int | None = None,
        uid: int | None = None,
        gid: int | None = None,
        mtime_ns: int | None = None,
    ) -> Entry:
        entry = self.meta.live(entry_id)
        changes: dict[str, object] = {}
        if mode is not None:
            changes["mode"] = mode & 0o7777
        if uid is not None:
            changes["uid"] = uid
        if gid is not None:
            changes["gid"] = gid
        if mtime_ns is not None:
            changes["mtime_ns"] = mtime_ns
        if entry.id == ROOT_ID:
            raise MeshError("EPERM", "the network's root keeps its attributes")
        return self.meta.put_local(self._stamp(entry, **changes))[0]

    def remove(self, entry_id: str, *, directory: bool | None = None) -> Entry:
        entry = self.meta.live(entry_id)
        if entry.id == ROOT_ID:
            raise MeshError("EBUSY", "the network's root cannot be removed")
        path = self.meta.path_of(entry)
        if directory is True and entry.kind != "dir":
            raise MeshError("ENOTDIR", f"{path} is not a directory")
        if directory is False and entry.kind == "dir":
            raise MeshError("EISDIR", f"{path} is a directory (remove it as a directory)")
        if entry.kind == "dir" and self.meta.children(entry.id):
            raise MeshError("ENOTEMPTY", f"{path} is not empty")
        return self.meta.put_local(self._stamp(entry, deleted=True, blocks=(), size=0))[0]

    def rename(self, entry_id: str, new_parent: str, new_name: str, *, replace: bool = True) -> list[Entry]:
        """The moved entry first, then the tombstone of the entry it replaced, if any."""
        check_name(new_name)
        entry = self.meta.live(entry_id)
        if entry.id == ROOT_ID:
            raise MeshError("EBUSY", "the network's root cannot be renamed")
        folder = self._dir(new_parent)
        if entry.kind == "dir" and self.meta.is_ancestor(entry.id, folder.id):
            raise MeshError("EINVAL", f"cannot move {self.meta.path_of(entry)} into itself")
        writes: list[Entry] = []
        target = self.meta.child(folder.id, new_name)
        if target is not None and target.id != entry.id:
            target_path = self.meta.path_of(target)
            if not replace:
                raise MeshError("EEXIST", f"{target_path} already exists")
            if target.kind == "dir" and entry.kind != "dir":
                raise MeshError("EISDIR", f"{target_path} is a directory")
            if target.kind != "dir" and entry.kind == "dir":
                raise MeshError("ENOTDIR", f"{target_path} is not a directory")
            if target.kind == "dir" and self.meta.children(target.id):
                raise MeshError("ENOTEMPTY", f"{target_path} is not empty")
            writes.append(self._stamp(target, deleted=True, blocks=(), size=0))
        moved = self._stamp(entry, parent=folder.id, name=new_name)
        return self.meta.put_local(moved, *writes)

    def place(self, entry: Entry, holders: Sequence[str]) -> Entry | None:
        """Record that ``holders`` now hold the blocks of this content version; None if it changed."""
        current = self.meta.entry(entry.id)
        if current is None or current.deleted or current.version != entry.version:
            return None
        stamped = current.evolve(holders=tuple(holders), loc_hlc=self.clock.now(), loc_origin=self.node_id)
        return self.meta.put_local(stamped)[0]
