"""The outbox: events for the portal, written in the transaction of the change they announce
and delivered at least once (``reconciler.events``). See docs/STORE.md, "Outbox"."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from reconciler.store import pgdirect
from reconciler.store.database import Database
from reconciler.store.errors import EventNotFoundError, InvalidTransitionError
from reconciler.store.ids import new_event_id
from reconciler.store.rows import Mapper, aware, count_by_status, keyset_page, read_all, read_one
from reconciler.store.schema import outbox_events
from reconciler.store.types import EventStatus, NewEvent, OutboxEvent

_EVENT = Mapper(OutboxEvent, {"status": EventStatus})


_INSERT_EVENTS = outbox_events.insert()  # built once (its cache key is kept)
#: PostgreSQL (``pgdirect``): the same insert, the columns ``event_rows`` fills.
_PG_EVENTS = pgdirect.Columns(
    outbox_events,
    [
        "id",
        "type",
        "customer",
        "change_id",
        "payload",
        "status",
        "attempts",
        "next_attempt_at",
        "created_at",
    ],
)
_PG_INSERT_EVENTS = _PG_EVENTS.insert()


def event_rows(
    events: Sequence[NewEvent], customer: str | None, change_id: str | None, now: datetime
) -> list[dict[str, Any]]:
    """``events`` as rows to insert; ``customer`` and ``change_id`` are those of the change they
    are written with, for events that name none."""
    return [
        {
            "id": e.id or new_event_id(),
            "type": e.type,
            "customer": e.customer if e.customer is not None else customer,
            "change_id": e.change_id if e.change_id is not None else change_id,
            "payload": dict(e.payload),
            "status": EventStatus.PENDING.value,
            "attempts": 0,
            # NULL: due at once, whatever clock the deliverer runs on
            "next_attempt_at": None,
            "created_at": now,
        }
        for e in events
    ]


async def insert_events(
    conn: AsyncConnection,
    events: Sequence[NewEvent],
    customer: str | None,
    change_id: str | None,
    now: datetime,
) -> None:
    """Insert ``events`` in the caller's transaction (``event_rows``)."""
    if events:
        await conn.execute(_INSERT_EVENTS, event_rows(events, customer, change_id, now))


async def insert_events_pg(
    pg: pgdirect.PgConn,
    events: Sequence[NewEvent],
    customer: str | None,
    change_id: str | None,
    now: datetime,
) -> None:
    """PostgreSQL: ``insert_events`` on psycopg's connection (``Database.pg_tx``)."""
    if events:
        rows = event_rows(events, customer, change_id, now)
        await pgdirect.insert_many(pg, _PG_EVENTS, _PG_INSERT_EVENTS, rows)


class Outbox:
    """The ``outbox_events`` table."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def enqueue_events(self, events: Sequence[NewEvent], now: datetime) -> None:
        """Enqueue events not tied to a change update (e.g. operational notices)."""
        now = aware(now, "now")

        async def op(conn: AsyncConnection) -> None:
            await insert_events(conn, events, None, None, now)

        await self._db.tx(op, write=True)

    async def get_event(self, event_id: str) -> OutboxEvent | None:
        q = sa.select(outbox_events).where(outbox_events.c.id == event_id)
        return await read_one(self._db, q, _EVENT)

    async def due_events(self, now: datetime, limit: int = 100) -> list[OutboxEvent]:
        """Pending events whose next attempt is due, oldest due first.

        A new event has no ``next_attempt_at`` (never tried): it is due at once."""
        now = aware(now, "now")
        c = outbox_events.c
        q = (
            sa.select(outbox_events)
            .where(
                c.status == EventStatus.PENDING.value,
                sa.or_(c.next_attempt_at.is_(None), c.next_attempt_at <= now),
            )
            .order_by(c.next_attempt_at.asc().nulls_first(), c.created_at, c.id)
            .limit(limit)
        )
        return await read_all(self._db, q, _EVENT)

    async def _event_update(
        self,
        event_id: str,
        allowed_from: Sequence[EventStatus],
        values: Mapping[str, Any],
        action: str,
    ) -> OutboxEvent:
        async def op(conn: AsyncConnection) -> OutboxEvent:
            row = (
                await conn.execute(
                    outbox_events.update()
                    .where(
                        outbox_events.c.id == event_id,
                        outbox_events.c.status.in_([s.value for s in allowed_from]),
                    )
                    .values(**values)
                    .returning(*outbox_events.c)
                )
            ).first()
            if row is not None:
                return _EVENT(row)
            cur = (
                await conn.execute(
                    sa.select(outbox_events.c.status).where(outbox_events.c.id == event_id)
                )
            ).first()
            if cur is None:
                raise EventNotFoundError(f"event {event_id} not found")
            raise InvalidTransitionError(f"cannot {action} event {event_id}: it is {cur.status}")

        return await self._db.tx(op, write=True)

    async def mark_delivered(self, event_id: str, now: datetime) -> OutboxEvent:
        return await self._event_update(
            event_id,
            (EventStatus.PENDING,),
            {
                "status": EventStatus.DELIVERED.value,
                "delivered_at": aware(now, "now"),
                "attempts": outbox_events.c.attempts + 1,
                "next_attempt_at": None,
                "last_error": None,
            },
            "mark delivered",
        )

    async def mark_failed(
        self,
        event_id: str,
        error: str,
        next_attempt_at: datetime | None,
        dead: bool = False,
    ) -> OutboxEvent:
        """Count a failed attempt; ``dead`` gives up on the event (status ``dead``)."""
        if not dead and next_attempt_at is None:
            raise ValueError("next_attempt_at is required unless dead")
        return await self._event_update(
            event_id,
            (EventStatus.PENDING,),
            {
                "status": (EventStatus.DEAD if dead else EventStatus.PENDING).value,
                "attempts": outbox_events.c.attempts + 1,
                "last_error": error,
                "next_attempt_at": (
                    None if dead or next_attempt_at is None else aware(next_attempt_at, "at")
                ),
            },
            "mark failed",
        )

    async def disable_pending(self, reason: str) -> int:
        """The receiver is gone (HTTP 410): every pending event becomes ``disabled``."""

        async def op(conn: AsyncConnection) -> int:
            result = await conn.execute(
                outbox_events.update()
                .where(outbox_events.c.status == EventStatus.PENDING.value)
                .values(status=EventStatus.DISABLED.value, last_error=reason, next_attempt_at=None)
            )
            return int(result.rowcount)

        return await self._db.tx(op, write=True, idempotent=True)

    async def redeliver(self, event_id: str, now: datetime) -> OutboxEvent:
        """Put a dead or disabled event back in the queue (attempts start again from zero)."""
        return await self._event_update(
            event_id,
            (EventStatus.DEAD, EventStatus.DISABLED, EventStatus.PENDING),
            {
                "status": EventStatus.PENDING.value,
                "attempts": 0,
                "next_attempt_at": aware(now, "now"),
            },
            "redeliver",
        )

    async def list_events(
        self,
        status: EventStatus | str | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> tuple[list[OutboxEvent], str | None]:
        """Newest first (created_at, then id)."""
        c = outbox_events.c
        q = sa.select(outbox_events)
        if status is not None:
            q = q.where(c.status == EventStatus(status).value)
        return await keyset_page(
            self._db, "events", q, c.created_at, c.id, cursor, limit, _EVENT, _created
        )

    async def count_events_by_status(self) -> dict[str, int]:
        return await count_by_status(self._db, outbox_events.c.status, list(EventStatus))


def _created(event: OutboxEvent) -> tuple[datetime, str]:
    return event.created_at, event.id
