"""Store fixtures: every test runs on SQLite and on PostgreSQL.

PostgreSQL tests each get a freshly created database (``store_test_<random>``) that is dropped
afterwards; nothing else on the shared server is touched. Locally a missing PostgreSQL skips
those tests; in CI (``CI`` set) it fails them.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from reconciler.store import Store
from tests.pg import fresh_database

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


@pytest.fixture
def pg_database() -> Iterator[str]:
    """A fresh PostgreSQL database for this test; yields its URL and drops it afterwards."""
    with fresh_database("store_test") as url:
        yield url


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
