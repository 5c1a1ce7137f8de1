"""After its own scheduled change the engine plans on OpenMeter's answer instead of reading the
subscription again (``Observer.answered``, ``reconciler/domain/cancelation.py``).

The view it plans on must be what a read would have returned: each scenario runs an upgrade on
the emulator, keeps the observation the engine built from the change's answer and compares it
field by field with the subscription read afterwards. Only the ids of item versions and
entitlements may differ: OpenMeter re-creates an item whose cadence the cancelation cut
(``subscription/service/sync.go``: ``doesItemNeedToBeChanged``), with a new entitlement.
Where the view is not predicted (a phase that starts at the end) or planning on it would send
something, the engine reads.
"""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from reconciler.cli.demo import Story
from reconciler.domain.model import Observed, ObservedItem, ObservedPhase, ObservedSubscription
from reconciler.emulator.server import EmulatorServer
from reconciler.openmeter import mapping
from reconciler.runtime import Runtime, open_runtime

from .conftest import POLICY_NEXT_BOUNDARY, START, make_settings
from .helpers import mutations

HERE = Path(__file__).parent
BILLING = yaml.safe_load((HERE / "billing_catalog.yaml").read_text())
PHASED = (HERE / "phased_plans.yaml").read_text()  # added to the demo catalog
APRIL = datetime(2027, 4, 1, tzinfo=UTC)


@pytest.fixture
def policy_path() -> Path:
    """An upgrade is an edit and a change at the next boundary (``plan_record: next_boundary``)."""
    return POLICY_NEXT_BOUNDARY


def _item(item: ObservedItem) -> ObservedItem:
    ent = item.entitlement
    return dataclasses.replace(
        item, id="", entitlement=dataclasses.replace(ent, id="") if ent is not None else None
    )


def _phase(phase: ObservedPhase) -> ObservedPhase:
    return dataclasses.replace(
        phase,
        items=tuple(_item(i) for i in phase.items),
        timelines={k: tuple(_item(i) for i in v) for k, v in phase.timelines.items()},
    )


def without_ids(sub: ObservedSubscription) -> ObservedSubscription:
    return dataclasses.replace(sub, phases=tuple(_phase(p) for p in sub.phases))


def spy_on_answers(rt: Runtime, monkeypatch: pytest.MonkeyPatch) -> list[Observed | None]:
    seen: list[Observed | None] = []
    real = rt.engine.observer.answered

    def answered(*args: Any, **kwargs: Any) -> Observed | None:
        got = real(*args, **kwargs)
        seen.append(got)
        return got

    monkeypatch.setattr(rt.engine.observer, "answered", answered)
    return seen


async def subscription_reads(control: httpx.AsyncClient) -> int:
    rows = (await control.get("/_emulator/requests")).json()["requests"]
    return sum(
        1
        for r in rows
        if r["method"] == "GET"
        and r["path"].startswith("/api/v1/subscriptions/")
        and r["path"].count("/") == 4
    )


PHASED_POLICY = "version: 1\nladder: [team, business]\ndefaults:\n  plan_record: next_boundary\n"

SCENARIOS = {
    # catalog, plan before, when onboarded, when upgraded, usage, target
    "demo free -> starter": (None, "free", START, START + timedelta(days=9), 3, "starter"),
    "flat fees starter -> pro": (BILLING, "starter", APRIL, APRIL + timedelta(days=15), 3, "pro"),
    "paid phase team -> business": (
        PHASED,
        "team",
        START,
        START + timedelta(days=20),
        50_000,
        "business",
    ),
}


