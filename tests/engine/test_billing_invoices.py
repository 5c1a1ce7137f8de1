"""Issue 13's acceptance on the emulator with OpenMeter's billing on: what April costs when a
customer upgrades from Basic ($150 in advance) to Advanced ($300) on April 16, read from the
invoices OpenMeter writes, with the plan record converging later and no usage lost.

| policy        | April invoice when the edit lands | April base fee | credit_due |
|---------------|-----------------------------------|----------------|------------|
| billing_safe  | draft (autoAdvance off)           | 75 + 150 = 225 | none       |
| billing_safe  | issued (the default profile)      | 150 + 150 = 300| 75.00      |
| next_boundary | draft                             | 75 + 300 = 375 | none       |
| next_boundary | issued                            | 150 + 300 = 450| 75.00      |
"""

from __future__ import annotations

import asyncio
import copy
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rich.console import Console

from reconciler.cli.demo import Story
from reconciler.cli.render import print_quote
from reconciler.domain.periods import parse_duration, period_at
from reconciler.engine.views import quote_json, status_json
from reconciler.runtime import Runtime, open_runtime
from reconciler.store.types import ChangeStatus
from tests.plans import billed as billed_for

from .conftest import POLICY, POLICY_NEXT_BOUNDARY, make_settings
from .helpers import mutations, plan_key

CATALOG = yaml.safe_load(Path(__file__).with_name("billing_catalog.yaml").read_text())
APRIL = datetime(2027, 4, 1, tzinfo=UTC)
UPGRADE = datetime(2027, 4, 16, tzinfo=UTC)
MAY = datetime(2027, 5, 1, tzinfo=UTC)
JUNE = datetime(2027, 6, 1, tzinfo=UTC)
DRAFT = {"autoAdvance": False}
MONTH = parse_duration("P1M")
ISSUED: dict[str, Any] = {}


@pytest.fixture
async def billed(control: httpx.AsyncClient) -> httpx.AsyncClient:
    (await control.post("/_emulator/reset", json={"catalog": CATALOG})).raise_for_status()
    return control


async def _invoices(rt: Runtime, customer_id: str) -> list[dict[str, Any]]:
    r = await rt.client._request(
        "list_invoices",
        "GET",
        "/api/v1/billing/invoices",
        params={"customers": [customer_id], "expand": ["lines"]},
    )
    items: list[dict[str, Any]] = r.json()["items"]
    return items


async def _setup(story: Story, control: httpx.AsyncClient, profile: dict[str, Any]) -> str:
    await story.set_clock(APRIL)
    (await control.post("/_emulator/billing", json=profile)).raise_for_status()
    await story.onboard("starter", APRIL)
    await story.set_clock(APRIL + timedelta(days=9))
    await story.use(3)
    await story.set_clock(UPGRADE)
    (await control.delete("/_emulator/requests")).raise_for_status()
    cust = await story.rt.client.get_customer(story.customer)
    return cust.id


