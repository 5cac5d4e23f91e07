"""The codec, tokens, identities and the block store."""

from __future__ import annotations

import os
import socket
import threading
from pathlib import Path

import pytest

from ecliptic.mesh.blocks import BlockCorrupt, BlockStore, hash_bytes
from ecliptic.mesh.identity import Identity, JoinToken, node_id_of, verify
from ecliptic.mesh.manifest import holes, spans
from ecliptic.mesh.wire import ProtocolError, encode, read_frame_sync, split_address


def test_frames_round_trip_over_a_socket() -> None:
    left, right = socket.socketpair()
    body = os.urandom(300_000)
    sender = threading.Thread(
        target=left.sendall, args=(b"".join(encode({"op": "x", "id": 7, "v": [1, "a", b"\0"]}, body)),)
    )
    sender.start()
    header, received = read_frame_sync(right)
    sender.join()
    assert header == {"op": "x", "id": 7, "v": [1, "a", b"\0"]} and received == body
    left.sendall(b"\x00\x00\x00\x02\x00\x00\x00\x00\xc1\xc1")  # 0xc1 is never valid msgpack
    with pytest.raises(ProtocolError):
        read_frame_sync(right)
    left.sendall(b"\xff\xff\xff\xff\x00\x00\x00\x00")
    with pytest.raises(ProtocolError, match="too large"):
        read_frame_sync(right)


def test_identity_persists_and_signs(tmp_path: Path) -> None:
    first = Identity.load_or_create(tmp_path / "id.pem")
    again = Identity.load_or_create(tmp_path / "id.pem")
    assert first.node_id == again.node_id == node_id_of(first.public_key)
    assert (tmp_path / "id.pem").stat().st_mode & 0o777 == 0o600
    signature = first.sign(b"hello")
    assert verify(again.public_key, signature, b"hello")
    assert not verify(again.public_key, signature, b"hullo")


def test_tokens_parse_and_prove() -> None:
    token = JoinToken.new()
    parsed = JoinToken.parse(str(token))
    assert parsed == token
    proof = token.prove(b"challenge")
    assert parsed.check(b"challenge", proof) and not parsed.check(b"other", proof)
    for bad in ("", "ecm1_xyz", f"ecm2_{token.network_id}_abc", f"ecm1_{token.network_id}_abc"):
        with pytest.raises(ValueError, match="join token"):
            JoinToken.parse(bad)


def test_block_store_verifies_and_dedupes(tmp_path: Path) -> None:
    store = BlockStore(tmp_path)
    data = os.urandom(100_000)
    digest = store.put(data)
    assert digest == hash_bytes(data) and store.holds(digest)
    assert store.put(data) == digest and len(list(store.held())) == 1
    assert store.read(digest, 10, 5) == data[10:15]
    with pytest.raises(BlockCorrupt):
        store.put(data, expected="0" * 64)
    assert not list(store.tmp.iterdir())  # nothing half-written left behind


def test_spans_and_holes() -> None:
    blocks = [("a" * 64, 10), ("b" * 64, 10), ("c" * 64, 5)]
    assert list(spans(blocks, 0, 25)) == [(0, 0, 10), (1, 0, 10), (2, 0, 5)]
    assert list(spans(blocks, 8, 4)) == [(0, 8, 2), (1, 0, 2)]
    assert list(spans(blocks, 24, 100)) == [(2, 4, 1)]
    assert list(spans(blocks, 30, 5)) == []
    assert holes(25, 10) == [("", 10), ("", 10), ("", 5)]


def test_addresses() -> None:
    assert split_address("127.0.0.1:7400") == ("127.0.0.1", 7400)
    assert split_address("[::1]:80") == ("::1", 80)
    assert split_address(":9") == ("127.0.0.1", 9)
    for bad in ("localhost", "h:port", "h:70000"):
        with pytest.raises(ValueError):
            split_address(bad)