@pytest.mark.parametrize("scenario", list(SCENARIOS))
async def test_the_view_planned_on_is_what_a_read_returns(
    scenario: str,
    emulator: EmulatorServer,
    control: httpx.AsyncClient,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    catalog, before, onboarded, upgraded, used, target = SCENARIOS[scenario]
    if isinstance(catalog, str):
        (await control.post("/_emulator/catalog", content=catalog)).raise_for_status()
    elif catalog is not None:
        (await control.post("/_emulator/reset", json={"catalog": catalog})).raise_for_status()
    policy = POLICY_NEXT_BOUNDARY
    if isinstance(catalog, str):
        policy = tmp_path / "policy.yaml"
        policy.write_text(PHASED_POLICY)
    settings = make_settings(emulator, tmp_path / "r.db", policy_path=policy)
    async with open_runtime(settings) as rt:
        story = Story(rt, control)
        await story.set_clock(onboarded)
        await story.onboard(before, onboarded)
        await story.set_clock(upgraded)
        await story.use(used)
        seen = spy_on_answers(rt, monkeypatch)
        (await control.delete("/_emulator/requests")).raise_for_status()

        out = await story.change(target)

        assert out.status == "applied"
        assert await mutations(control) == [("PATCH", ""), ("POST", "change")]
        assert len(seen) == 1 and seen[0] is not None and seen[0].current is not None
        # read only with the values and after the edit: none after the change
        assert await subscription_reads(control) == 2
        planned = seen[0].current
        read = mapping.to_observed_subscription(await rt.client.get_subscription(planned.id))
        assert read.active_to is not None and read.active_to == planned.active_to
        assert without_ids(planned) == without_ids(read)
        assert seen[0].successor is not None
        assert seen[0].successor.active_from == read.active_to
        assert read.superseding_id == seen[0].successor.id
        # the applied calls' summaries name what OpenMeter shows (only those fields are dumped)
        brief = ("id", "status", "plan", "activeFrom", "activeTo")
        now_current = (await rt.client.get_subscription(planned.id)).model_dump(
            by_alias=True, mode="json", exclude_none=True
        )
        now_next = (await rt.client.get_subscription(seen[0].successor.id)).model_dump(
            by_alias=True, mode="json", exclude_none=True
        )
        assert out.applied[1].result == {
            "current": {k: now_current[k] for k in brief if k in now_current},
            "next": {k: now_next[k] for k in brief if k in now_next},
        }
        assert set(out.applied[0].result) == {"id", "status", "plan", "activeFrom"}


async def test_a_phase_starting_at_the_end_is_read_not_predicted(
    emulator: EmulatorServer,
    control: httpx.AsyncClient,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """In the trial, the next billing boundary is where the paid phase starts: OpenMeter's view
    of that phase once the subscription ends there is not predicted, so it is read."""
    (await control.post("/_emulator/catalog", content=PHASED)).raise_for_status()
    policy = tmp_path / "policy.yaml"
    policy.write_text(PHASED_POLICY)
    settings = make_settings(emulator, tmp_path / "r.db", policy_path=policy)
    async with open_runtime(settings) as rt:
        story = Story(rt, control)
        await story.onboard("team", START)
        await story.set_clock(START + timedelta(days=9))
        await story.use(500)
        seen = spy_on_answers(rt, monkeypatch)
        (await control.delete("/_emulator/requests")).raise_for_status()

        out = await story.change("business")

        assert out.status == "applied"
        assert await mutations(control) == [("PATCH", ""), ("POST", "change")]
        assert seen == [None]
        assert await subscription_reads(control) == 3


async def test_planning_on_the_answer_never_sends_anything_it_reads_first(
    story: Story, rt: Runtime, control: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Were the planner to find work on the answer's view, the engine would read the
    subscription and plan on that instead: nothing is sent on a view that was not read."""
    await story.set_clock(START)
    await story.onboard("free", START)
    await story.set_clock(START + timedelta(days=9))
    await story.use(3)
    asked: list[bool] = []

    def finds_work(*args: Any) -> bool:
        asked.append(True)
        return False

    monkeypatch.setattr(rt.engine, "_plans_nothing", finds_work)
    (await control.delete("/_emulator/requests")).raise_for_status()

    out = await story.change("starter")

    assert out.status == "applied" and asked == [True]
    assert await mutations(control) == [("PATCH", ""), ("POST", "change")]  # each once
    assert await subscription_reads(control) == 3  # the read after the change was made
    assert await story.value() == (3, 549_997)