@pytest.mark.parametrize(
    ("policy", "profile", "quoted", "april", "credit"),
    [
        (POLICY, DRAFT, "225", "225", None),
        (POLICY, ISSUED, "300", "300", "75.00"),
        (POLICY_NEXT_BOUNDARY, DRAFT, "375", "375", None),
        (POLICY_NEXT_BOUNDARY, ISSUED, "450", "450", "75.00"),
    ],
    ids=[
        "billing_safe-draft",
        "billing_safe-issued",
        "next_boundary-draft",
        "next_boundary-issued",
    ],
)
async def test_upgrade_on_april_16_is_billed_as_quoted(
    emulator: Any,
    billed: httpx.AsyncClient,
    tmp_path: Path,
    policy: Path,
    profile: dict[str, Any],
    quoted: str,
    april: str,
    credit: str | None,
) -> None:
    async with open_runtime(make_settings(emulator, tmp_path / "r.db", policy_path=policy)) as rt:
        story = Story(rt, billed)
        customer_id = await _setup(story, billed, profile)

        # The quote says what April's base fee will cost, and what is owed back.
        report = await rt.quoter.quote(story.customer, plan_key="pro")
        quote = quote_json(report)
        fees = [ln for ln in quote["with_change"]["lines"] if ln["key"] == "base_fee"]
        assert sum(Decimal(ln["amount"]) for ln in fees) == Decimal(quoted)
        assert quote["invoices"] == "read"
        due = quote["credit_due"]
        if credit is None:
            assert due == {"invoices": "read", "credits": [], "total": {}}
        else:
            [c] = due["credits"]
            assert (c["item"], c["amount"], c["currency"]) == ("base_fee", credit, "USD")
            assert c["period"] == {"from": "2027-04-16T00:00:00Z", "to": "2027-05-01T00:00:00Z"}
            assert (c["invoiced"], c["due"]) == ("150.00", "75.00")
            assert due["total"] == {"USD": credit}

        out = await story.change("pro")
        assert out.status == "applied"
        assert await story.value() == (3, 549_997)
        events, _ = await rt.store.list_events()
        [applied] = [e for e in events if e.type == "plan_change.applied"]
        assert applied.payload["credit_due"] == due
        status = status_json(await rt.queries.status(story.customer))
        assert status["desired"]["credit_due"] == due
        console = Console(record=True, width=240)
        print_quote(console, report)
        text = console.export_text()
        if credit is not None:
            assert f"credit due: {credit} USD for base_fee" in text

        # OpenMeter's worker syncs; April's base fee is what the quote said.
        await story.set_clock(UPGRADE + timedelta(seconds=5))
        invoices = await _invoices(rt, customer_id)
        assert billed_for(invoices, "Base fee", APRIL) == Decimal(april)
        served = await mutations(billed)
        if policy == POLICY:
            assert served == [("PATCH", "")]
            # First boundary: usage resets on the same subscription, the record change is
            # scheduled now for June; May is billed in full at the new price.
            await story.set_clock(MAY + timedelta(minutes=1))
            await story.reconcile()
            assert await story.value() == (0, 550_000)
            assert await mutations(billed) == [("PATCH", ""), ("POST", "change")]
        else:
            assert served == [("PATCH", ""), ("POST", "change")]
        await story.set_clock(MAY + timedelta(hours=2))
        invoices = await _invoices(rt, customer_id)
        assert billed_for(invoices, "Base fee", MAY) == Decimal(300)
        assert billed_for(invoices, "Base fee", APRIL) == Decimal(april)  # unchanged

        # The record converges: the customer is on Advanced by plan, usage kept throughout.
        converge = JUNE if policy == POLICY else MAY
        await story.set_clock(converge + timedelta(minutes=1))
        await story.reconcile()
        change = await rt.store.desired_for(story.customer)
        assert change is not None and change.status is ChangeStatus.CONVERGED
        cur, _ = await story.subs()
        assert plan_key(cur) == "pro"
        assert await story.value() == (0, 550_000)
        assert len(await mutations(billed)) == 2  # each mutation served once
        await story.set_clock(converge + timedelta(hours=2))
        invoices = await _invoices(rt, customer_id)
        assert billed_for(invoices, "Base fee", converge) == Decimal(300)


async def test_without_billing_the_quote_and_event_say_no_invoices(
    emulator: Any, billed: httpx.AsyncClient, tmp_path: Path
) -> None:
    async with open_runtime(make_settings(emulator, tmp_path / "r.db", policy_path=POLICY)) as rt:
        story = Story(rt, billed)
        await story.set_clock(APRIL)
        await story.onboard("starter", APRIL)
        await story.set_clock(UPGRADE)
        report = await rt.quoter.quote(story.customer, plan_key="pro")
        quote = quote_json(report)
        assert quote["invoices"] == "no invoices"
        assert quote["credit_due"] == {"invoices": "no invoices", "credits": [], "total": {}}
        assert any("still a draft" in n for n in quote["notes"])
        await story.change("pro")
        events, _ = await rt.store.list_events()
        [applied] = [e for e in events if e.type == "plan_change.applied"]
        assert applied.payload["credit_due"]["invoices"] == "no invoices"


# ---------------------------------------------------------------------------------------------
# Property: the quote is the bill


ANCHORS = [
    datetime(2027, 1, 31, tzinfo=UTC),  # month end: Feb 28, then Mar 31
    datetime(2027, 4, 1, tzinfo=UTC),
    datetime(2027, 2, 28, 12, 30, tzinfo=UTC),
    datetime(2027, 3, 15, 10, 0, tzinfo=UTC),
]


def _catalog(term: str) -> dict[str, Any]:
    doc = copy.deepcopy(CATALOG)
    for p in doc["plans"]:
        for rc in p["phases"][0]["rateCards"]:
            if rc["key"] == "base_fee":
                rc["price"]["paymentTerm"] = term
    return doc


