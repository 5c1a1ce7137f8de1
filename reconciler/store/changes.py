"""Change requests: the desired state. Submitting one (idempotent on its source id, the latest
by ``requested_at`` wins), reading, listing and updating them. See docs/STORE.md, "Desired
state".

A submit runs the same rules on both databases: on PostgreSQL one call of the server-side
function ``reconciler_submit_change`` (its body is Alembic revision 0003), on SQLite its twin
below, four statements in one transaction. The store tests run every rule on both.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from psycopg.types.json import Jsonb
from sqlalchemy.dialects.postgresql import ARRAY as pg_ARRAY
from sqlalchemy.engine import Row
from sqlalchemy.ext.asyncio import AsyncConnection

from reconciler.domain.model import Direction, Timing
from reconciler.store import pgdirect
from reconciler.store.customers import ensure_customer, set_customer_id
from reconciler.store.database import Database, Op, PgOp
from reconciler.store.errors import ChangeNotFoundError, StaleChangeError, StoreConflictError
from reconciler.store.ids import new_ulid
from reconciler.store.outbox import insert_events, insert_events_pg
from reconciler.store.rows import (
    Mapper,
    aware,
    count_by_status,
    enum_lookup,
    keyset_page,
    optional_enum,
    read_one,
)
from reconciler.store.schema import change_requests, customers
from reconciler.store.types import (
    OPEN_STATUSES,
    ChangeRecord,
    ChangeSource,
    ChangeStatus,
    DesiredSummary,
    NewEvent,
    SubmitResult,
)

#: Fields of a change request that ``update_change`` may set.
UPDATABLE_CHANGE_FIELDS = frozenset(
    {
        "customer_id",
        "plan_version",
        "status",
        "direction",
        "timing",
        "rule",
        "effective_at",
        "converges_at",
        "last_error",
        "attempts",
        "next_attempt_at",
        "details",
        "observed_mark",
    }
)

SUPERSEDED = ChangeStatus.SUPERSEDED.value
_TIMESTAMP_FIELDS = frozenset({"effective_at", "converges_at", "next_attempt_at"})

# -- records ----------------------------------------------------------------------------------

_CHANGE_CONVERT: dict[str, Callable[[Any], Any]] = {
    "source": ChangeSource,
    "status": ChangeStatus,
    "direction": optional_enum(Direction),
    "timing": optional_enum(Timing),
}
_CHANGE = Mapper(ChangeRecord, _CHANGE_CONVERT)
#: A change joined beside another table's columns, as ``desired_<field>`` (the claim's read).
_DESIRED = Mapper(ChangeRecord, _CHANGE_CONVERT, prefix="desired_")
_TO_STATUS = enum_lookup(ChangeStatus)


def change_record(row: Row[Any]) -> ChangeRecord:
    rec = _CHANGE(row)
    return rec if rec.details is not None else dataclasses.replace(rec, details={})


def desired_of(keys: tuple[str, ...], values: Sequence[Any]) -> ChangeRecord | None:
    """The ``desired_*`` columns of a row (its columns named ``keys``) as a change (None: the
    customer has none)."""
    if values[keys.index("desired_id")] is None:
        return None
    rec = _DESIRED.of(keys, values)
    return rec if rec.details is not None else dataclasses.replace(rec, details={})


# -- statements -------------------------------------------------------------------------------
# Those of the hot paths (a webhook's submit, a reconcile's claim) are built once: SQLAlchemy
# then only looks their compiled form up instead of building and hashing them per call.


def _is_open(status: sa.ColumnElement[str]) -> sa.ColumnElement[bool]:
    """``status IN (open statuses)`` with the values as ordinary bound parameters: an ``in_``
    list is an "expanding" parameter, rendered into the SQL again on every execution."""
    return sa.or_(*(status == sa.bindparam(f"open_{s.value}", s.value) for s in OPEN_STATUSES))


_Q_CHANGE_BY_ID = sa.select(change_requests).where(change_requests.c.id == sa.bindparam("b_id"))


async def read_change(conn: AsyncConnection, change_id: str) -> ChangeRecord | None:
    """The change request ``change_id``, read in the caller's transaction."""
    row = (await conn.execute(_Q_CHANGE_BY_ID, {"b_id": change_id})).first()
    return change_record(row) if row is not None else None


