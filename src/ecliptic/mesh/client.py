"""The mesh's client API: everything the CLI, fsspec and the broker's staging do goes through it.

``MeshClient`` speaks the pods' protocol over one socket (thread-safe, one request at a time). On the pod's
own host it takes the fast path the pod offers: block files are read and written in the pod's state
directory directly, and only metadata crosses the socket. Elsewhere block bytes travel in frames, one block
(or a range of one) per request, so no file is ever held whole in memory.
"""

from __future__ import annotations

import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

from ecliptic.mesh.blocks import HOLE, hash_bytes
from ecliptic.mesh.channel import check_server, hello_frame
from ecliptic.mesh.entries import Entry
from ecliptic.mesh.identity import JoinToken
from ecliptic.mesh.manifest import Block, spans
from ecliptic.mesh.wire import MeshError, encode, raise_for_reply, read_frame_sync, split_address

Progress = Callable[[int], None]
EventCallback = Callable[[dict[str, Any]], None]


def normalize(path: str) -> str:
    parts = [p for p in path.split("/") if p and p != "."]
    return "/" + "/".join(parts)


def parent_and_name(path: str) -> tuple[str, str]:
    clean = normalize(path)
    if clean == "/":
        raise MeshError("EINVAL", "the root has no parent")
    parent, _, name = clean.rpartition("/")
    return parent or "/", name


