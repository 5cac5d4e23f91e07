"""Worker: claims due items and runs their handlers on a thread pool, keeping leases alive while they run."""

from __future__ import annotations

import logging
import os
import socket
import threading
import uuid
from collections.abc import Callable
from concurrent.futures import Executor, ThreadPoolExecutor
from datetime import timedelta

from ecliptic.engine.outcome import Job, Outcome
from ecliptic.engine.queue import claim, extend_leases, finish
from ecliptic.store.database import Database

log = logging.getLogger(__name__)

Handler = Callable[[Job], Outcome]


def make_owner_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class Worker:
    """Runs handlers for due work items until stopped.

    ``wake()`` lets code in the same process that has just scheduled work skip the idle wait; other processes
    find the work at their next poll.
    """

    def __init__(
        self,
        db: Database,
        handlers: dict[str, Handler],
        *,
        threads: int = 4,
        lease: timedelta = timedelta(seconds=30),
        idle_poll: timedelta = timedelta(milliseconds=200),
        owner: str | None = None,
        executor: Executor | None = None,
    ) -> None:
        self.db = db
        self.handlers = handlers
        self.threads = threads
        self.lease = lease
        self.idle_poll = idle_poll
        self.owner = owner or make_owner_id()
        self._stop = threading.Event()
        self._wake = threading.Event()
        # Ids of the items this worker is running: claims skip them and the heartbeat keeps their leases.
        self._inflight: set[int] = set()
        self._lock = threading.Lock()
        self._pool = executor or ThreadPoolExecutor(max_workers=threads, thread_name_prefix="ecliptic-worker")
        self._threads: list[threading.Thread] = []

    # -- lifecycle -------------------------------------------------------------------------------------------
    def start(self) -> None:
        for target, name in ((self._claim_loop, "ecliptic-claim"), (self._heartbeat_loop, "ecliptic-lease")):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self, wait: bool = True) -> None:
        self._stop.set()
        self._wake.set()
        for thread in self._threads:
            thread.join(timeout=10)
        self._pool.shutdown(wait=wait, cancel_futures=True)

    def wake(self) -> None:
        self._wake.set()

    # -- loops -----------------------------------------------------------------------------------------------
    def _free_slots(self) -> int:
        with self._lock:
            return self.threads - len(self._inflight)

    def _claim_loop(self) -> None:
        while not self._stop.is_set():
            claimed = 0
            try:
                free = self._free_slots()
                if free > 0:
                    with self._lock:
                        running = set(self._inflight)
                    jobs = claim(self.db, self.owner, free, self.lease, set(self.handlers), running)
                    claimed = len(jobs)
                    for job in jobs:
                        self._submit(job)
            except Exception:
                log.exception("claiming work failed; retrying")
            if claimed == 0 or self._free_slots() == 0:
                self._wake.wait(self.idle_poll.total_seconds())
                self._wake.clear()

    def _heartbeat_loop(self) -> None:
        interval = max(0.5, self.lease.total_seconds() / 3)
        while not self._stop.wait(interval):
            with self._lock:
                ids = list(self._inflight)
            try:
                extend_leases(self.db, self.owner, ids, self.lease)
            except Exception:
                log.exception("extending leases failed")

    def _submit(self, job: Job) -> None:
        # Marked running before it is handed over: a job that finished before being marked would stay marked
        # for ever, and claims would skip its item for good.
        with self._lock:
            self._inflight.add(job.id)
        try:
            self._pool.submit(self._run, job)
        except RuntimeError:  # the pool is shutting down: the item's lease lapses and it runs elsewhere
            with self._lock:
                self._inflight.discard(job.id)

    def _run(self, job: Job) -> None:
        try:
            outcome: Outcome | BaseException
            try:
                outcome = self.handlers[job.kind](job)
            except Exception as exc:
                log.warning("handler %s(%s) failed: %s", job.kind, job.subject, exc, exc_info=True)
                outcome = exc
            finish(self.db, self.owner, job, outcome)
        except Exception:
            log.exception(
                "recording the outcome of %s(%s) failed; its lease will lapse", job.kind, job.subject
            )
        finally:
            with self._lock:
                self._inflight.discard(job.id)
            self._wake.set()

    # -- for tests and one-shot tools ------------------------------------------------------------------------
    def run_once(self) -> int:
        """Claim and run every due item once, in this thread. Returns how many ran."""
        jobs = claim(self.db, self.owner, 1000, self.lease, set(self.handlers))
        for job in jobs:
            with self._lock:
                self._inflight.add(job.id)
            self._run(job)
        return len(jobs)
