from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from reconciler.domain.model import Direction, Timing
from reconciler.store import (
    OPEN_STATUSES,
    ChangeNotFoundError,
    ChangeRecord,
    ChangeSource,
    ChangeStatus,
    DesiredSummary,
    InvalidCursorError,
    NewEvent,
    StaleChangeError,
    Store,
    StoreConflictError,
)
from reconciler.store.schema import change_requests, outbox_events

from .conftest import T0

H = timedelta(hours=1)


async def _count(store: Store, table: sa.Table) -> int:
    async def op(conn: Any) -> int:
        return int((await conn.execute(sa.select(sa.func.count()).select_from(table))).scalar_one())

    return await store.db.tx(op, write=False)


async def test_submit_creates_desired_and_schedules(store: Store) -> None:
    ev = NewEvent(type="change.received", payload={"plan": "pro"})
    r = await store.submit_change("acme", "pro", 2, T0, "webhook", "wh_1", T0 + H, events=[ev])
    assert r.created is True
    assert r.superseded_ids == ()
    c = r.change
    assert (c.customer, c.plan_key, c.plan_version, c.status) == ("acme", "pro", 2, "pending")
    assert c.source is ChangeSource.WEBHOOK and c.source_id == "wh_1"
    assert c.requested_at == T0 and c.received_at == T0 + H
    assert c.requested_at.tzinfo is not None
    assert await store.get_change(c.id) == c
    assert await store.desired_for("acme") == c
    assert c.to_desired().change_id == c.id
    cust = await store.get_customer("acme")
    assert cust is not None
    assert cust.desired_change_id == c.id and cust.next_check_at == T0 + H
    events, _ = await store.list_events()
    assert [(e.type, e.customer, e.change_id, e.status) for e in events] == [
        ("change.received", "acme", c.id, "pending")
    ]


async def test_submit_is_idempotent_on_source_id(store: Store) -> None:
    ev = NewEvent(type="change.received", payload={})
    first = await store.submit_change("acme", "pro", None, T0, "webhook", "wh_1", T0, events=[ev])
    again = await store.submit_change(
        "acme", "basic", None, T0 + H, "webhook", "wh_1", T0 + 2 * H, events=[ev]
    )
    assert again.created is False
    assert again.change == first.change  # the stored record, untouched
    assert await _count(store, change_requests) == 1
    assert await _count(store, outbox_events) == 1  # nothing written the second time
    # the same id from another source is a different request
    other = await store.submit_change("acme", "pro", None, T0 + H, "admin", "wh_1", T0 + H)
    assert other.created is True
    # cli requests have no source id and are never deduplicated
    a = await store.submit_change("acme", "pro", None, T0 + 2 * H, "cli", None, T0 + 2 * H)
    b = await store.submit_change("acme", "pro", None, T0 + 3 * H, "cli", None, T0 + 3 * H)
    assert a.created and b.created and a.change.id != b.change.id


async def test_out_of_order_request_is_stored_superseded(store: Store) -> None:
    newer = await store.submit_change("acme", "pro", None, T0 + H, "webhook", "b", T0)
    older = await store.submit_change("acme", "basic", None, T0, "webhook", "a", T0 + H)
    assert older.created is True
    assert older.change.status is ChangeStatus.SUPERSEDED
    assert older.superseded_ids == ()
    desired = await store.desired_for("acme")
    assert desired is not None and desired.id == newer.change.id
    assert (await store.get_change(newer.change.id)).status is ChangeStatus.PENDING  # type: ignore[union-attr]


