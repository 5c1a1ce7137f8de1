"""What one pass costs the store and OpenMeter, and the short observation after our own mutations.

The engine stages a step's writes and commits them together (``Engine._commit``); after an edit
or a scheduled change it reads only the current subscription (``Observer.follow``), falling back
to a full observation whenever that subscription shows someone else acted meanwhile.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from reconciler.cli.demo import Story
from reconciler.domain.actions import Action
from reconciler.engine import Engine
from reconciler.runtime import Runtime
from reconciler.store.types import AuditKind

from .conftest import POLICY_NEXT_BOUNDARY, START
from .helpers import mutations, on_edit, onboard, plan_key


@pytest.fixture
def policy_path() -> Path:
    """This module is about the edit + scheduled-change path: ``plan_record: next_boundary``
    (the default ``billing_safe`` path is in test_billing_safe.py)."""
    return POLICY_NEXT_BOUNDARY


def count_transactions(rt: Runtime, monkeypatch: pytest.MonkeyPatch) -> Counter[str]:
    """Count the store's transactions by kind (read/write) from now on."""
    seen: Counter[str] = Counter()
    real = rt.store.db.tx

    async def tx(
        fn: Callable[[Any], Awaitable[Any]],
        *,
        write: bool,
        idempotent: bool = False,
        autocommit: bool = False,
    ) -> Any:
        seen["write" if write else "read"] += 1
        return await real(fn, write=write, idempotent=idempotent, autocommit=autocommit)

    monkeypatch.setattr(rt.store.db, "tx", tx)
    return seen


async def reads(control: httpx.AsyncClient) -> Counter[str]:
    rows = (await control.get("/_emulator/requests")).json()["requests"]
    out: Counter[str] = Counter()
    for r in rows:
        if r["method"] == "GET" and r["path"].startswith("/api/"):
            parts = ["{}" if len(p) == 26 and p.isalnum() else p for p in r["path"].split("/")]
            out["/".join(parts)] += 1
    return out


async def test_a_pass_that_finds_the_desired_plan_reads_no_entitlement_value(
    story: Story, rt: Runtime, control: httpx.AsyncClient
) -> None:
    """A request for the plan the customer already has: the policy decides NOOP without
    consulting usage, so the values are never read (three reads, no mutation)."""
    await onboard(story, "free", START, used=3)
    await story.request("free")
    await rt.engine.catalog.get("free")
    (await control.delete("/_emulator/requests")).raise_for_status()

    out = await story.reconcile()
    got = await reads(control)

    assert out.status == "converged"
    assert await mutations(control) == []
    # its subscriptions, the current one (addressed by key: the listing names the customer's id)
    assert sum(got.values()) == 2, got
    assert "/api/v1/customers/acme" not in got
    assert not [p for p in got if p.endswith("/value")], got

    # a request that needs a change still reads the values before deciding (the proof, the
    # policy's usage rules): the upgrade's observation reads them once
    (await control.delete("/_emulator/requests")).raise_for_status()
    await story.request("starter")
    out = await story.reconcile()
    got = await reads(control)
    assert out.status == "applied" and await story.value() == (3, 549_997)
    assert sum(n for p, n in got.items() if p.endswith("/value")) >= 2  # before and after


