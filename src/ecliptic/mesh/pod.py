"""The pod daemon: a listener for pods and clients, the metadata replica, the block store, the peers.

A pod's state lives under ``<root>/.ecliptic-mesh/``: ``identity.pem`` (its Ed25519 key), ``meta.sqlite``
(the replica), ``blocks/`` and ``cache/`` (content), ``pod.toml`` (its own settings). The first pod of a
network makes the network id and secret; a joining pod is admitted with the token and pulls the
metadata, never replacing anything it already has: rows merge by version.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import secrets
import shutil
import signal
import socket
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ecliptic.mesh import settings as mesh_settings
from ecliptic.mesh.blocks import HOLE, BlockCorrupt, BlockStore
from ecliptic.mesh.channel import Channel
from ecliptic.mesh.clock import HybridClock
from ecliptic.mesh.diagnostics import check_network, render
from ecliptic.mesh.entries import Entry, PodRecord
from ecliptic.mesh.identity import Identity, JoinToken, node_id_of, verify
from ecliptic.mesh.importer import check_space, import_tree
from ecliptic.mesh.manifest import size_of, unique_hashes
from ecliptic.mesh.meta import MetaStore
from ecliptic.mesh.namespace import Namespace
from ecliptic.mesh.peers import PeerLink
from ecliptic.mesh.placement import rank
from ecliptic.mesh.wire import (
    PROTOCOL,
    Header,
    MeshError,
    ProtocolError,
    encode,
    error_reply,
    read_frame,
    split_address,
)

log = logging.getLogger("ecliptic.mesh.pod")

STATE_DIR = ".ecliptic-mesh"


def state_dir(root: Path) -> Path:
    return root / STATE_DIR


@dataclass
class PodOptions:
    root: Path
    listen: str = "127.0.0.1:7400"
    advertise: str | None = None
    name: str | None = None
    join: str | None = None
    token: str | None = None
    conflict: str = "network"
    sync_interval: float = 1.0


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.split("%")[0]).is_loopback
    except ValueError:
        return False


class Session:
    """One accepted connection, server side."""

    def __init__(self, writer: asyncio.StreamWriter, peer_host: str) -> None:
        self.writer = writer
        self.peer_host = peer_host
        self.loopback = _is_loopback(peer_host)
        self.role = ""
        self.node = ""
        self.events = False
        self.lock = asyncio.Lock()

    async def send(self, header: Header, body: bytes | bytearray | memoryview = b"") -> None:
        async with self.lock:
            self.writer.writelines(encode(header, body))
            await self.writer.drain()


class Pod:
    READ_AHEAD = 4
    """Blocks fetched ahead of a sequential reader: enough to keep a loopback or LAN link busy."""

    def __init__(self, options: PodOptions) -> None:
        self.options = options
        self.root = options.root.resolve()
        self.state = state_dir(self.root)
        self.state.mkdir(parents=True, exist_ok=True)
        self.identity = Identity.load_or_create(self.state / "identity.pem")
        self.node_id = self.identity.node_id
        self.meta = MetaStore(self.state / "meta.sqlite", self.node_id)
        self.blocks = BlockStore(self.state)
        self.clock = HybridClock(self.meta.max_hlc())
        self.namespace = Namespace(self.meta, self.clock)
        self.pod_config = self._load_pod_config()
        self.peers: dict[str, PeerLink] = {}
        self.sessions: set[Session] = set()
        self._fetching: dict[str, asyncio.Future[None]] = {}
        self._stop = asyncio.Event()
        self._server: asyncio.base_events.Server | None = None
        self.address = options.advertise or options.listen
        self.stats = {"rows_received": 0, "blocks_fetched": 0, "bytes_fetched": 0, "blocks_served": 0}
        self._tasks: list[asyncio.Task[None]] = []
        self._background: set[asyncio.Task[None]] = set()
        self._prefetch_slots = asyncio.Semaphore(self.READ_AHEAD)
        self.token: JoinToken | None = None
        network = self.meta.get_state("network")
        if network:
            self.token = JoinToken(network, bytes.fromhex(self.meta.get_state("secret") or ""))

    def _load_pod_config(self) -> mesh_settings.PodConfig:
        path = self.state / "pod.toml"
        text = path.read_text() if path.exists() else ""
        return mesh_settings.load_pod_config(text)

    @property
    def network_config(self) -> mesh_settings.NetworkConfig:
        return mesh_settings.load_network_config(self.meta.network_config().text)

    # -- lifecycle ---------------------------------------------------------------------------------
    async def run(self, ready: Callable[[Pod], None] | None = None) -> None:
        record = self.meta.pod(self.node_id)
        if record is not None and record.state == "left":
            raise MeshError(
                "EINVAL",
                f"this pod ({self.node_id}) has left its network; start on a new --root to join again",
            )
        host, port = split_address(self.options.listen)
        self._server = await asyncio.start_server(self._accept, host, port, limit=2**20, reuse_address=True)
        bound = self._server.sockets[0].getsockname()
        if self.options.advertise is None:
            self.address = f"{bound[0]}:{bound[1]}" if ":" not in bound[0] else f"[{bound[0]}]:{bound[1]}"
        try:
            if self.token is None:
                if self.options.join:
                    await self._join()
                else:
                    self._create_network()
            elif self.options.join:
                log.info(
                    "pod %s is already a member of network %s; --join ignored",
                    self.node_id,
                    self.token.network_id,
                )
            self._announce()
            if self.meta.get_state("imported") is None:
                report = await import_tree(
                    self, self.options.conflict, space_checked=self.options.join is not None
                )
                self.meta.set_state("imported", str(time.time()))
                if report.files:
                    log.info("imported %s", report.summary())
            self._refresh_peers()
            self._tasks.append(asyncio.create_task(self._housekeeping(), name="housekeeping"))
            if ready is not None:
                ready(self)
            await self._stop.wait()
        finally:
            await self.shutdown()

    def stop(self) -> None:
        self._stop.set()

    async def shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(BaseException):
                await task
        self._tasks.clear()
        for link in list(self.peers.values()):
            await link.stop()
        self.peers.clear()
        for session in list(self.sessions):
            session.writer.close()
        self.meta.close()

    def _create_network(self) -> None:
        token = JoinToken.new()
        self.meta.set_state("network", token.network_id)
        self.meta.set_state("secret", token.secret.hex())
        self.token = token
        log.info("created network %s", token.network_id)

    async def _join(self) -> None:
        assert self.options.join is not None
        if not self.options.token:
            raise MeshError(
                "EINVAL", "joining needs --token (print one with `ecliptic mesh token --pod ADDRESS`)"
            )
        token = JoinToken.parse(self.options.token)
        check_space(self)
        host, port = split_address(self.options.join)
        channel = await Channel.connect(
            host,
            port,
            role="pod",
            identity=self.identity,
            token=token,
            address=self.address,
            name=self.name,
        )
        try:
            if channel.info.get("network") != token.network_id:
                raise MeshError(
                    "EINVAL",
                    f"{self.options.join} belongs to network {channel.info.get('network')}, not the token's {token.network_id}",
                )
            sponsor = PodRecord(
                node_id=str(channel.info["node"]),
                public_key=bytes(channel.info["public_key"]),
                name=str(channel.info.get("name", "")),
                address=self.options.join,
            )
            self.meta.set_state("network", token.network_id)
            self.meta.set_state("secret", token.secret.hex())
            self.token = token
            vector = self.meta.vector
            while True:
                result, _ = await channel.call("sync", vector=vector(), timeout=120.0)
                self._received(list(result["changes"]))
                if not result.get("more"):
                    break
            if self.meta.pod(sponsor.node_id) is None:
                self.meta.put_pod_local(
                    sponsor.__class__(**{**sponsor.to_wire(), "hlc": 1, "origin": self.node_id})
                )
        finally:
            await channel.close()
        log.info("joined network %s through %s", token.network_id, self.options.join)

    @property
    def name(self) -> str:
        return self.options.name or self.pod_config.name or socket.gethostname()

    def _announce(self, held: int | None = None) -> None:
        """Publish this pod's record (address, space) when it changed."""
        usage = shutil.disk_usage(self.state)
        if held is None:
            held, _ = self.blocks.usage()
        capacity = self.pod_config.max_disk or usage.total
        free = max(min(usage.free - self.pod_config.reserve, capacity - held), 0)
        current = self.meta.pod(self.node_id)
        state = current.state if current is not None else "active"
        if (
            current is not None
            and current.address == self.address
            and current.name == self.name
            and abs(current.free - free) < max(capacity // 100, 1)
        ):
            return
        record = PodRecord(
            node_id=self.node_id,
            public_key=self.identity.public_key,
            name=self.name,
            address=self.address,
            state=state,
            capacity=capacity,
            free=free,
            joined_ns=current.joined_ns if current is not None else time.time_ns(),
            hlc=self.clock.now(),
            origin=self.node_id,
        )
        self.meta.put_pod_local(record)
        self.changed([])

    def _set_state(self, state: str) -> None:
        current = self.meta.pod(self.node_id)
        assert current is not None
        self.meta.put_pod_local(
            PodRecord(
                **{**current.to_wire(), "state": state, "hlc": self.clock.now(), "origin": self.node_id}
            )
        )
        self.changed([])

    def _refresh_peers(self) -> None:
        assert self.token is not None
        for record in self.meta.pods():
            if record.node_id == self.node_id:
                continue
            link = self.peers.get(record.node_id)
            if record.state == "left":
                if link is not None:
                    self.peers.pop(record.node_id)
                    self._spawn(link.stop())
                continue
            if link is None:
                link = PeerLink(
                    record,
                    identity=self.identity,
                    token=self.token,
                    vector=self.meta.vector,
                    apply=self._apply_from,
                    own_address=self.address,
                    interval=self.options.sync_interval,
                    down_after=max(self.network_config.down_after, self.options.sync_interval * 3),
                )
                self.peers[record.node_id] = link
                link.start()
            elif link.record.address != record.address:
                link.record = record
                if link.channel is not None:
                    self._spawn(link.channel.close())

    async def _apply_from(self, link: PeerLink, changes: list[dict[str, Any]]) -> None:
        self._received(changes)

    def _received(self, changes: list[dict[str, Any]]) -> None:
        for change in changes:
            self.clock.observe(int(change.get("hlc", 0)))
            self.clock.observe(int(change.get("loc_hlc", 0)))
        changed = self.meta.apply(changes)
        self.stats["rows_received"] += len(changes)
        if (
            any(change["t"] == "pods" for change in changes)
            and self.token is not None
            and self._server is not None
        ):
            self._refresh_peers()
        if changed:
            self.changed(changed, notify_pods=True)

    def changed(self, entries: list[Entry], *, notify_pods: bool = True) -> None:
        """Tell connected pods to pull, and subscribed clients which entries changed."""
        event: Header = {
            "ev": "changed",
            "ids": [entry.id for entry in entries],
            "parents": sorted({e.parent for e in entries}),
        }
        for session in list(self.sessions):
            if session.events and (notify_pods or session.role != "pod"):
                self._spawn(self._push(session, event))

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        # The loop keeps only weak references to tasks: hold them until they finish.
        task = asyncio.create_task(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _push(self, session: Session, event: Header) -> None:
        with contextlib.suppress(Exception):
            await session.send(event)

    async def _housekeeping(self) -> None:
        last_gc = time.monotonic()
        while True:
            await asyncio.sleep(min(5.0, self.options.sync_interval * 5))
            try:
                held, _ = await asyncio.to_thread(self.blocks.usage)
                self._announce(held)
                if time.monotonic() - last_gc > min(30.0, max(self.network_config.gc_grace / 4, 1.0)):
                    await asyncio.to_thread(self.collect_garbage)
                    last_gc = time.monotonic()
            except Exception:
                log.exception("housekeeping failed")

    def collect_garbage(self) -> dict[str, int]:
        """Drop held blocks no live version placed here references, once older than the grace period."""
        grace = self.network_config.gc_grace
        referenced: set[str] = set()
        for entry in self.meta.entries_held_by(self.node_id):
            referenced.update(unique_hashes(entry.blocks))
        cutoff = time.time() - grace
        dropped = freed = 0
        for digest, size, mtime in self.blocks.held():
            if digest not in referenced and mtime < cutoff:
                self.blocks.drop(digest)
                dropped += 1
                freed += size
        self.blocks.trim_cache(self.pod_config.cache_size)
        self.blocks.clean_tmp(max(grace, 3600))
        return {"dropped": dropped, "freed": freed}

    # -- blocks ------------------------------------------------------------------------------------
    async def obtain(self, digest: str, holders: tuple[str, ...] | list[str], *, hold: bool = False) -> Path:
        """A local path of the block, fetching it from a holder (verified) when it is not here."""
        path = self.blocks.find(digest)
        if path is not None:
            if hold and not self.blocks.holds(digest):
                self.blocks.promote(digest)
                return self.blocks.held_path(digest)
            return path
        pending = self._fetching.get(digest)
        if pending is None:
            pending = asyncio.get_running_loop().create_future()
            self._fetching[digest] = pending
            try:
                await self._fetch(digest, holders, hold=hold)
                pending.set_result(None)
            except BaseException as exc:
                pending.set_exception(exc)
                raise
            finally:
                self._fetching.pop(digest, None)
                if not pending.done():
                    pending.cancel()
                with contextlib.suppress(BaseException):
                    pending.exception()
        else:
            await asyncio.shield(pending)
        if hold:
            self.blocks.promote(digest)
        found = self.blocks.find(digest)
        if found is None:
            raise MeshError("EIO", f"block {digest[:16]}… vanished after it was fetched")
        return found

    async def _fetch(self, digest: str, holders: tuple[str, ...] | list[str], *, hold: bool) -> None:
        candidates = [self.peers[node] for node in holders if node in self.peers]
        if not candidates:
            # A placement we have not heard of yet: ask every peer, holders first.
            candidates = list(self.peers.values())
        candidates.sort(key=lambda link: (not link.up, link.rtt))
        errors = []
        for link in candidates:
            try:
                _, body = await link.call("fetch", hash=digest, timeout=120.0)
            except MeshError as exc:
                errors.append(f"{link.node_id[:8]}: {exc}")
                continue
            except (TimeoutError, ConnectionError, OSError) as exc:
                errors.append(f"{link.node_id[:8]}: {type(exc).__name__}")
                continue
            try:
                await asyncio.to_thread(self.blocks.put, body, expected=digest, cache=not hold)
            except BlockCorrupt as exc:
                log.warning("pod %s sent a corrupt block: %s", link.node_id[:8], exc)
                errors.append(f"{link.node_id[:8]}: corrupt")
                continue
            self.stats["blocks_fetched"] += 1
            self.stats["bytes_fetched"] += len(body)
            return
        raise MeshError(
            "EIO", f"block {digest[:16]}… is on no reachable pod ({'; '.join(errors) or 'no holder known'})"
        )

    async def _read_block(self, digest: str, holders: list[str], offset: int, length: int) -> bytes:
        if digest == HOLE:
            return bytes(length)
        path = await self.obtain(digest, holders)
        return await asyncio.to_thread(_pread, path, offset, length)

    # -- connections -------------------------------------------------------------------------------
    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        session = Session(writer, peer[0] if peer else "")
        try:
            await self._handshake(session, reader)
        except (TimeoutError, ProtocolError, MeshError, asyncio.IncompleteReadError, ConnectionError) as exc:
            log.debug("handshake with %s failed: %s", session.peer_host, exc)
            writer.close()
            return
        self.sessions.add(session)
        tasks: set[asyncio.Task[None]] = set()
        try:
            while True:
                header, body = await read_frame(reader)
                task = asyncio.create_task(self._serve(session, header, body))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
        except (asyncio.IncompleteReadError, ConnectionError, ProtocolError, OSError):
            pass
        finally:
            self.sessions.discard(session)
            writer.close()

    async def _handshake(self, session: Session, reader: asyncio.StreamReader) -> None:
        assert self.token is not None or self.options.join
        challenge = secrets.token_bytes(16)
        network = self.token.network_id if self.token is not None else ""
        await session.send(
            {
                "hello": True,
                "protocol": PROTOCOL,
                "challenge": challenge,
                "node": self.node_id,
                "network": network,
            }
        )
        hello, _ = await asyncio.wait_for(read_frame(reader), 10.0)
        if hello.get("op") != "hello":
            raise ProtocolError("the first frame must be hello")
        role = str(hello.get("role", ""))
        proof = bytes(hello.get("proof", b""))
        admitted = self.token is not None and bool(proof) and self.token.check(challenge, proof)
        try:
            if role == "pod":
                node = str(hello.get("node", ""))
                public_key = bytes(hello.get("public_key", b""))
                if (
                    not verify(
                        public_key, bytes(hello.get("signature", b"")), b"ecliptic-mesh-hello\0" + challenge
                    )
                    or node_id_of(public_key) != node
                ):
                    raise MeshError("EACCES", "the pod's signature does not match its node id")
                if not admitted:
                    raise MeshError("EACCES", "wrong or missing join token for this network")
                record = self.meta.pod(node)
                if record is not None and record.state == "left":
                    raise MeshError("EACCES", f"pod {node} has left this network")
                address = str(hello.get("address", ""))
                if record is None and address:
                    self.meta.put_pod_local(
                        PodRecord(
                            node_id=node,
                            public_key=public_key,
                            name=str(hello.get("name", "")),
                            address=address,
                            joined_ns=time.time_ns(),
                            hlc=self.clock.now(),
                            origin=self.node_id,
                        )
                    )
                    self._refresh_peers()
                    self.changed([])
                session.node = node
                session.events = True
            elif role == "client":
                if not (session.loopback or admitted):
                    raise MeshError(
                        "EACCES",
                        "clients that are not on this host need the network's token (--token or ECLIPTIC_MESH_TOKEN)",
                    )
            else:
                raise MeshError("EINVAL", f"unknown role {role!r}")
        except MeshError as exc:
            await session.send(error_reply(0, exc.code, exc.message))
            raise
        session.role = role
        info: dict[str, Any] = {
            "node": self.node_id,
            "name": self.name,
            "public_key": self.identity.public_key,
            "signature": self.identity.sign(b"ecliptic-mesh-hello\0" + bytes(hello.get("nonce", b""))),
            "network": network,
            "block_size": self.network_config.block_size,
            "attr_timeout": self.network_config.attr_timeout,
        }
        if role == "client" and session.loopback:
            info["state_dir"] = str(self.state)
        await session.send({"id": 0, "ok": True, "r": info})

    async def _serve(self, session: Session, header: Header, body: bytes) -> None:
        request_id = int(header.get("id", 0))
        op = str(header.get("op", ""))
        handler = getattr(self, f"op_{op}", None)
        allowed = POD_OPS if session.role == "pod" else CLIENT_OPS
        try:
            if handler is None or op not in allowed:
                raise MeshError("ENOSYS", f"unknown operation {op!r}")
            result, reply_body = await handler(session, header, body)
            await session.send({"id": request_id, "ok": True, "r": result}, reply_body)
        except MeshError as exc:
            await session.send(error_reply(request_id, exc.code, exc.message))
        except (KeyError, TypeError, ValueError) as exc:
            await session.send(
                error_reply(request_id, "EINVAL", f"{op}: bad request ({type(exc).__name__}: {exc})")
            )
        except ConnectionError:
            pass
        except Exception as exc:
            log.exception("%s failed", op)
            with contextlib.suppress(Exception):
                await session.send(
                    error_reply(request_id, "EIO", f"{op} failed on pod {self.node_id[:8]}: {exc}")
                )

    # -- operations: pods --------------------------------------------------------------------------
    async def op_sync(self, session: Session, header: Header, body: bytes) -> tuple[Any, bytes]:
        changes, more = self.meta.changes_since(dict(header.get("vector") or {}))
        return {"changes": changes, "more": more}, b""

    async def op_fetch(self, session: Session, header: Header, body: bytes) -> tuple[Any, bytes]:
        digest = str(header["hash"])
        path = self.blocks.find(digest)
        if path is None:
            raise MeshError("ENOENT", f"block {digest[:16]}… is not on pod {self.node_id[:8]}")
        self.stats["blocks_served"] += 1
        return None, await asyncio.to_thread(path.read_bytes)

    async def op_replicate(self, session: Session, header: Header, body: bytes) -> tuple[Any, bytes]:
        return await self.take_over([str(i) for i in header["ids"]], str(header.get("source", ""))), b""

    async def take_over(self, ids: list[str], source: str) -> dict[str, Any]:
        """Take the blocks of the given entries from ``source`` and record this pod as their holder."""
        done: list[str] = []
        skipped: list[str] = []
        for entry_id in ids:
            entry = self.meta.entry(str(entry_id))
            if entry is None or entry.deleted:
                skipped.append(entry_id)
                continue
            for digest in unique_hashes(entry.blocks):
                path = await self.obtain(digest, [source, *entry.holders], hold=True)
                await asyncio.to_thread(_fsync, path)
            placed = self.namespace.place(entry, [self.node_id])
            (done if placed is not None else skipped).append(entry_id)
        if done:
            self.changed([])
        return {"done": done, "skipped": skipped, "seq": self.meta.vector().get(self.node_id, 0)}

    # -- operations: clients -----------------------------------------------------------------------
    async def op_info(self, session: Session, header: Header, body: bytes) -> tuple[Any, bytes]:
        usage = await asyncio.to_thread(self.blocks.usage)
        return self.info(usage), b""

    def info(self, usage: tuple[int, int]) -> dict[str, Any]:
        held, cached = usage
        return {
            "node": self.node_id,
            "name": self.name,
            "address": self.address,
            "network": self.token.network_id if self.token else "",
            "block_size": self.network_config.block_size,
            "held_bytes": held,
            "cached_bytes": cached,
            "counts": self.meta.counts(),
            "vector": self.meta.vector(),
            "stats": dict(self.stats),
            "peers": {
                node: {"up": link.up, "rtt_ms": round(link.rtt * 1000, 2), "error": link.last_error}
                for node, link in self.peers.items()
            },
        }

    async def op_subscribe(self, session: Session, header: Header, body: bytes) -> tuple[Any, bytes]:
        session.events = True
        return None, b""

    async def op_resolve(self, session: Session, header: Header, body: bytes) -> tuple[Any, bytes]:
        return self.meta.resolve(str(header["path"])).to_wire(), b""

    async def op_get(self, session: Session, header: Header, body: bytes) -> tuple[Any, bytes]:
        return self.meta.live(str(header["entry"])).to_wire(), b""

    async def op_lookup(self, session: Session, header: Header, body: bytes) -> tuple[Any, bytes]:
        parent = self.meta.live(str(header["parent"]))
        found = self.meta.child(parent.id, str(header["name"]))
        if found is None:
            raise MeshError(
                "ENOENT",
                f"{self.meta.path_of(parent).rstrip('/')}/{header['name']}: no such file or directory",
            )
        return found.to_wire(), b""

    async def op_list(self, session: Session, header: Header, body: bytes) -> tuple[Any, bytes]:
        folder = self.meta.live(str(header["entry"]))
        if folder.kind != "dir":
            return [folder.to_wire()], b""
        return [child.to_wire() for child in self.meta.children(folder.id)], b""

    async def op_path(self, session: Session, header: Header, body: bytes) -> tuple[Any, bytes]:
        return self.meta.path_of(self.meta.live(str(header["entry"]))), b""

    async def op_create(self, session: Session, header: Header, body: bytes) -> tuple[Any, bytes]:
        blocks = [(str(h), int(n)) for h, n in header.get("blocks", ())]
        for digest in unique_hashes(blocks):
            if not self.blocks.holds(digest) and not self.blocks.promote(digest):
                raise MeshError(
                    "EINVAL", f"block {digest[:16]}… was not uploaded to this pod before the create"
                )
        entry = self.namespace.create(
            str(header["parent"]),
            str(header["name"]),
            header.get("kind", "file"),
            mode=int(header.get("mode", 0o644)),
            uid=int(header.get("uid", 0)),
            gid=int(header.get("gid", 0)),
            target=str(header.get("target", "")),
            exclusive=bool(header.get("exclusive", True)),
            mtime_ns=header.get("mtime_ns"),
            blocks=blocks,
        )
        self.changed([entry])
        return entry.to_wire(), b""

    async def op_setattr(self, session: Session, header: Header, body: bytes) -> tuple[Any, bytes]:
        entry = self.namespace.setattr(
            str(header["entry"]),
            mode=header.get("mode"),
            uid=header.get("uid"),
            gid=header.get("gid"),
            mtime_ns=header.get("mtime_ns"),
        )
        self.changed([entry])
        return entry.to_wire(), b""

    async def op_remove(self, session: Session, header: Header, body: bytes) -> tuple[Any, bytes]:
        entry = self.namespace.remove(str(header["entry"]), directory=header.get("directory"))
        self.changed([entry])
        return entry.to_wire(), b""

    async def op_rename(self, session: Session, header: Header, body: bytes) -> tuple[Any, bytes]:
        written = self.namespace.rename(
            str(header["entry"]),
            str(header["parent"]),
            str(header["name"]),
            replace=bool(header.get("replace", True)),
        )
        self.changed(written)
        return written[0].to_wire(), b""

    async def op_put_block(self, session: Session, header: Header, body: bytes) -> tuple[Any, bytes]:
        try:
            digest = await asyncio.to_thread(self.blocks.put, body, expected=header.get("hash"))
        except BlockCorrupt as exc:
            raise MeshError("EIO", str(exc)) from None
        return digest, b""

    async def op_adopt_block(self, session: Session, header: Header, body: bytes) -> tuple[Any, bytes]:
        """A client on this host wrote the block into ``tmp/`` itself (no copy through the socket)."""
        if not session.loopback:
            raise MeshError("EACCES", "only clients on this host can hand over block files")
        name = Path(str(header["file"])).name
        temp = self.blocks.tmp / name
        if not temp.exists():
            raise MeshError("ENOENT", f"no uploaded file {name} in the pod's tmp/")
        try:
            await asyncio.to_thread(
                self.blocks.adopt, temp, str(header["hash"]), verify=bool(header.get("verify", False))
            )
        except BlockCorrupt as exc:
            raise MeshError("EIO", str(exc)) from None
        return None, b""

    async def op_missing(self, session: Session, header: Header, body: bytes) -> tuple[Any, bytes]:
        return [
            digest for digest in header["hashes"] if digest != HOLE and self.blocks.find(digest) is None
        ], b""

    def _read_ahead(self, header: Header) -> None:
        """Start fetching the blocks a sequential reader will ask for next (``ahead``), a few at a time."""
        holders = [str(h) for h in header.get("holders", ())]
        for digest in header.get("ahead", ())[: self.READ_AHEAD]:
            digest = str(digest)
            if digest != HOLE and digest not in self._fetching and self.blocks.find(digest) is None:
                self._spawn(self._prefetch(digest, holders))

    async def _prefetch(self, digest: str, holders: list[str]) -> None:
        async with self._prefetch_slots:
            with contextlib.suppress(Exception):
                await self.obtain(digest, holders)

    async def op_read_block(self, session: Session, header: Header, body: bytes) -> tuple[Any, bytes]:
        self._read_ahead(header)
        data = await self._read_block(
            str(header["hash"]),
            list(header.get("holders", ())),
            int(header.get("offset", 0)),
            int(header.get("length", -1)),
        )
        return None, data

    async def op_block_path(self, session: Session, header: Header, body: bytes) -> tuple[Any, bytes]:
        """Fast path for clients on this host: make the block local and say where its file is."""
        if not session.loopback:
            raise MeshError("EACCES", "block paths are only given to clients on this host")
        self._read_ahead(header)
        path = await self.obtain(str(header["hash"]), list(header.get("holders", ())))
        return str(path), b""

    async def op_commit(self, session: Session, header: Header, body: bytes) -> tuple[Any, bytes]:
        entry = self.meta.live(str(header["entry"]))
        blocks = [(str(h), int(n)) for h, n in header["blocks"]]
        if "size" in header and int(header["size"]) != size_of(blocks):
            raise MeshError(
                "EINVAL", f"size {header['size']} does not match the blocks' {size_of(blocks)} bytes"
            )
        # Blocks reused from the previous version may live on its holders: take them here first, so this
        # pod can honestly be the holder of the whole new version.
        for digest in unique_hashes(blocks):
            if not self.blocks.holds(digest):
                await self.obtain(digest, list(entry.holders), hold=True)
        committed = self.namespace.commit(entry.id, blocks, mtime_ns=header.get("mtime_ns"))
        self.changed([committed])
        return committed.to_wire(), b""

    async def op_fsync(self, session: Session, header: Header, body: bytes) -> tuple[Any, bytes]:
        """Make a file's current version durable: its blocks and the metadata log on stable storage."""
        entry = self.meta.live(str(header["entry"]))
        paths = [self.blocks.held_path(digest) for digest in unique_hashes(entry.blocks)]
        await asyncio.to_thread(
            _fsync_all,
            [p for p in paths if p.exists()] + [self.meta.path.with_name(self.meta.path.name + "-wal")],
        )
        return None, b""

    async def op_pods(self, session: Session, header: Header, body: bytes) -> tuple[Any, bytes]:
        held: dict[str, int] = {}
        files: dict[str, int] = {}
        for entry in self.meta.live_files():
            for node in entry.holders:
                held[node] = held.get(node, 0) + entry.size
                files[node] = files.get(node, 0) + 1
        out = []
        for record in self.meta.pods():
            link = self.peers.get(record.node_id)
            if record.node_id == self.node_id:
                reach = "self"
            elif record.state == "left":
                reach = "-"
            else:
                reach = "up" if link is not None and link.up else "down"
            out.append(
                {
                    "node": record.node_id,
                    "name": record.name,
                    "address": record.address,
                    "state": record.state,
                    "reach": reach,
                    "capacity": record.capacity,
                    "free": record.free,
                    "files": files.get(record.node_id, 0),
                    "bytes": held.get(record.node_id, 0),
                    "rtt_ms": round(link.rtt * 1000, 2) if link is not None else 0.0,
                }
            )
        return out, b""

    async def op_token(self, session: Session, header: Header, body: bytes) -> tuple[Any, bytes]:
        if not session.loopback:
            raise MeshError("EACCES", "join tokens are only printed for clients on the pod's own host")
        assert self.token is not None
        return str(self.token), b""

    async def op_config_get(self, session: Session, header: Header, body: bytes) -> tuple[Any, bytes]:
        return {
            "network": self.meta.network_config().text,
            "pod": (self.state / "pod.toml").read_text() if (self.state / "pod.toml").exists() else "",
        }, b""

    async def op_config_set(self, session: Session, header: Header, body: bytes) -> tuple[Any, bytes]:
        text = str(header["text"])
        problems = [d for d in check_network(text, "network config") if d.level == "error"]
        if problems:
            raise MeshError("EINVAL", render(problems))
        self.meta.put_config_local(text, self.clock.now())
        self.changed([])
        return None, b""

    async def op_relocate(self, session: Session, header: Header, body: bytes) -> tuple[Any, bytes]:
        """Move the blocks of files to one pod (``to``), or spread them by placement (no ``to``)."""
        entries = [self.meta.live(str(entry_id)) for entry_id in header["ids"]]
        target = header.get("to")
        return await self._relocate(
            entries,
            exclude={str(n) for n in header.get("exclude", ())},
            target=str(target) if target else None,
        ), b""

    async def _relocate(
        self, entries: list[Entry], *, exclude: set[str], target: str | None, progress: Session | None = None
    ) -> dict[str, Any]:
        candidates = [
            record
            for record in self.meta.pods()
            if record.state == "active"
            and record.node_id not in exclude
            and (
                record.node_id == self.node_id
                or (record.node_id in self.peers and self.peers[record.node_id].up)
            )
        ]
        if target is not None:
            matches = [
                r
                for r in self.meta.pods()
                if r.node_id.startswith(target) or r.name == target or r.address == target
            ]
            if len(matches) != 1:
                raise MeshError(
                    "EINVAL", f"{target!r} names {len(matches)} pods; give a node id, name or address of one"
                )
            if matches[0] not in candidates:
                raise MeshError(
                    "EHOSTUNREACH", f"pod {matches[0].name or matches[0].node_id} is not active and reachable"
                )
            candidates = matches
        if not candidates and entries:
            raise MeshError("EHOSTUNREACH", "no other active pod is reachable to take the files")
        plan: dict[str, list[Entry]] = {}
        for entry in entries:
            chosen = rank(entry.id, candidates)[0]
            if entry.holders == (chosen.node_id,):
                continue
            plan.setdefault(chosen.node_id, []).append(entry)
        moved = skipped = 0
        total = sum(len(group) for group in plan.values())
        seqs: dict[str, int] = {}
        for node, group in plan.items():
            for start in range(0, len(group), 64):
                batch = group[start : start + 64]
                source = batch[0].holders[0] if batch[0].holders else ""
                if node == self.node_id:
                    result = await self.take_over([e.id for e in batch], source)
                else:
                    result, _ = await self.peers[node].call(
                        "replicate", ids=[e.id for e in batch], source=source, timeout=600.0
                    )
                moved += len(result["done"])
                skipped += len(result["skipped"])
                seqs[node] = max(seqs.get(node, 0), int(result["seq"]))
                if progress is not None:
                    await progress.send({"ev": "progress", "done": moved + skipped, "total": total})
        return {"moved": moved, "skipped": skipped, "seqs": seqs}

    async def op_leave(self, session: Session, header: Header, body: bytes) -> tuple[Any, bytes]:
        """Hand every file held here to the other pods, wait until they all know, then leave and stop."""
        others = [r for r in self.meta.pods() if r.node_id != self.node_id and r.state == "active"]
        held = self.meta.entries_held_by(self.node_id)
        if held and not any(r.node_id in self.peers and self.peers[r.node_id].up for r in others):
            raise MeshError(
                "EBUSY",
                f"this pod holds {len(held)} files and no other active pod is reachable to take them; "
                "start another pod first, or copy the files out",
            )
        self._set_state("leaving")
        timeout = float(header.get("timeout", 60.0))
        result = await self._relocate(held, exclude={self.node_id}, target=None, progress=session)
        await self._wait_known(result["seqs"], timeout=timeout)
        remaining = self.meta.entries_held_by(self.node_id)
        if remaining:
            # Files written through this pod while it was leaving: one more pass.
            again = await self._relocate(remaining, exclude={self.node_id}, target=None, progress=session)
            result["moved"] += again["moved"]
            await self._wait_known(again["seqs"], timeout=timeout)
        self._set_state("left")
        await self._wait_known({self.node_id: self.meta.vector().get(self.node_id, 0)}, timeout=10.0)
        asyncio.get_running_loop().call_later(0.2, self.stop)
        return {"moved": result["moved"], "skipped": result["skipped"]}, b""

    async def _wait_known(self, seqs: dict[str, int], timeout: float) -> None:
        """Until every reachable active pod has seen the given changes (so none reads from us after)."""
        deadline = time.monotonic() + timeout
        while True:
            lagging = []
            for record in self.meta.pods():
                if record.node_id == self.node_id or record.state != "active":
                    continue
                link = self.peers.get(record.node_id)
                if link is None or not link.up:
                    continue
                try:
                    result, _ = await link.call("vector_of", timeout=5.0)
                except (TimeoutError, MeshError, ConnectionError, OSError):
                    continue
                if any(int(result.get(origin, 0)) < seq for origin, seq in seqs.items()):
                    lagging.append(record.node_id)
                    link.wake()
            # Our own replica must have the targets' placements too before we say it is safe.
            mine = self.meta.vector()
            if any(mine.get(origin, 0) < seq for origin, seq in seqs.items()):
                lagging.append(self.node_id)
                for origin in seqs:
                    if origin in self.peers:
                        self.peers[origin].wake()
            if not lagging:
                return
            if time.monotonic() > deadline:
                raise MeshError(
                    "ETIMEDOUT",
                    f"pods {', '.join(n[:8] for n in lagging)} did not confirm the new placements in {timeout:.0f} s",
                )
            await asyncio.sleep(0.1)

    async def op_vector_of(self, session: Session, header: Header, body: bytes) -> tuple[Any, bytes]:
        return self.meta.vector(), b""

    async def op_gc(self, session: Session, header: Header, body: bytes) -> tuple[Any, bytes]:
        return await asyncio.to_thread(self.collect_garbage), b""


POD_OPS = frozenset({"sync", "fetch", "replicate", "vector_of", "info"})
CLIENT_OPS = frozenset(
    {
        "info",
        "subscribe",
        "resolve",
        "get",
        "lookup",
        "list",
        "path",
        "create",
        "setattr",
        "remove",
        "rename",
        "put_block",
        "adopt_block",
        "missing",
        "read_block",
        "block_path",
        "commit",
        "pods",
        "token",
        "config_get",
        "fsync",
        "config_set",
        "relocate",
        "leave",
        "vector_of",
        "gc",
    }
)


def _pread(path: Path, offset: int, length: int) -> bytes:
    with path.open("rb") as handle:
        if offset:
            handle.seek(offset)
        return handle.read() if length < 0 else handle.read(length)


def _fsync_all(paths: list[Path]) -> None:
    for path in paths:
        if path.exists():
            _fsync(path)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def run_pod(options: PodOptions, ready: Callable[[Pod], None] | None = None) -> None:
    """Run a pod in the foreground until SIGINT/SIGTERM or until it leaves its network."""

    async def main() -> None:
        pod = Pod(options)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError):
                loop.add_signal_handler(sig, pod.stop)
        await pod.run(ready)

    asyncio.run(main())
