"""Customers and scheduling: the per-customer row (desired pointer, resolved OpenMeter id) and
when the worker should look at each customer next (``next_check_at``)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from reconciler.store import pgdirect
from reconciler.store.database import Database
from reconciler.store.rows import Mapper, aware, read_all, read_one, read_scalars
from reconciler.store.schema import customers
from reconciler.store.types import CustomerRecord

customer_record = Mapper(CustomerRecord)

#: The customer's row by its key.
Q_CUSTOMER = sa.select(customers).where(customers.c.customer == sa.bindparam("b_customer"))
#: Create the customer's row unless it exists. Written as text: the dialects' ``ON CONFLICT``
#: insert constructs have no cache key, so SQLAlchemy compiled them again on every call (a
#: webhook for a new customer). Both databases accept this spelling.
_Q_ENSURE_CUSTOMER = sa.text(
    "INSERT INTO customers (customer, version, updated_at) "
    "VALUES (:b_customer, 0, :b_updated_at) ON CONFLICT (customer) DO NOTHING"
).bindparams(
    sa.bindparam("b_customer", type_=customers.c.customer.type),
    sa.bindparam("b_updated_at", type_=customers.c.updated_at.type),
)


async def ensure_customer(conn: AsyncConnection, customer: str, now: datetime) -> None:
    """Create the customer's row in the caller's transaction unless it exists."""
    await conn.execute(_Q_ENSURE_CUSTOMER, {"b_customer": customer, "b_updated_at": now})


_Q_SET_CUSTOMER_ID = (
    customers.update()
    .where(customers.c.customer == sa.bindparam("b_customer", type_=customers.c.customer.type))
    .values(
        customer_id=sa.bindparam("b_customer_id", type_=customers.c.customer_id.type),
        updated_at=sa.bindparam("b_updated_at", type_=customers.c.updated_at.type),
    )
)
_Q_ALIASES = (
    sa.select(customers)
    .where(customers.c.customer_id == sa.bindparam("b_customer_id"))
    .order_by(customers.c.customer)
)


#: PostgreSQL (``pgdirect``): the same statements on psycopg's connection.
_PG_SET_CUSTOMER_ID = pgdirect.Statement(_Q_SET_CUSTOMER_ID)
_PG_ALIASES = pgdirect.Statement(_Q_ALIASES)


def _customer_id_params(customer: str, customer_id: str, now: datetime) -> dict[str, Any]:
    return {"b_customer": customer, "b_customer_id": customer_id, "b_updated_at": now}


async def set_customer_id(
    conn: AsyncConnection, customer: str, customer_id: str, now: datetime
) -> None:
    """Remember the resolved OpenMeter id of ``customer``, in the caller's transaction."""
    await conn.execute(_Q_SET_CUSTOMER_ID, _customer_id_params(customer, customer_id, now))


async def set_customer_id_pg(
    pg: pgdirect.PgConn, customer: str, customer_id: str, now: datetime
) -> None:
    """PostgreSQL: ``set_customer_id`` on psycopg's connection."""
    await _PG_SET_CUSTOMER_ID.rows(pg, _customer_id_params(customer, customer_id, now))


def due_query(now: datetime, limit: int) -> sa.Select[Any]:
    """Customers whose ``next_check_at`` has passed, most overdue first."""
    c = customers.c
    return (
        sa.select(c.customer)
        .where(c.next_check_at <= now)
        .order_by(c.next_check_at, c.customer)
        .limit(limit)
    )


class Customers:
    """The ``customers`` table: lookups and the schedule."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def get_customer(self, customer: str) -> CustomerRecord | None:
        q = sa.select(customers).where(customers.c.customer == customer)
        return await read_one(self._db, q, customer_record)

    async def aliases(self, customer_id: str) -> list[CustomerRecord]:
        """Every customer row resolved to this OpenMeter customer id (a portal may address one
        customer by id in one request and by key in another)."""
        params = {"b_customer_id": customer_id}
        if self._db.sqlite:
            return await read_all(self._db, _Q_ALIASES, customer_record, params)

        async def op(pg: pgdirect.PgConn) -> list[CustomerRecord]:
            rows = await _PG_ALIASES.rows(pg, params)
            return [customer_record.of(_PG_ALIASES.names, r) for r in rows]

        # one statement, atomic on its own: no BEGIN and COMMIT
        return await self._db.pg_tx(op, write=False, autocommit=True)

    async def schedule_customer(self, customer: str, at: datetime) -> None:
        """Make the customer due at ``at`` (or keep an earlier due time already set)."""
        at = aware(at, "at")
        now = self._db.clock()

        async def op(conn: AsyncConnection) -> None:
            await ensure_customer(conn, customer, now)
            nc = customers.c.next_check_at
            await conn.execute(
                customers.update()
                .where(customers.c.customer == customer)
                .values(
                    next_check_at=sa.case(
                        (sa.or_(nc.is_(None), nc > at), at),
                        else_=nc,
                    ),
                    version=customers.c.version + 1,
                    updated_at=now,
                )
            )

        held = self._db.held(customer)  # a claim on the customer: through its connection
        if held is not None:
            await held(op)
            return
        await self._db.tx(op, write=True, idempotent=True)

    async def due_customers(self, now: datetime, limit: int = 100) -> list[str]:
        """Customers whose ``next_check_at`` has passed, most overdue first."""
        return await read_scalars(self._db, due_query(aware(now, "now"), limit))

    async def next_due_at(self) -> datetime | None:
        async def op(conn: AsyncConnection) -> datetime | None:
            value: datetime | None = (
                await conn.execute(sa.select(sa.func.min(customers.c.next_check_at)))
            ).scalar_one_or_none()
            return value

        return await self._db.tx(op, write=False)

    async def customers_with_desired(self, page_size: int = 500) -> AsyncIterator[str]:
        """Every customer with a desired request, in key order (pages of ``page_size``)."""
        after: str | None = None
        while True:
            q = sa.select(customers.c.customer).where(customers.c.desired_change_id.is_not(None))
            if after is not None:
                q = q.where(customers.c.customer > after)
            page = await read_scalars(self._db, q.order_by(customers.c.customer).limit(page_size))
            for name in page:
                yield name
            if len(page) < page_size:
                return
            after = page[-1]