async def test_an_upgrade_is_three_store_writes_and_six_reads(
    story: Story, rt: Runtime, control: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    await onboard(story, "free", START, used=3)
    await story.request("starter")
    # The catalog is cached: keep it out of the count (the target, and the plan version the
    # customer is on, whose features the pass reads together with its subscription).
    await rt.engine.catalog.get("starter")
    await rt.engine.catalog.get("free")
    (await control.delete("/_emulator/requests")).raise_for_status()
    tx = count_transactions(rt, monkeypatch)

    out = await story.reconcile()
    got = await reads(control)

    assert out.status == "applied" and await story.value() == (3, 549_997)
    assert await mutations(control) == [("PATCH", ""), ("POST", "change")]
    # writes: before the PATCH (decision, proof_before), its audit row, the end of the pass
    # (the POST's audit row, the proof, status, event, next check: nothing is called between
    # the POST and the end); reads: the claim and the alias check.
    assert tx == {"write": 3, "read": 2}
    assert sum(got.values()) == 6, got  # 7 with the plan, cached here
    # the subscription is read with the values and after the edit; after the change the
    # pass plans on OpenMeter's answer (nothing is left to send, so nothing is read)
    assert got["/api/v1/subscriptions/{}"] == 2
    assert "/api/v1/customers/acme" not in got  # the listing names the customer's id
    # OpenMeter refuses to edit a subscription with add-ons: read once, just before the edit
    assert got["/api/v1/subscriptions/{}/addons"] == 1
    listings = [
        p for p in got if p.startswith("/api/v1/customers/") and p.endswith("/subscriptions")
    ]
    assert sum(got[p] for p in listings) == 1, got  # one full observation
    # nothing was lost by writing less often: every call and the decision are on record
    audit = await rt.store.list_audit(customer="acme", limit=100)
    calls = [a for a in audit if a.kind is AuditKind.CALL]
    assert len(calls) == 8 and {a.method for a in calls} == {"GET", "PATCH", "POST"}
    assert [a.operation for a in audit if a.kind is AuditKind.DECISION] == ["plan"]
    change = await rt.store.desired_for("acme")
    assert change is not None and change.details["proof"]["usage_preserved"] is True
    events, _ = await rt.store.list_events()
    assert [e.type for e in events] == ["plan_change.applied"]


async def test_a_cancelation_made_right_after_our_edit_is_seen_in_full(
    story: Story, rt: Runtime, control: httpx.AsyncClient
) -> None:
    """Someone schedules a change between our PATCH and our next step: the current
    subscription no longer matches what the edit left, so the engine observes in full (it
    sees the other successor) instead of acting on a partial view."""
    await onboard(story, "free", START, used=3)

    async def outsider(action: Action) -> None:
        if action.kind == "edit_items":
            cur, _ = await story.subs()
            await rt.client.change_subscription(
                cur.id, {"timing": "next_billing_cycle", "plan": {"key": "pro"}}
            )

    engine = Engine(rt.collaborators, after_action=outsider)
    await story.request("starter")
    out = await engine.reconcile("acme")

    # The full observation found the outsider's successor (pro) and replaced it with ours.
    assert out.status == "applied"
    assert [a.action for a in out.applied] == [
        "edit_items",
        "delete_scheduled",
        "unschedule_cancelation",
        "schedule_change",
    ]
    _, succ = await story.subs()
    assert plan_key(succ) == "starter"
    assert await story.value() == (3, 549_997)


async def test_follow_returns_none_when_the_current_subscription_changed(
    story: Story, rt: Runtime
) -> None:
    await onboard(story, "free", START, used=3)
    now = await story.now()
    observed = await rt.engine.observer.observe("acme", now)
    assert observed.current is not None and observed.successor is None

    # nothing happened: one read gives the same picture
    same = await rt.engine.observer.follow(observed, now, observed.values, None)
    assert same is not None and same.current is not None
    assert same.current.id == observed.current.id and same.successor is None

    # a change scheduled by someone else: the expected "no successor" no longer holds
    resp = await rt.client.change_subscription(
        observed.current.id, {"timing": "next_billing_cycle", "plan": {"key": "starter"}}
    )
    assert await rt.engine.observer.follow(observed, now, observed.values, None) is None
    # ...and it holds for the successor the change's response names
    from reconciler.openmeter import mapping

    succ = mapping.to_observed_subscription(resp.next)
    after = await rt.engine.observer.follow(observed, now, observed.values, succ)
    assert after is not None and after.successor is succ
    assert after.current is not None and after.current.superseding_id == succ.id


async def test_no_pass_looks_while_a_timed_out_edit_may_still_run(
    story: Story, control: httpx.AsyncClient, emulator: Any, tmp_path: Any
) -> None:
    """The PATCH outlives the client's timeout and is applied just after: a pass started right
    then (a new request, an admin call) must not observe — it could miss the edit and send it
    again. It reports ``settling`` and leaves the customer due after the backoff."""
    from reconciler.runtime import open_runtime

    from .conftest import make_settings

    await onboard(story, "free", START, used=3)
    fault = {"method": "PATCH", "path": "/api/v1/subscriptions/*", "delaySeconds": 1.3, "count": 1}
    (await control.post("/_emulator/faults", json=fault)).raise_for_status()
    settings = make_settings(
        emulator, tmp_path / "own.db", openmeter_read_timeout=1, policy_path=POLICY_NEXT_BOUNDARY
    )
    async with open_runtime(settings) as rt:
        await Story(rt, control).request("starter")
        first = await rt.engine.reconcile("acme")
        assert first.state == "retry"  # the PATCH timed out: applied or not, unknown yet
        seen = len((await control.get("/_emulator/requests")).json()["requests"])
        again = await rt.engine.reconcile("acme")
        assert again.state == "settling"
        rows = (await control.get("/_emulator/requests")).json()["requests"]
        assert [r for r in rows[seen:] if r["method"] == "GET"] == []  # it did not even look
        row = await rt.store.get_customer("acme")
        assert row is not None and row.next_check_at is not None
        await asyncio.sleep(0.5)  # the late PATCH lands
    rows = (await control.get("/_emulator/requests")).json()["requests"]
    assert [r["applied"] for r in rows if r["method"] == "PATCH"] == [True]  # sent once


async def test_a_customer_addressed_by_id_is_read_with_its_subscriptions(
    story: Story, rt: Runtime, control: httpx.AsyncClient
) -> None:
    """Addressed by its OpenMeter id, the customer's lookup (for its key) goes out with its
    listing, not before it: with the customer's answer delayed, the listing is served first,
    and the upgrade still converges."""
    await onboard(story, "free", START, used=3)
    cid = (await rt.client.get_customer("acme")).id
    by_id = Story(rt, control, customer=cid)
    await by_id.request("starter")
    (await control.delete("/_emulator/requests")).raise_for_status()
    rule = {"method": "GET", "path": f"/api/v1/customers/{cid}", "delaySeconds": 0.3, "count": 1}
    (await control.post("/_emulator/faults", json=rule)).raise_for_status()

    out = await rt.engine.reconcile(cid)

    assert out.status == "applied" and await story.value() == (3, 549_997)
    log = (await control.get("/_emulator/requests")).json()["requests"]
    paths = [r["path"] for r in log if r["method"] == "GET" and "/plans/" not in r["path"]]
    assert paths[:2] == [f"/api/v1/customers/{cid}/subscriptions", f"/api/v1/customers/{cid}"]
    assert [r["method"] for r in log if r["method"] != "GET"] == ["PATCH", "POST"]


async def test_a_new_request_reads_usage_with_the_subscription_not_after_it(
    story: Story, rt: Runtime, control: httpx.AsyncClient
) -> None:
    """Issue 16: the usage proof's "before" values go out with the expanded subscription (the
    features guessed from the target and the listed plan version), so only two levels of reads
    precede the PATCH. With the subscription's answer delayed, the value is served first; the
    edit still keeps usage and its proof holds. The add-ons (OpenMeter refuses to edit a
    subscription with add-ons) are read in the same level."""
    await onboard(story, "free", START, used=3)
    await story.request("starter")
    await rt.engine.catalog.get("starter")
    await rt.engine.catalog.get("free")
    (await control.delete("/_emulator/requests")).raise_for_status()
    cur, _ = await story.subs()
    (await control.delete("/_emulator/requests")).raise_for_status()
    path = f"/api/v1/subscriptions/{cur.id}"
    rule = {"method": "GET", "path": path, "delaySeconds": 0.3, "count": 1}
    (await control.post("/_emulator/faults", json=rule)).raise_for_status()

    out = await story.reconcile()

    assert out.status == "applied" and await story.value() == (3, 549_997)
    log = (await control.get("/_emulator/requests")).json()["requests"]
    first_patch = next(i for i, r in enumerate(log) if r["method"] == "PATCH")
    before = [r["path"] for r in log[:first_patch]]
    value = f"/api/v1/customers/{cur.customer_id}/entitlements/api_credits/value"
    assert before.index(value) < before.index(path), before  # served while the GET waited
    assert before.index(f"{path}/addons") < before.index(path), before  # the edit's guard too
    assert before.count(value) == 1 and before.count(path) == 1, before
    change = await rt.store.desired_for("acme")
    assert change is not None and change.details["proof"]["usage_preserved"] is True
    assert change.details["proof"]["before"]["api_credits"]["usage"] == 3


async def test_a_target_plan_not_cached_is_read_with_the_listing_not_before_it(
    story: Story, rt: Runtime, control: httpx.AsyncClient
) -> None:
    """A new process (or an expired entry of the plan's active version): the target plan is
    read together with the customer's listing. With the plan's answer held back 0.3 s, the
    listing is served first, and it is read only once."""
    from dataclasses import replace

    from reconciler.engine.catalog import Catalog

    await onboard(story, "free", START, used=3)
    await story.request("starter")
    engine = Engine(replace(rt.collaborators, catalog=Catalog(rt.client)))
    rule = {"method": "GET", "path": "/api/v1/plans/starter", "delaySeconds": 0.3, "count": 1}
    (await control.post("/_emulator/faults", json=rule)).raise_for_status()

    out = await engine.reconcile("acme")

    assert out.status == "applied" and await story.value() == (3, 549_997)
    log = [r["path"] for r in (await control.get("/_emulator/requests")).json()["requests"]]
    listing = "/api/v1/customers/acme/subscriptions"
    assert log.index(listing) < log.index("/api/v1/plans/starter"), log
    assert log.count(listing) == 1 and log.count("/api/v1/plans/starter") == 1, log
    assert await mutations(control) == [("PATCH", ""), ("POST", "change")]


async def test_an_unknown_target_plan_fails_the_change_with_the_listing_read_for_nothing(
    story: Story, rt: Runtime, control: httpx.AsyncClient
) -> None:
    """The listing read with a plan that turns out not to exist is dropped: the change fails
    with the catalog's reason, nothing is sent."""
    await onboard(story, "free", START, used=3)
    await story.request("no-such-plan")

    out = await rt.engine.reconcile("acme")

    assert out.status == "failed" and "no-such-plan" in (out.error or ""), out
    assert await mutations(control) == []


async def test_after_the_patch_the_proof_the_read_and_the_change_go_out_together(
    story: Story, rt: Runtime, control: httpx.AsyncClient
) -> None:
    """Right after the PATCH, the usage proof's "after" value, the re-read of the subscription
    and the POST change the plan has next go out together (``engine._pipelined``): with the
    value delayed, the change is served before it, no read waits for the change, and the
    proof is still finished (and stored) before the pass ends."""
    await onboard(story, "free", START, used=3)
    cur, _ = await story.subs()
    path = f"/api/v1/subscriptions/{cur.id}"
    value = f"/api/v1/customers/{cur.customer_id}/entitlements/api_credits/value"

    async def delay_the_after_read() -> None:
        rule = {"method": "GET", "path": value, "delaySeconds": 0.3, "count": 1}
        (await control.post("/_emulator/faults", json=rule)).raise_for_status()

    engine = Engine(rt.collaborators)
    on_edit(engine, before_edit=delay_the_after_read)
    await engine.catalog.get("starter")
    await engine.catalog.get("free")
    await story.request("starter")
    (await control.delete("/_emulator/requests")).raise_for_status()

    out = await engine.reconcile("acme")

    assert out.status == "applied" and await story.value() == (3, 549_997)
    log = [
        f"{r['method']} {r['path']}"
        for r in (await control.get("/_emulator/requests")).json()["requests"]
        if r["path"] in (path, value, f"{path}/change")
    ]
    after_patch = log[log.index(f"PATCH {path}") + 1 :]
    assert after_patch == [f"GET {path}", f"POST {path}/change", f"GET {value}"], log
    change = await rt.store.desired_for("acme")
    assert change is not None and change.details["proof"]["usage_preserved"] is True
    assert change.details["proof"]["after"]["api_credits"]["usage"] == 3


async def test_a_customer_addressed_by_key_is_not_looked_up(
    story: Story, rt: Runtime, control: httpx.AsyncClient
) -> None:
    """Addressed by key, the customer's listing alone gives its id (every subscription names
    it); a customer without any subscription is looked up (its id is needed to create one)."""
    await onboard(story, "free", START, used=3)
    await story.request("starter")
    (await control.delete("/_emulator/requests")).raise_for_status()

    out = await story.reconcile()

    assert out.status == "applied" and await story.value() == (3, 549_997)
    rows = (await control.get("/_emulator/requests")).json()["requests"]
    log = [r for r in rows if "/plans" not in r["path"]]  # the target, read into the catalog
    assert not [r for r in log if r["path"] == "/api/v1/customers/acme"]
    assert log[0]["path"] == "/api/v1/customers/acme/subscriptions"
    change = await rt.store.desired_for("acme")
    cid = (await rt.client.get_customer("acme")).id
    assert change is not None and change.customer_id == cid

    await rt.client.create_customer(
        {"key": "bare", "name": "BARE", "usageAttribution": {"subjectKeys": ["bare"]}}
    )
    newcomer = Story(rt, control, customer="bare")
    await newcomer.request("free")
    (await control.delete("/_emulator/requests")).raise_for_status()
    out = await newcomer.reconcile()
    rows = (await control.get("/_emulator/requests")).json()["requests"]
    log = [r for r in rows if "/plans" not in r["path"]]
    assert [r["path"] for r in log if r["method"] == "GET"][:2] == [
        "/api/v1/customers/bare/subscriptions",
        "/api/v1/customers/bare",
    ]
    assert [r["method"] + " " + r["path"] for r in log if r["method"] != "GET"] == [
        "POST /api/v1/subscriptions"
    ]


async def test_a_call_after_a_scheduled_change_comes_after_its_audit_row(
    story: Story, rt: Runtime, control: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A downgrade's ``POST change``: its audit row is staged, and committed before anything
    else is read from OpenMeter (here: its answer is not planned on, so the next step reads)."""
    await onboard(story, "starter", START, used=3)
    await story.request("free")
    seen: list[tuple[bool, bool]] = []  # (the POST was served, its audit row is stored)
    observer = rt.engine.observer

    def watched(real: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        async def call(*args: Any, **kwargs: Any) -> Any:
            posted = ("POST", "change") in await mutations(control)
            audit = await rt.store.list_audit(customer="acme", limit=100)
            stored = any(
                a.kind is AuditKind.CALL and a.method == "POST" and "change" in (a.path or "")
                for a in audit
            )
            seen.append((posted, stored))
            return await real(*args, **kwargs)

        return call

    monkeypatch.setattr(observer, "answered", lambda *a, **k: None)
    monkeypatch.setattr(observer, "observe", watched(observer.observe))
    monkeypatch.setattr(observer, "follow", watched(observer.follow))
    out = await story.reconcile()

    assert out.status == "scheduled"
    assert await mutations(control) == [("POST", "change")]
    assert (True, True) in seen  # read again after the POST, its row already stored
    assert (True, False) not in seen
