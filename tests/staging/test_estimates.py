"""Transfer-time estimates on real SQLite and PostgreSQL: bases, accuracy on a simulated source, caching."""

from __future__ import annotations

import math
import random
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import event, inspect, select, text

from ecliptic.staging.estimates import (
    DEFAULT_STATIC,
    StaticRate,
    TransferEstimator,
    fit_transfers,
    parse_rate,
)
from ecliptic.staging.sources import Replica
from ecliptic.store import Database, upgrade
from ecliptic.store.tables import Base, TransferRow
from tests.migrations import alembic_run

T0 = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
MB = 10**6
GB = 10**9
SITE = "AUS"
SOURCE = "rse:SYNTHETIC"


@pytest.fixture
def db(database_url: str) -> Iterator[Database]:
    database = Database(database_url)
    upgrade(database)
    yield database
    database.dispose()


class FakeClock:
    """The estimator's monotonic clock, moved by hand, so that cache expiry is tested without waiting."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class SyntheticSource:
    """A source with a fixed latency and rate, each transfer off by up to ``noise`` either way."""

    def __init__(self, rate: float, latency: float, *, noise: float = 0.08, seed: int = 7) -> None:
        self.rate = rate
        self.latency = latency
        self.noise = noise
        self.rng = random.Random(seed)

    def expected(self, size: int, in_flight: int = 0) -> float:
        return self.latency + size * (1 + in_flight) / self.rate

    def transfer(self, size: int) -> float:
        return self.expected(size) * self.rng.uniform(1 - self.noise, 1 + self.noise)

    def size(self, smallest: float, largest: float) -> int:
        return int(10 ** self.rng.uniform(math.log10(smallest), math.log10(largest)))


@contextmanager
def transfer_queries(db: Database) -> Iterator[list[str]]:
    seen: list[str] = []

    def before(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if "transfers" in statement:
            seen.append(statement)

    event.listen(db.engine, "before_cursor_execute", before)
    try:
        yield seen
    finally:
        event.remove(db.engine, "before_cursor_execute", before)


def relative_error(estimate: float, actual: float) -> float:
    return abs(estimate - actual) / actual


# -- parse_rate and configuration ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("100 MB/s", 100e6),
        ("100MB/s", 100e6),
        ("1 Gbit/s", 125e6),
        ("1 Gbps", 125e6),
        ("2 Mb/s", 250e3),
        ("10 MiB/s", 10 * 2**20),
        ("1.5 GiB/s", 1.5 * 2**30),
        ("5 kB/s", 5e3),
        ("5 KB/sec", 5e3),
        ("100 MBps", 100e6),
        ("3 bytes/s", 3.0),
        ("8 b/s", 1.0),
        ("1e9 B/s", 1e9),
        (" 250 ", 250.0),
        (12.5, 12.5),
        (1000, 1000.0),
    ],
)
def test_parse_rate_reads_numbers_and_units(text: str | float, expected: float) -> None:
    assert parse_rate(text) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("100 MB", r'"100 MB" is not a rate: "MB" is an amount, not an amount per second; add "/s"'),
        ("fast", r'"fast" is not a rate: write a number followed by a unit'),
        ("", r"an empty text is not a rate"),
        ("0 MB/s", r'"0 MB/s" is not a rate: a rate must be more than zero'),
        ("-1 MB/s", r'"-1 MB/s" is not a rate: a rate must be more than zero'),
        ("100 XB/s", r'"100 XB/s" is not a rate: "XB" is not a unit'),
        ("100 MB/h", r'"100 MB/h" is not a rate: rates are per second, not per "h"'),
        ("10 ps", r'"10 ps" is not a rate: "ps" is not a unit'),
        ("10 furlongs", r'"10 furlongs" is not a rate: "furlongs" is not a unit'),
        (0, r"0 is not a rate"),
        (float("inf"), r"inf is not a rate"),
        (True, r"True is not a rate"),
    ],
)
def test_parse_rate_names_the_bad_text(text: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_rate(text)


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"rse:*": {"rate": "fast"}}, r'transfer rates for "rse:\*": "fast" is not a rate'),
        ({"rse:*": {"rate": 1, "speed": 2}}, r"unknown key 'speed'"),
        ({"rse:*": {"latency": 1}}, r"a rate is required"),
        ({"rse:*": {"rate": 1, "latency": -1}}, r"latency -1 must be a finite number of seconds"),
        ({"rse:*": {"rate": 1, "latency": "2s"}}, r"latency '2s' is not a number of seconds"),
        ({"rse:*": "100 MB/s"}, r"expected a table"),
    ],
)
def test_bad_static_configuration_is_refused_with_its_pattern(config: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        TransferEstimator(Database("sqlite://"), config)


def test_bad_settings_are_refused() -> None:
    store = Database("sqlite://")
    with pytest.raises(ValueError, match=r'local_rate: "quick" is not a rate'):
        TransferEstimator(store, local_rate="quick")
    with pytest.raises(ValueError, match="default transfer rate: a rate is required"):
        TransferEstimator(store, default={"latency": 3})
    with pytest.raises(ValueError, match="history_size"):
        TransferEstimator(store, min_history=5, history_size=4)
    with pytest.raises(ValueError, match="recent_weight"):
        TransferEstimator(store, recent_weight=0)
    with pytest.raises(ValueError, match="recent_window"):
        TransferEstimator(store, recent_window=timedelta(0))
    with pytest.raises(ValueError, match="min_history"):
        TransferEstimator(store, min_history=0)
    with pytest.raises(ValueError, match="cache_ttl"):
        TransferEstimator(store, cache_ttl=-1)
    with pytest.raises(ValueError, match="assumed_size"):
        TransferEstimator(store, assumed_size=-1)


# -- fitting -------------------------------------------------------------------------------------------------


def test_fit_recovers_latency_and_rate_exactly_from_clean_transfers() -> None:
    samples = [(float(size), 1.5 + size / 40e6) for size in (0, 5 * MB, 80 * MB, GB, 7 * GB)]
    fit = fit_transfers(samples, prior_latency=30.0)
    assert fit is not None
    latency, slowness = fit
    assert latency == pytest.approx(1.5)
    assert 1 / slowness == pytest.approx(40e6)


def test_fit_is_not_moved_by_a_few_stalled_transfers() -> None:
    source = SyntheticSource(rate=50e6, latency=2.0, seed=3)
    samples = [(float(size), source.transfer(size)) for size in (source.size(MB, 10 * GB) for _ in range(20))]
    samples += [(float(size), 10 * source.expected(size)) for size in (GB, 3 * GB, 200 * MB)]
    fit = fit_transfers(samples, prior_latency=30.0)
    assert fit is not None
    latency, slowness = fit
    assert 1 / slowness == pytest.approx(50e6, rel=0.1)
    assert latency == pytest.approx(2.0, abs=1.0)


def test_fit_of_equal_sizes_takes_the_prior_latency_and_the_median_rate() -> None:
    samples = [(float(GB), seconds) for seconds in (14.0, 12.0, 13.0)]
    fit = fit_transfers(samples, prior_latency=3.0)
    assert fit == pytest.approx((3.0, 10.0 / GB))
    # A prior latency longer than the transfers themselves cannot be right: at most half the fastest.
    fit = fit_transfers(samples, prior_latency=60.0)
    assert fit == pytest.approx((6.0, 7.0 / GB))


def test_fit_needs_bytes_that_took_time() -> None:
    assert fit_transfers([(0.0, 1.0), (0.0, 2.0)], prior_latency=1.0) is None
    assert fit_transfers([(float(MB), 0.0), (float(MB), 0.0)], prior_latency=1.0) is None


# -- bases ---------------------------------------------------------------------------------------------------


def test_static_rules_exact_key_then_most_specific_pattern_then_default(db: Database) -> None:
    estimator = TransferEstimator(
        db,
        {
            "rse:*": {"rate": 50e6},
            "rse:SKA_*": {"rate": "5 MB/s", "latency": 2},
            "rse:SKA_AUS": {"rate": "1 Gbit/s", "latency": 0.5},
            "http:*": {"rate": "10 MiB/s", "latency": 1.5},
        },
        default={"rate": "1 MB/s", "latency": 60},
    )
    expected = {
        "rse:SKA_AUS": ("rse:SKA_AUS", 125e6, 0.5),
        "rse:SKA_CH": ("rse:SKA_*", 5e6, 2.0),
        "rse:CERN": ("rse:*", 50e6, 0.0),
        "http:archive.example:443": ("http:*", 10 * 2**20, 1.5),
        "mesh:pod-1": ("default", 1e6, 60.0),
    }
    for source, (rule, rate, latency) in expected.items():
        estimate = estimator.estimate(source, SITE, 100 * MB, now=T0)
        assert (estimate.basis, estimate.rule, estimate.samples) == ("static", rule, 0), source
        assert estimate.rate_bps == pytest.approx(rate)
        assert estimate.latency_s == latency
        assert estimate.seconds == pytest.approx(latency + 100 * MB / rate)


def test_unknown_size_is_estimated_at_the_assumed_size(db: Database) -> None:
    estimator = TransferEstimator(db, default=StaticRate(1e6, 5.0), assumed_size=10 * MB)
    estimate = estimator.estimate("http:h:80", SITE, None, now=T0)
    assert estimate.size == 10 * MB
    assert estimate.seconds == pytest.approx(15.0)


def test_a_copy_at_the_site_costs_a_disk_read_and_no_query(db: Database) -> None:
    estimator = TransferEstimator(db, local_rate="400 MB/s")
    with transfer_queries(db) as queries:
        at_site = estimator.estimate("rse:AUS", SITE, 800 * MB, now=T0, replica_site=SITE)
        replica = Replica("mesh:pod-1", "mesh:/data/x", size=400 * MB, site=SITE)
        pod = estimator.estimate_replica(replica, SITE, now=T0)
        on_disk = estimator.estimate("file:local", "anywhere", 400 * MB, now=T0)
        busy = estimator.estimate("rse:AUS", SITE, 800 * MB, now=T0, replica_site=SITE, in_flight=1)
    assert queries == []
    assert [e.basis for e in (at_site, pod, on_disk, busy)] == ["local"] * 4
    assert [e.seconds for e in (at_site, pod, on_disk, busy)] == pytest.approx([2.0, 1.0, 1.0, 4.0])
    assert at_site.latency_s == 0.0
    assert busy.rate_bps == pytest.approx(200e6)
    elsewhere = estimator.estimate("rse:AUS", "CH", 800 * MB, now=T0, replica_site="AUS")
    assert elsewhere.basis == "static"


def test_static_until_enough_transfers_then_history(db: Database) -> None:
    source = SyntheticSource(rate=80e6, latency=3.0)
    estimator = TransferEstimator(db, {"rse:*": {"rate": "10 MB/s", "latency": 30}}, min_history=3)
    first = estimator.estimate(SOURCE, SITE, GB, now=T0)
    assert (first.basis, first.rule) == ("static", "rse:*")
    assert first.seconds == pytest.approx(130.0)
    for n, size in enumerate((20 * MB, 600 * MB, 4 * GB), start=1):
        estimator.record(SOURCE, SITE, size, source.transfer(size), now=T0 - timedelta(hours=2, minutes=-n))
        estimate = estimator.estimate(SOURCE, SITE, GB, now=T0)
        assert estimate.samples == n
        assert estimate.basis == ("history" if n == 3 else "static")
    assert relative_error(estimate.seconds, source.expected(GB)) < 0.2
    # Another site has no history of its own yet.
    assert estimator.estimate(SOURCE, "CH", GB, now=T0).basis == "static"


def test_history_estimates_new_sizes_within_20_percent(db: Database) -> None:
    source = SyntheticSource(rate=80e6, latency=3.0, seed=21)
    static = {"rse:*": {"rate": "10 MB/s", "latency": 30}}
    estimator = TransferEstimator(db, static)
    start = T0 - timedelta(hours=3)
    for n in range(15):
        size = source.size(MB, 10 * GB)
        estimator.record(SOURCE, SITE, size, source.transfer(size), now=start + timedelta(minutes=5 * n))
    # One transfer that stalled, as real ones do: the fit must not follow it.
    estimator.record(SOURCE, SITE, 2 * GB, 10 * source.expected(2 * GB), now=start + timedelta(minutes=80))
    for size in (2 * MB, 40 * MB, 300 * MB, 2 * GB, 25 * GB):
        estimate = estimator.estimate(SOURCE, SITE, size, now=T0)
        assert estimate.basis == "history"
        actual = source.transfer(size)
        assert relative_error(estimate.seconds, actual) <= 0.2, (size, estimate.explain(), actual)
        # The configured figures were far off: the history is what made the estimate good.
        configured = StaticRate.parse(static["rse:*"], "test")
        assert relative_error(configured.latency_s + size / configured.rate_bps, actual) > 0.5


def test_dynamic_follows_a_source_that_slows_down_four_times(db: Database) -> None:
    source = SyntheticSource(rate=80e6, latency=3.0, seed=5)
    estimator = TransferEstimator(db)
    for n in range(12):
        size = source.size(10 * MB, 5 * GB)
        estimator.record(
            SOURCE, SITE, size, source.transfer(size), now=T0 - timedelta(hours=3, minutes=-5 * n)
        )
    size = 2 * GB
    before = estimator.estimate(SOURCE, SITE, size, now=T0)
    assert before.basis == "history"
    assert relative_error(before.seconds, source.expected(size)) < 0.2

    source.rate /= 4
    errors = []
    for n in range(1, 6):
        when = T0 + timedelta(minutes=n)
        moved = source.size(500 * MB, 4 * GB)
        estimator.record(SOURCE, SITE, moved, source.transfer(moved), now=when)
        estimate = estimator.estimate(SOURCE, SITE, size, now=when)
        assert (estimate.basis, estimate.recent) == ("dynamic", n)
        errors.append(relative_error(estimate.seconds, source.expected(size)))
    assert relative_error(before.seconds, source.expected(size)) > 0.7
    assert errors[0] < 0.5, errors  # one slow transfer already moves it most of the way
    assert all(error <= 0.2 for error in errors[3:]), errors  # within 20 % from the fourth on
    # With no transfer in the window any more, the estimate is the fit to the history again.
    assert estimator.estimate(SOURCE, SITE, size, now=T0 + timedelta(hours=1)).basis == "history"


def test_transfers_in_flight_share_the_source(db: Database) -> None:
    source = SyntheticSource(rate=100e6, latency=2.0, noise=0.0)
    estimator = TransferEstimator(db)
    # Every one of these ran beside three others, so it got a quarter of the source.
    for n, size in enumerate((50 * MB, 200 * MB, GB, 3 * GB, 8 * GB)):
        seconds = source.expected(size, in_flight=3)
        estimator.record(SOURCE, SITE, size, seconds, now=T0 - timedelta(hours=2, minutes=-n), in_flight=3)
    alone = estimator.estimate(SOURCE, SITE, GB, now=T0)
    assert alone.basis == "history"
    assert (alone.rate_bps, alone.seconds) == pytest.approx((100e6, 12.0))
    shared = estimator.estimate(SOURCE, SITE, GB, now=T0, in_flight=1)
    assert (shared.rate_bps, shared.seconds) == pytest.approx((50e6, 22.0))
    assert shared.in_flight == 1
    unknown = estimator.estimate("rse:NEW", SITE, GB, now=T0, in_flight=3)
    assert unknown.rate_bps == pytest.approx(DEFAULT_STATIC.rate_bps / 4)


def test_failed_transfers_are_kept_but_not_learnt_from(db: Database) -> None:
    estimator = TransferEstimator(db)
    for n in range(4):
        estimator.record(
            SOURCE,
            SITE,
            GB,
            0.5,
            now=T0 + timedelta(seconds=n),
            ok=False,
            session="s-uuid",
            component="c-uuid",
        )
    assert estimator.estimate(SOURCE, SITE, GB, now=T0).basis == "static"
    with db.read() as session:
        rows = session.scalars(select(TransferRow).order_by(TransferRow.id)).all()
    assert [(row.ok, row.session_uuid, row.component_uuid) for row in rows] == [
        (False, "s-uuid", "c-uuid")
    ] * 4
    assert rows[0].finished_at == T0
    assert (rows[0].source, rows[0].site, rows[0].bytes, rows[0].seconds) == (SOURCE, SITE, GB, 0.5)


def test_bad_arguments_are_refused(db: Database) -> None:
    estimator = TransferEstimator(db)
    with pytest.raises(ValueError, match="size"):
        estimator.record(SOURCE, SITE, -1, 1.0, now=T0)
    with pytest.raises(ValueError, match="seconds"):
        estimator.record(SOURCE, SITE, 1, float("nan"), now=T0)
    with pytest.raises(ValueError, match="timezone-aware"):
        estimator.record(SOURCE, SITE, 1, 1.0, now=T0.replace(tzinfo=None))
    with pytest.raises(ValueError, match="in_flight"):
        estimator.record(SOURCE, SITE, 1, 1.0, now=T0, in_flight=-1)
    with pytest.raises(ValueError, match="in_flight"):
        estimator.estimate(SOURCE, SITE, 1, now=T0, in_flight=-1)
    with pytest.raises(ValueError, match="size"):
        estimator.estimate(SOURCE, SITE, -1, now=T0)


def test_explain_says_where_the_numbers_came_from(db: Database) -> None:
    estimator = TransferEstimator(db, {"rse:*": {"rate": "10 MB/s", "latency": 30}})
    assert estimator.estimate(SOURCE, SITE, 500, now=T0, replica_site=SITE).explain() == (
        "local (a copy at the site): 0 s + 500 B at 500 MB/s = 1e-06 s"
    )
    assert estimator.estimate(SOURCE, SITE, GB, now=T0).explain() == (
        "static (the figures configured for rse:*): 30 s + 1 GB at 10 MB/s = 130 s"
    )
    for n, size in enumerate((10 * MB, 100 * MB, GB)):
        estimator.record(SOURCE, SITE, size, 2 + size / 50e6, now=T0 - timedelta(hours=1, minutes=-n))
    assert estimator.estimate(SOURCE, SITE, GB, now=T0, in_flight=1).explain() == (
        "history (a fit to 3 transfers): 2 s + 1 GB at 25 MB/s, shared with 1 more = 42 s"
    )
    estimator.record(SOURCE, SITE, GB, 42.0, now=T0)
    assert (
        estimator.estimate(SOURCE, SITE, GB, now=T0)
        .explain()
        .startswith("dynamic (a fit to 4 transfers, weighted to the 1 recent ones): 2 s + 1 GB at ")
    )


# -- caching and transactions ----------------------------------------------------------------------------------


def _record_history(estimator: TransferEstimator, source: str, when: datetime, **extra: Any) -> None:
    for n, size in enumerate((10 * MB, 100 * MB, GB)):
        estimator.record(source, SITE, size, 1 + size / 100e6, now=when + timedelta(seconds=n), **extra)


def test_summaries_are_cached_and_other_writers_show_after_the_ttl(db: Database) -> None:
    clock = FakeClock()
    reader = TransferEstimator(db, cache_ttl=5.0, clock=clock)
    writer = TransferEstimator(db, clock=clock)
    with transfer_queries(db) as queries:
        for _ in range(1000):
            reader.estimate(SOURCE, SITE, GB, now=T0)
    assert len(queries) == 1
    _record_history(writer, SOURCE, T0 - timedelta(hours=1))
    assert reader.estimate(SOURCE, SITE, GB, now=T0).basis == "static"  # another writer: not seen yet
    clock.now += 5.0
    assert reader.estimate(SOURCE, SITE, GB, now=T0).samples == 3
    reader.record(SOURCE, SITE, GB, 11.0, now=T0 - timedelta(minutes=30))
    assert reader.estimate(SOURCE, SITE, GB, now=T0).samples == 4  # its own record: seen at once


def test_recording_into_a_transaction_counts_when_it_commits(db: Database) -> None:
    clock = FakeClock()
    estimator = TransferEstimator(db, clock=clock)
    bystander = TransferEstimator(db, clock=clock)
    with db.write() as session:
        _record_history(estimator, SOURCE, T0 - timedelta(hours=1), db_session=session)
        assert estimator.estimate(SOURCE, SITE, GB, now=T0, db_session=session).basis == "history"
        assert bystander.estimate(SOURCE, SITE, GB, now=T0).basis == "static"  # not committed yet
    assert estimator.estimate(SOURCE, SITE, GB, now=T0).samples == 3
    clock.now += 10
    assert bystander.estimate(SOURCE, SITE, GB, now=T0).samples == 3


def test_a_rolled_back_record_leaves_no_trace_in_the_cache(db: Database) -> None:
    estimator = TransferEstimator(db, clock=FakeClock())
    with pytest.raises(RuntimeError), db.write() as session:
        _record_history(estimator, SOURCE, T0 - timedelta(hours=1), db_session=session)
        assert estimator.estimate(SOURCE, SITE, GB, now=T0, db_session=session).basis == "history"
        raise RuntimeError("the caller's unit of work fails")
    estimate = estimator.estimate(SOURCE, SITE, GB, now=T0)
    assert (estimate.basis, estimate.samples) == ("static", 0)


def test_a_record_committed_while_a_history_is_read_is_not_lost(db: Database) -> None:
    estimator = TransferEstimator(db, cache_ttl=3600.0)
    _record_history(estimator, SOURCE, T0 - timedelta(hours=2))
    interleaved: list[str] = []

    def record_meanwhile(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        # Once the estimator's read has its rows, and before it caches them, a record commits.
        if statement.lstrip().upper().startswith("SELECT") and "transfers" in statement and not interleaved:
            interleaved.append(statement)
            estimator.record(SOURCE, SITE, GB, 11.0, now=T0 - timedelta(minutes=30))

    event.listen(db.engine, "after_cursor_execute", record_meanwhile)
    try:
        assert estimator.estimate(SOURCE, SITE, GB, now=T0).samples == 3
    finally:
        event.remove(db.engine, "after_cursor_execute", record_meanwhile)
    assert interleaved
    assert estimator.estimate(SOURCE, SITE, GB, now=T0).samples == 4


def test_estimates_and_records_from_many_threads(db: Database) -> None:
    estimator = TransferEstimator(db, cache_ttl=3600.0)
    _record_history(estimator, SOURCE, T0 - timedelta(hours=2))
    failures: list[BaseException] = []
    stop = threading.Event()

    def guarded(work: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            try:
                work()
            except BaseException as exc:
                failures.append(exc)

        return run

    def estimate_until_stopped() -> None:
        while not stop.is_set():
            assert estimator.estimate(SOURCE, SITE, GB, now=T0).basis in ("history", "dynamic")

    def record() -> None:
        for n in range(20):
            estimator.record(SOURCE, SITE, GB, 11.0, now=T0 - timedelta(minutes=30, seconds=-n))

    readers = [threading.Thread(target=guarded(estimate_until_stopped)) for _ in range(6)]
    writer = threading.Thread(target=guarded(record))
    for thread in readers:
        thread.start()
    writer.start()
    writer.join()
    stop.set()
    for thread in readers:
        thread.join()
    assert failures == []
    # A read that overlapped the last record must not have left a summary without it behind.
    assert estimator.estimate(SOURCE, SITE, GB, now=T0).samples == 23


# -- migration -----------------------------------------------------------------------------------------------


def test_migration_0003_upgrades_from_0002_and_matches_the_model(database_url: str) -> None:
    alembic_run(database_url, command.upgrade, "0002")
    database = Database(database_url)
    try:
        with database.write() as session:
            session.execute(
                text(
                    "INSERT INTO platforms (name, cores, memory_gib, storage_gib, max_duration_s, longest_hold_s)"
                    " VALUES ('p', 4, 8, 100, 3600, 0)"
                )
            )
        assert "transfers" not in inspect(database.engine).get_table_names()

        alembic_run(database_url, command.upgrade, "0003")
        inspector = inspect(database.engine)
        assert "transfers" in inspector.get_table_names()
        indexes = {index["name"]: index["column_names"] for index in inspector.get_indexes("transfers")}
        assert indexes == {"ix_transfers_source_site_finished": ["source", "site", "finished_at"]}
        with database.engine.connect() as conn:
            assert conn.execute(text("SELECT version_num FROM alembic_version")).scalar_one() == "0003"
            assert conn.execute(text("SELECT name FROM platforms")).scalars().all() == ["p"]
        alembic_run(database_url, command.upgrade, "head")  # 0004 makes in_flight fractional
        with database.engine.connect() as conn:
            differences = compare_metadata(MigrationContext.configure(conn), Base.metadata)
            assert [d for d in differences if "transfers" in repr(d)] == []

        estimator = TransferEstimator(database)
        _record_history(estimator, SOURCE, T0)
        assert estimator.estimate(SOURCE, SITE, GB, now=T0).basis == "dynamic"

        alembic_run(database_url, command.downgrade, "0002")
        assert "transfers" not in inspect(database.engine).get_table_names()
        alembic_run(database_url, command.upgrade, "head")
        assert "transfers" in inspect(database.engine).get_table_names()
    finally:
        database.dispose()
