from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest
import respx

from reconciler.openmeter.client import CallRecord, OpenMeterClient
from tests.contract import assert_request as assert_valid

BASE = "http://openmeter.test:8888"


class Sleeps(list[float]):
    """Records the back-off sleeps the client asks for (instead of sleeping)."""

    async def __call__(self, seconds: float) -> None:
        self.append(seconds)


@pytest.fixture
def sleeps() -> Sleeps:
    return Sleeps()


@pytest.fixture
def records() -> list[CallRecord]:
    return []


@pytest.fixture
def router() -> Iterator[respx.MockRouter]:
    """respx router; every request the client sent is checked against OpenMeter's OpenAPI."""
    with respx.mock(base_url=BASE, assert_all_called=False) as r:
        yield r
        for call in r.calls:
            assert_valid(call.request)


@pytest.fixture
async def client(
    router: respx.MockRouter, sleeps: Sleeps, records: list[CallRecord]
) -> AsyncIterator[OpenMeterClient]:
    async with OpenMeterClient(BASE, read_retries=3, sleep=sleeps, observer=records.append) as c:
        yield c
