"""PostgreSQL's hot writes on psycopg's own connection (``reconciler.store.pgdirect``).

``Store.commit``, ``update_change`` and ``append_audit`` send their statements below
SQLAlchemy on PostgreSQL. The store's rules are tested on both databases elsewhere; here, what
that path must keep: the rows as SQLAlchemy writes and reads them, and ``Database.tx``'s fault
rules (a lost connection retried and the pool's other dead connections replaced, a fault
before COMMIT retried, one during COMMIT ambiguous, a constraint violation a conflict).
"""

from __future__ import annotations

import asyncio
from datetime import UTC, timedelta, timezone
from typing import Any

import psycopg
import pytest
import sqlalchemy as sa

from benchmarks.harness import pg_terminate
from reconciler.store import NewEvent, Store, StoreUnavailable
from reconciler.store.errors import StoreConflictError
from reconciler.store.schema import audit_log
from reconciler.store.types import AuditEntry, AuditKind, ChangeRecord, ChangeStatus
from tests.pg import PG_ADMIN_DSN, Statements

from .conftest import T0, Clock

pytestmark = pytest.mark.postgres

H = timedelta(hours=1)
CET = timezone(timedelta(hours=2))


@pytest.fixture
def db_url(pg_database: str) -> str:
    """This module's ``store`` (conftest) is on PostgreSQL only."""
    return pg_database


async def _change(store: Store, customer: str = "acme") -> ChangeRecord:
    return (await store.submit_change(customer, "pro", None, T0, "webhook", customer, T0)).change


def _audit(change: ChangeRecord, n: int) -> list[AuditEntry]:
    return [
        AuditEntry(
            at=T0 + timedelta(seconds=i),
            kind=AuditKind.CALL,
            operation=f"op{i}",
            customer=change.customer,
            change_id=change.id,
            method="PATCH",
            path="/api/v1/subscriptions/s1",
            request_body=[{"op": "add", "n": i}] if i % 2 else None,
            status=200,
            detail="ok",
            data={"duration_s": 0.02, "attempt": 1} if i % 2 else None,
        )
        for i in range(n)
    ]


async def _audit_count(store: Store, change_id: str) -> int:
    async def op(conn: Any) -> int:
        q = sa.select(sa.func.count()).where(audit_log.c.change_id == change_id)
        return int((await conn.execute(q)).scalar_one())

    return await store.db.tx(op, write=False)


async def test_a_commit_writes_and_returns_rows_as_sqlalchemy_reads_them(store: Store) -> None:
    change = await _change(store)
    details = {"quote": {"fees": [1, 2.5, None], "note": "Größe ✓"}, "empty": {}}
    events = [NewEvent(type="change.applied", payload={"plan": "pro", "n": [1, None]})]
    stored = await store.commit(
        change.id,
        fields={
            "status": "applied",
            "effective_at": (T0 + H).astimezone(CET),  # another offset: stored as the instant
            "converges_at": T0 + 24 * H,
            "details": details,
            "last_error": None,
            "rule": "upgrade-now",
        },
        events=events,
        audit=_audit(change, 3),
    )
    assert stored is not None
    read = await store.get_change(change.id)
    assert stored == read
    assert stored.status is ChangeStatus.APPLIED and stored.details == details
    for at in (stored.effective_at, stored.converges_at, stored.updated_at, stored.received_at):
        assert at is not None and at.tzinfo is UTC
    assert stored.effective_at == T0 + H

    rows = sorted(await store.list_audit(change_id=change.id), key=lambda e: e.operation)
    assert [(e.operation, e.request_body, e.data) for e in rows] == [
        ("op0", None, None),
        ("op1", [{"op": "add", "n": 1}], {"duration_s": 0.02, "attempt": 1}),
        ("op2", None, None),
    ]
    assert all(e.at.tzinfo is UTC for e in rows) and rows[1].at == T0 + timedelta(seconds=1)

    async def nulls(conn: Any) -> int:
        # None is SQL NULL (none_as_null), not the JSON value null
        q = sa.select(sa.func.count()).where(
            audit_log.c.change_id == change.id,
            audit_log.c.request_body.is_(None),
            audit_log.c.data.is_(None),
        )
        return int((await conn.execute(q)).scalar_one())

    assert await store.db.tx(nulls, write=False) == 2
    listed, _ = await store.list_events()
    assert [(e.type, e.customer, e.change_id, e.payload) for e in listed] == [
        ("change.applied", "acme", change.id, {"plan": "pro", "n": [1, None]})
    ]


