"""Engine and session factories, with the transaction discipline both databases need.

Reads use ordinary transactions. Writes that read-then-decide (booking, accepting, claiming work) go through
:meth:`Database.write`, which on SQLite starts with ``BEGIN IMMEDIATE`` so that two writers never both read
the same state and then both act on it; on PostgreSQL the same code takes row locks explicitly.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import StaticPool

log = logging.getLogger(__name__)


def _in_memory(url: str) -> bool:
    """``sqlite://`` and ``sqlite:///:memory:``: a database that lives in one connection of this process."""
    return make_url(url).database in (None, "", ":memory:")


def _sqlite_engine(url: str) -> Engine:
    parsed = make_url(url)
    if _in_memory(url):
        # Every connection to :memory: is a database of its own, so the threads of the process share one
        # connection (and Database serialises all use of it, reads included).
        engine = create_engine(
            url, connect_args={"timeout": 60, "check_same_thread": False}, poolclass=StaticPool
        )
    else:
        Path(str(parsed.database)).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(
            url, connect_args={"timeout": 60, "check_same_thread": False}, pool_size=20, max_overflow=50
        )

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Take transaction control away from the driver, so that BEGIN is emitted when SQLAlchemy begins.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=60000")
        # Checkpoints run in a background thread (see _Checkpointer), not in whichever request commits the
        # thousandth page: that request would otherwise wait for the copy and its fsync.
        cursor.execute("PRAGMA wal_autocheckpoint=0")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Any) -> None:
        immediate = connection.get_execution_options().get("ecliptic_write", False)
        connection.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

    return engine


class _Checkpointer:
    """Copies SQLite's write-ahead log back into the database file every second, off the request path."""

    def __init__(self, engine: Engine, interval: float = 1.0) -> None:
        self.engine = engine
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="ecliptic-sqlite-checkpoint", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                with self.engine.connect() as conn:
                    conn.exec_driver_sql("PRAGMA wal_checkpoint(PASSIVE)")
            except Exception:  # a busy or closing database: the next round tries again
                log.debug("WAL checkpoint skipped", exc_info=True)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


class Database:
    """One database: an engine, a read session factory and a write session factory."""

    def __init__(self, url: str, *, echo: bool = False) -> None:
        self.url = url
        self._checkpointer: _Checkpointer | None = None
        self.in_memory = False
        if url.startswith("sqlite"):
            self.engine = _sqlite_engine(url)
            self.in_memory = _in_memory(url)
            if not self.in_memory:
                self._checkpointer = _Checkpointer(self.engine)
        else:
            # No pre-ping: it costs a round trip per transaction; a dropped connection is invalidated on first use.
            self.engine = create_engine(
                url, pool_size=20, max_overflow=60, pool_timeout=120, pool_recycle=1800, echo=echo
            )
        # SQLite has one writer at a time. Writers of this process queue on a mutex rather than on SQLite's busy
        # handler, which sleeps in steps of up to 100 ms and so wastes most of the time under contention; other
        # processes still wait through busy_timeout.
        self._write_gate: AbstractContextManager[Any] = threading.Lock() if self.is_sqlite else nullcontext()
        self._read_gate: AbstractContextManager[Any] = nullcontext()
        if self.in_memory:
            # One shared connection holds one transaction at a time: readers queue with the writers. Re-entrant,
            # so a nested unit of work fails loudly on BEGIN instead of deadlocking.
            self._write_gate = self._read_gate = threading.RLock()
        self._reader = sessionmaker(self.engine, expire_on_commit=False)
        self._writer = sessionmaker(
            self.engine.execution_options(ecliptic_write=True), expire_on_commit=False
        )

    @property
    def is_postgres(self) -> bool:
        return self.engine.dialect.name == "postgresql"

    @property
    def is_sqlite(self) -> bool:
        return self.engine.dialect.name == "sqlite"

    @contextmanager
    def read(self) -> Iterator[Session]:
        with self._read_gate, self._reader() as session, session.begin():
            yield session

    @contextmanager
    def write(self) -> Iterator[Session]:
        """A unit of work: commits on success, rolls back on any exception."""
        with self._write_gate, self._writer() as session, session.begin():
            yield session

    def dispose(self) -> None:
        if self._checkpointer is not None:
            self._checkpointer.stop()
            self._checkpointer = None
        self.engine.dispose()