#: PostgreSQL (``pgdirect``): every column of a change request, in the table's order.
_PG_CHANGE = pgdirect.Columns(change_requests)
_PG_CHANGE_BY_ID = f"SELECT {_PG_CHANGE.sql} FROM change_requests WHERE id = %s"  # noqa: S608


def change_from_pg(row: Sequence[Any]) -> ChangeRecord:
    """A change request from a row of ``_PG_CHANGE``'s columns."""
    rec = _CHANGE.of(_PG_CHANGE.names, _PG_CHANGE.read(row))
    return rec if rec.details is not None else dataclasses.replace(rec, details={})


async def read_change_pg(pg: pgdirect.PgConn, change_id: str) -> ChangeRecord | None:
    """PostgreSQL: ``read_change`` on psycopg's connection."""
    async with pg.cursor() as cur:
        await cur.execute(_PG_CHANGE_BY_ID, (change_id,))
        row = await cur.fetchone()
    return change_from_pg(row) if row is not None else None


def _desired_summaries(postgresql: bool) -> sa.Select[Any]:
    """A sweep page's desired states: the reference, then ``DesiredSummary``'s columns."""
    c = customers.c.customer
    refs = (
        # one array parameter: bound and prepared once, not 500 parameters rendered each time
        c == sa.any_(sa.bindparam("b_refs", type_=pg_ARRAY(sa.Text())))
        if postgresql
        else c.in_(sa.bindparam("b_refs", expanding=True))
    )
    return (
        sa.select(
            customers.c.customer.label("desired_ref"),
            change_requests.c.id,
            change_requests.c.customer,
            change_requests.c.plan_key,
            change_requests.c.plan_version,
            change_requests.c.status,
            change_requests.c.converges_at,
            change_requests.c.observed_mark,
        )
        .join(customers, customers.c.desired_change_id == change_requests.c.id)
        .where(refs)
    )


_Q_DESIRED_SUMMARIES = {"sqlite": _desired_summaries(False), "postgresql": _desired_summaries(True)}


# -- submitting: PostgreSQL's function and its SQLite twin ---------------------------------------


#: PostgreSQL (``pgdirect``): the whole submit in one statement, the function
#: ``reconciler_submit_change`` (Alembic revision 0003). Its rows: the request (the twin stored
#: earlier under the same (source, source_id), or the new row), then the requests it
#: superseded.
_PG_SUBMIT = (
    f"SELECT {_PG_CHANGE.sql} FROM reconciler_submit_change("  # noqa: S608 (schema's names)
    "%s, %s, %s, %s, CAST(%s AS integer), %s, %s, %s, %s, %s)"
)
_PG_ID = _PG_CHANGE.names.index("id")


def _submit_on_postgresql(r: ChangeRecord, events: Sequence[NewEvent]) -> PgOp[SubmitResult]:
    """PostgreSQL: one call of ``reconciler_submit_change``, then the events."""
    params = (
        r.id,
        r.customer,
        r.customer_id,
        r.plan_key,
        r.plan_version,
        aware(r.requested_at, "requested_at"),
        r.source.value,
        r.source_id,
        Jsonb(dict(r.details)),
        aware(r.received_at, "now"),
    )

    async def op(pg: pgdirect.PgConn) -> SubmitResult:
        async with pg.cursor() as cur:
            await cur.execute(_PG_SUBMIT, params)
            rows = await cur.fetchall()
        request = change_from_pg(rows[0])
        if request.id != r.id:
            return SubmitResult(request, created=False)
        await insert_events_pg(pg, events, request.customer, request.id, r.received_at)
        superseded = tuple(sorted(row[_PG_ID] for row in rows[1:]))
        return SubmitResult(request, created=True, superseded_ids=superseded)

    return op


