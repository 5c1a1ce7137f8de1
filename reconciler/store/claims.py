"""Claims and leadership: one worker per customer, one process per singleton duty.

PostgreSQL: a claim is a row lock (``FOR UPDATE SKIP LOCKED``) held by a transaction on a
dedicated connection for the whole pass; leadership is a session-level advisory lock. SQLite:
one process owns the file, so a claim is an in-process flag and leadership is always held.
See docs/STORE.md, "Claims: one worker per customer" and "Leadership".
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy import exc
from sqlalchemy.engine import Row
from sqlalchemy.ext.asyncio import AsyncConnection

from reconciler.store import pgdirect
from reconciler.store.changes import desired_of, read_change
from reconciler.store.customers import (
    Q_CUSTOMER,
    Customers,
    customer_record,
    due_query,
    ensure_customer,
    set_customer_id,
    set_customer_id_pg,
)
from reconciler.store.database import Database, Op, PgOp, advisory_key
from reconciler.store.errors import StoreUnavailable
from reconciler.store.rows import aware, read_scalars
from reconciler.store.schema import change_requests, customers
from reconciler.store.types import ChangeRecord, CustomerRecord

T = TypeVar("T")


class Keep:
    """``Store.commit(reschedule=KEEP)``: leave the customer's next check as it is."""

    __slots__ = ()


KEEP = Keep()


def _reschedule() -> sa.Update:
    """A claim's next check, in one statement: ``b_at``, unless the row changed since the claim
    read it (``version``: a request submitted meanwhile made it due) — then the earlier of the
    two, and the row's own time when ``b_at`` is None (nothing due by the pass)."""
    c = customers.c
    at = sa.bindparam("b_at", type_=c.next_check_at.type)
    return (
        customers.update()
        .where(c.customer == sa.bindparam("b_customer"))
        .values(
            next_check_at=sa.case(
                (sa.or_(c.version == sa.bindparam("b_version"), c.next_check_at.is_(None)), at),
                (at.is_(None), c.next_check_at),
                (at < c.next_check_at, at),
                else_=c.next_check_at,
            ),
            updated_at=sa.bindparam("b_now", type_=c.updated_at.type),
        )
        .returning(c.next_check_at)
    )


_Q_RESCHEDULE = _reschedule()
_PG_RESCHEDULE = pgdirect.Statement(_Q_RESCHEDULE)
_claimed_desired = change_requests.alias("claimed_desired")
#: PostgreSQL: a reconcile's claim, a row lock kept for the pass (None: missing, or held), with
#: the customer's desired request beside it (``desired_<column>``). Nothing waits (SKIP
#: LOCKED), so both come from one snapshot, in which a request and the pointer to it were
#: committed together.
_Q_CLAIM_CUSTOMER = (
    sa.select(customers, *(c.label(f"desired_{c.name}") for c in _claimed_desired.c))
    .select_from(
        customers.outerjoin(
            _claimed_desired, _claimed_desired.c.id == customers.c.desired_change_id
        )
    )
    .where(customers.c.customer == sa.bindparam("b_customer"))
    .with_for_update(of=customers, skip_locked=True)
)
_PG_CLAIM_CUSTOMER = pgdirect.Statement(_Q_CLAIM_CUSTOMER)
_CLAIM_VERSION = _PG_CLAIM_CUSTOMER.names.index("version")


async def _claim_rows(
    conn: AsyncConnection, customer: str
) -> tuple[Row[Any] | None, ChangeRecord | None]:
    """SQLite: the customer's row and its desired request."""
    row = (await conn.execute(Q_CUSTOMER, {"b_customer": customer})).first()
    if row is None or row.desired_change_id is None:
        return row, None
    return row, await read_change(conn, row.desired_change_id)


def _lock_row(customer: str) -> PgOp[list[list[Any]]]:
    """PostgreSQL: the claim's read (``_Q_CLAIM_CUSTOMER``): one row, or none."""

    async def op(pg: pgdirect.PgConn) -> list[list[Any]]:
        return await _PG_CLAIM_CUSTOMER.rows(pg, {"b_customer": customer})

    return op


