"""Bringing the files already in a pod's directory into the network (first start or join).

The space is checked before anything is written (a copy of every file goes into the block store). Files are
read block by block, never whole. When the network already has a file at the same path, the conflict
choice decides: ``network`` keeps the network's, ``local`` keeps this pod's, ``newest`` keeps the one
modified last. A name that is a directory on one side and a file on the other is never merged: the local
one is imported beside it as ``NAME.import-conflict-<pod>``. The original files are left untouched.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import stat as statmod
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal, TypedDict

from ecliptic.mesh.entries import ROOT_ID
from ecliptic.mesh.manifest import Block
from ecliptic.mesh.wire import MeshError

if TYPE_CHECKING:
    from ecliptic.mesh.pod import Pod

Conflict = Literal["network", "local", "newest"]


class Attributes(TypedDict):
    uid: int
    gid: int
    mtime_ns: int


CONFLICTS: tuple[str, ...] = ("network", "local", "newest")


@dataclass
class ImportReport:
    files: int = 0
    bytes: int = 0
    kept_network: list[str] = field(default_factory=list)
    replaced: list[str] = field(default_factory=list)
    renamed: list[str] = field(default_factory=list)

    def summary(self) -> str:
        return (
            f"{self.files} files ({self.bytes} bytes); kept the network's version of {len(self.kept_network)}, "
            f"replaced {len(self.replaced)}, imported {len(self.renamed)} beside a conflicting name"
        )


def _walk(root: Path, skip: Path) -> Iterator[Path]:
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        dirnames[:] = sorted(d for d in dirnames if here / d != skip)
        for name in sorted(filenames):
            yield here / name
        for name in dirnames:
            yield here / name


def local_files(pod: Pod) -> list[Path]:
    return list(_walk(pod.root, pod.state))


def check_space(pod: Pod) -> int:
    """Bytes to import; raises ENOSPC when this pod cannot hold a copy of them."""
    total = sum(p.lstat().st_size for p in local_files(pod) if statmod.S_ISREG(p.lstat().st_mode))
    if not total:
        return 0
    usage = shutil.disk_usage(pod.state)
    room = usage.free - pod.pod_config.reserve
    if pod.pod_config.max_disk is not None:
        room = min(room, pod.pod_config.max_disk)
    if total > room:
        raise MeshError(
            "ENOSPC",
            f"{pod.root} holds {total} bytes to import but this pod has room for {max(room, 0)} "
            f"(free disk minus the {pod.pod_config.reserve}-byte reserve, within max_disk); free some space, "
            "raise max_disk, or start the pod on an empty directory",
        )
    return total


async def import_tree(pod: Pod, conflict: str, *, space_checked: bool = False) -> ImportReport:
    if conflict not in CONFLICTS:
        raise MeshError("EINVAL", f"unknown conflict choice {conflict!r}: use one of {', '.join(CONFLICTS)}")
    report = ImportReport()
    if not space_checked:
        check_space(pod)
    folders: dict[Path, str] = {pod.root: ROOT_ID}
    for path in _walk(pod.root, pod.state):
        info = path.lstat()
        parent_id = folders.get(path.parent)
        if parent_id is None:
            continue  # inside a directory that could not be merged
        relative = "/" + path.relative_to(pod.root).as_posix()
        existing = pod.meta.child(parent_id, path.name)
        kind = (
            "dir" if statmod.S_ISDIR(info.st_mode) else "symlink" if statmod.S_ISLNK(info.st_mode) else "file"
        )
        if kind == "file" and not statmod.S_ISREG(info.st_mode):
            continue  # sockets, fifos, devices have no place in the network
        name = path.name
        if existing is not None and existing.kind != kind:
            name = f"{path.name}.import-conflict-{pod.node_id[:8]}"
            report.renamed.append(relative)
            existing = pod.meta.child(parent_id, name)
        owner = Attributes(uid=info.st_uid, gid=info.st_gid, mtime_ns=info.st_mtime_ns)
        if kind == "dir":
            if existing is None:
                existing = pod.namespace.create(parent_id, name, "dir", mode=info.st_mode, **owner)
            folders[path] = existing.id
            continue
        if existing is not None:
            keep_local = conflict == "local" or (
                conflict == "newest" and info.st_mtime_ns > existing.mtime_ns
            )
            if not keep_local:
                report.kept_network.append(relative)
                continue
            report.replaced.append(relative)
        if kind == "symlink":
            if existing is not None:
                pod.namespace.remove(existing.id)
            target = os.readlink(path)
            pod.namespace.create(parent_id, name, "symlink", mode=0o777, target=target, **owner)
            continue
        blocks = await asyncio.to_thread(_store_file, pod, path)
        if existing is None:
            pod.namespace.create(parent_id, name, "file", mode=info.st_mode, blocks=blocks, **owner)
        else:
            committed = pod.namespace.commit(existing.id, blocks, mtime_ns=info.st_mtime_ns)
            pod.namespace.setattr(committed.id, mode=info.st_mode)
        report.files += 1
        report.bytes += info.st_size
        await asyncio.sleep(0)
    pod.changed([])
    return report


def _store_file(pod: Pod, path: Path) -> list[Block]:
    block_size = pod.network_config.block_size
    blocks: list[Block] = []
    with path.open("rb") as handle:
        while chunk := handle.read(block_size):
            blocks.append((pod.blocks.put(chunk), len(chunk)))
    return blocks