async def _quote_then_bill(
    emulator: Any,
    control: httpx.AsyncClient,
    db: Path,
    *,
    anchor: datetime,
    fraction: float,
    term: str,
    policy: Path,
    profile: dict[str, Any],
) -> tuple[Decimal, Decimal, bool]:
    (await control.post("/_emulator/billing", json={"enabled": False})).raise_for_status()
    # plans are published at the reset's time: reset before the earliest anchor
    (
        await control.post("/_emulator/clock", json={"now": "2026-12-01T00:00:00Z"})
    ).raise_for_status()
    (await control.post("/_emulator/reset", json={"catalog": _catalog(term)})).raise_for_status()
    async with open_runtime(make_settings(emulator, db, policy_path=policy)) as rt:
        story = Story(rt, control)
        await story.set_clock(anchor)
        (await control.post("/_emulator/billing", json=profile)).raise_for_status()
        await story.onboard("starter", anchor)
        first = period_at(anchor, MONTH, anchor)
        p0, p1 = first.start, first.end
        at = p0 + timedelta(minutes=int((p1 - p0).total_seconds() * fraction / 60))
        await story.set_clock(at)
        report = await rt.quoter.quote(story.customer, plan_key="pro")
        quote = quote_json(report)
        quoted = sum((Decimal(ln["amount"]) for ln in quote["with_change"]["lines"]), Decimal(0))
        await story.change("pro")
        await story.set_clock(p1 + timedelta(minutes=1))
        await story.reconcile()
        await story.set_clock(p1 + timedelta(hours=2))  # in-arrears lines collected
        customer_id = (await rt.client.get_customer(story.customer)).id
        invoices = await _invoices(rt, customer_id)
        bill = Decimal(0)
        for inv in invoices:
            if inv["status"] == "gathering":
                continue
            for line in inv.get("lines", []):
                if p0 <= datetime.fromisoformat(line["period"]["from"]) < p1:
                    bill += Decimal(line["totals"]["total"])
        # The record converges: at most two boundaries later, on the target plan.
        for n in (1, 2):
            boundary = period_at(anchor, MONTH, p1 + timedelta(days=n * 31 - 31)).end
            await story.set_clock(boundary + timedelta(minutes=1))
            await story.reconcile()
        change = await rt.store.desired_for(story.customer)
        converged = change is not None and change.status is ChangeStatus.CONVERGED
        converged = converged and plan_key((await story.subs())[0]) == "pro"
        return quoted, bill, converged


@settings(max_examples=8, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    anchor=st.sampled_from(ANCHORS),
    fraction=st.floats(min_value=0.03, max_value=0.97),
    term=st.sampled_from(["in_advance", "in_arrears"]),
    policy=st.sampled_from([POLICY, POLICY_NEXT_BOUNDARY]),
    profile=st.sampled_from([DRAFT, ISSUED]),
)
def test_property_the_quote_is_what_openmeter_bills(
    emulator: Any,
    tmp_path_factory: pytest.TempPathFactory,
    anchor: datetime,
    fraction: float,
    term: str,
    policy: Path,
    profile: dict[str, Any],
) -> None:
    async def run() -> tuple[Decimal, Decimal, bool]:
        async with httpx.AsyncClient(base_url=emulator.url) as control:
            return await _quote_then_bill(
                emulator,
                control,
                tmp_path_factory.mktemp("p") / "r.db",
                anchor=anchor,
                fraction=fraction,
                term=term,
                policy=policy,
                profile=profile,
            )

    quoted, bill, converged = asyncio.run(run())
    assert quoted == bill
    assert converged


async def test_an_upgrade_that_ends_no_in_advance_fee_does_not_read_invoices(
    emulator: Any, billed: httpx.AsyncClient, tmp_path: Path
) -> None:
    async with open_runtime(make_settings(emulator, tmp_path / "r.db", policy_path=POLICY)) as rt:
        story = Story(rt, billed)
        await story.set_clock(APRIL)
        (await billed.post("/_emulator/billing", json=ISSUED)).raise_for_status()
        await story.onboard("free", APRIL)  # no fee: nothing can have been overbilled
        await story.set_clock(UPGRADE)
        (await billed.delete("/_emulator/requests")).raise_for_status()
        await story.change("starter")
        events, _ = await rt.store.list_events()
        [applied] = [e for e in events if e.type == "plan_change.applied"]
        assert applied.payload["credit_due"] == {
            "invoices": "not needed",
            "credits": [],
            "total": {},
        }
        rows = (await billed.get("/_emulator/requests")).json()["requests"]
        assert not [r for r in rows if r["path"].startswith("/api/v1/billing")]