#: The customer's desired request, joined beside the request being looked up.
_desired = change_requests.alias("desired")
#: Always one row: the request stored under (source, source_id) — a twin of the one being
#: submitted — or NULLs; the submit's reads join what else they need beside it.
_TWIN = (
    sa.select(sa.literal(1).label("one"))
    .subquery("one")
    .outerjoin(
        change_requests,
        sa.and_(
            change_requests.c.source == sa.bindparam("b_source"),
            change_requests.c.source_id == sa.bindparam("b_source_id"),
        ),
    )
)
#: SQLite, in one read (the transaction began IMMEDIATE: nothing commits meanwhile): the request
#: already stored under (source, source_id) if any (its columns, else NULLs), whether the
#: customer's row exists, its resolved id and the time of its desired request.
_Q_SQLITE_SUBMIT_READ = sa.select(
    change_requests,
    customers.c.customer.label("known_customer"),
    customers.c.customer_id.label("known_customer_id"),
    _desired.c.requested_at.label("desired_requested_at"),
).select_from(
    _TWIN.outerjoin(customers, customers.c.customer == sa.bindparam("b_customer")).outerjoin(
        _desired, _desired.c.id == customers.c.desired_change_id
    )
)
_Q_INSERT_CHANGE = change_requests.insert()
#: SQLite: supersede the customer's open requests other than ``b_id``; returns their ids.
_Q_SUPERSEDE_OPEN = (
    change_requests.update()
    .where(
        change_requests.c.customer == sa.bindparam("b_customer"),
        _is_open(change_requests.c.status),
        change_requests.c.id != sa.bindparam("b_id"),
    )
    .values(status=SUPERSEDED, updated_at=sa.bindparam("b_now"))
    .returning(change_requests.c.id)
)


def _make_desired() -> sa.Update:
    """SQLite: make ``b_id`` the customer's desired request, due now."""
    now = sa.bindparam("b_now", type_=customers.c.updated_at.type)
    return (
        customers.update()
        .where(customers.c.customer == sa.bindparam("b_customer"))
        .values(
            desired_change_id=sa.bindparam("b_id"),
            next_check_at=now,
            customer_id=sa.bindparam("b_customer_id"),
            version=customers.c.version + 1,
            updated_at=now,
        )
    )


_Q_MAKE_DESIRED = _make_desired()


def _submit_on_sqlite(r: ChangeRecord, events: Sequence[NewEvent]) -> Op[SubmitResult]:
    """SQLite: the rules of ``reconciler_submit_change`` as statements in one transaction."""
    now = r.received_at

    async def op(conn: AsyncConnection) -> SubmitResult:
        # the transaction began IMMEDIATE: nothing commits meanwhile
        seen = (
            await conn.execute(
                _Q_SQLITE_SUBMIT_READ,
                {"b_source": r.source.value, "b_source_id": r.source_id, "b_customer": r.customer},
            )
        ).one()
        if seen.id is not None:  # stored already: by an earlier call, or by this one's
            # attempt whose commit was reported failed (the id is chosen once per call)
            return SubmitResult(change_record(seen), created=seen.id == r.id)
        cust_id, desired_at = seen.known_customer_id, seen.desired_requested_at
        if seen.known_customer is None:
            await ensure_customer(conn, r.customer, now)
        stale = desired_at is not None and r.requested_at < desired_at
        record = dataclasses.replace(
            r,
            customer_id=r.customer_id or cust_id,
            status=ChangeStatus.SUPERSEDED if stale else ChangeStatus.PENDING,
        )
        superseded: tuple[str, ...] = ()
        await conn.execute(
            _Q_INSERT_CHANGE,
            {
                "id": record.id,
                "customer": record.customer,
                "customer_id": record.customer_id,
                "plan_key": record.plan_key,
                "plan_version": record.plan_version,
                "requested_at": record.requested_at,
                "received_at": now,
                "source": record.source.value,
                "source_id": record.source_id,
                "status": record.status.value,
                "attempts": 0,
                "updated_at": now,
                "details": dict(record.details),
            },
        )
        if not stale:
            ids = (
                await conn.execute(
                    _Q_SUPERSEDE_OPEN, {"b_customer": r.customer, "b_id": r.id, "b_now": now}
                )
            ).scalars()
            superseded = tuple(sorted(ids))
            await conn.execute(
                _Q_MAKE_DESIRED,
                {
                    "b_customer": r.customer,
                    "b_id": r.id,
                    "b_customer_id": record.customer_id,
                    "b_now": now,
                },
            )
        elif r.customer_id and not cust_id:
            await set_customer_id(conn, r.customer, r.customer_id, now)
        await insert_events(conn, events, r.customer, r.id, now)
        return SubmitResult(record, created=True, superseded_ids=superseded)

    return op


# -- the repository ---------------------------------------------------------------------------


_UPDATES: dict[tuple[tuple[str, ...], str], sa.Update] = {}