class MeshClient:
    def __init__(self, address: str, *, token: str | None = None, timeout: float = 60.0) -> None:
        self.address = address
        self.host, self.port = split_address(address)
        self.token = JoinToken.parse(token) if token else None
        self.timeout = timeout
        self._sock: socket.socket | None = None
        self._lock = threading.RLock()
        self._next_id = 1
        self.info: dict[str, Any] = {}
        self.state_dir: Path | None = None

    # -- connection --------------------------------------------------------------------------------
    def connect(self) -> MeshClient:
        with self._lock:
            if self._sock is not None:
                return self
            try:
                sock = socket.create_connection((self.host, self.port), timeout=self.timeout)
            except OSError as exc:
                raise MeshError(
                    "EHOSTUNREACH", f"no pod answers at {self.address} ({exc.strerror or exc})"
                ) from None
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            try:
                server_hello, _ = read_frame_sync(sock)
                frame, nonce = hello_frame(server_hello, role="client", identity=None, token=self.token)
                sock.sendall(b"".join(encode(frame)))
                reply, _ = read_frame_sync(sock)
                check_server(reply, nonce, None)
            except BaseException:
                sock.close()
                raise
            self.info = dict(reply.get("r") or {})
            state = self.info.get("state_dir")
            self.state_dir = Path(state) if state and os.access(Path(state) / "tmp", os.W_OK) else None
            self._sock = sock
            return self

    def close(self) -> None:
        with self._lock:
            if self._sock is not None:
                self._sock.close()
                self._sock = None

    def __enter__(self) -> MeshClient:
        return self.connect()

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def block_size(self) -> int:
        self.connect()
        return int(self.info.get("block_size", 4 * 1024 * 1024))

    def call(
        self,
        op: str,
        body: bytes | bytearray | memoryview = b"",
        *,
        on_event: EventCallback | None = None,
        timeout: float | None = None,
        **args: Any,
    ) -> tuple[Any, bytes]:
        with self._lock:
            self.connect()
            assert self._sock is not None
            request_id = self._next_id
            self._next_id += 1
            self._sock.settimeout(timeout or self.timeout)
            try:
                self._sock.sendall(b"".join(encode({"op": op, "id": request_id, **args}, body)))
                while True:
                    header, reply_body = read_frame_sync(self._sock)
                    if "ev" in header:
                        if on_event is not None:
                            on_event(header)
                        continue
                    if header.get("id") == request_id:
                        break
            except (OSError, ConnectionError) as exc:
                self.close()
                raise MeshError(
                    "EHOSTUNREACH", f"lost the pod at {self.address} during {op}: {exc}"
                ) from None
            raise_for_reply(header)
            return header.get("r"), reply_body

    # -- metadata ----------------------------------------------------------------------------------
    def stat(self, path: str) -> Entry:
        result, _ = self.call("resolve", path=normalize(path))
        return Entry.from_wire(result)

    def exists(self, path: str) -> bool:
        try:
            self.stat(path)
        except MeshError as exc:
            if exc.code in ("ENOENT", "ENOTDIR"):
                return False
            raise
        return True

    def get(self, entry_id: str) -> Entry:
        result, _ = self.call("get", entry=entry_id)
        return Entry.from_wire(result)

    def listdir(self, path: str) -> list[Entry]:
        folder = self.stat(path)
        result, _ = self.call("list", entry=folder.id)
        return [Entry.from_wire(item) for item in result]

    def children(self, entry_id: str) -> list[Entry]:
        result, _ = self.call("list", entry=entry_id)
        return [Entry.from_wire(item) for item in result]

    def walk(self, path: str = "/") -> Iterator[tuple[str, Entry]]:
        """(path, entry) of everything under ``path``, depth first, directories before their contents."""
        top = self.stat(path)
        base = normalize(path)
        yield base, top
        if top.kind != "dir":
            return
        stack = [(base, top.id)]
        while stack:
            prefix, folder = stack.pop()
            for child in self.children(folder):
                child_path = f"{prefix.rstrip('/')}/{child.name}"
                yield child_path, child
                if child.kind == "dir":
                    stack.append((child_path, child.id))

    def mkdir(self, path: str, *, mode: int = 0o755, parents: bool = False, exist_ok: bool = False) -> Entry:
        parent_path, name = parent_and_name(path)
        if parents and not self.exists(parent_path):
            self.mkdir(parent_path, mode=mode, parents=True, exist_ok=True)
        parent = self.stat(parent_path)
        try:
            result, _ = self.call(
                "create", parent=parent.id, name=name, kind="dir", mode=mode, exclusive=not exist_ok
            )
        except MeshError as exc:
            if exc.code == "EEXIST" and exist_ok and self.stat(path).kind == "dir":
                return self.stat(path)
            raise
        return Entry.from_wire(result)

    def create_file(self, path: str, *, mode: int = 0o644, exclusive: bool = False) -> Entry:
        parent_path, name = parent_and_name(path)
        parent = self.stat(parent_path)
        result, _ = self.call(
            "create", parent=parent.id, name=name, kind="file", mode=mode, exclusive=exclusive
        )
        return Entry.from_wire(result)

    def symlink(self, target: str, path: str) -> Entry:
        parent_path, name = parent_and_name(path)
        parent = self.stat(parent_path)
        result, _ = self.call(
            "create", parent=parent.id, name=name, kind="symlink", mode=0o777, target=target
        )
        return Entry.from_wire(result)

    def chmod(self, path: str, mode: int) -> Entry:
        result, _ = self.call("setattr", entry=self.stat(path).id, mode=mode)
        return Entry.from_wire(result)

    def remove(self, path: str, *, recursive: bool = False) -> int:
        """Remove a file, or a directory (its contents too with ``recursive``); entries removed."""
        entry = self.stat(path)
        if entry.kind == "dir" and recursive:
            removed = 0
            for child in self.children(entry.id):
                removed += self.remove(f"{normalize(path).rstrip('/')}/{child.name}", recursive=True)
            self.call("remove", entry=entry.id)
            return removed + 1
        self.call("remove", entry=entry.id, directory=entry.kind == "dir" if recursive else False)
        return 1

    def rmdir(self, path: str) -> None:
        self.call("remove", entry=self.stat(path).id, directory=True)

    def rename(self, source: str, destination: str, *, replace: bool = True) -> Entry:
        """POSIX rename: ``destination`` is the new path itself (see ``move`` for mv's "into a directory")."""
        entry = self.stat(source)
        parent_path, name = parent_and_name(destination)
        parent = self.stat(parent_path)
        result, _ = self.call("rename", entry=entry.id, parent=parent.id, name=name, replace=replace)
        return Entry.from_wire(result)

    def move(self, source: str, destination: str) -> Entry:
        """Like mv: into ``destination`` when it is an existing directory, else to that path."""
        target = normalize(destination)
        try:
            existing: Entry | None = self.stat(target)
        except MeshError as exc:
            if exc.code not in ("ENOENT", "ENOTDIR"):
                raise
            existing = None
        if existing is not None and existing.kind == "dir":
            target = f"{target.rstrip('/')}/{self.stat(source).name}"
        return self.rename(source, target)

    # -- content -----------------------------------------------------------------------------------
    def read_block(
        self, entry: Entry, digest: str, offset: int, length: int, *, ahead: list[str] | None = None
    ) -> bytes:
        """Bytes of one block; ``ahead`` names blocks the pod may start fetching for the next calls."""
        if digest == HOLE:
            return bytes(length)
        extra: dict[str, Any] = {"ahead": ahead} if ahead else {}
        if self.state_dir is not None:
            for _ in range(3):
                path, _ = self.call("block_path", hash=digest, holders=list(entry.holders), **extra)
                try:
                    with open(path, "rb") as handle:
                        handle.seek(offset)
                        return handle.read(length)
                except FileNotFoundError:
                    continue  # trimmed from the cache between the answer and the open
        _, data = self.call(
            "read_block", hash=digest, holders=list(entry.holders), offset=offset, length=length, **extra
        )
        return data

    def read(self, entry: Entry, offset: int = 0, size: int = -1) -> bytes:
        if size < 0:
            size = max(entry.size - offset, 0)
        parts = [
            self.read_block(entry, entry.blocks[index][0], inside, count)
            for index, inside, count in spans(entry.blocks, offset, size)
        ]
        return b"".join(parts)

    def iter_content(self, entry: Entry, *, progress: Progress | None = None) -> Iterator[bytes]:
        hashes = [digest for digest, _ in entry.blocks]
        for index, (digest, length) in enumerate(entry.blocks):
            data = self.read_block(entry, digest, 0, length, ahead=hashes[index + 1 : index + 5])
            if progress is not None:
                progress(len(data))
            yield data

    def read_bytes(self, path: str) -> bytes:
        return b"".join(self.iter_content(self.stat(path)))

    def store_block(self, data: bytes | bytearray | memoryview) -> Block:
        digest = hash_bytes(data)
        if self.state_dir is not None:
            temp = self.state_dir / "tmp" / f"{uuid.uuid4().hex}.part"
            with open(temp, "wb") as handle:
                handle.write(data)
            self.call("adopt_block", hash=digest, file=temp.name)
        else:
            self.call("put_block", data, hash=digest)
        return digest, len(data)

    def store_stream(
        self, stream: BinaryIO | Iterable[bytes], *, progress: Progress | None = None
    ) -> list[Block]:
        block_size = self.block_size
        blocks: list[Block] = []
        pending = bytearray()

        def flush(data: bytes | bytearray) -> None:
            blocks.append(self.store_block(data))
            if progress is not None:
                progress(len(data))

        chunks: Iterable[bytes]
        if isinstance(stream, Iterable) and not hasattr(stream, "read"):
            chunks = stream
        else:
            reader: BinaryIO = stream  # type: ignore[assignment]
            chunks = iter(lambda: reader.read(block_size), b"")
        for chunk in chunks:
            if not pending and len(chunk) == block_size:
                flush(chunk)
                continue
            pending += chunk
            while len(pending) >= block_size:
                flush(bytes(pending[:block_size]))
                del pending[:block_size]
        if pending:
            flush(pending)
        return blocks

    def commit(self, entry: Entry, blocks: list[Block], *, mtime_ns: int | None = None) -> Entry:
        args: dict[str, Any] = {"entry": entry.id, "blocks": [list(b) for b in blocks]}
        if mtime_ns is not None:
            args["mtime_ns"] = mtime_ns
        result, _ = self.call("commit", timeout=max(self.timeout, 600.0), **args)
        return Entry.from_wire(result)

    def write_stream(
        self,
        path: str,
        stream: BinaryIO | Iterable[bytes],
        *,
        mode: int = 0o644,
        mtime_ns: int | None = None,
        progress: Progress | None = None,
    ) -> Entry:
        parent_path, name = parent_and_name(path)
        parent = self.stat(parent_path)
        if parent.kind != "dir":
            raise MeshError("ENOTDIR", f"{parent_path} is not a directory")
        blocks = self.store_stream(stream, progress=progress)
        try:
            existing: Entry | None = self.stat(path)
        except MeshError as exc:
            if exc.code != "ENOENT":
                raise
            existing = None
        if existing is not None:
            if existing.kind != "file":
                raise MeshError(
                    "EISDIR" if existing.kind == "dir" else "EEXIST",
                    f"{normalize(path)} is a {existing.kind}",
                )
            return self.commit(existing, blocks, mtime_ns=mtime_ns)
        # A new file is created with its content in one version, so no pod ever lists it empty.
        args: dict[str, Any] = {
            "parent": parent.id,
            "name": name,
            "kind": "file",
            "mode": mode,
            "blocks": [list(b) for b in blocks],
        }
        if mtime_ns is not None:
            args["mtime_ns"] = mtime_ns
        try:
            result, _ = self.call("create", **args)
        except MeshError as exc:
            if exc.code != "EEXIST":
                raise
            return self.commit(self.stat(path), blocks, mtime_ns=mtime_ns)  # created meanwhile: a new version
        return Entry.from_wire(result)

    def write_bytes(self, path: str, data: bytes, *, mode: int = 0o644) -> Entry:
        return self.write_stream(path, [data], mode=mode)

    def put_file(self, local: Path, remote: str, *, progress: Progress | None = None) -> Entry:
        info = local.stat()
        with local.open("rb") as handle:
            return self.write_stream(
                remote, handle, mode=info.st_mode & 0o7777, mtime_ns=info.st_mtime_ns, progress=progress
            )

    def get_file(self, remote: str, local: Path, *, progress: Progress | None = None) -> Entry:
        entry = self.stat(remote)
        if entry.kind != "file":
            raise MeshError("EISDIR", f"{normalize(remote)} is not a file")
        temp = local.with_name(f".{local.name}.{uuid.uuid4().hex[:8]}.part")
        try:
            with temp.open("wb") as handle:
                for data in self.iter_content(entry, progress=progress):
                    handle.write(data)
            os.chmod(temp, entry.mode & 0o7777)
            os.utime(temp, ns=(time.time_ns(), entry.mtime_ns))
            os.replace(temp, local)
        finally:
            temp.unlink(missing_ok=True)
        return entry

    # -- the network -------------------------------------------------------------------------------
    def pod_info(self) -> dict[str, Any]:
        result, _ = self.call("info")
        return dict(result)

    def pods(self) -> list[dict[str, Any]]:
        result, _ = self.call("pods")
        return list(result)

    def join_token(self) -> str:
        result, _ = self.call("token")
        return str(result)

    def leave(self, *, on_event: EventCallback | None = None, timeout: float = 3600.0) -> dict[str, Any]:
        result, _ = self.call("leave", on_event=on_event, timeout=timeout)
        return dict(result)

    def relocate(self, paths: list[str], to: str | None) -> dict[str, Any]:
        ids = []
        for path in paths:
            for _, entry in self.walk(path):
                if entry.kind == "file":
                    ids.append(entry.id)
        result, _ = self.call("relocate", ids=ids, to=to, timeout=3600.0)
        return dict(result)

    def network_config(self) -> str:
        result, _ = self.call("config_get")
        return str(result["network"])

    def set_network_config(self, text: str) -> None:
        self.call("config_set", text=text)

    def collect_garbage(self) -> dict[str, int]:
        result, _ = self.call("gc")
        return dict(result)
