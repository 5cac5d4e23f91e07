"""Offer-set latency against a growing capacity calendar, on SQLite and PostgreSQL.

For each database and each calendar size (0, 1k, 10k, 100k bookings by default) this fills the calendar,
then times complete offer-set requests through the broker library: validate, lock, read the calendar, plan,
book, commit. It prints p50/p99 latency, offer sets per second and, as the machine is shared and noisy, each
size's p99 as a ratio to the empty calendar measured in the same run.

The calendar is filled the way a busy platform would be: jobs of 1–8 cores for 30 minutes to 4 hours,
placed so the platform is about 80% used from now on. A platform can only hold so many bookings at once, so
100k bookings reach years ahead; a request looks at the next day.

    python bench/offers.py [--sizes 0,1000,10000,100000] [--requests 300] [--postgres URL]
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import sqlalchemy
from rich.console import Console
from rich.table import Table
from sqlalchemy import delete, insert

from ecliptic.broker.planner import Planner, PlannerSettings
from ecliptic.broker.schema import ExecutionRequest
from ecliptic.broker.service import Broker
from ecliptic.config import Settings
from ecliptic.isotime import utcnow
from ecliptic.platforms.base import Capacity
from ecliptic.platforms.local import LocalPlatform
from ecliptic.store import Database, upgrade
from ecliptic.store.tables import BookingRow, ComponentRow, SessionRow, TransitionRow, WorkItem

CORES, MEMORY = 64, 256
REQUEST = {
    "executable": {"kind": "urn:ecliptic:executable:command", "command": ["true"]},
    "compute": {"cores": {"min": 1, "max": 2}, "memory": {"min": 1, "max": 2}},
    "schedule": {"requested": {"duration": "PT30M"}},
}


@dataclass
class Result:
    database: str
    bookings: int
    p50: float
    p99: float
    per_second: float
    offers: float


def fill(db: Database, count: int, rng: random.Random) -> None:
    """``count`` bookings from now on at about 80% utilisation, with their sessions (the FK needs them)."""
    if count == 0:
        return
    now = int(utcnow().timestamp())
    jobs = [(rng.randint(1, 8), rng.randint(1800, 4 * 3600)) for _ in range(count)]
    horizon = sum(cores * length for cores, length in jobs) / (0.8 * CORES)
    created = utcnow()
    batch = 5000
    for offset in range(0, count, batch):
        sessions, bookings = [], []
        for cores, length in jobs[offset : offset + batch]:
            start = now + int(rng.uniform(0, horizon))
            uid = str(uuid.uuid4())
            when = created + timedelta(seconds=start - now)
            sessions.append(
                {
                    "uuid": uid,
                    "position": 0,
                    "platform": "local",
                    "phase": "ACCEPTED",
                    "created": created,
                    "modified": created,
                    "prepare_start": when,
                    "available_start": when,
                    "available_end": when + timedelta(seconds=length),
                    "release_end": when + timedelta(seconds=length),
                    "cores": cores,
                    "memory_gib": cores * 2,
                    "storage_gib": 0,
                    "released": False,
                    "messages": [],
                }
            )
            bookings.append(
                {
                    "session_uuid": uid,
                    "platform": "local",
                    "start_s": start,
                    "end_s": start + length,
                    "cores": cores,
                    "memory_gib": cores * 2,
                    "storage_gib": 0,
                    "expires_s": None,
                }
            )
        with db.write() as session:
            session.execute(insert(SessionRow), sessions)
            session.execute(insert(BookingRow), bookings)
    if db.is_postgres:
        with db.engine.connect() as conn:
            conn.commit()
            # What autovacuum does on a live system: statistics, and the visibility map index-only scans need.
            conn.execution_options(isolation_level="AUTOCOMMIT").exec_driver_sql("VACUUM ANALYZE bookings")


def forget(db: Database, offerset_uuid: str) -> None:
    """Take the measured request's offers off the calendar again, so every request sees the same calendar."""
    with db.write() as session:
        uuids = list(
            session.scalars(
                sqlalchemy.select(SessionRow.uuid).where(SessionRow.offerset_uuid == offerset_uuid)
            )
        )
        session.execute(delete(BookingRow).where(BookingRow.session_uuid.in_(uuids)))
        session.execute(delete(WorkItem).where(WorkItem.subject.in_(uuids)))
        session.execute(delete(TransitionRow).where(TransitionRow.session_uuid.in_(uuids)))
        session.execute(delete(ComponentRow).where(ComponentRow.session_uuid.in_(uuids)))
        session.execute(delete(SessionRow).where(SessionRow.uuid.in_(uuids)))


