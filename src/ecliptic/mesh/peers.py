"""Links from one pod to the others: dialling, anti-entropy rounds, liveness.

Each known pod gets a link that keeps one connection open and pulls "changes since my vector" from it,
at once when the peer signals a change and every ``interval`` otherwise, so a pod that was away catches
up in one round and a lost signal only delays a change. A peer is *down* after ``down_after`` seconds
without a successful round; down peers are not asked for blocks first, and are dialled with backoff.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any

from ecliptic.mesh.channel import Channel
from ecliptic.mesh.entries import PodRecord
from ecliptic.mesh.identity import Identity, JoinToken
from ecliptic.mesh.wire import MeshError, split_address

log = logging.getLogger("ecliptic.mesh.peers")

SyncApply = Callable[["PeerLink", list[dict[str, Any]]], Awaitable[None]]


class PeerLink:
    def __init__(
        self,
        record: PodRecord,
        *,
        identity: Identity,
        token: JoinToken,
        vector: Callable[[], dict[str, int]],
        apply: SyncApply,
        own_address: str,
        interval: float,
        down_after: float,
    ) -> None:
        self.record = record
        self.node_id = record.node_id
        self._identity = identity
        self._token = token
        self._vector = vector
        self._apply = apply
        self._own_address = own_address
        self.interval = interval
        self.down_after = down_after
        self.channel: Channel | None = None
        self.last_ok = 0.0
        self.last_error = ""
        self.rounds = 0
        self.rtt = 0.0
        self._wake = asyncio.Event()
        self._connect_lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None

    @property
    def up(self) -> bool:
        return self.last_ok > 0 and time.monotonic() - self.last_ok < self.down_after

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name=f"peer-{self.node_id[:8]}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(BaseException):
                await self._task
        if self.channel is not None:
            await self.channel.close()
            self.channel = None

    def wake(self) -> None:
        self._wake.set()

    async def connect(self) -> Channel:
        async with self._connect_lock:
            if self.channel is not None and not self.channel.closed.is_set():
                return self.channel
            host, port = split_address(self.record.address)
            channel = await Channel.connect(
                host,
                port,
                role="pod",
                identity=self._identity,
                token=self._token,
                expected_node=self.node_id,
                address=self._own_address,
                timeout=5.0,
            )
            channel.on_event(self._event)
            self.channel = channel
            return channel

    def _event(self, header: dict[str, Any]) -> None:
        if header.get("ev") == "changed":
            self._wake.set()

    async def call(
        self, op: str, body: bytes = b"", *, timeout: float | None = 60.0, **args: Any
    ) -> tuple[Any, bytes]:
        channel = await self.connect()
        try:
            return await channel.call(op, body, timeout=timeout, **args)
        except (TimeoutError, ConnectionError, OSError):
            await channel.close()
            if self.channel is channel:
                self.channel = None
            raise

    async def sync_once(self) -> int:
        """Pull every change the peer has and this pod lacks; the number of rows received."""
        received = 0
        started = time.monotonic()
        while True:
            result, _ = await self.call("sync", vector=self._vector(), timeout=30.0)
            changes = list(result["changes"])
            received += len(changes)
            if changes:
                await self._apply(self, changes)
            if not result.get("more"):
                break
        self.rtt = time.monotonic() - started
        self.last_ok = time.monotonic()
        self.rounds += 1
        return received

    async def _loop(self) -> None:
        backoff = self.interval
        while True:
            try:
                await self.sync_once()
                backoff = self.interval
                self.last_error = ""
            except asyncio.CancelledError:
                raise
            except MeshError as exc:
                self.last_error = str(exc)
                if exc.code == "EACCES":
                    log.warning("pod %s refused this pod: %s", self.node_id[:8], exc.message)
                backoff = min(backoff * 2, 5.0)
            except Exception as exc:
                self.last_error = f"{type(exc).__name__}: {exc}"
                backoff = min(backoff * 2, 5.0)
            self._wake.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wake.wait(), backoff * random.uniform(0.8, 1.2))
