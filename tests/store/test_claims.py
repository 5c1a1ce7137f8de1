from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import timedelta

import psycopg
import pytest

from reconciler.store import Store, StoreUnavailable
from tests.pg import PG_ADMIN_DSN, Statements

from .conftest import T0

H = timedelta(hours=1)


async def test_schedule_and_due_customers(store: Store) -> None:
    assert await store.next_due_at() is None
    await store.schedule_customer("b", T0 + 2 * H)
    await store.schedule_customer("a", T0 + H)
    await store.schedule_customer("c", T0 + 5 * H)
    await store.schedule_customer("b", T0 + 3 * H)  # later: keeps the earlier due time
    await store.schedule_customer("c", T0 + 4 * H)  # earlier: moves it forward
    assert await store.next_due_at() == T0 + H
    assert await store.due_customers(T0, 10) == []
    assert await store.due_customers(T0 + 2 * H, 10) == ["a", "b"]
    assert await store.due_customers(T0 + 10 * H, 2) == ["a", "b"]
    assert await store.due_customers(T0 + 10 * H, 10) == ["a", "b", "c"]
    c = await store.get_customer("c")
    assert c is not None and c.next_check_at == T0 + 4 * H
    assert await store.claim_due(T0 + 10 * H, 10) == ["a", "b", "c"]


async def test_customers_with_desired_iterates_all_pages(store: Store) -> None:
    for i in range(5):
        await store.submit_change(f"k{i}", "pro", None, T0, "webhook", f"w{i}", T0)
    await store.schedule_customer("no-desired", T0)
    got = [c async for c in store.customers_with_desired(page_size=2)]
    assert got == ["k0", "k1", "k2", "k3", "k4"]


async def test_claim_is_exclusive_and_released_on_exit(store: Store) -> None:
    await store.submit_change("acme", "pro", None, T0, "webhook", "w", T0)
    async with store.claim("acme") as claim:
        assert claim is not None
        assert claim.customer == "acme" and claim.desired_change_id is not None
        async with store.claim("acme") as again:
            assert again is None
        assert await store.claim_due(T0 + H, 10) == []  # claimed customers are skipped
        assert await store.due_customers(T0 + H, 10) == ["acme"]
        await claim.reschedule(T0 + 5 * H)
        await claim.set_customer_id("01ACME")
    row = await store.get_customer("acme")
    assert row is not None and row.next_check_at == T0 + 5 * H and row.customer_id == "01ACME"
    async with store.claim("acme") as claim2:
        assert claim2 is not None  # released
        await claim2.reschedule(None)
    assert await store.next_due_at() is None


async def test_claim_carries_the_desired_request_as_stored(store: Store) -> None:
    """On PostgreSQL read beside the row lock, in the same statement; on SQLite in the claim's
    read transaction. Either way, the same record ``desired_for`` answers."""
    from reconciler.domain.model import Direction, Timing
    from reconciler.store import ChangeStatus

    first = await store.submit_change("acme", "basic", None, T0, "webhook", "w0", T0)
    r = await store.submit_change(
        "acme", "pro", 3, T0 + H, "webhook", "w1", T0 + H, details={"note": "x"}
    )
    await store.update_change(
        r.change.id,
        status=ChangeStatus.APPLIED,
        direction=Direction.UPGRADE,
        timing=Timing.IMMEDIATE,
        effective_at=T0 + H,
    )
    desired = await store.desired_for("acme")
    assert desired is not None and desired.id == r.change.id != first.change.id
    async with store.claim("acme") as claim:
        assert claim is not None
        assert claim.desired == desired
        assert claim.desired.details == {"note": "x"}
        assert claim.desired.direction is Direction.UPGRADE
        assert claim.desired.status is ChangeStatus.APPLIED
    async with store.claim("nobody") as claim:
        assert claim is not None and claim.desired is None


async def test_claim_released_when_block_raises(store: Store) -> None:
    async def failing_pass() -> None:
        async with store.claim("acme") as claim:
            assert claim is not None
            await claim.reschedule(T0 + 2 * H)  # e.g. a backoff set before the failure
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        await failing_pass()
    row = await store.get_customer("acme")
    assert row is not None and row.next_check_at == T0 + 2 * H  # the claim's write was kept
    async with store.claim("acme") as claim:
        assert claim is not None


async def test_claim_of_unknown_customer_creates_its_row(store: Store) -> None:
    async with store.claim("fresh") as claim:
        assert claim is not None and claim.desired_change_id is None
    assert await store.get_customer("fresh") is not None


async def test_writes_inside_a_claim_do_not_deadlock(store: Store) -> None:
    """schedule_customer / submit_change for the claimed customer from inside the claim."""
    async with store.claim("acme") as claim:
        assert claim is not None
        await asyncio.wait_for(store.schedule_customer("acme", T0 + H), 10)
        r = await asyncio.wait_for(
            store.submit_change("acme", "pro", None, T0, "sweep", "s1", T0 + H), 10
        )
        assert r.created
    row = await store.get_customer("acme")
    assert row is not None and row.desired_change_id == r.change.id
    assert row.next_check_at == T0 + H