def measure(name: str, url: str, sizes: list[int], requests: int, data_dir: Path) -> list[Result]:
    db = Database(url)
    upgrade(db)
    settings = Settings(data_dir=data_dir, database_url=url, local_cores=CORES, local_memory_gib=MEMORY)
    platforms = {"local": LocalPlatform(Capacity(CORES, MEMORY, 10_000, timedelta(days=1)))}
    planner = Planner(
        platforms,
        PlannerSettings(
            settings.default_start_range, settings.slot_step, settings.release_margin, settings.max_offers
        ),
    )
    broker = Broker(db, settings, platforms, planner)
    broker.sync_platforms()
    request = ExecutionRequest.model_validate(REQUEST)
    rng = random.Random(42)
    results = []
    have = 0
    for size in sorted(sizes):
        fill(db, size - have, rng)
        have = size
        for _ in range(20):  # warm caches and the connection pool
            forget(db, broker.request_offers(request).uuid)
        timings, offered = [], []
        for _ in range(requests):
            started = time.perf_counter()
            offerset = broker.request_offers(request)
            timings.append(time.perf_counter() - started)
            offered.append(len(offerset.sessions))
            forget(db, offerset.uuid)
        timings.sort()
        results.append(
            Result(
                database=name,
                bookings=size,
                p50=statistics.median(timings) * 1000,
                p99=timings[min(len(timings) - 1, int(len(timings) * 0.99))] * 1000,
                per_second=len(timings) / sum(timings),
                offers=statistics.mean(offered),
            )
        )
    db.dispose()
    return results


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", default="0,1000,10000,100000")
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument(
        "--postgres",
        default=os.environ.get("ECLIPTIC_TEST_POSTGRES_URL"),
        help="PostgreSQL URL (a scratch schema is created and dropped); omit to skip",
    )
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    console = Console()
    results: list[Result] = []
    with tempfile.TemporaryDirectory() as tmp:
        console.print(f"SQLite: {len(sizes)} calendar sizes × {args.requests} offer sets …")
        results += measure("sqlite", f"sqlite:///{tmp}/bench.sqlite", sizes, args.requests, Path(tmp))
        if args.postgres:
            schema = f"bench_{uuid.uuid4().hex[:8]}"
            admin = sqlalchemy.create_engine(args.postgres, isolation_level="AUTOCOMMIT")
            with admin.connect() as conn:
                conn.exec_driver_sql(f'CREATE SCHEMA "{schema}"')
            try:
                console.print(f"PostgreSQL: {len(sizes)} calendar sizes × {args.requests} offer sets …")
                sep = "&" if "?" in args.postgres else "?"
                url = f"{args.postgres}{sep}options=-csearch_path%3D{schema}"
                results += measure("postgresql", url, sizes, args.requests, Path(tmp))
            finally:
                with admin.connect() as conn:
                    conn.exec_driver_sql(f'DROP SCHEMA "{schema}" CASCADE')
    table = Table(title="Offer-set latency against calendar size (one request: validate, plan, book, commit)")
    for column in ("database", "bookings", "p50 ms", "p99 ms", "offer sets/s", "offers/set", "p99 ÷ empty"):
        table.add_column(column, justify="right")
    baseline = {r.database: r.p99 for r in results if r.bookings == min(sizes)}
    for r in results:
        table.add_row(
            r.database,
            f"{r.bookings:,}",
            f"{r.p50:.2f}",
            f"{r.p99:.2f}",
            f"{r.per_second:.0f}",
            f"{r.offers:.1f}",
            f"{r.p99 / baseline[r.database]:.2f}×",
        )
    console.print(table)
    worst = max((r for r in results if r.bookings == max(sizes)), key=lambda r: r.p99)
    console.print(
        f"Worst p99 at {worst.bookings:,} bookings: {worst.p99:.2f} ms on {worst.database} "
        f"(target: under 10 ms)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
