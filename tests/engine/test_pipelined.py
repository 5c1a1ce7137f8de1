"""An upgrade's ``POST change`` goes out on the edit's answer (``engine._pipelined``).

After the PATCH, the plan made before it still holds (an edit changes the items, nothing the
change's request depends on), so the change is sent at once, while the proof's after-read and
the re-read of the subscription run: 4 sequential OpenMeter round trips per upgrade, the bare
script's count. These tests pin what must still hold around it: the re-read may be served
before or after the change, an after-read that fails is made again, someone else's change
made in between is healed, and nothing is ever sent twice.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from reconciler.cli.demo import Story
from reconciler.engine import Engine
from reconciler.runtime import Runtime

from .conftest import POLICY_NEXT_BOUNDARY, START
from .helpers import mutations, on_edit, onboard, plan_key


@pytest.fixture
def policy_path() -> Path:
    return POLICY_NEXT_BOUNDARY


async def requests(control: httpx.AsyncClient) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = (await control.get("/_emulator/requests")).json()["requests"]
    return rows


async def upgrade_with(
    story: Story, rt: Runtime, control: httpx.AsyncClient, **hooks: Any
) -> tuple[Any, str]:
    await onboard(story, "free", START, used=3)
    cur, _ = await story.subs()
    engine = Engine(rt.collaborators)
    await engine.catalog.get("starter")
    await engine.catalog.get("free")
    on_edit(engine, **hooks)
    await story.request("starter")
    (await control.delete("/_emulator/requests")).raise_for_status()
    out = await engine.reconcile("acme")
    return out, cur.customer_id


async def add_fault(control: httpx.AsyncClient, **rule: Any) -> None:
    (await control.post("/_emulator/faults", json=rule)).raise_for_status()


async def test_a_reread_served_after_the_change_is_planned_on_without_another_read(
    story: Story, rt: Runtime, control: httpx.AsyncClient
) -> None:
    """The re-read held back 0.3 s is served after the change: it shows the subscription
    ending where the change's successor starts, and the engine plans on it (no third read)."""
    paths: dict[str, str] = {}

    async def hold_the_reread() -> None:
        await add_fault(control, method="GET", path=paths["sub"], delaySeconds=0.3, count=1)

    await onboard(story, "free", START, used=3)
    sub, _ = await story.subs()
    paths["sub"] = f"/api/v1/subscriptions/{sub.id}"
    engine = Engine(rt.collaborators)
    await engine.catalog.get("starter")
    await engine.catalog.get("free")
    on_edit(engine, before_edit=hold_the_reread)
    await story.request("starter")
    (await control.delete("/_emulator/requests")).raise_for_status()

    out = await engine.reconcile("acme")

    assert out.status == "applied" and await story.value() == (3, 549_997)
    log = [(r["method"], r["path"]) for r in await requests(control)]
    after = log[log.index(("PATCH", paths["sub"])) + 1 :]
    assert ("POST", f"{paths['sub']}/change") in after
    assert after.index(("POST", f"{paths['sub']}/change")) < after.index(("GET", paths["sub"]))
    # the read before the PATCH and the held re-read: nothing read after the change
    assert [m for m, p in log if p == paths["sub"]] == ["GET", "PATCH", "GET"]
    assert await mutations(control) == [("PATCH", ""), ("POST", "change")]
    current, succ = await story.subs()
    assert plan_key(succ) == "starter" and current.active_to == succ.active_from
    change = await rt.store.desired_for("acme")
    assert change is not None and change.details["proof"]["usage_preserved"] is True


async def test_a_failed_after_read_is_made_again_after_the_change(
    story: Story, rt: Runtime, control: httpx.AsyncClient
) -> None:
    """The proof's after-read fails (both attempts of the client's retry): the change still
    goes out on the edit's answer, then the value is read again and the proof finished."""
    value = "/api/v1/customers/*/entitlements/api_credits/value"

    async def fail_the_after_read() -> None:
        await add_fault(control, method="GET", path=value, status=503, count=2)

    out, customer_id = await upgrade_with(story, rt, control, before_edit=fail_the_after_read)

    assert out.status == "applied"
    assert await mutations(control) == [("PATCH", ""), ("POST", "change")]
    value_path = f"/api/v1/customers/{customer_id}/entitlements/api_credits/value"
    log = await requests(control)
    patch_at = next(i for i, r in enumerate(log) if r["method"] == "PATCH")
    reads = [r["status"] for r in log[patch_at:] if r["path"] == value_path]
    assert reads == [503, 503, 200]
    change = await rt.store.desired_for("acme")
    assert change is not None and "proof_before" not in change.details
    assert change.details["proof"]["usage_preserved"] is True
    assert change.details["proof"]["after"]["api_credits"]["usage"] == 3


async def test_a_change_made_by_someone_else_after_the_edit_is_healed(
    story: Story, rt: Runtime, control: httpx.AsyncClient
) -> None:
    """Between our PATCH and our change, someone schedules a change to *pro*: ours is sent on
    the edit's answer all the same; whatever OpenMeter made of the two, the engine observes
    it and leaves the customer on *starter*, successor included, each call sent once."""
    sub_id: dict[str, str] = {}

    async def someone_else() -> None:
        pro = await rt.client.get_plan("pro")
        body = {"timing": "next_billing_cycle", "plan": {"key": "pro", "version": pro.version}}
        await rt.client.change_subscription(sub_id["id"], body)

    await onboard(story, "free", START, used=3)
    sub, _ = await story.subs()
    sub_id["id"] = sub.id
    engine = Engine(rt.collaborators)
    on_edit(engine, after_edit=someone_else)
    await story.request("starter")

    out = await engine.reconcile("acme")

    assert out.status == "applied", out
    current, succ = await story.subs()
    assert plan_key(succ) == "starter" and current.active_to == succ.active_from
    assert await story.value() == (3, 549_997)
    sent = await mutations(control)
    # ours and theirs, then what undoing theirs takes: each once
    assert sent.count(("PATCH", "")) == 1
    assert ("DELETE", "") in sent and sent.count(("DELETE", "")) == 1
    again = await engine.reconcile("acme")
    assert again.applied == [] and await mutations(control) == sent
