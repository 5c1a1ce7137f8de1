"""A customer with an add-on upgrades through the reconciler, end to end on the emulator.

OpenMeter (v1.0.0-beta.227, ``workflow/service/subscription.go`` ``EditRunning``) refuses to
edit a subscription with add-ons, whatever their quantity is now, so the usage-preserving edit
is impossible; the policy's ``addons`` setting says what happens instead
(``reconciler/domain/addons.py``, docs/POLICY.md)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from reconciler.cli.demo import Story
from reconciler.domain.addons import AddonMode
from reconciler.domain.policy import Policy
from reconciler.emulator.server import EmulatorServer
from reconciler.engine.views import preview_json
from reconciler.runtime import Runtime, open_runtime
from reconciler.store.types import AuditKind

from .conftest import POLICY, START, make_settings
from .helpers import mutations, onboard, plan_key

ADDON = {
    "key": "extra_credits",
    "name": "Extra credits",
    "currency": "USD",
    "instanceType": "multiple",
    "rateCards": [
        {
            "type": "usage_based",
            "key": "api_credits",
            "name": "API credits",
            "featureKey": "api_credits",
            "billingCadence": "P1M",
            "price": None,
            "entitlementTemplate": {"type": "metered", "issueAfterReset": 100000},
        }
    ],
}


async def _with_addon(story: Story, control: httpx.AsyncClient, used: int) -> str:
    """acme on starter v2 (which offers the add-on) with 1 × extra_credits and ``used`` usage."""
    addon = (await control.post("/api/v1/addons", json=ADDON)).json()
    (await control.post(f"/api/v1/addons/{addon['id']}/publish")).raise_for_status()
    draft = (await control.post("/api/v1/plans/starter/next")).json()
    r = await control.post(
        f"/api/v1/plans/{draft['id']}/addons",
        json={"addonId": addon["id"], "fromPlanPhase": "default"},
    )
    r.raise_for_status()
    (await control.post(f"/api/v1/plans/{draft['id']}/publish")).raise_for_status()
    await onboard(story, "starter", START)
    cur, _ = await story.subs()
    r = await control.post(
        f"/api/v1/subscriptions/{cur.id}/addons",
        json={"name": "extra", "quantity": 1, "timing": "immediate", "addon": {"id": addon["id"]}},
    )
    assert r.status_code == 201, r.text
    await story.use(used)
    (await control.delete("/_emulator/requests")).raise_for_status()
    return str(cur.id)


async def test_upgrade_with_addon_is_refused_by_default(
    story: Story, rt: Runtime, control: httpx.AsyncClient
) -> None:
    sub_id = await _with_addon(story, control, used=1000)
    assert await story.value() == (1000, 649_000)  # 550,000 + 100,000 from the add-on
    preview = preview_json(await rt.queries.preview("acme", "pro"))
    assert preview["state"] == "refused" and preview["actions"] == []
    assert "has add-ons (extra_credits)" in preview["refusal"]
    (await control.delete("/_emulator/requests")).raise_for_status()
    out = await story.change("pro")
    assert out.status == "failed"
    assert out.error is not None
    assert f"subscription {sub_id} has add-ons (extra_credits)" in out.error
    assert "403 'subscription with addons cannot be edited'" in out.error
    assert "policy addons: refuse" in out.error
    assert await mutations(control) == []  # nothing was sent
    # the add-ons were read once, after the planner chose an edit
    rows = (await control.get("/_emulator/requests")).json()["requests"]
    assert [r["path"] for r in rows].count(f"/api/v1/subscriptions/{sub_id}/addons") == 1
    assert await story.value() == (1000, 649_000)
    cur, succ = await story.subs()
    assert plan_key(cur) == "starter" and succ is None
    calls = [
        a for a in await rt.store.list_audit(customer="acme", limit=50) if a.kind is AuditKind.CALL
    ]
    assert "list_subscription_addons" in {a.operation for a in calls}


@pytest.fixture
async def rt_change(
    emulator: EmulatorServer, control: httpx.AsyncClient, tmp_path: Path
) -> AsyncIterator[Runtime]:
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY.read_text() + "\naddons: change_resets_usage\n")
    assert Policy.from_yaml(policy.read_text()).addons is AddonMode.CHANGE_RESETS_USAGE
    settings = make_settings(emulator, tmp_path / "r.db", policy_path=policy)
    async with open_runtime(settings) as runtime:
        yield runtime


async def test_upgrade_with_addon_changes_now_and_resets_usage_when_policy_allows(
    rt_change: Runtime, control: httpx.AsyncClient
) -> None:
    story = Story(rt_change, control)
    sub_id = await _with_addon(story, control, used=1000)
    preview = preview_json(await rt_change.queries.preview("acme", "pro"))
    assert [(a["method"], a["body"]["timing"]) for a in preview["actions"]] == [
        ("POST", "immediate")
    ]
    assert any("usage restarts from 0" in w for w in preview["warnings"])
    (await control.delete("/_emulator/requests")).raise_for_status()
    out = await story.change("pro")
    assert out.status in ("applied", "converged"), out.error
    # one immediate change, no edit (OpenMeter would answer 403)
    assert await mutations(control) == [("POST", "change")]
    rows = (await control.get("/_emulator/requests")).json()["requests"]
    change_call = next(r for r in rows if r["path"].endswith("/change"))
    assert change_call["body"]["timing"] == "immediate"
    assert change_call["body"]["plan"] == {"key": "pro", "version": 1}
    cur, succ = await story.subs()
    assert plan_key(cur) == "pro" and succ is None
    # the outcome the policy announced: usage restarts, the add-on stays behind
    assert await story.value() == (0, 5_000_000)
    new_addons = (await control.get(f"/api/v1/subscriptions/{cur.id}/addons")).json()
    assert new_addons == []
    old_addons = (await control.get(f"/api/v1/subscriptions/{sub_id}/addons")).json()
    assert [a["addon"]["key"] for a in old_addons] == ["extra_credits"]
    change = await rt_change.store.desired_for("acme")
    assert change is not None
    assert "proof" not in change.details  # no usage is promised, none is proven
    notes: Any = change.details
    assert notes is not None
    # a later pass has nothing to do
    await story.set_clock(START + timedelta(days=10))
    again = await story.reconcile()
    assert again.status == "converged" and again.applied == []