def _update_statement(columns: tuple[str, ...], guard: str) -> sa.Update:
    """``update_row``'s statement for these columns and status guard, built once per shape:
    SQLAlchemy then finds its compiled form by the statement's memoized cache key instead of
    building and hashing a new statement per commit. Parameters: ``v_<column>``, ``b_id``,
    ``b_status`` (the expected status, or superseded for the guard that excludes it)."""
    key = (columns, guard)
    q = _UPDATES.get(key)
    if q is None:
        c = change_requests.c
        q = change_requests.update().where(c.id == sa.bindparam("b_id", type_=c.id.type))
        status = sa.bindparam("b_status", type_=c.status.type)
        if guard == "expected":
            q = q.where(c.status == status)
        elif guard == "not_superseded":
            q = q.where(c.status != status)
        q = q.values({k: sa.bindparam(f"v_{k}", type_=c[k].type) for k in columns})
        q = _UPDATES.setdefault(key, q.returning(*change_requests.c))
    return q


_PG_UPDATES: dict[tuple[tuple[str, ...], str], tuple[str, pgdirect.Columns]] = {}


def _pg_update_statement(columns: tuple[str, ...], guard: str) -> tuple[str, pgdirect.Columns]:
    """PostgreSQL (``pgdirect``): ``_update_statement``'s twin, built once per shape. Its
    parameters: the columns' values in ``columns``' order, the id, then (unless the guard is
    ``none``) the status."""
    key = (columns, guard)
    found = _PG_UPDATES.get(key)
    if found is None:
        sets = pgdirect.Columns(change_requests, columns)
        where = {"expected": " AND status = %s", "not_superseded": " AND status <> %s"}
        sql = (  # schema names only (``pgdirect.Columns`` checks them), values bound
            f"UPDATE change_requests SET {', '.join(f'{c} = %s' for c in sets.names)} "  # noqa: S608
            f"WHERE id = %s{where.get(guard, '')} RETURNING {_PG_CHANGE.sql}"
        )
        found = _PG_UPDATES.setdefault(key, (sql, sets))
    return found


def _guard(values: Mapping[str, Any], expected: str | None) -> tuple[str, str]:
    """``update_row``'s status guard and the status it compares with."""
    if expected is not None:
        return "expected", expected
    if values.get("status", SUPERSEDED) != SUPERSEDED:
        # Superseded is final: a worker still busy with a request that a newer one
        # replaced meanwhile must not bring it back as applied/scheduled/converged.
        return "not_superseded", SUPERSEDED
    return "none", SUPERSEDED


