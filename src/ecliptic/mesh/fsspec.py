"""fsspec for the mesh: ``mesh://HOST:PORT/path`` lets pandas, pyarrow, xarray and dask use the network.

The pod is the URL's netloc (``mesh://127.0.0.1:7400/data/x.csv``); without one (``mesh:///data/x.csv``) it
comes from the ``pod`` storage option, else ``$ECLIPTIC_MESH_POD``, else 127.0.0.1:7400. A filesystem
pickled without an explicit pod (dask) resolves it again where it is unpickled, so each worker talks to the
pod on its own host. ``token`` (or ``$ECLIPTIC_MESH_TOKEN``) is the join token the client presents.

Reads pin the version of the file seen at open: blocks are immutable and named by their hash, so a file
rewritten meanwhile cannot tear a read. Writes never show partial content: blocks are stored as the buffer
fills, and the new version replaces the old one only at the commit on close. (A *new* file is created just
before that commit, so other readers may see it empty for an instant: the pod has no create-with-content.)
Call :func:`register` to make ``fsspec.open("mesh://...")`` find this class without an entry point.
"""

from __future__ import annotations

import errno
import hashlib
import os
import posixpath
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from glob import has_magic
from pathlib import Path
from typing import Any

import fsspec  # type: ignore[import-untyped]
from fsspec.callbacks import DEFAULT_CALLBACK  # type: ignore[import-untyped]
from fsspec.spec import AbstractBufferedFile  # type: ignore[import-untyped]
from fsspec.utils import isfilelike, stringify_path  # type: ignore[import-untyped]

from ecliptic.mesh.blocks import HOLE
from ecliptic.mesh.client import MeshClient, normalize
from ecliptic.mesh.entries import Entry
from ecliptic.mesh.manifest import Block
from ecliptic.mesh.wire import MeshError, split_address

PROTOCOL = "mesh"
POD_ENV = "ECLIPTIC_MESH_POD"
TOKEN_ENV = "ECLIPTIC_MESH_TOKEN"
DEFAULT_POD = "127.0.0.1:7400"
MAX_LINK_HOPS = 40
READ_CACHE_BLOCKS = 8

_TYPES = {"file": "file", "dir": "directory", "symlink": "link"}


def register() -> None:
    """Make ``mesh://`` known to fsspec in this process (replacing any earlier registration)."""
    fsspec.register_implementation(PROTOCOL, "ecliptic.mesh.fsspec.MeshFileSystem", clobber=True)


def _join(folder: str, name: str) -> str:
    return f"{folder.rstrip('/')}/{name}"


def _os_error(exc: MeshError, path: str) -> OSError:
    # OSError(errno, ...) returns the matching subclass: FileNotFoundError, FileExistsError, IsADirectoryError…
    return OSError(exc.errno, exc.message, path)


@contextmanager
def _errors(path: str) -> Iterator[None]:
    try:
        yield
    except MeshError as exc:
        raise _os_error(exc, path) from exc


class _Environment:
    """The environment's defaults, read whenever fsspec computes an instance's cache key.

    Listed in ``_extra_tokenize_attributes``: without it, ``fsspec.filesystem("mesh")`` would keep handing
    out the instance made for the pod the environment named first.
    """

    def __get__(self, obj: object, owner: type | None = None) -> tuple[str, str]:
        return os.environ.get(POD_ENV, ""), os.environ.get(TOKEN_ENV, "")


