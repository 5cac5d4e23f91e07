"""Running one Alembic command against a test database, for the tests of each migration."""

from __future__ import annotations

from collections.abc import Callable

from alembic.config import Config

from ecliptic.store import Database
from ecliptic.store.migrate import alembic_config


def alembic_run(url: str, action: Callable[[Config, str], None], revision: str) -> None:
    database = Database(url)
    try:
        with database.engine.begin() as conn:
            cfg = alembic_config(url)
            cfg.attributes["connection"] = conn
            action(cfg, revision)
    finally:
        database.dispose()
