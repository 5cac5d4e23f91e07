"""The durable engine on real SQLite and PostgreSQL: claims, leases, retries, reschedules, many workers."""

from __future__ import annotations

import threading
import time
from collections import Counter
from concurrent.futures import Executor, Future
from datetime import timedelta

from sqlalchemy import select

from ecliptic import engine
from ecliptic.engine import Again, Done, Job, Worker
from ecliptic.isotime import utcnow
from ecliptic.store import Database, upgrade
from ecliptic.store.tables import WorkItem


def _db(url: str) -> Database:
    db = Database(url)
    upgrade(db)
    return db


def test_schedule_is_one_item_per_kind_and_subject(database_url: str) -> None:
    db = _db(database_url)
    now = utcnow()
    with db.write() as s:
        engine.schedule(s, "k", "a", now + timedelta(hours=1))
        engine.schedule(s, "k", "a", now + timedelta(minutes=1))
        engine.schedule(s, "k", "a", now + timedelta(hours=2))
    with db.read() as s:
        items = s.scalars(select(WorkItem)).all()
        assert len(items) == 1
        assert items[0].due_at == now + timedelta(minutes=1)  # the earliest wins
        assert items[0].generation == 2
    with db.write() as s:
        engine.cancel(s, "k", "a")
    with db.read() as s:
        assert engine.pending(s) == 0


def test_claim_runs_due_items_only_and_deletes_when_done(database_url: str) -> None:
    db = _db(database_url)
    seen: list[str] = []

    def handler(job: Job) -> Done:
        seen.append(job.subject)
        return Done()

    now = utcnow()
    with db.write() as s:
        engine.schedule(s, "k", "due", now - timedelta(seconds=1))
        engine.schedule(s, "k", "later", now + timedelta(hours=1))
    worker = Worker(db, {"k": handler})
    assert worker.run_once() == 1
    assert seen == ["due"]
    with db.read() as s:
        assert engine.pending(s) == 1


def test_again_reschedules_and_errors_back_off(database_url: str) -> None:
    db = _db(database_url)
    calls = Counter[str]()

    def handler(job: Job) -> Again | Done:
        calls[job.subject] += 1
        if job.subject == "boom":
            raise RuntimeError("exploded")
        return Again(utcnow() + timedelta(hours=1))

    with db.write() as s:
        engine.schedule(s, "k", "boom", utcnow())
        engine.schedule(s, "k", "poll", utcnow())
    Worker(db, {"k": handler}).run_once()
    with db.read() as s:
        items = {i.subject: i for i in s.scalars(select(WorkItem))}
    assert items["boom"].last_error and "exploded" in items["boom"].last_error
    assert items["boom"].due_at > utcnow()
    assert items["boom"].attempts == 1 and items["boom"].lease_owner is None
    assert items["poll"].due_at > utcnow() + timedelta(minutes=59)
    assert items["poll"].attempts == 0


def test_rescheduling_while_running_is_not_lost(database_url: str) -> None:
    db = _db(database_url)

    def handler(job: Job) -> Done:
        with db.write() as s:  # something else asks for the same work again while this run is under way
            engine.schedule(s, "k", job.subject, utcnow())
        return Done()

    with db.write() as s:
        engine.schedule(s, "k", "x", utcnow())
    Worker(db, {"k": handler}).run_once()
    with db.read() as s:
        assert engine.pending(s) == 1


def test_an_expired_lease_is_claimed_again(database_url: str) -> None:
    db = _db(database_url)
    with db.write() as s:
        engine.schedule(s, "k", "x", utcnow())
    first = engine.claim(db, "dead-worker", 10, timedelta(milliseconds=200))
    assert [j.subject for j in first] == ["x"]
    assert engine.claim(db, "other", 10, timedelta(seconds=30)) == []  # leased
    time.sleep(0.3)
    second = engine.claim(db, "other", 10, timedelta(seconds=30))
    assert [j.subject for j in second] == ["x"] and second[0].attempts == 2
    engine.finish(db, "dead-worker", first[0], Done())  # the late finisher's word does not count
    with db.read() as s:
        assert engine.pending(s) == 1


def test_a_lapsed_lease_is_not_claimed_by_the_runner_still_running_it(database_url: str) -> None:
    db = _db(database_url)
    with db.write() as s:
        engine.schedule(s, "k", "slow", utcnow())
        engine.schedule(s, "k", "other", utcnow())
    first = engine.claim(db, "busy", 10, timedelta(milliseconds=100))
    running = {job.id for job in first if job.subject == "slow"}
    time.sleep(0.2)  # its heartbeat came late: the lease lapsed while the handler still runs
    again = engine.claim(db, "busy", 10, timedelta(seconds=30), running=running)
    assert [job.subject for job in again] == ["other"]
    elsewhere = engine.claim(db, "another-process", 10, timedelta(seconds=30))
    assert [job.subject for job in elsewhere] == ["slow"]  # another owner may take a lapsed lease over


def test_many_workers_run_each_item_exactly_once(database_url: str) -> None:
    db = _db(database_url)
    runs = Counter[str]()
    lock = threading.Lock()

    def handler(job: Job) -> Done:
        with lock:
            runs[job.subject] += 1
        return Done()

    with db.write() as s:
        for index in range(300):
            engine.schedule(s, "k", f"item-{index}", utcnow())
    workers = [
        Worker(Database(database_url), {"k": handler}, threads=4, idle_poll=timedelta(milliseconds=20))
        for _ in range(3)
    ]
    for worker in workers:
        worker.start()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        with db.read() as s:
            if engine.pending(s) == 0:
                break
        time.sleep(0.05)
    for worker in workers:
        worker.stop()
    assert len(runs) == 300
    assert set(runs.values()) == {1}


class _Inline(Executor):
    """Runs each job before ``submit`` returns: the fastest a pool thread can possibly be."""

    def submit(self, fn, /, *args, **kwargs):  # type: ignore[no-untyped-def]
        future: Future[object] = Future()
        future.set_result(fn(*args, **kwargs))
        return future


def test_a_job_that_finishes_before_submit_returns_is_claimed_again(database_url: str) -> None:
    # A worker once marked a job running only after handing it to the pool, so a job that was already done
    # stayed marked for ever and its item (a session's next step) was never claimed again.
    db = _db(database_url)
    runs: list[int] = []

    def handler(job: Job) -> Again | Done:
        runs.append(job.id)
        return Done() if len(runs) == 4 else Again(utcnow())

    with db.write() as s:
        engine.schedule(s, "k", "steps", utcnow())
    worker = Worker(db, {"k": handler}, idle_poll=timedelta(milliseconds=20), executor=_Inline())
    worker.start()
    deadline = time.monotonic() + 30
    while len(runs) < 4 and time.monotonic() < deadline:
        time.sleep(0.02)
    worker.stop()
    assert len(runs) == 4
    assert worker._free_slots() == worker.threads
    with db.read() as s:
        assert engine.pending(s) == 0
