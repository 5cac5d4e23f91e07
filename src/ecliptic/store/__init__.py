"""The store: one relational database (SQLite by default, PostgreSQL for many instances) behind SQLAlchemy 2."""

from ecliptic.store.database import Database
from ecliptic.store.migrate import upgrade

__all__ = ["Database", "upgrade"]
