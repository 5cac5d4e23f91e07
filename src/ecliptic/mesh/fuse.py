"""The network as a local file system: a FUSE mount through one pod (pyfuse3, asyncio mode).

Consistency is close-to-open, as with NFS: what a process writes is kept by the mount (see
``fuse_files``) and committed as a new version when the file is closed or fsynced; an open asks the pod
for the current version. Inode numbers belong to this mount: each entry id the kernel hears of gets the
next number, kept until the kernel forgets it, never handed out again.

The kernel caches pages and attributes. Pages survive an open only while the file is still at the version
whose bytes went through this kernel (read here, or written here and committed); the pod's change events
drop cached pages, attributes and names of entries changed elsewhere.

On the pod's own host blocks travel as files in the pod's state directory (written into ``tmp/`` and
adopted; read through cached descriptors); elsewhere their bytes travel in frames.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno
import functools
import logging
import os
import re
import signal
import stat
import sys
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Coroutine, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ParamSpec, TypeVar, cast

import pyfuse3
import pyfuse3.asyncio

from ecliptic.mesh.blocks import hash_bytes
from ecliptic.mesh.channel import Channel
from ecliptic.mesh.entries import ROOT_ID, Entry
from ecliptic.mesh.fuse_files import BufferPool, FileContent
from ecliptic.mesh.identity import JoinToken
from ecliptic.mesh.manifest import Block
from ecliptic.mesh.wire import Header, MeshError, split_address

log = logging.getLogger("ecliptic.mesh.fuse")

ST_BLKSIZE = 131072
READAHEAD_KB = 4096
OPEN_BLOCKS = 64
"""Descriptors of block files kept open per mount (a block never changes, so they never go stale)."""
UNKNOWN_LOOKUPS = 256
"""Entries the kernel has not seen that one batch of events may look up to drop stale names."""
RETRIED = frozenset(
    {"get", "lookup", "list", "pods", "block_path", "read_block", "put_block", "adopt_block", "commit"}
)
"""Operations that may be sent again after the connection dropped (repeating them changes nothing)."""

P = ParamSpec("P")
T = TypeVar("T")


def errno_of(exc: BaseException) -> int:
    if isinstance(exc, MeshError):
        return exc.errno
    if isinstance(exc, TimeoutError):
        return errno.ETIMEDOUT
    if isinstance(exc, ConnectionError):
        return errno.EIO
    if isinstance(exc, OSError) and exc.errno:
        return exc.errno
    if isinstance(exc, UnicodeError):
        return errno.EINVAL
    log.error("unexpected error in a file-system operation", exc_info=exc)
    return errno.EIO


def _fuse_errors(
    handler: Callable[P, Coroutine[Any, Any, T]],
) -> Callable[P, Coroutine[Any, Any, T]]:
    """pyfuse3 stops the whole mount on any exception but FUSEError: turn every failure into an errno."""

    @functools.wraps(handler)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return await handler(*args, **kwargs)
        except pyfuse3.FUSEError:
            raise
        except Exception as exc:
            raise pyfuse3.FUSEError(errno_of(exc)) from None

    return wrapper


def _text(name: bytes) -> str:
    return os.fsdecode(name)


def _raw(name: str) -> bytes:
    return os.fsencode(name)


class PodLink:
    """The mount's connection to its pod, made again (and events subscribed again) when it drops."""

    def __init__(
        self,
        address: str,
        token: str | None,
        *,
        on_event: Callable[[Header], None],
        on_reconnect: Callable[[], None],
    ) -> None:
        self.address = address
        try:
            self.host, self.port = split_address(address)
            self.token = JoinToken.parse(token) if token else None
        except ValueError as exc:
            raise MeshError("EINVAL", str(exc)) from None
        self.on_event = on_event
        self.on_reconnect = on_reconnect
        self.info: dict[str, Any] = {}
        self._channel: Channel | None = None
        self._connected = False
        self._lock = asyncio.Lock()

    async def channel(self) -> Channel:
        current = self._channel
        if current is not None and not current.closed.is_set():
            return current
        async with self._lock:
            if self._channel is not None and not self._channel.closed.is_set():
                return self._channel
            again = self._connected
            if self._channel is not None:
                await self._channel.close()
                self._channel = None
            try:
                channel = await Channel.connect(self.host, self.port, role="client", token=self.token)
            except (TimeoutError, OSError) as exc:
                raise MeshError("EHOSTUNREACH", f"no pod answers at {self.address} ({exc})") from None
            channel.on_event(self._dispatch)
            await channel.call("subscribe")
            self.info = channel.info
            self._channel = channel
            self._connected = True
        if again:
            log.warning("connection to the pod at %s made again", self.address)
            self.on_reconnect()
        return channel

    def _dispatch(self, header: Header) -> None:
        self.on_event(header)

    async def call(
        self, op: str, body: bytes | bytearray | memoryview = b"", *, timeout: float = 60.0, **args: Any
    ) -> tuple[Any, bytes]:
        attempts = 2 if op in RETRIED else 1
        for attempt in range(attempts):
            channel = await self.channel()
            try:
                return await channel.call(op, body, timeout=timeout, **args)
            except ConnectionError:
                if attempt + 1 == attempts:
                    raise
        raise AssertionError("unreachable")

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()
            self._channel = None


