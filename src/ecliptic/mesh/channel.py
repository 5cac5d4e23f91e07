"""One authenticated connection to a pod, with requests multiplexed by id (asyncio).

Used by pods to talk to each other and by asynchronous clients (the FUSE mount). The handshake:
the server speaks first with a challenge; the dialer answers with its role, a signature over the
challenge (pods), and an HMAC of it under the network secret (pods, and clients that are not on
loopback); the server's reply carries its own signature over the dialer's nonce.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import secrets
import ssl
from collections.abc import Awaitable, Callable
from typing import Any

from ecliptic.mesh.identity import Identity, JoinToken, verify
from ecliptic.mesh.wire import PROTOCOL, Header, MeshError, ProtocolError, encode, raise_for_reply, read_frame

EventHandler = Callable[[Header], Awaitable[None] | None]


def hello_frame(
    server_hello: Header, *, role: str, identity: Identity | None, token: JoinToken | None, **extra: Any
) -> tuple[Header, bytes]:
    """The dialer's answer to a server's challenge; returns it and the nonce the server must sign."""
    if server_hello.get("protocol") != PROTOCOL:
        raise ProtocolError(f"the pod speaks protocol {server_hello.get('protocol')}, this client {PROTOCOL}")
    challenge = bytes(server_hello["challenge"])
    nonce = secrets.token_bytes(16)
    frame: Header = {"op": "hello", "id": 0, "role": role, "nonce": nonce, **extra}
    if identity is not None:
        frame["node"] = identity.node_id
        frame["public_key"] = identity.public_key
        frame["signature"] = identity.sign(b"ecliptic-mesh-hello\0" + challenge)
    if token is not None:
        frame["proof"] = token.prove(challenge)
    return frame, nonce


def check_server(reply: Header, nonce: bytes, expected_node: str | None) -> None:
    raise_for_reply(reply)
    info = reply.get("r") or {}
    if expected_node is not None and info.get("node") != expected_node:
        raise MeshError("EACCES", f"dialled pod {expected_node} but {info.get('node')} answered")
    public_key = bytes(info.get("public_key", b""))
    if not verify(public_key, bytes(info.get("signature", b"")), b"ecliptic-mesh-hello\0" + nonce):
        raise MeshError("EACCES", "the pod could not prove its identity")


class Channel:
    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, info: dict[str, Any]
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.info = info
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future[tuple[Header, bytes]]] = {}
        self._write_lock = asyncio.Lock()
        self._on_event: EventHandler | None = None
        self._reader_task = asyncio.create_task(self._read_loop())
        self.closed = asyncio.Event()

    @classmethod
    async def connect(
        cls,
        host: str,
        port: int,
        *,
        role: str,
        identity: Identity | None = None,
        token: JoinToken | None = None,
        expected_node: str | None = None,
        ssl_context: ssl.SSLContext | None = None,
        timeout: float = 10.0,
        **extra: Any,
    ) -> Channel:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(host, port, ssl=ssl_context, limit=2**20), timeout
        )
        try:
            server_hello, _ = await asyncio.wait_for(read_frame(reader), timeout)
            frame, nonce = hello_frame(server_hello, role=role, identity=identity, token=token, **extra)
            writer.writelines(encode(frame))
            await writer.drain()
            reply, _ = await asyncio.wait_for(read_frame(reader), timeout)
            check_server(reply, nonce, expected_node)
        except BaseException:
            writer.close()
            raise
        return cls(reader, writer, dict(reply.get("r") or {}))

    def on_event(self, handler: EventHandler) -> None:
        self._on_event = handler

    async def _read_loop(self) -> None:
        try:
            while True:
                header, body = await read_frame(self.reader)
                if "ev" in header:
                    if self._on_event is not None:
                        result = self._on_event(header)
                        if result is not None:
                            await result
                    continue
                future = self._waiting.pop(int(header.get("id", -1)), None)
                if future is not None and not future.done():
                    future.set_result((header, body))
        except (asyncio.IncompleteReadError, ConnectionError, ProtocolError, OSError):
            pass
        finally:
            self.closed.set()
            for future in self._waiting.values():
                if not future.done():
                    future.set_exception(ConnectionError("connection to the pod lost"))
            self._waiting.clear()

    async def call(
        self,
        op: str,
        body: bytes | bytearray | memoryview = b"",
        *,
        timeout: float | None = 60.0,
        **args: Any,
    ) -> tuple[Any, bytes]:
        if self.closed.is_set():
            raise ConnectionError("connection to the pod lost")
        request_id = next(self._ids)
        future: asyncio.Future[tuple[Header, bytes]] = asyncio.get_running_loop().create_future()
        self._waiting[request_id] = future
        try:
            async with self._write_lock:
                self.writer.writelines(encode({"op": op, "id": request_id, **args}, body))
                await self.writer.drain()
            header, reply_body = await asyncio.wait_for(future, timeout)
        finally:
            self._waiting.pop(request_id, None)
        raise_for_reply(header)
        return header.get("r"), reply_body

    async def close(self) -> None:
        self._reader_task.cancel()
        self.writer.close()
        with contextlib.suppress(Exception):
            await self.writer.wait_closed()
        with contextlib.suppress(BaseException):
            await self._reader_task