class MeshFileSystem(fsspec.AbstractFileSystem):  # type: ignore[misc]
    """The network as seen through one pod; paths are ``/a/b`` inside the network."""

    protocol = (PROTOCOL,)
    root_marker = "/"
    _environment = _Environment()
    _extra_tokenize_attributes = ("_environment",)

    def __init__(
        self,
        pod: str | None = None,
        token: str | None = None,
        *,
        timeout: float = 60.0,
        auto_mkdir: bool = False,
        **storage_options: Any,
    ) -> None:
        super().__init__(**storage_options)
        self.pinned = bool(pod)
        self.pod = pod or os.environ.get(POD_ENV) or DEFAULT_POD
        split_address(self.pod)  # a malformed address fails here rather than at the first read
        self.token = token or os.environ.get(TOKEN_ENV) or None
        self.auto_mkdir = auto_mkdir
        self._client = MeshClient(self.pod, token=self.token, timeout=timeout)
        self._pid = os.getpid()
        self._expiry_given = "listings_expiry_time" in storage_options
        self._tuned = False

    @property
    def client(self) -> MeshClient:
        """The connection to the pod (opened on first use; ``MeshError`` if the pod does not answer)."""
        if self._pid != os.getpid():
            # A forked child must not talk on its parent's socket: their frames would interleave.
            self._client = MeshClient(self.pod, token=self.token, timeout=self._client.timeout)
            self._pid = os.getpid()
        self._client.connect()
        if not self._tuned:
            # Listings may be trusted as long as a mount trusts attributes: one network setting for both.
            if not self._expiry_given:
                self.dircache.listings_expiry_time = float(self._client.info.get("attr_timeout", 1.0))
            self._tuned = True
        return self._client

    @property
    def fsid(self) -> str:
        with _errors("/"):
            return f"mesh-{self.client.info.get('network', '')}"

    # -- paths -------------------------------------------------------------------------------------
    @classmethod
    def _strip_protocol(cls, path: Any) -> Any:
        if isinstance(path, list):
            return [cls._strip_protocol(p) for p in path]
        text = stringify_path(path)
        if text.startswith(f"{PROTOCOL}://"):
            _, slash, rest = text[len(PROTOCOL) + 3 :].partition("/")
            text = slash + rest
        return normalize(posixpath.normpath(f"/{text}"))

    @staticmethod
    def _get_kwargs_from_urls(path: str) -> dict[str, Any]:
        text = stringify_path(path)
        if text.startswith(f"{PROTOCOL}://"):
            netloc = text[len(PROTOCOL) + 3 :].partition("/")[0]
            if netloc:
                return {"pod": netloc}
        return {}

    def unstrip_protocol(self, name: str) -> str:
        if name.startswith(f"{PROTOCOL}://"):
            return name
        # Only a pod that was asked for goes into the URL: one from the environment stays a per-host default.
        return f"{PROTOCOL}://{self.pod if self.pinned else ''}{self._strip_protocol(name)}"

    # -- metadata ----------------------------------------------------------------------------------
    def _info(self, path: str, entry: Entry) -> dict[str, Any]:
        info: dict[str, Any] = {
            "name": path,
            "size": 0 if entry.kind == "dir" else entry.size,
            "type": _TYPES[entry.kind],
            "mode": entry.st_mode,
            "uid": entry.uid,
            "gid": entry.gid,
            "mtime": entry.mtime_ns / 1e9,
            # Entries keep no birth time: like LocalFileSystem on Linux, "created" is the last change.
            "created": entry.ctime_ns / 1e9,
            "holders": list(entry.holders),
            "id": entry.id,
            "hlc": entry.hlc,
            "islink": entry.kind == "symlink",
        }
        if entry.kind == "symlink":
            info["destination"] = entry.target
        return info

    def _cached_info(self, path: str) -> dict[str, Any] | None:
        """The path's row in its parent's cached listing; FileNotFoundError if that listing lacks it."""
        if path == "/":
            return None
        try:
            siblings = self.dircache[self._parent(path)]
        except KeyError:
            return None
        for info in siblings:
            if info["name"] == path:
                return dict(info)
        raise FileNotFoundError(errno.ENOENT, "no such file or directory", path)

    def ls(self, path: str, detail: bool = True, refresh: bool = False, **kwargs: Any) -> list[Any]:
        path = self._strip_protocol(path)
        listing: list[dict[str, Any]] | None = None
        if not refresh:
            try:
                listing = list(self.dircache[path])
            except KeyError:
                info = self._cached_info(path)
                if info is not None and info["type"] != "directory":
                    listing = [info]
        if listing is None:
            with _errors(path):
                entry = self.client.stat(path)
                if entry.kind != "dir":
                    listing = [self._info(path, entry)]
                else:
                    children = self.client.children(entry.id)
                    listing = sorted(
                        (self._info(_join(path, child.name), child) for child in children),
                        key=lambda info: str(info["name"]),
                    )
                    self.dircache[path] = listing
                    listing = list(listing)
        if detail:
            return [dict(info) for info in listing]
        return [info["name"] for info in listing]

    def info(self, path: str, refresh: bool = False, **kwargs: Any) -> dict[str, Any]:
        path = self._strip_protocol(path)
        if not refresh:
            cached = self._cached_info(path)
            if cached is not None:
                return cached
        with _errors(path):
            return self._info(path, self.client.stat(path))

    def exists(self, path: str, **kwargs: Any) -> bool:
        # Unlike fsspec's default, only absence means False: an unreachable pod is an error, not "no file".
        try:
            self.info(path, **kwargs)
        except (FileNotFoundError, NotADirectoryError):
            return False
        return True

    def created(self, path: str) -> datetime:
        return datetime.fromtimestamp(self.info(path)["created"], tz=UTC)

    def modified(self, path: str) -> datetime:
        return datetime.fromtimestamp(self.info(path)["mtime"], tz=UTC)

    def ukey(self, path: str) -> str:
        """The entry and its version: a relocation of the blocks keeps it, any rewrite, rename or chmod changes it."""
        _, entry = self._follow(self._strip_protocol(path))
        assert entry is not None
        return f"{entry.id}:{entry.hlc}:{entry.origin}"

    def checksum(self, path: str) -> int:
        return int(hashlib.sha256(self.ukey(path).encode()).hexdigest()[:16], 16)

    def invalidate_cache(self, path: str | None = None) -> None:
        if path is None:
            self.dircache.clear()
        else:
            path = self._strip_protocol(path)
            below = _join(path, "")
            for key in list(self.dircache):
                if key == path or key.startswith(below):
                    self.dircache.pop(key, None)
            # Every ancestor's listing may now be wrong: makedirs and auto_mkdir create whole chains.
            ancestor = path
            while ancestor != "/":
                ancestor = self._parent(ancestor)
                self.dircache.pop(ancestor, None)
        super().invalidate_cache(path)

    # -- reading -----------------------------------------------------------------------------------
    def _follow(self, path: str, *, missing_ok: bool = False) -> tuple[str, Entry | None]:
        """The path symlinks lead to and its entry, fresh from the pod (a read needs the current blocks).

        Link targets are paths inside the network, relative to the link's folder unless absolute.
        With ``missing_ok`` a dangling final target gives ``(target, None)``, as ``open(O_CREAT)`` would.
        """
        current = path
        with _errors(path):
            for _ in range(MAX_LINK_HOPS):
                try:
                    entry = self.client.stat(current)
                except MeshError as exc:
                    if missing_ok and exc.code == "ENOENT":
                        return current, None
                    raise
                if entry.kind != "symlink":
                    return current, entry
                target = (
                    entry.target
                    if entry.target.startswith("/")
                    else _join(self._parent(current), entry.target)
                )
                current = normalize(posixpath.normpath(target))
        raise OSError(errno.ELOOP, f"more than {MAX_LINK_HOPS} symbolic links", path)

    def _content(self, path: str) -> tuple[str, Entry]:
        target, entry = self._follow(path)
        assert entry is not None
        if entry.kind == "dir":
            raise IsADirectoryError(errno.EISDIR, "is a directory", path)
        return target, entry

    def _read(self, entry: Entry, path: str, start: int, end: int) -> bytes:
        start, end = max(start, 0), min(end, entry.size)
        if end <= start:
            return b""
        with _errors(path):
            try:
                return self.client.read(entry, start, end - start)
            except MeshError:
                # The pinned version's blocks may have moved (relocate, a pod leaving): same content,
                # new holders. Only then is a retry right; anything else is the caller's error.
                try:
                    current = self.client.get(entry.id)
                except MeshError:
                    current = entry
                if current.version != entry.version or current.holders == entry.holders:
                    raise
                return self.client.read(current, start, end - start)

    def cat_file(self, path: str, start: int | None = None, end: int | None = None, **kwargs: Any) -> bytes:
        path = self._strip_protocol(path)
        _, entry = self._content(path)
        size = entry.size
        first = 0 if start is None else (size + start if start < 0 else start)
        last = size if end is None else (size + end if end < 0 else end)
        return self._read(entry, path, first, last)

    def _open(
        self,
        path: str,
        mode: str = "rb",
        block_size: int | None = None,
        autocommit: bool = True,
        cache_options: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> MeshFile:
        path = self._strip_protocol(path)
        entry: Entry | None
        if mode == "rb":
            target, entry = self._content(path)
        elif mode in ("wb", "xb", "ab"):
            target, entry = self._writable(path, mode)
        else:
            raise ValueError(f"mode {mode!r} is not supported: use rb, wb, xb or ab")
        return MeshFile(
            self,
            path,
            mode,
            block_size,
            autocommit,
            cache_options=cache_options,
            entry=entry,
            target=target,
            **kwargs,
        )

    # -- writing -----------------------------------------------------------------------------------
    def _block_size(self) -> int:
        with _errors("/"):
            return self.client.block_size

    def _writable(self, path: str, mode: str) -> tuple[str, Entry | None]:
        """Where a write of ``path`` lands and the file it replaces; the errors ``open`` would raise, up front.

        Checked at open so a large upload does not fail only at its commit.
        """
        if path == "/":
            raise IsADirectoryError(errno.EISDIR, "the network's root is a directory", path)
        target, entry = self._follow(path, missing_ok=True)
        if entry is not None:
            if entry.kind == "dir":
                raise IsADirectoryError(errno.EISDIR, "is a directory", path)
            if mode == "xb":
                raise FileExistsError(errno.EEXIST, "already exists", path)
            return target, entry
        parent = self._parent(target)
        if self.auto_mkdir:
            self.makedirs(parent, exist_ok=True)
        with _errors(parent):
            folder = self.client.stat(parent)
        if folder.kind != "dir":
            raise NotADirectoryError(errno.ENOTDIR, "is not a directory", parent)
        return target, None

    def _store(self, data: bytes | bytearray | memoryview, path: str) -> Block:
        with _errors(path):
            return self.client.store_block(data)

    def _commit(self, path: str, blocks: list[Block], *, exclusive: bool = False) -> Entry:
        try:
            with _errors(path):
                entry = self.client.create_file(path, exclusive=exclusive)
                committed = self.client.commit(entry, blocks)
        except FileExistsError:
            # The pod says EEXIST for a directory of that name too: tell the two apart.
            if not exclusive and self.info(path, refresh=True)["type"] == "directory":
                raise IsADirectoryError(errno.EISDIR, "is a directory", path) from None
            raise
        finally:
            self.invalidate_cache(path)
        return committed

    def pipe_file(self, path: str, value: bytes, mode: str = "overwrite", **kwargs: Any) -> None:
        path = self._strip_protocol(path)
        target, _ = self._writable(path, "xb" if mode == "create" else "wb")
        size = self._block_size()
        with memoryview(value) as view:
            blocks = [self._store(view[start : start + size], path) for start in range(0, len(view), size)]
        self._commit(target, blocks, exclusive=mode == "create")

    def put_file(
        self, lpath: Any, rpath: str, callback: Any = DEFAULT_CALLBACK, mode: str = "overwrite", **kwargs: Any
    ) -> None:
        # The client keeps the local mode and mtime and hands blocks to a local pod without a socket copy.
        if isfilelike(lpath):
            super().put_file(lpath, rpath, callback=callback, mode=mode, **kwargs)
            return
        rpath = self._strip_protocol(rpath)
        local = Path(lpath)
        if local.is_dir():
            self.makedirs(rpath, exist_ok=True)
            return
        target, _ = self._writable(rpath, "xb" if mode == "create" else "wb")
        callback.set_size(local.stat().st_size)
        try:
            with _errors(rpath):
                self.client.put_file(local, target, progress=callback.relative_update)
        finally:
            self.invalidate_cache(target)

    def get_file(
        self, rpath: str, lpath: Any, callback: Any = DEFAULT_CALLBACK, outfile: Any = None, **kwargs: Any
    ) -> None:
        if outfile is not None or isfilelike(lpath):
            super().get_file(rpath, lpath, callback=callback, outfile=outfile, **kwargs)
            return
        rpath = self._strip_protocol(rpath)
        if self.isdir(rpath):
            os.makedirs(lpath, exist_ok=True)
            return
        target, entry = self._content(rpath)
        callback.set_size(entry.size)
        local = Path(lpath)
        local.parent.mkdir(parents=True, exist_ok=True)
        with _errors(rpath):
            self.client.get_file(target, local, progress=callback.relative_update)

    def cp_file(self, path1: str, path2: str, **kwargs: Any) -> None:
        source, destination = self._strip_protocol(path1), self._strip_protocol(path2)
        if self.isdir(source):
            self.makedirs(destination, exist_ok=True)
            return
        _, entry = self._content(source)
        target, _ = self._writable(destination, "wb")
        blocks: list[Block] = []
        with _errors(source):
            for digest, length in entry.blocks:
                if digest == HOLE:
                    blocks.append((digest, length))
                else:
                    # Storing the same bytes again writes nothing new (blocks are named by their hash), and
                    # it makes the block local, which the commit needs whichever pod held the source.
                    blocks.append(self.client.store_block(self.client.read_block(entry, digest, 0, length)))
        self._commit(target, blocks)

    # -- the namespace -----------------------------------------------------------------------------
    def mkdir(self, path: str, create_parents: bool = True, **kwargs: Any) -> None:
        path = self._strip_protocol(path)
        if path == "/":
            raise FileExistsError(errno.EEXIST, "the network's root exists", path)
        try:
            with _errors(path):
                self.client.mkdir(path, mode=int(kwargs.get("mode", 0o755)), parents=create_parents)
        finally:
            self.invalidate_cache(path)

    def makedirs(self, path: str, exist_ok: bool = False) -> None:
        path = self._strip_protocol(path)
        if path == "/":
            if exist_ok:
                return
            raise FileExistsError(errno.EEXIST, "the network's root exists", path)
        try:
            with _errors(path):
                self.client.mkdir(path, parents=True, exist_ok=exist_ok)
        finally:
            self.invalidate_cache(path)

    def rmdir(self, path: str) -> None:
        path = self._strip_protocol(path)
        try:
            with _errors(path):
                self.client.rmdir(path)
        finally:
            self.invalidate_cache(path)

    def rm_file(self, path: str) -> None:
        path = self._strip_protocol(path)
        try:
            with _errors(path):
                self.client.remove(path)
        finally:
            self.invalidate_cache(path)

    _rm = rm_file

    def rm(self, path: str | list[str], recursive: bool = False, maxdepth: int | None = None) -> None:
        if maxdepth is not None:
            # A depth limit can leave directories with contents: those fail with ENOTEMPTY, as rmdir would.
            for found in reversed(self.expand_path(path, recursive=recursive, maxdepth=maxdepth)):
                if self.isdir(found):
                    self.rmdir(found)
                else:
                    self.rm_file(found)
            return
        for found in self.expand_path(path):
            try:
                with _errors(found):
                    self.client.remove(found, recursive=recursive)
            finally:
                self.invalidate_cache(found)

    def mv(
        self,
        path1: str | list[str],
        path2: str,
        recursive: bool = False,
        maxdepth: int | None = None,
        **kwargs: Any,
    ) -> None:
        """A rename on the pod: nothing is copied, and a directory moves whole whatever ``recursive`` says.

        Like ``mv``, a source moves into ``path2`` when that is an existing directory.
        """
        destination = self._strip_protocol(path2)
        if isinstance(path1, list) or has_magic(str(path1)):
            for source in self.expand_path(path1):
                self._rename(source, _join(destination, posixpath.basename(source)))
        else:
            self._rename(self._strip_protocol(path1), destination)

    def _rename(self, source: str, destination: str) -> None:
        if source == destination:
            return
        with _errors(source):
            entry = self.client.stat(source)
            try:
                existing: Entry | None = self.client.stat(destination)
            except MeshError as exc:
                if exc.code != "ENOENT":
                    raise
                existing = None
            if existing is not None and existing.kind == "dir" and existing.id != entry.id:
                destination = _join(destination, entry.name)
                if destination == source:
                    return
            folder = self.client.stat(self._parent(destination))
            # The op itself, not MeshClient.rename: that one would step into a directory found at the
            # final name again, where rename(2) semantics (EISDIR) are what a caller expects.
            try:
                self.client.call(
                    "rename",
                    entry=entry.id,
                    parent=folder.id,
                    name=posixpath.basename(destination),
                    replace=True,
                )
            finally:
                self.invalidate_cache(source)
                self.invalidate_cache(destination)


class MeshFile(AbstractBufferedFile):  # type: ignore[misc]
    """A file of the network open for reading (one version, fetched by ranges) or writing (block by block)."""

    fs: MeshFileSystem

    def __init__(
        self,
        fs: MeshFileSystem,
        path: str,
        mode: str = "rb",
        block_size: int | None = None,
        autocommit: bool = True,
        cache_type: str = "blockcache",
        cache_options: dict[str, Any] | None = None,
        *,
        entry: Entry | None = None,
        target: str | None = None,
        **kwargs: Any,
    ) -> None:
        kwargs.pop("size", None)  # the size is the pinned version's, whatever the caller guessed
        self.entry = entry
        self.target = target or path
        self._blocks: list[Block] = []
        self._pending = bytearray()
        self._discarded = False
        if mode == "rb":
            assert entry is not None
            if block_size is None:
                # Cache blocks aligned with the file's own: one miss, one block fetched by the pod.
                block_size = entry.blocks[0][1] if len(entry.blocks) > 1 else max(fs._block_size(), 1)
            if cache_type == "blockcache" and cache_options is None:
                cache_options = {"maxblocks": READ_CACHE_BLOCKS}
            self._details = fs._info(path, entry)
            super().__init__(
                fs, path, mode, block_size, autocommit, cache_type, cache_options, size=entry.size, **kwargs
            )
            return
        self.network_block = fs._block_size()
        super().__init__(
            fs, path, mode, block_size or self.network_block, autocommit, cache_type, cache_options, **kwargs
        )
        if mode == "ab" and entry is not None:
            blocks = list(entry.blocks)
            if blocks and blocks[-1][1] < self.network_block:
                # A short last block is read back and continued, so every block but the last stays full.
                _, length = blocks.pop()
                self._pending += fs._read(entry, self.target, entry.size - length, entry.size)
            self._blocks = blocks
            self.loc = entry.size

    def _fetch_range(self, start: int, end: int) -> bytes:
        assert self.entry is not None
        return self.fs._read(self.entry, self.path, start, end)

    def _initiate_upload(self) -> None:
        # Nothing is created before the commit: a reader sees the old version or the whole new one.
        # The destination was checked at open, so there is nothing left to check before the first block.
        return None

    def _upload_chunk(self, final: bool = False) -> bool:
        try:
            self._pending += self.buffer.getbuffer()
            size = self.network_block
            # Whole network blocks go now; the rest waits for the next chunk, so only the last is short.
            whole = len(self._pending) if final else len(self._pending) // size * size
            if whole:
                with memoryview(self._pending) as view:
                    for start in range(0, whole, size):
                        with view[start : min(start + size, whole)] as piece:
                            self._blocks.append(self.fs._store(piece, self.path))
                del self._pending[:whole]
            if final and self.autocommit:
                self.commit()
        except BaseException:
            # fsspec keeps the buffer after a failed chunk, and a later close would upload it a second
            # time after the blocks already stored: give up on this version instead.
            self.discard()
            self.forced = True
            raise
        return True

    def commit(self) -> None:
        if self._discarded:
            return
        self.entry = self.fs._commit(self.target, self._blocks, exclusive=self.mode == "xb")

    def discard(self) -> None:
        # Stored blocks no version refers to are collected by the pods' GC after gc_grace.
        self._discarded = True
        self._blocks = []
        self._pending.clear()

    def __exit__(self, exc_type: object, *rest: object) -> None:
        if exc_type is not None and self.writable():
            # A write cut short by an exception must not replace the file with a truncated version.
            self.discard()
            self.forced = True
        self.close()
