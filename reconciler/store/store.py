"""``Store``: the one object the rest of the product uses for persistence.

One ``Store`` per process. It opens a ``Database`` (``database.py``: transactions, retry,
dialect, migrations) and builds a repository per concern on it; each of its methods is one
of theirs (listed below by concern, so this class is also the map of where each lives), except
``commit``, the engine's one write per step, which spans them. SQLite (``sqlite3`` on a
database thread, WAL) for a single instance, PostgreSQL (psycopg 3 async) for replicas. See
docs/STORE.md.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from types import MethodType
from typing import Any, Concatenate, Generic, ParamSpec, TypeVar, Unpack, cast, overload

from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncConnection

from reconciler.store.audit import Audit, audit_rows, insert_audit, insert_audit_pg
from reconciler.store.changes import Changes
from reconciler.store.claims import KEEP, Claim, Claims, Keep, Leadership
from reconciler.store.customers import Customers
from reconciler.store.database import Database, Op, OpenOptions, advisory_key
from reconciler.store.outbox import Outbox, insert_events, insert_events_pg
from reconciler.store.pgdirect import PgConn
from reconciler.store.types import AuditEntry, ChangeRecord, NewEvent

__all__ = ["KEEP", "Claim", "Keep", "Leadership", "Store", "advisory_key"]

S = TypeVar("S")
P = ParamSpec("P")
R = TypeVar("R")


class _Via(Generic[S, P, R]):
    """``Store.<name>``: the method of the same name of the repository the store keeps in
    ``attr`` (its signature, docstring and behaviour), bound to that repository."""

    def __init__(self, attr: str, method: Callable[Concatenate[S, P], R]) -> None:
        self._attr = attr
        self._method = method
        self.__doc__ = method.__doc__

    @overload
    def __get__(self, store: None, owner: type[Any]) -> _Via[S, P, R]: ...
    @overload
    def __get__(self, store: Store, owner: type[Any] | None = None) -> Callable[P, R]: ...
    def __get__(self, store: Store | None, owner: type[Any] | None = None) -> Any:
        if store is None:
            return self
        return cast(Callable[P, R], MethodType(self._method, getattr(store, self._attr)))


class Store:
    """Async repository over SQLite or PostgreSQL. Create with ``await Store.open(url, ...)``."""

    def __init__(self, db: Database) -> None:
        #: Transactions and the dialect (tests and tools reach below the repositories here).
        self.db = db
        self.url: URL = db.url
        self.instance_id: str = db.instance_id
        self.read_only: bool = db.read_only
        self._changes = Changes(db)
        self._customers = Customers(db)
        self._claims = Claims(db, self._customers)
        self._audit = Audit(db)
        self._outbox = Outbox(db)

    # -- lifecycle (database.py) --------------------------------------------------------------

    @classmethod
    async def open(cls, url: str | URL, **options: Unpack[OpenOptions]) -> Store:
        """Open (not migrate) the database; ``options`` and the rules: ``Database.open``.
        SQLite files are locked against a second process unless ``read_only``."""
        return cls(await Database.open(url, **options))

    close = _Via("db", Database.close)
    ping = _Via("db", Database.ping)
    migrate = _Via("db", Database.migrate)
    is_migrated = _Via("db", Database.is_migrated)

    async def __aenter__(self) -> Store:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    @property
    def dialect(self) -> str:
        return self.db.dialect

    # -- change requests (changes.py) ---------------------------------------------------------

    submit_change = _Via("_changes", Changes.submit_change)
    get_change = _Via("_changes", Changes.get_change)
    desired_for = _Via("_changes", Changes.desired_for)
    desired_summaries = _Via("_changes", Changes.desired_summaries)
    list_changes = _Via("_changes", Changes.list_changes)
    update_change = _Via("_changes", Changes.update_change)
    refresh_observed_mark = _Via("_changes", Changes.refresh_observed_mark)
    count_changes_by_status = _Via("_changes", Changes.count_changes_by_status)

    # -- customers and scheduling (customers.py) ----------------------------------------------

    get_customer = _Via("_customers", Customers.get_customer)
    aliases = _Via("_customers", Customers.aliases)
    schedule_customer = _Via("_customers", Customers.schedule_customer)
    due_customers = _Via("_customers", Customers.due_customers)
    next_due_at = _Via("_customers", Customers.next_due_at)
    customers_with_desired = _Via("_customers", Customers.customers_with_desired)

    # -- claims and leadership (claims.py) ----------------------------------------------------

    claim_due = _Via("_claims", Claims.claim_due)
    claim = _Via("_claims", Claims.claim)
    leader = _Via("_claims", Claims.leader)

    # -- audit (audit.py) ---------------------------------------------------------------------

    append_audit = _Via("_audit", Audit.append_audit)
    list_audit = _Via("_audit", Audit.list_audit)

    # -- outbox (outbox.py) -------------------------------------------------------------------

    enqueue_events = _Via("_outbox", Outbox.enqueue_events)
    get_event = _Via("_outbox", Outbox.get_event)
    due_events = _Via("_outbox", Outbox.due_events)
    mark_delivered = _Via("_outbox", Outbox.mark_delivered)
    mark_failed = _Via("_outbox", Outbox.mark_failed)
    disable_pending = _Via("_outbox", Outbox.disable_pending)
    redeliver = _Via("_outbox", Outbox.redeliver)
    list_events = _Via("_outbox", Outbox.list_events)
    count_events_by_status = _Via("_outbox", Outbox.count_events_by_status)

    # -- an engine step's writes, across the repositories -------------------------------------

    async def commit(
        self,
        change_id: str | None,
        *,
        fields: Mapping[str, Any] | None = None,
        events: Sequence[NewEvent] = (),
        audit: Sequence[AuditEntry] = (),
        claim: Claim | None = None,
        customer_id: str | None = None,
        reschedule: datetime | Keep | None = KEEP,
    ) -> ChangeRecord | None:
        """One engine step's writes in one transaction: the change's fields (superseded stays
        final, as in ``update_change``), its events and audit rows, and — through ``claim`` —
        the customer's resolved id and next check. Returns the updated change (None when no
        field was given).

        SQLite: everything commits together. PostgreSQL: the change, events and audit commit
        now; the customer-row writes go to the claim's connection (its row lock is held there)
        and run and commit when the claim ends (``Claim.defer``), as they always committed.
        """
        values = self._changes.values(fields, None) if fields else None
        rows = audit_rows(audit)
        inline = claim is not None and claim._conn is None
        claim_ops = claim._step_ops(customer_id, reschedule) if claim is not None and inline else []

        async def op(conn: AsyncConnection) -> ChangeRecord | None:
            record = None
            if values is not None and change_id is not None:
                record = await self._changes.update_row(conn, change_id, values, None, events)
            elif events:
                await insert_events(conn, events, None, change_id, self.db.clock())
            if rows:
                await insert_audit(conn, rows)
            if inline:
                await _run_all(conn, claim_ops)
            return record

        async def pg_op(pg: PgConn) -> ChangeRecord | None:
            # the same writes on psycopg's connection (``pgdirect``: the hot path)
            record = None
            if values is not None and change_id is not None:
                record = await self._changes.update_row_pg(pg, change_id, values, None, events)
            elif events:
                await insert_events_pg(pg, events, None, change_id, self.db.clock())
            if rows:
                await insert_audit_pg(pg, rows)
            return record

        record = None
        if self.db.sqlite:
            if values is not None or events or rows or (inline and claim_ops):
                record = await self.db.tx(op, write=True)
        elif values is not None or events or rows:
            assert not inline  # a PostgreSQL claim always holds its connection
            record = await self.db.pg_tx(pg_op, write=True)
        if claim is not None and not inline:
            claim.defer(customer_id, reschedule)  # run on the claim's connection when it ends
        return record


async def _run_all(conn: AsyncConnection, ops: Sequence[Op[None]]) -> None:
    for op in ops:
        await op(conn)