class Changes:
    """The ``change_requests`` table, and the customer's desired pointer a submit moves."""

    def __init__(self, db: Database) -> None:
        self._db = db
        self._q_summaries = _Q_DESIRED_SUMMARIES[db.dialect]

    async def submit_change(
        self,
        customer: str,
        plan_key: str,
        plan_version: int | None,
        requested_at: datetime,
        source: ChangeSource | str,
        source_id: str | None,
        now: datetime,
        events: Sequence[NewEvent] = (),
        *,
        customer_id: str | None = None,
        details: Mapping[str, Any] | None = None,
    ) -> SubmitResult:
        """Record a change request and make it the desired state if it is the latest.

        One transaction: idempotent on (source, source_id); a request older (by
        ``requested_at``) than the customer's desired one is stored as superseded; otherwise the
        customer's other open requests are superseded, the customer's desired pointer moves to
        the new request and the customer is due now. ``events`` are enqueued in the same
        transaction (for a repeated request nothing is written).
        """
        now = aware(now, "now")
        # The id is chosen once per call, before any attempt: a retry that finds it stored
        # knows its own first attempt committed.
        request = ChangeRecord(
            id=new_ulid(),
            customer=customer,
            customer_id=customer_id or None,
            plan_key=plan_key,
            plan_version=plan_version,
            requested_at=aware(requested_at, "requested_at"),
            received_at=now,
            source=ChangeSource(source),
            source_id=source_id,
            status=ChangeStatus.PENDING,
            direction=None,
            timing=None,
            rule=None,
            effective_at=None,
            converges_at=None,
            last_error=None,
            attempts=0,
            next_attempt_at=None,
            updated_at=now,
            details=dict(details or {}),
        )
        held = self._db.held(customer)  # a claim on the customer: through its connection
        if self._db.sqlite:
            op = _submit_on_sqlite(request, events)
            if held is not None:
                return await held(op)
        else:
            pg_op = _submit_on_postgresql(request, events)
            if held is not None:
                return await held(pgdirect.as_op(pg_op))
        # With a source id a retry finds the first attempt's row: safe to retry, and on
        # PostgreSQL (without events to insert beside it) one round trip in autocommit.
        idempotent = source_id is not None
        for attempt in range(3):
            try:
                if self._db.sqlite:
                    return await self._db.tx(op, write=True, idempotent=idempotent)
                return await self._db.pg_tx(
                    pg_op, write=True, idempotent=idempotent, autocommit=idempotent and not events
                )
            except StoreConflictError:
                # Two replicas inserted the same (source, source_id) or the same new customer at
                # once: the retry sees the winner's row.
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    async def get_change(self, change_id: str) -> ChangeRecord | None:
        async def op(conn: AsyncConnection) -> ChangeRecord | None:
            return await read_change(conn, change_id)

        return await self._db.tx(op, write=False)

    async def desired_for(self, customer: str) -> ChangeRecord | None:
        """The customer's desired request (the latest by requested_at), whatever its status."""
        q = (
            sa.select(change_requests)
            .join(customers, customers.c.desired_change_id == change_requests.c.id)
            .where(customers.c.customer == customer)
        )
        return await read_one(self._db, q, change_record)

    async def desired_summaries(
        self, listed: Iterable[tuple[str | None, str | None]]
    ) -> dict[str, DesiredSummary]:
        """What a sweep checks of the desired requests of a page of listed customers, given as
        (key, OpenMeter id), in one transaction (a query per 500 references) instead of one
        per customer. Desired state is stored under the reference its request used, the
        key as a rule: each customer is looked up by key and, when that finds nothing, by id.
        Keyed by the reference that matched; customers without desired state are absent."""
        pairs = list(listed)

        async def op(conn: AsyncConnection) -> dict[str, DesiredSummary]:
            out: dict[str, DesiredSummary] = {}
            keys = list(dict.fromkeys(k for k, _ in pairs if k))
            await self._read_summaries(conn, keys, out)
            ids = [i for k, i in pairs if i and (not k or k not in out)]
            await self._read_summaries(conn, list(dict.fromkeys(ids)), out)
            return out

        return await self._db.tx(op, write=False)

    async def _read_summaries(
        self, conn: AsyncConnection, refs: list[str], out: dict[str, DesiredSummary]
    ) -> None:
        """Add the desired-state summaries of ``refs`` to ``out`` (one query per 500)."""
        for i in range(0, len(refs), 500):
            rows = await conn.execute(self._q_summaries, {"b_refs": refs[i : i + 500]})
            for ref, id_, customer, plan_key, plan_version, status, converges_at, mark in rows:
                out[ref] = DesiredSummary(
                    id_, customer, plan_key, plan_version, _TO_STATUS(status), converges_at, mark
                )

    async def list_changes(
        self,
        status: ChangeStatus | str | None = None,
        customer: str | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> tuple[list[ChangeRecord], str | None]:
        """Newest first (by received_at, then id). ``next_cursor`` is None on the last page."""
        c = change_requests.c
        q = sa.select(change_requests)
        if status is not None:
            q = q.where(c.status == ChangeStatus(status).value)
        if customer is not None:
            q = q.where(c.customer == customer)
        return await keyset_page(
            self._db, "changes", q, c.received_at, c.id, cursor, limit, change_record, _received
        )

    def values(self, fields: Mapping[str, Any], now: datetime | None) -> dict[str, Any]:
        """``update_change``'s fields as column values, checked, with ``updated_at``."""
        unknown = set(fields) - UPDATABLE_CHANGE_FIELDS
        if unknown:
            raise TypeError(f"update_change: unknown fields {sorted(unknown)}")
        values: dict[str, Any] = {}
        for k, v in fields.items():
            if k == "status":
                v = ChangeStatus(v).value
            elif k == "direction" and v is not None:
                v = Direction(v).value
            elif k == "timing" and v is not None:
                v = Timing(v).value
            elif k == "details":
                v = dict(v or {})
            elif k in _TIMESTAMP_FIELDS and v is not None:
                v = aware(v, k)  # a naive one is refused here, in the caller's terms
            values[k] = v
        values["updated_at"] = aware(now, "now") if now is not None else self._db.clock()
        return values

    async def update_row(
        self,
        conn: AsyncConnection,
        change_id: str,
        values: Mapping[str, Any],
        expected: str | None,
        events: Sequence[NewEvent],
    ) -> ChangeRecord:
        """In the caller's transaction: the update of ``update_change`` (``values`` from
        ``values``), and its events."""
        guard, status = _guard(values, expected)
        params = {f"v_{k}": v for k, v in values.items()}
        params["b_id"] = change_id
        params["b_status"] = status
        result = await conn.execute(_update_statement(tuple(sorted(values)), guard), params)
        row = result.first()
        if row is None:
            current = await read_change(conn, change_id)
            raise _not_updated(change_id, expected, current)
        record = change_record(row)
        await insert_events(conn, events, record.customer, record.id, values["updated_at"])
        return record

    async def update_row_pg(
        self,
        pg: pgdirect.PgConn,
        change_id: str,
        values: Mapping[str, Any],
        expected: str | None,
        events: Sequence[NewEvent],
    ) -> ChangeRecord:
        """PostgreSQL: ``update_row`` on psycopg's connection (``Database.pg_tx``)."""
        guard, status = _guard(values, expected)
        columns = tuple(sorted(values))
        sql, sets = _pg_update_statement(columns, guard)
        params = [*sets.values(values), change_id]
        if guard != "none":
            params.append(status)
        async with pg.cursor() as cur:
            await cur.execute(sql, params)
            row = await cur.fetchone()
        if row is None:
            raise _not_updated(change_id, expected, await read_change_pg(pg, change_id))
        record = change_from_pg(row)
        await insert_events_pg(pg, events, record.customer, record.id, values["updated_at"])
        return record

    async def update_change(
        self,
        /,  # ``self`` is not a field of ``**fields``
        change_id: str,
        *,
        expected_status: ChangeStatus | str | None = None,
        events: Sequence[NewEvent] = (),
        now: datetime | None = None,
        **fields: Any,
    ) -> ChangeRecord:
        """Update a change request and enqueue ``events`` in the same transaction.

        ``expected_status``: optimistic concurrency; ``StaleChangeError`` when the row is no
        longer in that status. ``ChangeNotFoundError`` for an unknown id.
        """
        values = self.values(fields, now)
        expected = ChangeStatus(expected_status).value if expected_status is not None else None

        if self._db.sqlite:

            async def op(conn: AsyncConnection) -> ChangeRecord:
                return await self.update_row(conn, change_id, values, expected, events)

            return await self._db.tx(op, write=True)

        async def pg_op(pg: pgdirect.PgConn) -> ChangeRecord:
            return await self.update_row_pg(pg, change_id, values, expected, events)

        return await self._db.pg_tx(pg_op, write=True)

    async def refresh_observed_mark(self, change_id: str, old: str | None, new: str) -> bool:
        """The sweep's write when a converged customer's subscription moved but its items did
        not: replace the change's ``observed_mark`` if it is still ``old`` and the change still
        converged (a reconcile that settled it meanwhile wrote its own). True if written."""
        c = change_requests.c
        q = (
            change_requests.update()
            .where(
                c.id == change_id,
                c.status == ChangeStatus.CONVERGED.value,
                c.observed_mark.is_(None) if old is None else c.observed_mark == old,
            )
            .values(observed_mark=new)
        )

        async def op(conn: AsyncConnection) -> bool:
            return bool((await conn.execute(q)).rowcount)

        return await self._db.tx(op, write=True, idempotent=True)

    async def count_changes_by_status(self) -> dict[str, int]:
        return await count_by_status(self._db, change_requests.c.status, list(ChangeStatus))


def _not_updated(
    change_id: str, expected: str | None, current: ChangeRecord | None
) -> ChangeNotFoundError | StaleChangeError:
    """Why ``update_row`` matched no row: the change is unknown, or its status moved on."""
    if current is None:
        return ChangeNotFoundError(f"change {change_id} not found")
    return StaleChangeError(change_id, expected or "open", current.status.value)


def _received(change: ChangeRecord) -> tuple[datetime, str]:
    return change.received_at, change.id