async def test_newer_request_supersedes_open_ones_only(store: Store) -> None:
    a = (await store.submit_change("acme", "basic", None, T0, "webhook", "a", T0)).change
    await store.update_change(a.id, status=ChangeStatus.CONVERGED)
    b = (await store.submit_change("acme", "pro", None, T0 + H, "webhook", "b", T0 + H)).change
    await store.update_change(b.id, status=ChangeStatus.SCHEDULED)
    other = (await store.submit_change("zeta", "pro", None, T0, "webhook", "z", T0)).change
    c = await store.submit_change("acme", "max", None, T0 + 2 * H, "webhook", "c", T0 + 2 * H)
    assert c.superseded_ids == (b.id,)
    assert (await store.get_change(a.id)).status is ChangeStatus.CONVERGED  # type: ignore[union-attr]
    assert (await store.get_change(b.id)).status is ChangeStatus.SUPERSEDED  # type: ignore[union-attr]
    assert (await store.get_change(other.id)).status is ChangeStatus.PENDING  # type: ignore[union-attr]
    assert (await store.desired_for("acme")).id == c.change.id  # type: ignore[union-attr]
    # an equal requested_at counts as newer (arrival breaks the tie)
    d = await store.submit_change("acme", "pro", None, T0 + 2 * H, "webhook", "d", T0 + 3 * H)
    assert d.change.status is ChangeStatus.PENDING
    assert d.superseded_ids == (c.change.id,)


@pytest.mark.parametrize("status", [s.value for s in ChangeStatus])
async def test_a_newer_request_supersedes_exactly_the_open_statuses(
    store: Store, status: str
) -> None:
    """Every open status, and only those (PostgreSQL's submit function lists them itself)."""
    old = (await store.submit_change("acme", "basic", None, T0, "webhook", "a", T0)).change
    await store.update_change(old.id, status=ChangeStatus(status))
    new = await store.submit_change("acme", "pro", None, T0 + H, "webhook", "b", T0 + H)
    is_open = ChangeStatus(status) in OPEN_STATUSES
    assert new.superseded_ids == ((old.id,) if is_open else ())
    after = await store.get_change(old.id)
    assert after is not None
    assert after.status is (ChangeStatus.SUPERSEDED if is_open else ChangeStatus(status))
    assert after.updated_at == (T0 + H if is_open else old.updated_at)


async def test_submit_records_the_resolved_customer_id(store: Store) -> None:
    a = await store.submit_change(
        "acme", "pro", None, T0 + H, "admin", "a", T0, customer_id="01ACME"
    )
    assert a.change.customer_id == "01ACME"
    assert (await store.get_customer("acme")).customer_id == "01ACME"  # type: ignore[union-attr]
    b = await store.submit_change("acme", "max", None, T0 + 2 * H, "webhook", "b", T0)
    assert b.change.customer_id == "01ACME"  # known from the customer's row
    # a stale request still records an id the customer's row did not have
    await store.submit_change("zeta", "pro", None, T0 + H, "webhook", "z1", T0)
    old = await store.submit_change(
        "zeta", "basic", None, T0, "webhook", "z0", T0, customer_id="01ZETA"
    )
    assert old.change.status is ChangeStatus.SUPERSEDED
    assert old.change.customer_id == "01ZETA"
    zeta = await store.get_customer("zeta")
    assert zeta is not None and zeta.customer_id == "01ZETA"
    assert zeta.desired_change_id != old.change.id


async def test_update_change_fields_and_optimistic_concurrency(store: Store, clock: object) -> None:
    c = (await store.submit_change("acme", "pro", None, T0, "webhook", "a", T0)).change
    upd = await store.update_change(
        c.id,
        expected_status=ChangeStatus.PENDING,
        status=ChangeStatus.APPLIED,
        plan_version=3,
        customer_id="01CUST",
        direction=Direction.UPGRADE,
        timing=Timing.IMMEDIATE,
        rule="upgrade-now",
        effective_at=T0 + H,
        attempts=1,
        details={"entitlements": {"before": 10, "after": 20}, "warnings": ["x"]},
        now=T0 + H,
    )
    assert upd.status is ChangeStatus.APPLIED
    assert (upd.plan_version, upd.customer_id, upd.rule, upd.attempts) == (
        3,
        "01CUST",
        "upgrade-now",
        1,
    )
    assert upd.direction is Direction.UPGRADE and upd.timing is Timing.IMMEDIATE
    assert upd.effective_at == T0 + H and upd.updated_at == T0 + H
    assert upd.details["entitlements"] == {"before": 10, "after": 20}
    assert await store.get_change(c.id) == upd

    with pytest.raises(StaleChangeError) as info:
        await store.update_change(c.id, expected_status="pending", status="failed")
    assert info.value.actual == "applied"
    assert (await store.get_change(c.id)).status is ChangeStatus.APPLIED  # type: ignore[union-attr]
    with pytest.raises(ChangeNotFoundError):
        await store.update_change("missing", status="failed")
    with pytest.raises(TypeError, match="unknown fields"):
        await store.update_change(c.id, plan_key="other")
    with pytest.raises(ValueError, match="aware"):
        await store.update_change(c.id, now=T0.replace(tzinfo=None))
    for field in ("effective_at", "converges_at", "next_attempt_at"):
        # refused as the caller's mistake, before anything is sent, on both databases
        with pytest.raises(ValueError, match=f"{field} must be a timezone-aware datetime"):
            await store.update_change(c.id, **{field: T0.replace(tzinfo=None)})
        with pytest.raises(ValueError, match=f"{field} must be a timezone-aware datetime"):
            await store.commit(c.id, fields={field: T0.replace(tzinfo=None)})
    assert await store.get_change(c.id) == upd


