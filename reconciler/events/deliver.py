"""Outbound event delivery from the transactional outbox (``outbox_events``).

The engine writes an event row in the same transaction as the state change it reports, so an
event exists if and only if the change was recorded. This module only moves rows out:

* ``run_once(now)`` takes the due pending events (oldest due first), POSTs each to the portal
  with Standard Webhooks headers (at most ``concurrency`` at a time) and records the outcome:
  2xx → ``delivered``; HTTP 410 → the receiver is gone: every pending event is ``disabled``
  (``store.disable_pending``) with an ERROR log line and the batch stops; anything else
  (other status, timeout, connection error) → retried with exponential backoff and jitter, and
  dead-lettered (``dead``) once the retry window has passed.
* Delivery is at least once. The ``webhook-id`` is the event's stable id (``evt_<change>_<kind>``
  for change events), the same on every attempt, so receivers deduplicate on it.

Retry schedule: attempt *n* (1-based) failing waits ``min(30 s · 2^(n−1), 1 h)``, ±10 % jitter.
An event is dead-lettered when an attempt fails, the event is at least 24 h old **and** it has
had as many attempts as the schedule makes in 24 h (30): a fresh event therefore retries for
24 h after it was created; an event re-queued with ``reconciler events redeliver`` (attempts
reset to 0) or one that waited while the reconciler was down gets a full schedule again.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from types import TracebackType
from typing import Any, Protocol

import httpx

from reconciler.domain.timefmt import iso_z
from reconciler.events.signing import decode_secret, headers
from reconciler.logs import bound, get_logger
from reconciler.store import Store
from reconciler.store.errors import EventNotFoundError, InvalidTransitionError
from reconciler.store.types import OutboxEvent

__all__ = [
    "BACKOFF_BASE",
    "BACKOFF_CAP",
    "RETRY_WINDOW",
    "DeliveryStats",
    "EventDeliverer",
    "body_of",
    "nominal_attempts",
    "retry_delay",
]

log = get_logger("reconciler.events")

BACKOFF_BASE = timedelta(seconds=30)
BACKOFF_CAP = timedelta(hours=1)
RETRY_WINDOW = timedelta(hours=24)
JITTER = 0.1
USER_AGENT = "openmeter-reconciler-events/1"


class Clock(Protocol):
    async def now(self) -> datetime: ...


def retry_delay(attempt: int, *, rng: Callable[[], float] = random.random) -> timedelta:
    """Wait after failed attempt number ``attempt`` (1-based): 30 s doubling, capped at 1 h,
    times a uniform jitter factor in [0.9, 1.1]."""
    n = max(1, attempt)
    nominal = min(BACKOFF_CAP, BACKOFF_BASE * (1 << min(n - 1, 20)))
    factor = 1 - JITTER + 2 * JITTER * rng()
    return nominal * factor


def nominal_attempts(window: timedelta = RETRY_WINDOW) -> int:
    """How many attempts the schedule (without jitter) makes within ``window`` of the first."""
    elapsed = timedelta(0)
    attempts = 1
    while True:
        elapsed += min(BACKOFF_CAP, BACKOFF_BASE * (1 << min(attempts - 1, 20)))
        if elapsed > window:
            return attempts
        attempts += 1


def body_of(event: OutboxEvent) -> bytes:
    """The JSON body: ``{"type", "timestamp", "data"}``; identical on every attempt."""
    doc = {"type": event.type, "timestamp": iso_z(event.created_at), "data": dict(event.payload)}
    return json.dumps(doc, separators=(",", ":"), default=str).encode()


@dataclass
class DeliveryStats:
    """What one ``run_once`` did."""

    due: int = 0
    delivered: int = 0
    failed: int = 0  # failed attempts that will be retried
    dead: int = 0  # failed attempts that dead-lettered their event
    disabled: int = 0  # events disabled because the receiver answered 410
    gone: bool = False  # the receiver answered 410 Gone


@dataclass(frozen=True, slots=True)
class _Attempt:
    event: OutboxEvent
    status: int | None  # HTTP status, None when no response
    error: str | None


class EventDeliverer:
    """Delivers the outbox to ``url``. One per process; run it on one replica (the leader).

    ``clock`` gives "now" to :meth:`run_forever`; the ``webhook-timestamp`` header is the wall
    clock (``wall``), because receivers compare it with theirs.
    """

    def __init__(
        self,
        store: Store,
        url: str,
        secret: str,
        clock: Clock,
        http: httpx.AsyncClient | None = None,
        *,
        concurrency: int = 8,
        batch: int = 100,
        timeout: float = 10.0,
        interval: float = 2.0,
        rng: Callable[[], float] = random.random,
        wall: Callable[[], float] = time.time,
        on_attempt: Callable[[str, str], None] | None = None,
    ) -> None:
        if not url.startswith(("http://", "https://")):
            raise ValueError("the events URL must start with http:// or https://")
        if not secret:
            raise ValueError(
                "RECONCILER_EVENTS_SECRET is required when RECONCILER_EVENTS_URL is set"
            )
        self.store = store
        self.url = url
        self._key = decode_secret(secret)
        self.clock = clock
        self._own_http = http is None
        self.http = http or httpx.AsyncClient(
            timeout=httpx.Timeout(timeout), headers={"user-agent": USER_AGENT}
        )
        self.concurrency = concurrency
        self.batch = batch
        self.interval = interval
        self._rng = rng
        self._wall = wall
        self._on_attempt = on_attempt  # (event type, outcome) for metrics
        self._min_attempts = nominal_attempts(RETRY_WINDOW)

    async def aclose(self) -> None:
        if self._own_http:
            await self.http.aclose()

    async def __aenter__(self) -> EventDeliverer:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    # ------------------------------------------------------------------------------------------
    async def run_once(self, now: datetime) -> DeliveryStats:
        """Deliver the events due at ``now`` (one batch). Safe to call concurrently with the
        engine writing new events; not meant to run on two replicas at once (duplicates would
        still be deduplicated by the receiver, by ``webhook-id``)."""
        events = await self.store.due_events(now, limit=self.batch)
        stats = DeliveryStats(due=len(events))
        if not events:
            return stats
        gone = asyncio.Event()
        sem = asyncio.Semaphore(self.concurrency)

        async def one(event: OutboxEvent) -> _Attempt | None:
            async with sem:
                if gone.is_set():
                    return None  # the receiver is gone: do not send the rest
                attempt = await self._post(event)
                if attempt.status == 410:
                    gone.set()
                return attempt

        attempts = await asyncio.gather(*(one(e) for e in events))
        for attempt in attempts:
            if attempt is None:
                continue
            await self._record(attempt, now, stats)
        if gone.is_set():
            stats.gone = True
            stats.disabled = await self.store.disable_pending(
                f"receiver answered 410 Gone at {iso_z(now)}: delivery disabled"
            )
            log.error(
                "events_receiver_gone",
                url=self.url,
                disabled_events=stats.disabled,
                hint="the portal answered 410 Gone; every pending event is now 'disabled'. "
                "Fix RECONCILER_EVENTS_URL, then requeue with `reconciler events redeliver ID`",
            )
        return stats

    async def now(self) -> datetime:
        """ "Now" for the outbox: the later of ``clock`` and the wall clock.

        The store stamps events with its own clock (wall time). A demo clock moved into the past
        (the emulator's ``/_emulator/clock``) must not make fresh events look not yet due, and
        one moved ahead only makes them due sooner; in production both are the wall clock.
        """
        wall = datetime.fromtimestamp(self._wall(), UTC)
        return max(await self.clock.now(), wall)

    async def run_forever(self, stop: asyncio.Event) -> None:
        """Call :meth:`run_once` every ``interval`` seconds (at once again after a full batch)
        until ``stop`` is set. Errors are logged and the loop goes on."""
        while not stop.is_set():
            full = False
            try:
                stats = await self.run_once(await self.now())
                full = stats.due >= self.batch and not stats.gone
            except Exception as exc:  # keep delivering after a store hiccup
                log.warning("events_run_failed", error=f"{type(exc).__name__}: {exc}")
            if full:
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=self.interval)

    # ------------------------------------------------------------------------------------------
    async def _post(self, event: OutboxEvent) -> _Attempt:
        body = body_of(event)
        hdrs = headers(self._key, event.id, int(self._wall()), body)
        try:
            resp = await self.http.post(self.url, content=body, headers=hdrs)
        except httpx.TimeoutException as exc:
            return _Attempt(event, None, f"timeout: {type(exc).__name__}")
        except httpx.HTTPError as exc:
            return _Attempt(event, None, f"{type(exc).__name__}: {exc}")
        if 200 <= resp.status_code < 300:
            return _Attempt(event, resp.status_code, None)
        text = resp.text[:200].strip()
        return _Attempt(
            event, resp.status_code, f"HTTP {resp.status_code}" + (f": {text}" if text else "")
        )

    async def _record(self, attempt: _Attempt, now: datetime, stats: DeliveryStats) -> None:
        event = attempt.event
        with bound(event=event.id, customer=event.customer, change=event.change_id):
            try:
                if attempt.error is None:
                    await self.store.mark_delivered(event.id, now)
                    stats.delivered += 1
                    self._count(event, "delivered")
                    log.info("event_delivered", type=event.type, attempts=event.attempts + 1)
                    return
                if attempt.status == 410:
                    return  # disabled with the rest after the batch
                n = event.attempts + 1
                dead = now - event.created_at >= RETRY_WINDOW and n >= self._min_attempts
                if dead:
                    await self.store.mark_failed(event.id, attempt.error, None, dead=True)
                    stats.dead += 1
                    self._count(event, "dead")
                    log.error(
                        "event_dead_lettered",
                        type=event.type,
                        attempts=n,
                        error=attempt.error,
                        hint="requeue with `reconciler events redeliver ID`",
                    )
                    return
                retry_at = now + retry_delay(n, rng=self._rng)
                await self.store.mark_failed(event.id, attempt.error, retry_at)
                stats.failed += 1
                self._count(event, "failed")
                log.warning(
                    "event_delivery_failed",
                    type=event.type,
                    attempts=n,
                    error=attempt.error,
                    retry_at=iso_z(retry_at),
                )
            except (InvalidTransitionError, EventNotFoundError) as exc:
                # Changed meanwhile (disabled, requeued by an operator): the store wins.
                log.warning("event_state_changed", error=str(exc))

    def _count(self, event: OutboxEvent, outcome: str) -> None:
        if self._on_attempt is not None:
            self._on_attempt(event.type, outcome)


def describe_schedule() -> list[dict[str, Any]]:
    """The nominal retry schedule (for docs and ``--help``): attempt, wait, elapsed."""
    out = []
    elapsed = timedelta(0)
    for n in range(1, nominal_attempts() + 1):
        wait = min(BACKOFF_CAP, BACKOFF_BASE * (1 << min(n - 1, 20)))
        out.append({"attempt": n, "at": str(elapsed), "wait_after_failure": str(wait)})
        elapsed += wait
    return out