async def test_request_arriving_during_claim_is_not_lost(store: Store) -> None:
    """The worker reschedules far ahead at the end of its pass; a request that arrived during
    the pass must still leave the customer due."""
    await store.submit_change("acme", "basic", None, T0, "webhook", "w1", T0)

    async def webhook() -> None:
        await store.submit_change("acme", "pro", None, T0 + H, "webhook", "w2", T0 + H)

    async with store.claim("acme") as claim:
        assert claim is not None
        task = asyncio.create_task(webhook())  # another task (a webhook handler)
        await asyncio.sleep(0.2)
        await claim.reschedule(T0 + 24 * H)
    await asyncio.wait_for(task, 10)
    row = await store.get_customer("acme")
    assert row is not None and row.next_check_at == T0 + H
    desired = await store.desired_for("acme")
    assert desired is not None and desired.plan_key == "pro"


async def test_reschedule_after_a_request_arrived_keeps_the_earlier_time(store: Store) -> None:
    """A reschedule meeting a request submitted during the pass, which made the customer due at
    its arrival (T0 + 1 h; a task spawned inside the claim, as a webhook handler on SQLite or a
    routed submit on PostgreSQL): nothing due by the pass keeps the request's time, a later
    time keeps it too, an earlier one wins. Without a request meanwhile the pass's time is
    taken as given, None included."""
    await store.submit_change("acme", "basic", None, T0, "webhook", "w0", T0)
    for n, (at, earlier) in enumerate(
        [(None, T0 + H), (T0 + 24 * H, T0 + H), (T0 + H / 2, T0 + H / 2)], start=1
    ):
        async with store.claim("acme") as claim:
            assert claim is not None
            done = asyncio.create_task(
                store.submit_change("acme", "pro", None, T0 + n * H, "webhook", f"w{n}", T0 + H)
            )
            await asyncio.sleep(0.2)
            await claim.reschedule(at)
            assert claim.next_check_at == earlier, n
        await asyncio.wait_for(done, 10)
        row = await store.get_customer("acme")
        assert row is not None and row.next_check_at == earlier, n
    for at in (T0 + 48 * H, None):
        async with store.claim("acme") as claim:
            assert claim is not None
            await claim.reschedule(at)
            assert claim.next_check_at == at
        row = await store.get_customer("acme")
        assert row is not None and row.next_check_at == at