def _run_all_pg(ops: list[PgOp[None]]) -> PgOp[None]:
    async def op(pg: pgdirect.PgConn) -> None:
        for each in ops:
            await each(pg)

    return op


class Claim:
    """This worker's exclusive right to reconcile one customer, for the ``async with`` block.

    The customer row as it was when claimed is available as attributes. Writes to the customer's
    row made while the claim is held should go through the claim (``reschedule``,
    ``set_customer_id``); ``Store.schedule_customer`` and ``Store.submit_change`` called from
    inside the block are routed through it automatically.
    """

    def __init__(
        self,
        db: Database,
        row: CustomerRecord,
        version: int,
        conn: AsyncConnection | None,
        desired: ChangeRecord | None = None,
    ) -> None:
        self._db = db
        self._conn = conn  # PostgreSQL: the connection holding the row lock
        self._lock = asyncio.Lock()
        self._version = version
        self.customer = row.customer
        self.customer_id = row.customer_id
        self.desired_change_id = row.desired_change_id
        self.next_check_at = row.next_check_at
        #: The customer's desired request as it was when claimed (``Store.desired_for``).
        self.desired = desired
        # PostgreSQL: the engine steps' customer-row writes, run when the claim ends (``defer``)
        self._deferred: list[PgOp[None]] = []

    def is_due(self, now: datetime) -> bool:
        """Whether the customer was due at ``now`` when claimed. A name from ``claim_due`` may
        have been handled by another worker between that call and ``claim()``: check this."""
        return self.next_check_at is not None and self.next_check_at <= now

    async def reschedule(self, at: datetime | None) -> None:
        """Set when the worker should look at this customer next (None: nothing due).

        A request submitted while the claim was held (only possible on SQLite, where the claim
        is not a row lock) is not lost: the earlier of the two times wins then.
        """
        await self._run(self._reschedule_op(at))

    def _reschedule_params(self, at: datetime | None) -> dict[str, Any]:
        return {
            "b_customer": self.customer,
            "b_version": self._version,
            "b_at": aware(at, "at") if at is not None else None,
            "b_now": self._db.clock(),
        }

    def _reschedule_op(self, at: datetime | None) -> Op[None]:
        params = self._reschedule_params(at)

        async def op(conn: AsyncConnection) -> None:
            row = (await conn.execute(_Q_RESCHEDULE, params)).first()
            if row is not None:
                self.next_check_at = row.next_check_at

        return op

    def _reschedule_pg(self, at: datetime | None) -> PgOp[None]:
        params = self._reschedule_params(at)

        async def op(pg: pgdirect.PgConn) -> None:
            for (next_check_at,) in await _PG_RESCHEDULE.rows(pg, params):
                self.next_check_at = next_check_at

        return op

    async def set_customer_id(self, customer_id: str) -> None:
        """Remember the resolved OpenMeter id of this customer."""
        await self._run(self._customer_id_op(customer_id))

    def _customer_id_op(self, customer_id: str) -> Op[None]:
        now = self._db.clock()

        async def op(conn: AsyncConnection) -> None:
            await set_customer_id(conn, self.customer, customer_id, now)
            self.customer_id = customer_id

        return op

    def _customer_id_pg(self, customer_id: str) -> PgOp[None]:
        now, customer = self._db.clock(), self.customer

        async def op(pg: pgdirect.PgConn) -> None:
            await set_customer_id_pg(pg, customer, customer_id, now)

        return op

    def _step_ops(
        self, customer_id: str | None, reschedule: datetime | Keep | None
    ) -> list[Op[None]]:
        """SQLite: an engine step's writes to the customer's row (``Store.commit``), run in
        the step's transaction."""
        ops: list[Op[None]] = []
        if self._changes_customer_id(customer_id):
            assert customer_id is not None
            ops.append(self._customer_id_op(customer_id))
        if not isinstance(reschedule, Keep):
            ops.append(self._reschedule_op(reschedule))
        return ops

    def _changes_customer_id(self, customer_id: str | None) -> bool:
        return customer_id is not None and self.customer_id != customer_id

    def defer(self, customer_id: str | None, reschedule: datetime | Keep | None) -> None:
        """PostgreSQL: an engine step's writes to the customer's row (``Store.commit``), run on
        the claim's connection right before it commits, in order with each other. They commit
        with the claim either way (the row lock's transaction), so running them at the end
        changes nothing anyone can see, and saves each step's savepoint round trips. Nothing
        reads them back during the pass: the routed submits that may run meanwhile only make
        the row due earlier, which the reschedule's ``version`` check already allows for."""
        if self._changes_customer_id(customer_id):
            assert customer_id is not None
            self._deferred.append(self._customer_id_pg(customer_id))
            self.customer_id = customer_id  # written when the claim ends: not again before
        if not isinstance(reschedule, Keep):
            self._deferred.append(self._reschedule_pg(reschedule))

    async def _flush(self) -> None:
        """Run the deferred writes (``defer``) on the claim's connection."""
        if not self._deferred or self._conn is None:
            return
        ops, self._deferred = self._deferred, []
        async with self._lock:
            try:
                await pgdirect.as_op(_run_all_pg(ops))(self._conn)
            except exc.DBAPIError as e:
                raise self._db.fault(e, "claim connection lost") from e

    async def _run(self, fn: Op[T]) -> T:
        """A write through the claim: on its connection (a savepoint), or on SQLite as any."""
        if self._conn is None:
            return await self._db.tx(fn, write=True)
        async with self._lock:
            try:
                async with self._conn.begin_nested():
                    return await fn(self._conn)
            except exc.DBAPIError as e:
                raise self._db.fault(e, "claim connection lost") from e


