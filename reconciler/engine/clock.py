"""Where the engine gets "now" from.

Production uses the system clock (OpenMeter runs on real time). The demo and the end-to-end
tests run against the emulator, whose clock can be moved a month ahead; for them the engine
reads the time from an HTTP endpoint (``RECONCILER_CLOCK_URL``) answering ``{"now": RFC3339}``.
The product only speaks HTTP to that URL; it does not import the emulator.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Protocol

import httpx


class Clock(Protocol):
    async def now(self) -> datetime: ...


class SystemClock:
    async def now(self) -> datetime:
        return datetime.now(UTC)


class HttpClock:
    def __init__(self, url: str, *, timeout: float = 5.0) -> None:
        self._url = url
        self._http = httpx.AsyncClient(timeout=timeout)

    async def now(self) -> datetime:
        resp = await self._http.get(self._url)
        resp.raise_for_status()
        value = resp.json()["now"]
        parsed = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
        return parsed.astimezone(UTC)

    async def aclose(self) -> None:
        await self._http.aclose()


class FixedClock:
    """A clock tests move by hand."""

    def __init__(self, at: datetime) -> None:
        self.at = at

    async def now(self) -> datetime:
        return self.at
