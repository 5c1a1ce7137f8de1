"""Fixtures: the portal stand-in (``portal.Receiver``) served by uvicorn, and a SQLite store."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from reconciler.store import Store
from tests.portal import Receiver, running_receiver


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with running_receiver() as rec:
        yield rec


@pytest.fixture
def db_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'events.db'}"


@pytest.fixture
async def store(db_url: str) -> AsyncIterator[Store]:
    s = await Store.open(db_url, instance_id="events-test")
    await s.migrate()
    try:
        yield s
    finally:
        await s.close()