class Leadership:
    """Handle of ``Store.leader(name)``. ``held`` is true while this process is the leader."""

    def __init__(self, db: Database, name: str) -> None:
        self._db = db
        self.name = name
        self._key = advisory_key("leader:" + name)
        self._conn: AsyncConnection | None = None
        self._single = db.sqlite  # SQLite: single instance, always the leader
        self._held = self._single

    @property
    def held(self) -> bool:
        return self._held

    async def check(self) -> bool:
        """Re-validate leadership (connection still alive) or retry acquiring it."""
        if self._db.closed:
            return False
        if self._single:
            return True
        if self._held and self._conn is not None:
            try:
                await self._conn.execute(sa.text("SELECT 1"))
                await self._conn.commit()
                return True
            except (exc.DBAPIError, OSError):
                await self._drop()
        return await self._try_acquire()

    async def _try_acquire(self) -> bool:
        try:
            if self._conn is None:
                self._conn = await self._db.pg.connect()
            got = (
                await self._conn.execute(sa.select(sa.func.pg_try_advisory_lock(self._key)))
            ).scalar_one()
            await self._conn.commit()  # session-level lock: survives the transaction
        except (exc.DBAPIError, OSError):
            await self._drop()
            return False
        self._held = bool(got)
        return self._held

    async def _drop(self) -> None:
        self._held = False
        conn, self._conn = self._conn, None
        if conn is not None:
            # Closing the DBAPI connection (not returning it to the pool) ends the session, and
            # with it any session-level advisory lock it holds.
            with contextlib.suppress(Exception):
                await conn.invalidate()
            with contextlib.suppress(Exception):
                await conn.close()

    async def _release(self) -> None:
        if self._single:
            self._held = False
            return
        if self._conn is not None and self._held:
            with contextlib.suppress(Exception):
                await self._conn.execute(sa.select(sa.func.pg_advisory_unlock(self._key)))
                await self._conn.commit()
        await self._drop()