async def test_outbox_is_written_atomically_with_update(store: Store) -> None:
    c = (await store.submit_change("acme", "pro", None, T0, "webhook", "a", T0)).change
    ok = await store.update_change(
        c.id,
        status="applied",
        events=[NewEvent(type="change.applied", payload={"id": c.id}, id="evt_fixed")],
    )
    assert ok.status is ChangeStatus.APPLIED
    events, _ = await store.list_events()
    assert [(e.id, e.change_id, e.customer) for e in events] == [("evt_fixed", c.id, "acme")]

    # an event that cannot be written (duplicate id) rolls the change update back too
    with pytest.raises(StoreConflictError):
        await store.update_change(
            c.id,
            status="converged",
            events=[
                NewEvent(type="change.converged", payload={}, id="evt_new"),
                NewEvent(type="change.converged", payload={}, id="evt_fixed"),
            ],
        )
    assert (await store.get_change(c.id)).status is ChangeStatus.APPLIED  # type: ignore[union-attr]
    assert await store.get_event("evt_new") is None
    assert await _count(store, outbox_events) == 1


async def test_list_changes_keyset_pagination(store: Store) -> None:
    ids = []
    for i in range(7):
        # pairs share received_at so the id tie-breaker is exercised across page boundaries
        at = T0 + (i // 2) * H
        r = await store.submit_change(f"c{i % 3}", "pro", None, at, "webhook", f"w{i}", at)
        ids.append(r.change.id)
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        page, cursor = await store.list_changes(limit=3, cursor=cursor)
        pages += 1
        seen.extend(c.id for c in page)
        if cursor is None:
            break
    assert pages == 3
    assert len(seen) == 7 and set(seen) == set(ids)
    keys = [(c.received_at, c.id) for c in (await store.list_changes(limit=100))[0]]
    assert keys == sorted(keys, reverse=True)
    # a row inserted after page 1 does not shift later pages (keyset, not offset)
    first, cur = await store.list_changes(limit=3)
    await store.submit_change("c9", "pro", None, T0 + 9 * H, "webhook", "late", T0 + 9 * H)
    second, _ = await store.list_changes(limit=3, cursor=cur)
    assert not {c.id for c in first} & {c.id for c in second}
    assert [c.id for c in second] == seen[3:6]

    by_customer, _ = await store.list_changes(customer="c0")
    assert {c.customer for c in by_customer} == {"c0"} and len(by_customer) == 3
    superseded, _ = await store.list_changes(status="superseded")
    assert all(c.status is ChangeStatus.SUPERSEDED for c in superseded)
    assert len(superseded) == 4  # 7 requests over 3 customers, plus "c9": 3 + 1 desired remain
    with pytest.raises(InvalidCursorError):
        await store.list_changes(cursor="garbage")
    _, ev_cursor = await store.list_events(limit=1)
    assert ev_cursor is None


async def test_count_changes_by_status(store: Store) -> None:
    a = (await store.submit_change("a", "pro", None, T0, "webhook", "1", T0)).change
    await store.submit_change("a", "pro", None, T0 + H, "webhook", "2", T0)
    await store.submit_change("b", "pro", None, T0, "webhook", "3", T0)
    counts = await store.count_changes_by_status()
    assert counts == {
        "pending": 2,
        "applied": 0,
        "scheduled": 0,
        "converged": 0,
        "superseded": 1,
        "failed": 0,
    }
    assert a.id


async def test_concurrent_submits_for_one_customer(
    store: Store, open_store: Callable[..., Awaitable[Store]]
) -> None:
    other = await open_store("replica-2") if store.dialect == "postgresql" else store
    await other.migrate()
    stores = [store, other]
    n = 24
    results = await asyncio.gather(
        *(
            stores[i % 2].submit_change(
                "acme", "pro", None, T0 + i * timedelta(minutes=1), "webhook", f"w{i}", T0
            )
            for i in range(n)
        )
    )
    assert all(r.created for r in results)
    latest = next(r.change.id for r in results if r.change.source_id == f"w{n - 1}")
    desired = await store.desired_for("acme")
    assert desired is not None and desired.id == latest
    changes, _ = await store.list_changes(customer="acme", limit=100)
    assert len(changes) == n
    open_ = [c for c in changes if c.status is not ChangeStatus.SUPERSEDED]
    assert [c.id for c in open_] == [latest]  # exactly one open request: the latest


async def test_concurrent_duplicate_webhooks(
    store: Store, open_store: Callable[..., Awaitable[Store]]
) -> None:
    other = await open_store("replica-2") if store.dialect == "postgresql" else store
    stores = [store, other]
    results = await asyncio.gather(
        *(
            stores[i % 2].submit_change(
                # the same webhook id with different customers: rows locked differently, so
                # the unique constraint (and the retry that returns the winner) decides
                f"cust{i % 3}",
                "pro",
                None,
                T0,
                "webhook",
                "same",
                T0,
            )
            for i in range(10)
        )
    )
    assert sum(r.created for r in results) == 1
    assert len({r.change.id for r in results}) == 1
    assert await _count(store, change_requests) == 1


def _summary(change: ChangeRecord | None) -> DesiredSummary:
    """What ``desired_summaries`` should answer for ``change`` (its fields of the same names)."""
    assert change is not None
    return DesiredSummary(*(getattr(change, name) for name in DesiredSummary._fields))


async def test_desired_summaries(store: Store) -> None:
    a = (await store.submit_change("a", "pro", None, T0, "webhook", "1", T0)).change
    b1 = (await store.submit_change("b", "basic", None, T0, "webhook", "2", T0)).change
    b2 = (await store.submit_change("b", "pro", None, T0 + H, "webhook", "3", T0)).change
    await store.schedule_customer("no-desired", T0)
    await store.update_change(b2.id, status=ChangeStatus.SCHEDULED, converges_at=T0 + 2 * H)
    got = await store.desired_summaries(
        [("a", None), ("b", None), ("b", None), ("no-desired", None), ("unknown", None)]
    )
    assert got == {"a": _summary(a), "b": _summary(await store.get_change(b2.id))}
    assert got["b"].status is ChangeStatus.SCHEDULED and got["b"].converges_at == T0 + 2 * H
    assert b1.id not in {c.id for c in got.values()}
    assert await store.desired_summaries([]) == {}
    many = [(f"x{i}", f"y{i}") for i in range(1200)]  # more than one IN chunk, twice
    assert await store.desired_summaries(many) == {}


async def test_desired_summaries_of_listed_customers_by_key_then_id(store: Store) -> None:
    """A sweep page: each customer by key, and by OpenMeter id when its key finds nothing."""
    a = (await store.submit_change("a", "pro", None, T0, "webhook", "1", T0)).change
    b = (await store.submit_change("01B", "basic", None, T0, "webhook", "2", T0)).change
    c = (await store.submit_change("01C", "pro", None, T0, "webhook", "3", T0)).change
    got = await store.desired_summaries(
        [("a", "01A"), ("b", "01B"), (None, "01C"), ("x", "01X"), (None, None)]
    )
    assert got == {"a": _summary(a), "01B": _summary(b), "01C": _summary(c)}
    assert await store.desired_summaries([]) == {}