async def test_dead_pooled_connections_are_replaced_at_the_first_fault(
    pg_database: str, clock: Clock
) -> None:
    # one retry only: each commit may meet one dead connection, not the pool's other three
    store = await Store.open(pg_database, instance_id="t", clock=clock, retries=1)
    try:
        await store.migrate()
        changes = [await _change(store, f"c{i}") for i in range(4)]
        # four connections checked in to the pool, then every one of them killed
        await asyncio.gather(*(store.append_audit(_audit(c, 1)) for c in changes))
        assert pg_terminate(pg_database) >= 4
        for c in changes:
            stored = await store.commit(c.id, fields={"status": "applied"}, audit=_audit(c, 2))
            assert stored is not None and stored.status is ChangeStatus.APPLIED
        assert [await _audit_count(store, c.id) for c in changes] == [3, 3, 3, 3]
    finally:
        await store.close()


async def test_an_answer_lost_before_commit_is_retried_and_stored_once(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    change = await _change(store)
    log = Statements(monkeypatch)
    log.lose_matching, log.lose_answers = "UPDATE change_requests", 1
    stored = await store.commit(change.id, fields={"status": "applied"}, audit=_audit(change, 5))
    assert stored is not None and stored.status is ChangeStatus.APPLIED
    # the first attempt's update ran and was rolled back with it; the second one stored all
    assert [s.split()[0] for s in log.statements] == ["UPDATE", "UPDATE", "INSERT"]
    assert await _audit_count(store, change.id) == 5


async def test_a_fault_while_committing_is_reported_as_ambiguous(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    change = await _change(store)
    commit = psycopg.AsyncConnection.commit

    async def lost(conn: psycopg.AsyncConnection[Any]) -> None:
        await commit(conn)  # the server committed; its answer never arrived
        raise psycopg.OperationalError("server closed the connection unexpectedly")

    monkeypatch.setattr(psycopg.AsyncConnection, "commit", lost)
    with pytest.raises(StoreUnavailable) as err:
        await store.commit(change.id, fields={"status": "applied"}, audit=_audit(change, 1))
    monkeypatch.undo()
    assert err.value.ambiguous is True
    # not retried: it had committed once, which is what the caller must allow for
    read = await store.get_change(change.id)
    assert read is not None and read.status is ChangeStatus.APPLIED
    assert await _audit_count(store, change.id) == 1


async def test_a_constraint_violation_is_a_conflict_and_stores_nothing(store: Store) -> None:
    change = await _change(store)
    twice = [NewEvent(type="change.applied", payload={}, id="evt_same")] * 2
    with pytest.raises(StoreConflictError, match="constraint violated"):
        await store.commit(
            change.id, fields={"status": "applied"}, events=twice, audit=_audit(change, 2)
        )
    read = await store.get_change(change.id)
    assert read is not None and read.status is ChangeStatus.PENDING
    assert await _audit_count(store, change.id) == 0
    assert (await store.list_events())[0] == []
    # the connection went back to the pool clean: the next commit on it succeeds
    stored = await store.commit(change.id, fields={"status": "applied"}, audit=_audit(change, 1))
    assert stored is not None and stored.status is ChangeStatus.APPLIED


async def test_a_commit_sends_its_statements_and_no_savepoint(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    change = await _change(store)
    log = Statements(monkeypatch)
    await store.commit(
        change.id,
        fields={"status": "applied"},
        events=[NewEvent(type="change.applied", payload={})],
        audit=_audit(change, 5),
    )
    await store.append_audit(_audit(change, 1))
    verbs = [(s.split()[0], s.split()[2]) for s in log.statements]
    assert verbs == [
        ("UPDATE", "SET"),  # the change, RETURNING its row
        ("INSERT", "outbox_events"),
        ("INSERT", "audit_log"),  # five rows, one pipelined executemany
        ("INSERT", "audit_log"),
    ]
    assert not any(auto for _, auto in log.seen)
    assert await _audit_count(store, change.id) == 6


def test_a_statement_is_sqlalchemys_sql_and_refuses_sql_rendered_per_call() -> None:
    from sqlalchemy.dialects.postgresql import psycopg as dialect

    from reconciler.store.pgdirect import Statement
    from reconciler.store.schema import customers

    q = sa.select(customers.c.customer, customers.c.next_check_at.label("due")).where(
        customers.c.customer == sa.bindparam("b_customer"), customers.c.version > 3
    )
    stmt = Statement(q)
    assert stmt.sql == str(q.compile(dialect=dialect.dialect()))
    assert stmt.names == ("customer", "due")
    # an anonymous parameter keeps its value; a timestamp parameter refuses a naive value
    assert stmt.params({"b_customer": "acme"}) == {"b_customer": "acme", "version_1": 3}
    upd = customers.update().values(next_check_at=sa.bindparam("b_at")).returning(customers)
    assert Statement(upd).names == tuple(c.name for c in customers.c)
    with pytest.raises(ValueError, match="naive datetime"):
        Statement(upd).params({"b_at": T0.replace(tzinfo=None)})
    with pytest.raises(ValueError, match="compiled once"):
        Statement(sa.select(customers).where(customers.c.customer.in_(["a", "b"])))


async def test_a_claim_sends_its_read_and_writes_below_sqlalchemy(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The claim's locking read, the step's two deferred customer-row writes and the COMMIT:
    no savepoint, and the rows as SQLAlchemy reads them (timestamps in UTC)."""
    change = await _change(store)
    due = (T0 + 24 * H).astimezone(CET)
    as_stored = await store.get_change(change.id)
    log = Statements(monkeypatch)
    async with store.claim("acme") as claim:
        assert claim is not None
        assert claim.desired == as_stored and as_stored is not None
        assert claim.next_check_at == T0 and claim.next_check_at.tzinfo is UTC
        await store.commit(
            change.id,
            fields={"status": "converged"},
            claim=claim,
            customer_id="01JQ8Z6V2X3Y4Z5A6B7C8D9CST",
            reschedule=due,
        )
    verbs = [s.split()[0] for s in log.statements]
    assert verbs == ["SELECT", "UPDATE", "UPDATE", "UPDATE"], log.seen
    assert "FOR UPDATE OF customers SKIP LOCKED" in log.statements[0]
    assert claim.next_check_at == due and claim.next_check_at.tzinfo is UTC
    row = await store.get_customer("acme")
    assert row is not None
    assert (row.customer_id, row.next_check_at) == ("01JQ8Z6V2X3Y4Z5A6B7C8D9CST", due)
    aliases = await store.aliases("01JQ8Z6V2X3Y4Z5A6B7C8D9CST")
    assert aliases == [row] and aliases[0].next_check_at.tzinfo is UTC
    assert log.seen[-1][1] is True  # the alias lookup: one statement in autocommit


async def test_a_lost_claim_connection_at_the_deferred_writes_is_unavailable(
    store: Store,
) -> None:
    """The claim's connection dies mid-pass: its deferred writes fail as a store fault (the
    worker re-plans), nothing of them is stored, and the pool carries on."""
    change = await _change(store)

    async def doomed_pass() -> None:
        async with store.claim("acme") as claim:
            assert claim is not None and claim._conn is not None
            await store.commit(change.id, fields={"attempts": 1}, claim=claim, reschedule=T0 + H)
            backend = (await claim._conn.exec_driver_sql("SELECT pg_backend_pid()")).scalar()
            with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as admin:
                admin.execute("SELECT pg_terminate_backend(%s)", (backend,))  # "crash"

    with pytest.raises(StoreUnavailable, match="claim connection lost"):
        await doomed_pass()
    row = await store.get_customer("acme")
    assert row is not None and row.next_check_at == T0  # the reschedule went with the claim
    stored = await store.get_change(change.id)
    assert stored is not None and stored.attempts == 1  # the step's own commit stands