class Claims:
    """Claims on customers and leadership of singleton duties."""

    def __init__(self, db: Database, customers: Customers) -> None:
        self._db = db
        self._customers = customers
        self._in_process: set[str] = set()  # SQLite: the customers claimed in this process
        self._leaderships: set[Leadership] = set()
        db.on_close(self._release_leaderships)

    async def claim_due(self, now: datetime, limit: int = 100) -> list[str]:
        """Due customers that no worker holds a claim on right now (candidates for ``claim``).

        PostgreSQL: ``FOR UPDATE SKIP LOCKED`` skips customers claimed by any replica; the rows
        are not kept locked, so ``claim()`` remains the guarantee of exclusivity.
        """
        now = aware(now, "now")
        if self._db.sqlite:
            names = await self._customers.due_customers(now, limit + len(self._in_process))
            return [n for n in names if n not in self._in_process][:limit]
        return await read_scalars(self._db, due_query(now, limit).with_for_update(skip_locked=True))

    def claim(self, customer: str) -> contextlib.AbstractAsyncContextManager[Claim | None]:
        """Exclusive per-customer claim; yields None when another worker holds it.

        PostgreSQL: ``SELECT … FOR UPDATE SKIP LOCKED`` on the customer's row, on a dedicated
        connection kept in its transaction for the whole block (a crashed replica's claim ends
        with its connection). SQLite: an in-process flag per customer.
        """
        return self._flag(customer) if self._db.sqlite else self._row_lock(customer)

    @contextlib.asynccontextmanager
    async def _flag(self, customer: str) -> AsyncIterator[Claim | None]:
        if customer in self._in_process:
            yield None
            return
        self._in_process.add(customer)
        try:
            now = self._db.clock()

            async def read(conn: AsyncConnection) -> tuple[Row[Any] | None, ChangeRecord | None]:
                return await _claim_rows(conn, customer)

            async def load(conn: AsyncConnection) -> tuple[Row[Any] | None, ChangeRecord | None]:
                await ensure_customer(conn, customer, now)
                return await _claim_rows(conn, customer)

            # Read first: the row nearly always exists, and a read needs no write lock.
            row, desired = await self._db.tx(read, write=False)
            if row is None:
                row, desired = await self._db.tx(load, write=True, idempotent=True)
            assert row is not None
            claim = Claim(self._db, customer_record(row), row.version, None, desired)
            with self._db.hold(customer, claim._run):
                yield claim
        finally:
            self._in_process.discard(customer)

    @contextlib.asynccontextmanager
    async def _row_lock(self, customer: str) -> AsyncIterator[Claim | None]:
        # Lock the row at once: it nearly always exists and is free. Otherwise it is missing
        # or held: make sure it exists (a short committed transaction, which also waits out
        # another replica's uncommitted insert of it) and try once more.
        now = self._db.clock()

        async def ensure(conn: AsyncConnection) -> None:
            await ensure_customer(conn, customer, now)

        try:
            conn = await self._db.pg.connect()
        except (exc.DBAPIError, OSError) as e:
            raise StoreUnavailable(f"database unavailable: {e}") from e
        try:
            for attempt in (1, 2):
                try:
                    await conn.begin()
                    found = await pgdirect.as_op(_lock_row(customer))(conn)
                except exc.DBAPIError as e:
                    raise self._db.fault(e, "database unavailable") from e
                if found:
                    break
                await conn.rollback()
                if attempt == 1:
                    await self._db.tx(ensure, write=True, idempotent=True)
            if not found:
                yield None  # another worker holds it
                return
            keys, locked = _PG_CLAIM_CUSTOMER.names, found[0]
            claim = Claim(
                self._db,
                customer_record.of(keys, locked),
                locked[_CLAIM_VERSION],
                conn,
                desired_of(keys, locked),
            )
            with self._db.hold(customer, claim._run):
                try:
                    yield claim
                except BaseException:
                    # Writes made through the claim (reschedule, routed submits) were reported
                    # as done: keep them, as on SQLite where they commit at once. Best effort.
                    try:
                        await claim._flush()
                        await conn.commit()
                    except BaseException:
                        with contextlib.suppress(Exception):
                            await conn.invalidate()
                    raise
            await claim._flush()
            try:
                await conn.commit()
            except exc.DBAPIError as e:
                raise self._db.fault(
                    e, "claim connection lost before commit", ambiguous=True
                ) from e
        finally:
            await conn.close()

    @contextlib.asynccontextmanager
    async def leader(self, name: str) -> AsyncIterator[Leadership]:
        """Singleton duty. ``handle.held`` tells whether this process is the leader now; call
        ``await handle.check()`` before each round to re-validate or retry acquisition."""
        handle = Leadership(self._db, name)
        self._leaderships.add(handle)
        if not self._db.sqlite:
            await handle._try_acquire()
        try:
            yield handle
        finally:
            self._leaderships.discard(handle)
            await handle._release()

    async def _release_leaderships(self) -> None:
        for handle in list(self._leaderships):
            await handle._release()
