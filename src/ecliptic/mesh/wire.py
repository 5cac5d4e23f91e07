"""The pods' framed protocol: one frame is a msgpack header and an optional raw body.

Layout on the wire: ``!II`` (header length, body length), the header, the body. Bodies carry block bytes
(at most one block, so a frame never holds more than ``MAX_BODY``); every other field lives in the header.
Requests carry ``op`` and ``id``; replies carry the same ``id`` and ``ok``; pushed events carry ``ev``.
The codec knows nothing of sockets beyond reading and writing bytes, so a TLS stream slots in unchanged.
"""

from __future__ import annotations

import asyncio
import errno
import socket
import struct
from typing import Any

import msgpack

PREFIX = struct.Struct("!II")
MAX_HEADER = 16 * 1024 * 1024
MAX_BODY = 80 * 1024 * 1024
PROTOCOL = 1

Header = dict[str, Any]


class ProtocolError(Exception):
    """The peer sent something that is not a frame of this protocol."""


class MeshError(Exception):
    """An operation failed on the pod; ``code`` is an errno name such as ``ENOENT``."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    @property
    def errno(self) -> int:
        return int(getattr(errno, self.code, errno.EIO))

    def __str__(self) -> str:
        return f"{self.message} ({self.code})"


def encode(header: Header, body: bytes | bytearray | memoryview = b"") -> list[bytes | memoryview]:
    packed = msgpack.packb(header, use_bin_type=True)
    parts: list[bytes | memoryview] = [PREFIX.pack(len(packed), len(body)), packed]
    if body:
        parts.append(memoryview(body))
    return parts


def _decode_header(raw: bytes) -> Header:
    try:
        header = msgpack.unpackb(raw, raw=False, strict_map_key=False)
    except Exception as exc:
        raise ProtocolError(f"undecodable frame header: {exc}") from exc
    if not isinstance(header, dict):
        raise ProtocolError("a frame header must be a map")
    return header


def _check_lengths(header_len: int, body_len: int) -> None:
    if header_len > MAX_HEADER or body_len > MAX_BODY:
        raise ProtocolError(f"frame too large (header {header_len} B, body {body_len} B)")


async def read_frame(reader: asyncio.StreamReader) -> tuple[Header, bytes]:
    prefix = await reader.readexactly(PREFIX.size)
    header_len, body_len = PREFIX.unpack(prefix)
    _check_lengths(header_len, body_len)
    header = _decode_header(await reader.readexactly(header_len))
    body = await reader.readexactly(body_len) if body_len else b""
    return header, body


def _recv_exactly(sock: socket.socket, n: int) -> bytes:
    buffer = bytearray(n)
    view = memoryview(buffer)
    got = 0
    while got < n:
        count = sock.recv_into(view[got:], n - got)
        if count == 0:
            raise ConnectionError("the pod closed the connection")
        got += count
    return bytes(buffer)


def read_frame_sync(sock: socket.socket) -> tuple[Header, bytes]:
    header_len, body_len = PREFIX.unpack(_recv_exactly(sock, PREFIX.size))
    _check_lengths(header_len, body_len)
    header = _decode_header(_recv_exactly(sock, header_len))
    body = _recv_exactly(sock, body_len) if body_len else b""
    return header, body


def error_reply(request_id: int, code: str, message: str) -> Header:
    return {"id": request_id, "ok": False, "code": code, "msg": message}


def raise_for_reply(header: Header) -> None:
    if not header.get("ok"):
        raise MeshError(str(header.get("code", "EIO")), str(header.get("msg", "the pod reported an error")))


def split_address(address: str, *, default_host: str = "127.0.0.1") -> tuple[str, int]:
    """``HOST:PORT``, ``[v6]:PORT`` or ``:PORT`` → (host, port); a clear error otherwise."""
    text = address.strip()
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port_text = rest.removeprefix(":")
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep:
            raise ValueError(f"{address!r} is not HOST:PORT (for example 127.0.0.1:7400)")
    try:
        port = int(port_text)
    except ValueError:
        raise ValueError(f"{address!r}: the port {port_text!r} is not a number") from None
    if not 0 <= port <= 65535:
        raise ValueError(f"{address!r}: the port must be between 0 and 65535")
    return host or default_host, port