def _write_block_file(folder: Path, data: memoryview) -> tuple[str, str]:
    digest = hash_bytes(data)
    name = f"{uuid.uuid4().hex}.part"
    fd = os.open(folder / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
    try:
        written = 0
        while written < len(data):
            written += os.write(fd, data[written:])
    finally:
        os.close(fd)
    return digest, name


class EntryGone(Exception):
    """The entry an open file writes to was removed: its changes have nowhere to go."""


@dataclass
class Handle:
    inode: int
    content: FileContent
    direct: bool = False
    """Opened write-only: writes bypass the kernel's page cache (see ``_open_handle``)."""


@dataclass
class Listing:
    entry_id: str
    entries: list[Entry] | None = None


class MeshFS(pyfuse3.Operations):
    """The request handlers: inodes, cached entries, open files and the kernel's caches of them."""

    supports_dot_lookup = True
    enable_writeback_cache = False

    def __init__(self, link: PodLink, mountpoint: str = "") -> None:
        super().__init__()
        self.mountpoint = mountpoint
        self.pod = link
        info = link.info
        self.block_size = int(info.get("block_size", 4 * 1024 * 1024))
        self.timeout = float(info.get("attr_timeout", 1.0))
        state = info.get("state_dir")
        self.state_dir = Path(state) if state and os.access(Path(state) / "tmp", os.W_OK) else None
        self.ids: dict[int, str] = {pyfuse3.ROOT_INODE: ROOT_ID}
        self.inodes: dict[str, int] = {ROOT_ID: pyfuse3.ROOT_INODE}
        self.lookups: dict[int, int] = {}
        self._next_inode = pyfuse3.ROOT_INODE + 1
        self.entries: dict[str, tuple[Entry, float]] = {}
        self.contents: dict[int, FileContent] = {}
        self.handles: dict[int, Handle] = {}
        self.open_count: dict[int, int] = {}
        self.listings: dict[int, Listing] = {}
        self._next_handle = 1
        self.kernel_version: dict[int, tuple[int, str]] = {}
        """Per inode, the version whose bytes the kernel's page cache holds."""
        self.uncached_writes: set[int] = set()
        """Inodes written past the page cache since their last commit."""
        self.block_fds: OrderedDict[str, int] = OrderedDict()
        self.buffers = BufferPool()
        self._changed: set[str] = set()
        self._parents: set[str] = set()
        self._wake = asyncio.Event()
        self._watcher: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[Any]] = set()
        # Its own thread: an invalidation can wait on pages whose write waits for a block store, and the
        # stores run in the default executor.
        self._notifier = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fuse-invalidate")
        link.on_event = self._on_event
        link.on_reconnect = self._on_reconnect

    # -- lifecycle ---------------------------------------------------------------------------------
    def init(self) -> None:
        if self.mountpoint:
            # The kernel sets the readahead window from the reply to this INIT: widen it once that is sent.
            asyncio.get_running_loop().call_soon(_raise_readahead, self.mountpoint)

    def start(self) -> None:
        self._watcher = asyncio.create_task(self._watch(), name="mesh-events")

    async def close(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(BaseException):
                await self._watcher
        for inode, content in list(self.contents.items()):
            if content.busy:
                try:
                    await asyncio.wait_for(self._sync(inode, content), 120.0)
                except Exception as exc:
                    log.error("changes to inode %d could not be committed at unmount: %s", inode, exc)
        for task in list(self._background):
            task.cancel()
        self._notifier.shutdown(wait=False, cancel_futures=True)
        for fd in self.block_fds.values():
            os.close(fd)
        self.block_fds.clear()
        await self.pod.close()

    def _spawn(self, coroutine: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.create_task(coroutine)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # -- inodes and entries ------------------------------------------------------------------------
    def _inode(self, entry: Entry) -> int:
        inode = self.inodes.get(entry.id)
        if inode is None:
            inode = self._next_inode
            self._next_inode += 1
            self.inodes[entry.id] = inode
            self.ids[inode] = entry.id
        return inode

    def _entry_id(self, inode: int) -> str:
        entry_id = self.ids.get(inode)
        if entry_id is None:
            raise pyfuse3.FUSEError(errno.ESTALE)
        return entry_id

    def _remember(self, entry: Entry) -> None:
        self.entries[entry.id] = (entry, time.monotonic())

    def _drop_inode(self, inode: int) -> None:
        if inode == pyfuse3.ROOT_INODE or inode in self.contents or self.lookups.get(inode):
            return
        entry_id = self.ids.pop(inode, None)
        if entry_id is not None:
            self.inodes.pop(entry_id, None)
            self.entries.pop(entry_id, None)
        self.kernel_version.pop(inode, None)

    def _attributes(self, entry: Entry, inode: int) -> pyfuse3.EntryAttributes:
        content = self.contents.get(inode)
        size, mtime = entry.size, entry.mtime_ns
        if content is not None and content.busy:
            size = content.size
            mtime = content.mtime_ns or content.entry.mtime_ns
        attrs = pyfuse3.EntryAttributes()
        attrs.st_ino = inode
        attrs.generation = 0
        attrs.entry_timeout = self.timeout
        attrs.attr_timeout = self.timeout
        attrs.st_mode = entry.st_mode
        attrs.st_nlink = 2 if entry.kind == "dir" else 1
        attrs.st_uid = entry.uid
        attrs.st_gid = entry.gid
        attrs.st_rdev = 0
        attrs.st_size = size
        attrs.st_blksize = ST_BLKSIZE
        attrs.st_blocks = -(-size // 512)
        attrs.st_mtime_ns = mtime
        attrs.st_atime_ns = mtime
        attrs.st_ctime_ns = entry.ctime_ns or mtime
        return attrs

    def _reply(self, entry: Entry) -> pyfuse3.EntryAttributes:
        """Attributes for a reply that makes the kernel hold one more reference to the inode."""
        self._remember(entry)
        inode = self._inode(entry)
        self.lookups[inode] = self.lookups.get(inode, 0) + 1
        return self._attributes(entry, inode)

    async def _get(self, entry_id: str, *, fresh: bool = False) -> Entry:
        cached = self.entries.get(entry_id)
        if cached is not None and not fresh and time.monotonic() - cached[1] < self.timeout:
            return cached[0]
        result, _ = await self.pod.call("get", entry=entry_id)
        entry = Entry.from_wire(result)
        self._remember(entry)
        return entry

    async def _child(self, parent_inode: int, name: bytes) -> Entry:
        result, _ = await self.pod.call("lookup", parent=self._entry_id(parent_inode), name=_text(name))
        entry = Entry.from_wire(result)
        self._remember(entry)
        return entry

    async def _create(self, parent_inode: int, name: bytes, kind: str, **args: Any) -> Entry:
        result, _ = await self.pod.call(
            "create", parent=self._entry_id(parent_inode), name=_text(name), kind=kind, **args
        )
        return Entry.from_wire(result)

    # -- blocks ------------------------------------------------------------------------------------
    async def _store(self, data: memoryview) -> str:
        if self.state_dir is not None:
            folder = self.state_dir / "tmp"
            digest, name = await asyncio.to_thread(_write_block_file, folder, data)
            try:
                await self.pod.call("adopt_block", hash=digest, file=name)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(folder / name)
                raise
            return digest
        digest = await asyncio.to_thread(hash_bytes, data)
        await self.pod.call("put_block", data, hash=digest, timeout=600.0)
        return digest

    async def _load(self, digest: str, holders: tuple[str, ...], offset: int, length: int) -> bytes:
        if self.state_dir is None:
            _, body = await self.pod.call(
                "read_block", hash=digest, holders=list(holders), offset=offset, length=length, timeout=600.0
            )
            return body
        fd = self.block_fds.get(digest)
        if fd is None:
            fd = await self._open_block(digest, holders)
        else:
            self.block_fds.move_to_end(digest)
        # Large reads go to a thread, so several requests the kernel keeps in flight wait on the disk together;
        # small ones are cheaper on the loop than the hop.
        data = (
            await asyncio.to_thread(os.pread, fd, length, offset)
            if length >= 262144
            else os.pread(fd, length, offset)
        )
        if len(data) != length:
            raise MeshError("EIO", f"block {digest[:16]}… is shorter than its manifest says")
        return data

    def _prefetch(self, digest: str, holders: tuple[str, ...]) -> None:
        if self.state_dir is None:
            return  # the pod reads ahead on its side only when asked for bytes
        fd = self.block_fds.get(digest)
        if fd is None:
            self._spawn(self._warm(digest, holders))
            return
        with contextlib.suppress(OSError, AttributeError):
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_WILLNEED)

    async def _warm(self, digest: str, holders: tuple[str, ...]) -> None:
        with contextlib.suppress(Exception):  # only a hint: the read itself reports what went wrong
            await self._open_block(digest, holders)  # which also reads it ahead

    async def _open_block(self, digest: str, holders: tuple[str, ...]) -> int:
        for _ in range(3):
            path, _ = await self.pod.call("block_path", hash=digest, holders=list(holders), timeout=600.0)
            try:
                fd = os.open(str(path), os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:
                continue  # dropped from the pod's cache between its answer and the open
            existing = self.block_fds.get(digest)
            if existing is not None:
                os.close(fd)
                return existing
            # Reads are served one at a time from this thread, and each block is a file of its own, so
            # nothing would read ahead across blocks: have the kernel read all of it now, in the background.
            with contextlib.suppress(OSError, AttributeError):
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_WILLNEED)
            self.block_fds[digest] = fd
            while len(self.block_fds) > OPEN_BLOCKS:
                _, old = self.block_fds.popitem(last=False)
                os.close(old)
            return fd
        raise MeshError("EIO", f"block {digest[:16]}… kept vanishing from the pod")

    def _content(self, entry: Entry) -> FileContent:
        return FileContent(
            entry,
            self.block_size,
            store=self._store,
            load=self._load,
            pool=self.buffers,
            prefetch=self._prefetch,
        )

    async def _commit(self, entry_id: str, blocks: list[Block], mtime_ns: int) -> Entry:
        try:
            result, _ = await self.pod.call(
                "commit", entry=entry_id, blocks=[list(b) for b in blocks], mtime_ns=mtime_ns, timeout=600.0
            )
        except MeshError as exc:
            if exc.code != "ENOENT":
                raise
            try:
                await self.pod.call("get", entry=entry_id)
            except MeshError as missing:
                if missing.code == "ENOENT":
                    raise EntryGone(entry_id) from exc
            raise exc  # the entry is there: something else was missing
        return Entry.from_wire(result)

    async def _sync(self, inode: int, content: FileContent) -> None:
        base = content.entry.version
        entry_id = content.entry.id
        try:
            committed = await content.sync(lambda blocks, mtime_ns: self._commit(entry_id, blocks, mtime_ns))
        except EntryGone:
            # Removed while open (here or elsewhere): there is no file left to hold the changes.
            content.discard()
            return
        if committed is None:
            return
        self._remember(committed)
        if self.kernel_version.get(inode) == base and inode not in self.uncached_writes:
            # The kernel's pages are the old version plus exactly the writes that made the new one.
            self.kernel_version[inode] = committed.version
        self.uncached_writes.discard(inode)

    # -- change events -----------------------------------------------------------------------------
    def _on_event(self, header: Header) -> None:
        # Runs in the channel's reader: it must not wait on the channel, so the work goes to _watch.
        if header.get("ev") != "changed" or not header.get("ids"):
            return
        self._changed.update(str(i) for i in header["ids"])
        self._parents.update(str(p) for p in header.get("parents") or ())
        self._wake.set()

    def _on_reconnect(self) -> None:
        # Events may have been missed while the connection was down: check everything the kernel knows.
        self.entries = {entry_id: (entry, 0.0) for entry_id, (entry, _) in self.entries.items()}
        self._changed.update(self.inodes)
        self._changed.discard(ROOT_ID)
        self._wake.set()

    async def _watch(self) -> None:
        while True:
            await self._wake.wait()
            # Replies to this mount's own changes arrive just after their events; once they have been
            # recorded, the versions match and nothing is invalidated for them.
            await asyncio.sleep(0.02)
            self._wake.clear()
            ids, self._changed = self._changed, set()
            parents, self._parents = self._parents, set()
            try:
                await self._invalidate(ids, parents)
            except Exception:
                log.exception("invalidating the kernel's caches failed")

    async def _invalidate(self, ids: set[str], parents: set[str]) -> None:
        parent_known = any(parent in self.inodes for parent in parents)
        budget = UNKNOWN_LOOKUPS
        for entry_id in ids:
            inode = self.inodes.get(entry_id)
            cached = self.entries.get(entry_id)
            old = cached[0] if cached is not None else None
            if inode is None and old is None:
                # Not known here, but it may have taken a name the kernel still gives to another inode.
                if not parent_known or budget == 0:
                    continue
                budget -= 1
            try:
                result, _ = await self.pod.call("get", entry=entry_id)
                new: Entry | None = Entry.from_wire(result)
            except MeshError as exc:
                if exc.code != "ENOENT":
                    continue
                new = None
            except (ConnectionError, TimeoutError):
                continue
            if new is not None and old is not None and new.version == old.version:
                self._remember(new)  # a new placement, or our own change
                continue
            if inode is not None or old is not None:
                if new is not None:
                    self._remember(new)
                else:
                    self.entries.pop(entry_id, None)
            if inode is not None:
                content = self.contents.get(inode)
                if content is not None and new is not None and not new.deleted and new.kind == "file":
                    content.rebase(new)  # readers of an open file see the new version (refused if busy)
                self.kernel_version.pop(inode, None)
                await self._invalidate_inode(inode)
            names: set[tuple[str, str]] = set()
            if old is not None and (
                new is None or new.deleted or (new.parent, new.name) != (old.parent, old.name)
            ):
                names.add((old.parent, old.name))
            if new is not None and (old is None or (new.parent, new.name) != (old.parent, old.name)):
                names.add((new.parent, new.name))
            for parent, name in names:
                parent_inode = self.inodes.get(parent)
                if parent_inode is not None:
                    pyfuse3.invalidate_entry_async(parent_inode, _raw(name), ignore_enoent=True)

    async def _invalidate_inode(self, inode: int, *, attr_only: bool = False) -> None:
        # In a thread: dropping pages waits for reads of them in flight, which need this event loop.
        loop = asyncio.get_running_loop()
        with contextlib.suppress(OSError, RuntimeError):
            await loop.run_in_executor(self._notifier, pyfuse3.invalidate_inode, inode, attr_only)

    # -- metadata operations -----------------------------------------------------------------------
    @_fuse_errors
    async def lookup(
        self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        if name == b".":
            entry = await self._get(self._entry_id(parent_inode))
        elif name == b"..":
            folder = await self._get(self._entry_id(parent_inode))
            entry = await self._get(folder.parent or ROOT_ID)
        else:
            entry = await self._child(parent_inode, name)
        return self._reply(entry)

    async def forget(self, inode_list: Sequence[tuple[int, int]]) -> None:
        for inode, count in inode_list:
            left = self.lookups.get(inode, 0) - count
            if left > 0:
                self.lookups[inode] = left
            else:
                self.lookups.pop(inode, None)
                self._drop_inode(inode)

    @_fuse_errors
    async def getattr(self, inode: int, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        entry_id = self._entry_id(inode)
        content = self.contents.get(inode)
        if content is not None and content.busy:
            cached = self.entries.get(entry_id)
            return self._attributes(cached[0] if cached is not None else content.entry, inode)
        try:
            return self._attributes(await self._get(entry_id), inode)
        except MeshError as exc:
            if exc.code != "ENOENT" or content is None:
                raise
            return self._attributes(content.entry, inode)  # removed, but still open here

    @_fuse_errors
    async def setattr(
        self,
        inode: int,
        attr: pyfuse3.EntryAttributes,
        fields: pyfuse3.SetattrFields,
        fh: int | None,
        ctx: pyfuse3.RequestContext,
    ) -> pyfuse3.EntryAttributes:
        entry_id = self._entry_id(inode)
        handle = self.handles.get(fh) if fh is not None else None
        content = handle.content if handle is not None else self.contents.get(inode)
        if fields.update_size:
            if content is None:
                entry = await self._get(entry_id, fresh=True)
                if entry.kind != "file":
                    raise pyfuse3.FUSEError(errno.EISDIR if entry.kind == "dir" else errno.EINVAL)
                temporary = self._content(entry)
                await temporary.truncate(attr.st_size)
                await self._sync(inode, temporary)
            else:
                await content.truncate(attr.st_size)
                if handle is None:
                    await self._sync(inode, content)  # truncate(2) by path: nothing will close it later
        changes: dict[str, Any] = {}
        if fields.update_mode:
            changes["mode"] = attr.st_mode & 0o7777
        if fields.update_uid:
            changes["uid"] = attr.st_uid
        if fields.update_gid:
            changes["gid"] = attr.st_gid
        if fields.update_mtime:
            changes["mtime_ns"] = attr.st_mtime_ns
            if content is not None:
                content.set_mtime(attr.st_mtime_ns)
        if changes:
            result, _ = await self.pod.call("setattr", entry=entry_id, **changes)
            self._remember(Entry.from_wire(result))
        return await self.getattr(inode, ctx)

    @_fuse_errors
    async def readlink(self, inode: int, ctx: pyfuse3.RequestContext) -> bytes:
        entry = await self._get(self._entry_id(inode))
        if entry.kind != "symlink":
            raise pyfuse3.FUSEError(errno.EINVAL)
        return _raw(entry.target)

    @_fuse_errors
    async def mknod(
        self, parent_inode: int, name: bytes, mode: int, rdev: int, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        if stat.S_IFMT(mode) not in (0, stat.S_IFREG):
            raise pyfuse3.FUSEError(errno.EPERM)  # the mesh has no devices, fifos or sockets
        entry = await self._create(parent_inode, name, "file", mode=mode & 0o7777, uid=ctx.uid, gid=ctx.gid)
        return self._reply(entry)

    @_fuse_errors
    async def mkdir(
        self, parent_inode: int, name: bytes, mode: int, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        entry = await self._create(parent_inode, name, "dir", mode=mode & 0o7777, uid=ctx.uid, gid=ctx.gid)
        return self._reply(entry)

    @_fuse_errors
    async def symlink(
        self, parent_inode: int, name: bytes, target: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        entry = await self._create(
            parent_inode, name, "symlink", mode=0o777, uid=ctx.uid, gid=ctx.gid, target=_text(target)
        )
        return self._reply(entry)

    @_fuse_errors
    async def unlink(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        entry = await self._child(parent_inode, name)
        result, _ = await self.pod.call("remove", entry=entry.id, directory=False)
        self._remember(Entry.from_wire(result))

    @_fuse_errors
    async def rmdir(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        entry = await self._child(parent_inode, name)
        result, _ = await self.pod.call("remove", entry=entry.id, directory=True)
        self._remember(Entry.from_wire(result))

    @_fuse_errors
    async def rename(
        self,
        parent_inode_old: int,
        name_old: bytes,
        parent_inode_new: int,
        name_new: bytes,
        flags: int,
        ctx: pyfuse3.RequestContext,
    ) -> None:
        if flags & pyfuse3.RENAME_EXCHANGE:
            raise pyfuse3.FUSEError(errno.EINVAL)  # the pods have no atomic swap of two names
        entry = await self._child(parent_inode_old, name_old)
        result, _ = await self.pod.call(
            "rename",
            entry=entry.id,
            parent=self._entry_id(parent_inode_new),
            name=_text(name_new),
            replace=not flags & pyfuse3.RENAME_NOREPLACE,
        )
        self._remember(Entry.from_wire(result))

    @_fuse_errors
    async def link(
        self, inode: int, new_parent_inode: int, new_name: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        raise pyfuse3.FUSEError(errno.EPERM)  # entries have one name each: no hard links

    @_fuse_errors
    async def statfs(self, ctx: pyfuse3.RequestContext) -> pyfuse3.StatvfsData:
        result, _ = await self.pod.call("pods")
        active = [pod for pod in result if pod.get("state") == "active"]
        capacity = sum(int(pod.get("capacity", 0)) for pod in active)
        free = sum(int(pod.get("free", 0)) for pod in active)
        stats = pyfuse3.StatvfsData()
        stats.f_bsize = ST_BLKSIZE
        stats.f_frsize = 4096
        stats.f_blocks = capacity // stats.f_frsize
        stats.f_bfree = free // stats.f_frsize
        stats.f_bavail = stats.f_bfree
        # Entries are rows in the pods' replicas: there is no inode table to run out of.
        stats.f_files = 1 << 32
        stats.f_ffree = 1 << 32
        stats.f_favail = 1 << 32
        stats.f_namemax = 255
        return stats

    # -- directories -------------------------------------------------------------------------------
    @_fuse_errors
    async def opendir(self, inode: int, ctx: pyfuse3.RequestContext) -> int:
        handle = self._next_handle
        self._next_handle += 1
        self.listings[handle] = Listing(self._entry_id(inode))
        return handle

    @_fuse_errors
    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        listing = self.listings[fh]
        if listing.entries is None or start_id == 0:
            # One snapshot per pass over the directory, so offsets into it stay valid while it is read.
            result, _ = await self.pod.call("list", entry=listing.entry_id)
            listing.entries = [Entry.from_wire(item) for item in result]
        for index in range(start_id, len(listing.entries)):
            entry = listing.entries[index]
            known = entry.id in self.inodes
            inode = self._inode(entry)
            self._remember(entry)
            if not pyfuse3.readdir_reply(token, _raw(entry.name), self._attributes(entry, inode), index + 1):
                if not known:
                    self._drop_inode(inode)
                break
            self.lookups[inode] = self.lookups.get(inode, 0) + 1

    @_fuse_errors
    async def releasedir(self, fh: int) -> None:
        self.listings.pop(fh, None)

    @_fuse_errors
    async def fsyncdir(self, fh: int, datasync: bool) -> None:
        return None  # every change to a directory is committed by the pod before it is acknowledged

    # -- files -------------------------------------------------------------------------------------
    def _open_handle(self, inode: int, content: FileContent, flags: int) -> int:
        # Write-only opens get direct I/O: nothing can read the pages back through them, and the kernel
        # drops a file's pages once it sees the new mtime anyway, so caching the writes would only cost
        # one more copy of every byte.
        handle = self._next_handle
        self._next_handle += 1
        self.handles[handle] = Handle(inode, content, direct=flags & os.O_ACCMODE == os.O_WRONLY)
        self.open_count[inode] = self.open_count.get(inode, 0) + 1
        return handle

    @_fuse_errors
    async def open(self, inode: int, flags: int, ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:
        entry_id = self._entry_id(inode)
        content = self.contents.get(inode)
        if content is None or not content.busy:
            cached = self.entries.get(entry_id)
            entry = await self._get(entry_id, fresh=True)
            if entry.kind != "file":
                raise pyfuse3.FUSEError(errno.EISDIR if entry.kind == "dir" else errno.EINVAL)
            if content is None:
                content = self._content(entry)
                self.contents[inode] = content
            elif content.entry.version != entry.version:
                content.rebase(entry)
            if cached is not None and cached[0].version != entry.version:
                # The kernel may still hold the old size, which would cut reads of the new version short.
                self._spawn(self._invalidate_inode(inode, attr_only=True))
        keep_cache = self.kernel_version.get(inode) == content.entry.version
        self.kernel_version[inode] = content.entry.version
        if flags & os.O_TRUNC:
            await content.truncate(0)
        handle = self._open_handle(inode, content, flags)
        return pyfuse3.FileInfo(fh=handle, keep_cache=keep_cache, direct_io=self.handles[handle].direct)

    @_fuse_errors
    async def create(
        self, parent_inode: int, name: bytes, mode: int, flags: int, ctx: pyfuse3.RequestContext
    ) -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:
        entry = await self._create(
            parent_inode,
            name,
            "file",
            mode=mode & 0o7777,
            uid=ctx.uid,
            gid=ctx.gid,
            exclusive=bool(flags & os.O_EXCL),
        )
        self._remember(entry)
        inode = self._inode(entry)
        content = self.contents.get(inode)
        if content is None:
            content = self._content(entry)
            self.contents[inode] = content
        if flags & os.O_TRUNC and content.size:
            await content.truncate(0)
        self.kernel_version[inode] = content.entry.version
        handle = self._open_handle(inode, content, flags)
        info = pyfuse3.FileInfo(fh=handle, keep_cache=False, direct_io=self.handles[handle].direct)
        return info, self._reply(entry)

    @_fuse_errors
    async def read(self, fh: int, off: int, size: int) -> bytes:
        data = await self.handles[fh].content.read(off, size)
        return cast(bytes, data)  # pyfuse3 replies from any buffer: a view of a dirty block needs no copy

    @_fuse_errors
    async def write(self, fh: int, off: int, buf: bytes) -> int:
        handle = self.handles[fh]
        if handle.direct:
            self.uncached_writes.add(handle.inode)
        await handle.content.write(off, buf)
        return len(buf)

    @_fuse_errors
    async def flush(self, fh: int) -> None:
        handle = self.handles[fh]
        await self._sync(handle.inode, handle.content)

    @_fuse_errors
    async def fsync(self, fh: int, datasync: bool) -> None:
        handle = self.handles[fh]
        await self._sync(handle.inode, handle.content)
        # The commit alone survives a crash of the processes; fsync(2) promises the disk, so ask the pod.
        await self.pod.call("fsync", entry=handle.content.entry.id, timeout=600.0)

    @_fuse_errors
    async def release(self, fh: int) -> None:
        handle = self.handles.pop(fh)
        inode = handle.inode
        left = self.open_count.get(inode, 1) - 1
        if left > 0:
            self.open_count[inode] = left
        else:
            self.open_count.pop(inode, None)
        try:
            await self._sync(inode, handle.content)
        finally:
            # Changes that could not be committed stay with the inode, for a later open and fsync.
            if left <= 0 and not handle.content.busy and self.contents.get(inode) is handle.content:
                del self.contents[inode]
                self._drop_inode(inode)


def _unescape(field: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda match: chr(int(match.group(1), 8)), field)


def _raise_readahead(target: str) -> None:
    """Widen the mount's readahead window, when allowed (root): reads arrive in requests of its size.

    FUSE starts with 128 KiB, so a sequential read costs one round trip through this process per 128 KiB;
    with a few MiB the kernel asks for up to its largest request (1 MiB) and keeps several in flight.
    """
    device = None
    with contextlib.suppress(OSError), open("/proc/self/mountinfo") as mounts:
        for line in mounts:
            fields = line.split()
            if len(fields) > 4 and _unescape(fields[4]) == target:
                device = fields[2]
    if device is None:
        return
    setting = Path("/sys/class/bdi") / device / "read_ahead_kb"
    with contextlib.suppress(OSError, ValueError):
        if int(setting.read_text()) < READAHEAD_KB:
            setting.write_text(str(READAHEAD_KB))


def _keep_freed_memory() -> None:
    """Let glibc keep freed large allocations in the heap instead of unmapping them at once.

    pyfuse3 copies every write request into a new bytes object (1 MiB for a streaming writer); with
    glibc's defaults each one is fresh memory from the kernel, so a sequential write pays a page fault
    per 4 KiB twice over and ran at half the speed.
    """
    if not sys.platform.startswith("linux"):
        return
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return  # not glibc
    m_trim_threshold, m_mmap_threshold = -1, -3
    mallopt(m_mmap_threshold, 32 * 1024 * 1024)
    mallopt(m_trim_threshold, 256 * 1024 * 1024)


async def _serve(mountpoint: Path, pod: str, token: str | None, options: set[str]) -> None:
    link = PodLink(pod, token, on_event=lambda header: None, on_reconnect=lambda: None)
    await link.channel()  # fail before mounting when there is no pod to talk to
    # Resolved before mounting: once mounted, looking at the mountpoint from here would wait on ourselves.
    fs = MeshFS(link, os.path.realpath(mountpoint))
    try:
        pyfuse3.init(fs, str(mountpoint), options)
    except BaseException:
        await link.close()
        raise
    loop = asyncio.get_running_loop()
    signals = (signal.SIGINT, signal.SIGTERM)
    try:
        for sig in signals:
            loop.add_signal_handler(sig, pyfuse3.terminate)
        fs.start()
        print(f"mounted {pod} on {mountpoint}", flush=True)
        await pyfuse3.main()
    finally:
        for sig in signals:
            loop.remove_signal_handler(sig)
        try:
            await fs.close()
        finally:
            pyfuse3.close(unmount=True)


def run_mount(
    mountpoint: Path, pod: str, *, token: str | None = None, allow_other: bool = False, debug: bool = False
) -> None:
    """Mount the network through the pod at ``pod`` on ``mountpoint``; returns once it is unmounted."""
    logging.basicConfig(
        level=logging.DEBUG if debug else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    options = {"fsname=ecliptic-mesh", "subtype=ecliptic", "default_permissions"}
    if allow_other:
        options.add("allow_other")
    if debug:
        options.add("debug")
    _keep_freed_memory()
    pyfuse3.asyncio.enable()
    asyncio.run(_serve(mountpoint, pod, token, options))


__all__ = ["MeshFS", "PodLink", "run_mount"]
