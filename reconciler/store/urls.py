"""Database URL normalisation: URLs are rewritten to the drivers the store uses.

SQLite: the standard library's ``sqlite3`` (SQLAlchemy's ``pysqlite`` dialect), driven from the
store's own database thread; ``sqlite://`` is still accepted, as earlier versions
documented it. PostgreSQL: psycopg 3, async.
"""

from __future__ import annotations

from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

from reconciler.store.errors import StoreConfigError

_REWRITE = {
    "sqlite": "sqlite+pysqlite",
    "sqlite+pysqlite": "sqlite+pysqlite",
    "sqlite+aiosqlite": "sqlite+pysqlite",
    "postgres": "postgresql+psycopg",
    "postgresql": "postgresql+psycopg",
    "postgresql+psycopg": "postgresql+psycopg",
    "postgresql+psycopg_async": "postgresql+psycopg",
}


def normalize_url(url: str | URL) -> URL:
    """``sqlite:///x.db`` → ``sqlite+pysqlite:///x.db``; ``postgresql://`` → psycopg 3."""
    try:
        u = make_url(url) if isinstance(url, str) else url
    except ArgumentError:
        raise StoreConfigError(
            "the database URL is not a URL: use sqlite:///PATH or postgresql://USER@HOST/DB"
        ) from None
    driver = _REWRITE.get(u.drivername)
    if driver is None:
        raise StoreConfigError(
            f"unsupported database URL scheme {u.drivername!r}: use sqlite:///PATH or "
            "postgresql://USER@HOST/DB"
        )
    return u.set(drivername=driver)


def is_sqlite(url: URL) -> bool:
    return url.get_backend_name() == "sqlite"


def sqlite_path(url: URL) -> str | None:
    """The database file of a SQLite URL, or None for an in-memory database."""
    db = url.database
    if not db or db == ":memory:" or db.startswith("file::memory:"):
        return None
    return db