async def test_a_steps_customer_row_writes_go_through_the_claim_together(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``commit`` with a resolved id and a next check: both land on the customer's row (on
    PostgreSQL on the claim's connection, run right before it commits: no savepoint, and
    nothing of them before the claim ends)."""
    change = (await store.submit_change("acme", "pro", None, T0, "webhook", "w", T0)).change
    pg = store.dialect != "sqlite"
    log = Statements(monkeypatch)
    async with store.claim("acme") as claim:
        assert claim is not None and claim.customer_id is None
        await store.commit(
            change.id,
            fields={"status": "converged"},
            claim=claim,
            customer_id="01JQ8Z6V2X3Y4Z5A6B7C8D9CST",
            reschedule=T0 + 24 * H,
        )
        assert claim.customer_id == "01JQ8Z6V2X3Y4Z5A6B7C8D9CST"
        if pg:
            assert "SAVEPOINT" not in log.verbs() and log.verbs().count("UPDATE") == 1
    assert claim is not None and claim.next_check_at == T0 + 24 * H
    row = await store.get_customer("acme")
    assert row is not None
    assert (row.customer_id, row.next_check_at) == ("01JQ8Z6V2X3Y4Z5A6B7C8D9CST", T0 + 24 * H)
    if pg:
        # the change's update, then the claim's two customer-row writes just before COMMIT
        assert "SAVEPOINT" not in log.verbs(), log.seen
        assert log.verbs().count("UPDATE") == 3, log.seen


@pytest.mark.postgres
async def test_claims_exclusive_across_two_instances(
    pg_database: str, open_store: Callable[..., Awaitable[Store]]
) -> None:
    a = await Store.open(pg_database, instance_id="a")
    b = await Store.open(pg_database, instance_id="b")
    try:
        await a.migrate()
        await a.submit_change("acme", "pro", None, T0, "webhook", "w", T0)
        async with a.claim("acme") as held:
            assert held is not None
            async with b.claim("acme") as other:
                assert other is None
            assert await b.claim_due(T0 + H, 10) == []
        async with b.claim("acme") as now_b:
            assert now_b is not None
            async with a.claim("acme") as other:
                assert other is None
    finally:
        await a.close()
        await b.close()


@pytest.mark.postgres
async def test_claim_due_gives_disjoint_sets_and_workers_never_overlap(pg_database: str) -> None:
    a = await Store.open(pg_database, instance_id="a")
    b = await Store.open(pg_database, instance_id="b")
    try:
        await a.migrate()
        names = [f"c{i:02d}" for i in range(12)]
        for n in names:
            await a.schedule_customer(n, T0)
        active: dict[str, int] = dict.fromkeys(names, 0)
        worked: list[tuple[str, str]] = []
        max_seen = 0

        async def worker(store: Store, tag: str) -> None:
            nonlocal max_seen
            for _ in range(6):
                for name in await store.claim_due(T0 + H, 4):
                    async with store.claim(name) as claim:
                        if claim is None or not claim.is_due(T0 + H):
                            continue  # held elsewhere, or already handled since claim_due
                        active[name] += 1
                        max_seen = max(max_seen, active[name])
                        worked.append((tag, name))
                        await asyncio.sleep(0.01)
                        active[name] -= 1
                        await claim.reschedule(None)

        await asyncio.gather(*(worker(s, f"{s.instance_id}{i}") for s in (a, b) for i in range(3)))
        assert max_seen == 1  # never two workers on one customer at once
        assert sorted(n for _, n in worked) == names  # each due customer handled exactly once

        # while A holds claims, B's claim_due returns only the others
        async with a.claim("c00") as c0, a.claim("c01") as c1:
            assert c0 is not None and c1 is not None
            for n in names:
                await a.schedule_customer(n, T0)
            got = await b.claim_due(T0 + H, 100)
            assert "c00" not in got and "c01" not in got and len(got) == 10
    finally:
        await a.close()
        await b.close()


@pytest.mark.postgres
async def test_claim_of_a_dead_connection_vanishes(pg_database: str) -> None:
    a = await Store.open(pg_database, instance_id="a")
    b = await Store.open(pg_database, instance_id="b")
    try:
        await a.migrate()
        await a.schedule_customer("acme", T0)
        seen: dict[str, bool] = {}

        async def crashing_pass() -> None:
            async with a.claim("acme") as held:
                assert held is not None
                async with b.claim("acme") as other:
                    seen["blocked"] = other is None
                assert held._conn is not None
                backend = (await held._conn.exec_driver_sql("SELECT pg_backend_pid()")).scalar()
                with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as admin:
                    admin.execute("SELECT pg_terminate_backend(%s)", (backend,))  # "crash"
                async with b.claim("acme") as taken:
                    seen["taken"] = taken is not None  # the dead replica's claim is gone

        with pytest.raises(StoreUnavailable):  # A learns at the end that its claim was lost
            await crashing_pass()
        assert seen == {"blocked": True, "taken": True}
    finally:
        await a.close()
        await b.close()


async def test_leader(store: Store, open_store: Callable[..., Awaitable[Store]]) -> None:
    if store.dialect == "sqlite":
        async with store.leader("sweeper") as lead:
            assert lead.held is True
            assert await lead.check() is True
        return
    other = await open_store("replica-2")
    async with store.leader("sweeper") as first:
        assert first.held is True
        async with other.leader("sweeper") as second:
            assert second.held is False
            assert await second.check() is False
            async with other.leader("outbox") as different:
                assert different.held is True  # another name, another lock
            assert await first.check() is True
        # first exits below; a waiting replica takes over on its next check
        async with other.leader("sweeper") as second:
            assert second.held is False
            await first._release()
            assert await second.check() is True
            assert second.held is True


@pytest.mark.postgres
async def test_leadership_moves_when_holder_closes(pg_database: str) -> None:
    a = await Store.open(pg_database, instance_id="a")
    b = await Store.open(pg_database, instance_id="b")
    try:
        async with a.leader("sweeper") as la, b.leader("sweeper") as lb:
            assert la.held is True
            assert lb.held is False
            await a.close()  # the holder shuts down while still inside its block
            assert la.held is False
            assert await lb.check() is True
    finally:
        await a.close()
        await b.close()


async def test_a_steps_customer_row_writes_are_kept_when_the_pass_fails(store: Store) -> None:
    """A pass that raises after a step's commit keeps that step's customer-row writes (on
    PostgreSQL they were deferred to the claim's end, and still run there)."""
    change = (await store.submit_change("acme", "pro", None, T0, "webhook", "w", T0)).change

    async def failing_pass() -> None:
        async with store.claim("acme") as claim:
            assert claim is not None
            await store.commit(
                change.id,
                fields={"attempts": 1},
                claim=claim,
                customer_id="01JQ8Z6V2X3Y4Z5A6B7C8D9CST",
                reschedule=T0 + 2 * H,
            )
            raise RuntimeError("the pass failed")

    with pytest.raises(RuntimeError, match="the pass failed"):
        await failing_pass()
    row = await store.get_customer("acme")
    assert row is not None
    assert (row.customer_id, row.next_check_at) == ("01JQ8Z6V2X3Y4Z5A6B7C8D9CST", T0 + 2 * H)
    stored = await store.get_change(change.id)
    assert stored is not None and stored.attempts == 1
