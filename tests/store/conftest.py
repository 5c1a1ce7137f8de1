"""Store fixtures: every test runs on SQLite and on PostgreSQL.

PostgreSQL tests each get a freshly created database (``store_test_<random>``) that is dropped
afterwards; nothing else on the shared server is touched. Locally a missing PostgreSQL skips
those tests; in CI (``CI`` set) it fails them.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from reconciler.store import Store

PG_ADMIN_DSN = os.environ.get(
    "RECONCILER_TEST_PG_DSN", "host=127.0.0.1 port=5432 user=postgres dbname=postgres"
)
PG_URL_BASE = os.environ.get("RECONCILER_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432")
IN_CI = bool(os.environ.get("CI"))

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)

_pg_error: str | None = None
_pg_checked = False


def _pg_available() -> str | None:
    global _pg_checked, _pg_error
    if not _pg_checked:
        _pg_checked = True
        try:
            with psycopg.connect(PG_ADMIN_DSN, connect_timeout=3) as conn:
                conn.execute("SELECT 1")
        except psycopg.Error as e:
            _pg_error = str(e)
    return _pg_error


def _require_pg() -> None:
    err = _pg_available()
    if err is not None:
        if IN_CI:
            pytest.fail(f"PostgreSQL is required in CI but unreachable: {err}")
        pytest.skip(f"PostgreSQL unreachable: {err}")


@pytest.fixture
def pg_database() -> Iterator[str]:
    """A fresh PostgreSQL database for this test; yields its URL and drops it afterwards."""
    _require_pg()
    name = f"store_test_{uuid.uuid4().hex[:16]}"
    with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield f"{PG_URL_BASE}/{name}"
    finally:
        with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'reconciler.db'}"
    url: str = request.getfixturevalue("pg_database")
    return url


@pytest.fixture
def backend(db_url: str) -> str:
    return "sqlite" if db_url.startswith("sqlite") else "postgresql"


class Clock:
    def __init__(self, now: datetime = T0) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def store(db_url: str, clock: Clock) -> AsyncIterator[Store]:
    s = await Store.open(db_url, instance_id="test-1", clock=clock)
    await s.migrate()
    try:
        yield s
    finally:
        await s.close()


@pytest.fixture
async def open_store(db_url: str, clock: Clock) -> AsyncIterator[Callable[..., Awaitable[Store]]]:
    """Open extra Store instances on the same database; all are closed at teardown."""
    opened: list[Store] = []

    async def _open(instance_id: str = "test-2") -> Store:
        s = await Store.open(db_url, instance_id=instance_id, clock=clock)
        opened.append(s)
        return s

    try:
        yield _open
    finally:
        for s in opened:
            await s.close()
