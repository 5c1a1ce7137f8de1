"""Outbound delivery against a real HTTP receiver: signatures, retries with backoff, dedupe by
id, 410 disabling, restarts (graceful and mid-flight) and dead letters after 24 h."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest
from structlog.testing import capture_logs

from reconciler.engine.clock import FixedClock
from reconciler.events import EventDeliverer, body_of, decode_secret, retry_delay, sign
from reconciler.store import Store
from reconciler.store.types import EventStatus, NewEvent
from tests.portal import SECRET, Receiver

T0 = datetime(2026, 4, 10, 8, 30, tzinfo=UTC)


def half(_: float = 0.0) -> float:
    return 0.5  # jitter factor exactly 1.0: the nominal schedule


def events(n: int, prefix: str = "c") -> list[NewEvent]:
    kinds = ["applied", "scheduled", "converged", "failed", "usage_not_preserved"]
    out = []
    for i in range(n):
        kind = kinds[i % len(kinds)]
        payload = {"change_id": f"{prefix}{i}", "customer": f"cust-{i}", "plan": {"key": "pro"}}
        if kind == "failed":
            payload["error"] = "edit_items refused by OpenMeter (409): conflict"
        out.append(
            NewEvent(
                type=f"plan_change.{kind}",
                payload=payload,
                customer=f"cust-{i}",
                change_id=f"{prefix}{i}",
                id=f"evt_{prefix}{i}_{kind}",
            )
        )
    return out


def deliverer(store: Store, receiver: Receiver, **kw: object) -> EventDeliverer:
    return EventDeliverer(store, receiver.url, SECRET, FixedClock(T0), rng=half, **kw)  # type: ignore[arg-type]


async def statuses(store: Store) -> dict[str, str]:
    rows, _ = await store.list_events(limit=500)
    return {e.id: e.status.value for e in rows}


def test_signature_is_standard_webhooks() -> None:
    """The header the deliverer computes is what the reference implementation computes."""
    from standardwebhooks.webhooks import Webhook

    body = b'{"type":"plan_change.applied","timestamp":"2026-04-10T08:30:00Z","data":{}}'
    ts = 1_775_000_000
    ours = sign(decode_secret(SECRET), "evt_1", ts, body)
    theirs = Webhook(SECRET).sign("evt_1", datetime.fromtimestamp(ts, UTC), body.decode())
    assert ours == theirs
    with pytest.raises(ValueError, match="whsec_"):
        decode_secret("whsec_not base64!")


def test_retry_schedule() -> None:
    waits = [retry_delay(n, rng=half).total_seconds() for n in range(1, 11)]
    assert waits == [30, 60, 120, 240, 480, 960, 1920, 3600, 3600, 3600]
    assert retry_delay(1, rng=lambda: 0.0) == timedelta(seconds=27)
    assert retry_delay(9, rng=lambda: 1.0) == timedelta(seconds=3960)


async def test_fail_recover_then_gone(store: Store, receiver: Receiver) -> None:
    await store.enqueue_events(events(3), T0)
    d = deliverer(store, receiver)
    try:
        receiver.mode = "fail"
        s1 = await d.run_once(T0)
        assert (s1.due, s1.failed, s1.delivered) == (3, 3, 0)
        assert sorted(receiver.ids(500)) == [
            "evt_c0_applied",
            "evt_c1_scheduled",
            "evt_c2_converged",
        ]
        first = {e.id: e for e in (await store.list_events(limit=10))[0]}
        for e in first.values():
            assert (e.status, e.attempts) == (EventStatus.PENDING, 1)
            assert e.next_attempt_at == T0 + timedelta(seconds=30)
            assert e.last_error == "HTTP 500: scripted"

        # Backoff is respected: nothing is due 10 s later.
        assert (await d.run_once(T0 + timedelta(seconds=10))).due == 0
        assert len(receiver.seen) == 3

        s2 = await d.run_once(T0 + timedelta(seconds=30))
        assert s2.failed == 3
        again = await store.get_event("evt_c0_applied")
        assert again is not None and again.attempts == 2
        assert again.next_attempt_at == T0 + timedelta(seconds=90)

        receiver.mode = "ok"
        s3 = await d.run_once(T0 + timedelta(seconds=90))
        assert (s3.delivered, s3.failed) == (3, 0)
        assert await d.run_once(T0 + timedelta(hours=1)) == type(s3)()  # nothing left

        # Every attempt carried the same id and the same body; each processed once.
        assert sorted(receiver.processed) == sorted(set(receiver.ids()))
        assert receiver.duplicates == [] and receiver.invalid == 0
        bodies = {s.id: [] for s in receiver.seen}  # type: dict[str, list[object]]
        for s in receiver.seen:
            bodies[s.id].append(s.body)
        assert all(len(v) == 3 and v[0] == v[1] == v[2] for v in bodies.values())
        failed_body = receiver.processed["evt_c0_applied"]
        assert failed_body == {
            "type": "plan_change.applied",
            "timestamp": "2026-04-10T08:30:00Z",
            "data": {"change_id": "c0", "customer": "cust-0", "plan": {"key": "pro"}},
        }

        # The portal goes away: 410 disables every pending event, loudly, and stops.
        await store.enqueue_events(events(4, prefix="g"), T0 + timedelta(hours=2))
        receiver.mode = "gone"
        seen_before = len(receiver.seen)
        with capture_logs() as logs:
            s4 = await EventDeliverer(
                store, receiver.url, SECRET, FixedClock(T0), rng=half, concurrency=1
            ).run_once(T0 + timedelta(hours=2))
        assert s4.gone and s4.disabled == 4 and s4.delivered == 0
        assert len(receiver.seen) == seen_before + 1  # stopped after the first 410
        gone = [entry for entry in logs if entry["event"] == "events_receiver_gone"]
        assert len(gone) == 1 and gone[0]["log_level"] == "error"
        assert gone[0]["disabled_events"] == 4
        st = await statuses(store)
        assert [
            st[f"evt_g{i}_{k}"]
            for i, k in enumerate(["applied", "scheduled", "converged", "failed"])
        ] == ["disabled"] * 4
        assert (await store.count_events_by_status())["disabled"] == 4
        assert await d.run_once(T0 + timedelta(hours=3)) == type(s4)()

        # Requeued by an operator once the portal is back: delivered.
        receiver.mode = "ok"
        await store.redeliver("evt_g3_failed", T0 + timedelta(hours=4))
        s5 = await d.run_once(T0 + timedelta(hours=4))
        assert s5.delivered == 1
        assert receiver.processed["evt_g3_failed"]["data"]["error"].startswith("edit_items refused")
    finally:
        await d.aclose()


async def test_timeout_is_retried(store: Store, receiver: Receiver) -> None:
    await store.enqueue_events(events(1), T0)
    receiver.mode = "hang"
    receiver.hang_seconds = 1.5
    async with deliverer(store, receiver, timeout=0.3) as d:
        s = await d.run_once(T0)
        assert s.failed == 1
        e = await store.get_event("evt_c0_applied")
        assert e is not None and e.status is EventStatus.PENDING
        assert e.last_error is not None and e.last_error.startswith("timeout")
        await asyncio.sleep(1.5)  # let the receiver finish before the next attempt
        receiver.mode = "ok"
        assert (await d.run_once(T0 + timedelta(seconds=30))).delivered == 1


async def test_restart_graceful_and_mid_flight(db_url: str, receiver: Receiver) -> None:
    """No event lost or duplicated when the deliverer restarts between batches (graceful) or is
    killed while requests are in flight (the receiver then sees a repeat and deduplicates)."""
    store = await Store.open(db_url, instance_id="a")
    await store.migrate()
    await store.enqueue_events(events(20), T0)
    d = deliverer(store, receiver, batch=5)
    assert (await d.run_once(T0)).delivered == 5
    assert (await d.run_once(T0)).delivered == 5
    # Mid-flight crash: the receiver takes the next batch but answers late; the process dies.
    receiver.mode = "hang"
    receiver.hang_seconds = 0.5
    task = asyncio.create_task(d.run_once(T0))
    while len(receiver.seen) < 15:  # noqa: ASYNC110 - the receiver runs in another thread
        await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await d.aclose()
    await store.close()
    await asyncio.sleep(0.6)

    # A new process on the same database file.
    receiver.mode = "ok"
    store2 = await Store.open(db_url, instance_id="b")
    try:
        async with deliverer(store2, receiver, batch=5) as d2:
            total = 0
            while (s := await d2.run_once(T0 + timedelta(seconds=1))).due:
                total += s.delivered
            assert total == 10
        counts = await store2.count_events_by_status()
        assert counts["delivered"] == 20 and counts["pending"] == 0
    finally:
        await store2.close()
    all_ids = {e.id for e in events(20)}
    assert set(receiver.processed) == all_ids  # nothing lost
    hung = set(receiver.ids(204)[10:15])
    assert set(receiver.duplicates) == hung  # the in-flight five came again, deduplicated
    assert len(receiver.duplicates) == 5
    assert receiver.invalid == 0


async def test_dead_letter_after_24h_then_redeliver(store: Store, receiver: Receiver) -> None:
    await store.enqueue_events(events(1), T0)
    receiver.mode = "fail"
    async with deliverer(store, receiver) as d:
        now = T0
        attempts_at = []
        while True:
            s = await d.run_once(now)
            assert s.due == 1
            attempts_at.append(now)
            e = await store.get_event("evt_c0_applied")
            assert e is not None
            if e.status is EventStatus.DEAD:
                break
            assert s.failed == 1 and now - T0 < timedelta(hours=25)
            assert e.next_attempt_at is not None
            now = e.next_attempt_at
        # Retried for 24 h: every attempt before the 24 h mark was followed by another.
        assert attempts_at[-2] - T0 < timedelta(hours=24) <= attempts_at[-1] - T0
        assert attempts_at[-1] - T0 == timedelta(hours=24, minutes=3, seconds=30)
        assert len(attempts_at) == 31 and e.attempts == 31
        assert e.last_error == "HTTP 500: scripted" and e.next_attempt_at is None
        assert (await d.run_once(now + timedelta(days=1))).due == 0
        dead, _ = await store.list_events(status="dead")
        assert [x.id for x in dead] == ["evt_c0_applied"]
        assert (await store.count_events_by_status())["dead"] == 1

        # `reconciler events redeliver ID`, receiver fixed: delivered, once.
        receiver.mode = "ok"
        later = now + timedelta(days=2)
        await store.redeliver("evt_c0_applied", later)
        assert (await d.run_once(later)).delivered == 1
        assert list(receiver.processed) == ["evt_c0_applied"]
        assert receiver.ids(204) == ["evt_c0_applied"]
        assert len(receiver.ids(500)) == 31


async def test_redelivered_event_gets_a_full_schedule_again(
    store: Store, receiver: Receiver
) -> None:
    """An event requeued days after it was created is not dead-lettered on its first failure."""
    await store.enqueue_events(events(1), T0)
    receiver.mode = "fail"
    async with deliverer(store, receiver) as d:
        later = T0 + timedelta(days=3)
        await store.redeliver("evt_c0_applied", later)
        s = await d.run_once(later)
        assert (s.failed, s.dead) == (1, 0)


async def test_run_forever_delivers_and_stops(store: Store, receiver: Receiver) -> None:
    await store.enqueue_events(events(3), T0)
    stop = asyncio.Event()
    async with deliverer(store, receiver, interval=0.05) as d:
        task = asyncio.create_task(d.run_forever(stop))
        for _ in range(200):
            if len(receiver.processed) == 3:
                break
            await asyncio.sleep(0.02)
        stop.set()
        await asyncio.wait_for(task, timeout=2)
    assert len(receiver.processed) == 3


def test_body_is_stable() -> None:
    from reconciler.store.types import OutboxEvent

    e = OutboxEvent(
        id="evt_x",
        type="plan_change.scheduled",
        customer="c",
        change_id="x",
        payload={"effective_at": "2026-05-10T08:30:45Z"},
        status=EventStatus.PENDING,
        attempts=0,
        next_attempt_at=T0,
        last_error=None,
        created_at=T0,
        delivered_at=None,
    )
    assert body_of(e) == (
        b'{"type":"plan_change.scheduled","timestamp":"2026-04-10T08:30:00Z",'
        b'"data":{"effective_at":"2026-05-10T08:30:45Z"}}'
    )
