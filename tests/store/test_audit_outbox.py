from __future__ import annotations

from datetime import timedelta

import pytest

from reconciler.store import (
    AuditEntry,
    AuditKind,
    EventNotFoundError,
    EventStatus,
    InvalidTransitionError,
    NewEvent,
    Store,
)

from .conftest import T0

M = timedelta(minutes=1)


async def test_audit_append_and_list(store: Store) -> None:
    entries = [
        AuditEntry(
            at=T0,
            kind=AuditKind.CALL,
            operation="changeSubscription",
            customer="acme",
            change_id="ch1",
            method="POST",
            path="/api/v1/subscriptions/s1/change",
            request_body={"timing": "immediate", "plan": {"key": "pro"}},
            status=200,
            detail="ok",
        ),
        AuditEntry(
            at=T0 + M,
            kind=AuditKind.DECISION,
            operation="plan",
            customer="acme",
            change_id="ch1",
            data={"direction": "upgrade", "actions": ["edit"]},
        ),
        AuditEntry(at=T0 + 2 * M, kind="event", operation="outbox", customer="zeta"),  # type: ignore[arg-type]
    ]
    assert await store.append_audit(entries) == 3
    assert await store.append_audit([]) == 0
    acme = await store.list_audit(customer="acme")
    assert [e.operation for e in acme] == ["plan", "changeSubscription"]  # newest first
    call = acme[1]
    assert call.id is not None and call.kind is AuditKind.CALL
    assert call.request_body == {"timing": "immediate", "plan": {"key": "pro"}}
    assert (call.method, call.path, call.status, call.at) == (
        "POST",
        "/api/v1/subscriptions/s1/change",
        200,
        T0,
    )
    assert acme[0].data == {"direction": "upgrade", "actions": ["edit"]}
    assert [e.customer for e in await store.list_audit(change_id="ch1")] == ["acme", "acme"]
    everything = await store.list_audit(limit=2)
    assert [e.operation for e in everything] == ["outbox", "plan"]
    older = await store.list_audit(before_id=everything[-1].id)
    assert [e.operation for e in older] == ["changeSubscription"]
    with pytest.raises(ValueError, match="aware"):
        await store.append_audit(
            [AuditEntry(at=T0.replace(tzinfo=None), kind=AuditKind.CALL, operation="x")]
        )


async def _enqueue(store: Store, n: int) -> list[str]:
    ids = []
    for i in range(n):
        r = await store.submit_change(
            f"c{i}",
            "pro",
            None,
            T0,
            "webhook",
            f"w{i}",
            T0 + i * M,
            events=[NewEvent(type="change.received", payload={"i": i})],
        )
        events, _ = await store.list_events(limit=1)
        assert events[0].change_id == r.change.id
        ids.append(events[0].id)
    return ids


async def test_outbox_delivery_lifecycle(store: Store) -> None:
    ids = await _enqueue(store, 3)
    assert all(i.startswith("evt_") for i in ids)
    due = await store.due_events(T0 + 10 * M, 10)
    assert [e.id for e in due] == ids  # oldest due first
    # never tried: due at once, even for a deliverer whose clock lags the writer's
    assert [e.id for e in await store.due_events(T0 - M, 10)] == ids
    assert all(e.next_attempt_at is None for e in due)
    assert [e.id for e in await store.due_events(T0 + 10 * M, 2)] == ids[:2]

    delivered = await store.mark_delivered(ids[0], T0 + 11 * M)
    assert delivered.status is EventStatus.DELIVERED
    assert delivered.delivered_at == T0 + 11 * M and delivered.attempts == 1

    retry = await store.mark_failed(ids[1], "HTTP 503", T0 + 30 * M, dead=False)
    assert (retry.status, retry.attempts, retry.last_error) == (EventStatus.PENDING, 1, "HTTP 503")
    assert retry.next_attempt_at == T0 + 30 * M
    assert [e.id for e in await store.due_events(T0 + 20 * M, 10)] == [ids[2]]
    assert [e.id for e in await store.due_events(T0 + 30 * M, 10)] == [ids[2], ids[1]]

    dead = await store.mark_failed(ids[1], "HTTP 400", None, dead=True)
    assert dead.status is EventStatus.DEAD and dead.attempts == 2
    assert dead.next_attempt_at is None
    with pytest.raises(InvalidTransitionError):
        await store.mark_delivered(ids[1], T0)
    with pytest.raises(InvalidTransitionError):
        await store.redeliver(ids[0], T0)  # delivered events are not re-queued
    with pytest.raises(EventNotFoundError):
        await store.mark_delivered("evt_missing", T0)

    assert await store.count_events_by_status() == {
        "pending": 1,
        "delivered": 1,
        "dead": 1,
        "disabled": 0,
    }

    assert await store.disable_pending("receiver answered 410 Gone") == 1
    disabled = await store.get_event(ids[2])
    assert disabled is not None and disabled.status is EventStatus.DISABLED
    assert disabled.last_error == "receiver answered 410 Gone"
    assert await store.due_events(T0 + 99 * M, 10) == []

    again = await store.redeliver(ids[1], T0 + 40 * M)
    assert (again.status, again.attempts, again.next_attempt_at) == (
        EventStatus.PENDING,
        0,
        T0 + 40 * M,
    )
    await store.redeliver(ids[2], T0 + 40 * M)
    assert [e.id for e in await store.due_events(T0 + 40 * M, 10)] == [ids[1], ids[2]]
    assert await store.count_events_by_status() == {
        "pending": 2,
        "delivered": 1,
        "dead": 0,
        "disabled": 0,
    }


async def test_list_events_pagination_and_filter(store: Store) -> None:
    ids = await _enqueue(store, 5)
    await store.mark_delivered(ids[0], T0)
    seen: list[str] = []
    cursor = None
    while True:
        page, cursor = await store.list_events(limit=2, cursor=cursor)
        seen.extend(e.id for e in page)
        if cursor is None:
            break
    assert seen == list(reversed(ids))  # newest first, every event once
    pending, nxt = await store.list_events(status="pending", limit=10)
    assert [e.id for e in pending] == list(reversed(ids[1:])) and nxt is None
    await store.enqueue_events([NewEvent(type="notice", payload={"x": 1}, id="evt_n")], T0)
    n = await store.get_event("evt_n")
    assert n is not None and n.customer is None and n.payload == {"x": 1}
