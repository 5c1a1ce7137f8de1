"""Quotes end to end on the emulator: a mid-period upgrade (flat fees prorated, usage per
item version), the engine actually applying it, and a volume-tiered plan at several usage levels.

Expected amounts are computed here from first principles (seconds of the service period over
seconds of the billing period, rounded half-up to cents), not with the pricing module.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
from rich.console import Console

from reconciler.cli.render import print_quote
from reconciler.domain.policy import Policy
from reconciler.emulator.server import EmulatorServer
from reconciler.engine import Collaborators, Engine, HttpClock, Queries, QuoteReport
from reconciler.engine.quote import QuoteError, Quoter, parse_at
from reconciler.engine.views import preview_json, quote_json
from reconciler.openmeter.client import OpenMeterClient
from reconciler.store import Store
from reconciler.store.types import ChangeSource
from tests.plans import fee_plan

# Sub-second anchor, as OpenMeter's default (the create instant) has.
T0 = datetime(2026, 4, 10, 8, 30, 45, 123456, tzinfo=UTC)
PERIOD_END = datetime(2026, 5, 10, 8, 30, 45, 123456, tzinfo=UTC)  # 30 days
CENT = Decimal("0.01")

CATALOG: dict[str, Any] = {
    "meters": [
        {
            "slug": "api_calls",
            "name": "API calls",
            "eventType": "api_call",
            "aggregation": "SUM",
            "valueProperty": "$.credits",
        }
    ],
    "features": [{"key": "api_credits", "name": "API credits", "meterSlug": "api_calls"}],
}

POLICY = """
ladder: [basic, plus]
defaults:
  upgrade: immediate
  downgrade: next_billing_cycle
  lateral: next_billing_cycle
"""


def flat_plan(key: str, fee: str, unit: str, allowance: int) -> dict[str, Any]:
    return fee_plan(key, fee, unit, allowance=allowance)


def volume_plan() -> dict[str, Any]:
    plan = flat_plan("volume", "0", "0", 100000)
    plan["phases"][0]["rateCards"] = [
        {
            "type": "usage_based",
            "key": "api_credits",
            "name": "API credits",
            "featureKey": "api_credits",
            "billingCadence": "P1M",
            "price": {
                "type": "tiered",
                "mode": "volume",
                "tiers": [
                    {
                        "upToAmount": "1000",
                        "flatPrice": {"type": "flat", "amount": "5"},
                        "unitPrice": {"type": "unit", "amount": "0.10"},
                    },
                    {
                        "upToAmount": "5000",
                        "flatPrice": {"type": "flat", "amount": "10"},
                        "unitPrice": {"type": "unit", "amount": "0.08"},
                    },
                    {
                        "flatPrice": {"type": "flat", "amount": "20"},
                        "unitPrice": {"type": "unit", "amount": "0.05"},
                    },
                ],
            },
        }
    ]
    return plan


def trunc(t: datetime) -> datetime:
    return t.replace(microsecond=0)


def prorated(amount: str, start: datetime, end: datetime) -> Decimal:
    """amount × (service seconds / period seconds), half-up to cents."""
    service = (trunc(end) - trunc(start)).total_seconds()
    full = (trunc(PERIOD_END) - trunc(T0)).total_seconds()
    return (Decimal(amount) * Decimal(int(service)) / Decimal(int(full))).quantize(
        CENT, ROUND_HALF_UP
    )


class JsonQuoter:
    """The quoter as the admin API and ``quote --json`` show it; ``last``: the typed report."""

    def __init__(self, quoter: Quoter) -> None:
        self.quoter = quoter
        self.last: QuoteReport | None = None

    async def quote(self, customer: str, **kw: Any) -> dict[str, Any]:
        self.last = await self.quoter.quote(customer, **kw)
        return quote_json(self.last)


@dataclass
class World:
    emu: EmulatorServer
    http: httpx.AsyncClient
    engine: Engine
    store: Store
    quoter: JsonQuoter

    async def post(self, path: str, body: Any, expect: int = 200) -> Any:
        r = await self.http.post(path, json=body)
        assert r.status_code == expect, r.text
        return r.json() if r.content else None

    async def set_time(self, t: datetime) -> None:
        await self.post("/_emulator/clock", {"now": t.isoformat()})

    async def plan(self, body: dict[str, Any]) -> None:
        created = await self.post("/api/v1/plans", body, expect=201)
        await self.post(f"/api/v1/plans/{created['id']}/publish", None)

    async def customer(self, key: str, plan: str, **extra: Any) -> dict[str, Any]:
        await self.post(
            "/api/v1/customers",
            {"name": key, "key": key, "usageAttribution": {"subjectKeys": [key]}},
            expect=201,
        )
        sub: dict[str, Any] = await self.post(
            "/api/v1/subscriptions",
            {"customerKey": key, "plan": {"key": plan}, **extra},
            expect=201,
        )
        return sub

    async def ingest(self, subject: str, credits: int, at: datetime, eid: str) -> None:
        await self.post(
            "/api/v1/events",
            {
                "specversion": "1.0",
                "id": eid,
                "source": "test",
                "type": "api_call",
                "subject": subject,
                "time": at.isoformat(),
                "data": {"credits": credits},
            },
            expect=204,
        )


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    async with EmulatorServer(catalog=CATALOG) as emu:
        emu.clock.set(T0)
        clock = HttpClock(f"{emu.url}/_emulator/clock")
        store = await Store.open(f"sqlite:///{tmp_path / 'r.db'}", instance_id="t")
        await store.migrate()
        async with (
            OpenMeterClient(emu.url) as client,
            httpx.AsyncClient(base_url=emu.url) as http,
        ):
            collab = Collaborators.build(client, store, Policy.from_yaml(POLICY), clock)
            w = World(emu, http, Engine(collab), store, JsonQuoter(Quoter(collab)))
            await w.plan(flat_plan("basic", "30", "0.01", 1000))
            await w.plan(flat_plan("plus", "90", "0.005", 10000))
            await w.plan(volume_plan())
            try:
                yield w
            finally:
                await clock.aclose()
                await store.close()


def lines(q: dict[str, Any]) -> list[tuple[str, int | None, str | None, str]]:
    return [(ln["key"], ln["version"], ln["quantity"], ln["amount"]) for ln in q["lines"]]


async def test_mid_period_upgrade_quoted_before_and_after(world: World) -> None:
    await world.customer("acme", "basic")
    await world.ingest("acme", 400, T0 + timedelta(days=2), "e1")
    t = T0 + timedelta(days=12, hours=3, minutes=17, seconds=12, microseconds=500000)
    await world.ingest("acme", 350, t - timedelta(hours=1), "e2")
    await world.set_time(t)

    before = await world.quoter.quote("acme")
    assert before["period"] == {
        "from": "2026-04-10T08:30:45.123456Z",
        "to": "2026-05-10T08:30:45.123456Z",
    }
    assert before["currency"] == "USD" and before["plan"] == "basic@v1"
    # No change: a full period fee (the flat fee is in arrears, not cut) + 750 × 0.01.
    assert lines(before["current"]) == [
        ("api_credits", 0, "750", "7.50"),
        ("platform_fee", 0, None, "30.00"),
    ]
    assert before["current"]["total"] == "37.50"
    assert before["with_change"] is None and before["difference"] is None

    # What-if: upgrade to plus now (the policy says immediate → edit in place at t).
    what_if = await world.quoter.quote("acme", plan_key="plus")
    assert what_if["change"]["timing"] == "immediate"
    assert what_if["change"]["actions"] == ["edit_items", "schedule_change"]
    fee_a = prorated("30", T0, t)
    fee_b = prorated("90", t, PERIOD_END)
    assert (fee_a, fee_b) == (Decimal("12.14"), Decimal("53.59"))  # A·t/T and B·(T−t)/T
    assert lines(what_if["with_change"]) == [
        ("api_credits", 0, "750", "7.50"),
        ("api_credits", 1, "0", "0.00"),
        ("platform_fee", 0, None, str(fee_a)),
        ("platform_fee", 1, None, str(fee_b)),
    ]
    split = [ln["period"] for ln in what_if["with_change"]["lines"]]
    assert split[0] == {"from": "2026-04-10T08:30:45Z", "to": "2026-04-22T11:47:57Z"}
    assert split[1] == {"from": "2026-04-22T11:47:57Z", "to": "2026-05-10T08:30:45Z"}
    assert what_if["with_change"]["total"] == str(Decimal("7.50") + fee_a + fee_b)
    assert not any("does not prorate" in n for n in what_if["notes"])  # sub-second anchor
    console = Console(record=True, width=160)
    assert world.quoter.last is not None
    print_quote(console, world.quoter.last)
    text = console.export_text()
    assert "Current charges" in text and "With the change" in text and "Difference" in text
    assert f"{what_if['difference']['total']} USD" in text
    assert "2026-04-10 08:30:45 → 2026-04-22 11:47:57" in text
    assert "40.46 %" in text  # 1048632 s of 2592000 s
    diff = what_if["difference"]
    assert diff["total"] == str(fee_a + fee_b - Decimal("30.00"))
    assert diff["by_item"] == {"api_credits": "0.00", "platform_fee": "35.73"}

    # The engine makes the change; then more usage arrives on the new version.
    await world.store.submit_change("acme", "plus", None, t, ChangeSource.CLI, "c1", t)
    outcome = await world.engine.reconcile("acme")
    assert outcome.status == "applied", outcome
    later = t + timedelta(days=3)
    await world.ingest("acme", 2000, t + timedelta(hours=2), "e3")
    await world.set_time(later)

    after = await world.quoter.quote("acme")
    assert lines(after["current"]) == [
        ("api_credits", 0, "750", "7.50"),
        ("api_credits", 1, "2000", "10.00"),  # the new version's ladder starts at 0
        ("platform_fee", 0, None, str(fee_a)),
        ("platform_fee", 1, None, str(fee_b)),
    ]
    assert after["current"]["total"] == str(Decimal("17.50") + fee_a + fee_b)
    assert [ln["proration"] is not None for ln in after["current"]["lines"]] == [
        False,
        False,
        True,
        True,
    ]


async def test_whole_second_anchor_is_not_prorated_after_the_scheduled_record_change(
    world: World,
) -> None:
    """OpenMeter beta.227 quirk, shown in the quote: with a whole-second billing anchor the
    subscription's activeTo (set by a plan-record change scheduled at the next boundary) equals
    the truncated end of the new version's service period, so ``shouldProrate`` says no and B
    is billed in full. ``plan_record: billing_safe`` (the default) defers the record change by
    a period and B stays prorated; ``next_boundary`` shows the full fee."""
    anchor = T0.replace(microsecond=0)
    await world.customer("whole", "basic", billingAnchor=anchor.isoformat())
    t = anchor + timedelta(days=15)
    await world.set_time(t)
    safe = await world.quoter.quote("whole", plan_key="plus")
    fees = [ln for ln in safe["with_change"]["lines"] if ln["key"] == "platform_fee"]
    assert [(f["version"], f["amount"], f["proration"]) for f in fees] == [
        (0, "15.00", "0.5"),
        (1, "45.00", "0.5"),
    ]
    assert safe["change"]["actions"] == ["edit_items"]
    convergence = safe["change"]["convergence"]
    assert convergence["deferred"] is True
    assert convergence["converges_at"] == "2026-06-10T08:30:45Z"
    assert convergence["schedule_at"] == "2026-05-10T08:30:45Z"
    assert convergence["reason"].startswith(
        "deferred: scheduling at 2026-05-10T08:30:45Z would stop OpenMeter prorating platform_fee"
    )
    assert [
        (x["item"], x["prorated"], x["billed_if_scheduled"]) for x in convergence["suppressed"]
    ] == [("platform_fee", "45.00", "90.00")]

    eager = Policy.from_yaml(POLICY + "  plan_record: next_boundary\n")
    e = world.engine
    quoter = JsonQuoter(Quoter(Collaborators.build(e.client, world.store, eager, e.clock)))
    what_if = await quoter.quote("whole", plan_key="plus")
    fees = [ln for ln in what_if["with_change"]["lines"] if ln["key"] == "platform_fee"]
    assert [(f["version"], f["amount"], f["proration"]) for f in fees] == [
        (0, "15.00", "0.5"),
        (1, "90.00", None),
    ]
    assert what_if["change"]["actions"] == ["edit_items", "schedule_change"]
    assert any("not prorated: the subscription ends" in n for n in fees[1]["notes"])
    assert any("does not prorate a flat fee" in n for n in what_if["notes"])


async def test_downgrade_is_quoted_as_unchanged_this_period(world: World) -> None:
    await world.customer("down", "plus")
    await world.ingest("down", 100, T0 + timedelta(hours=1), "d1")
    await world.set_time(T0 + timedelta(days=10))
    doc = await world.quoter.quote("down", plan_key="basic")
    assert doc["change"]["timing"] == "next_billing_cycle"
    assert doc["change"]["effective_at"] == "2026-05-10T08:30:45.123456Z"
    assert (
        lines(doc["current"])
        == lines(doc["with_change"])
        == [
            ("api_credits", 0, "100", "0.50"),
            ("platform_fee", 0, None, "90.00"),
        ]
    )
    assert doc["difference"] == {
        "total": "0.00",
        "by_item": {"api_credits": "0.00", "platform_fee": "0.00"},
        "lines": [],
    }


@pytest.mark.parametrize(
    ("usage", "tier", "amount"),
    [
        (0, 1, "5.00"),  # the volume tier's flat price is charged even without usage
        (1000, 1, "105.00"),  # bounds are inclusive: 5 + 1000 × 0.10
        (1001, 2, "90.08"),  # all units at tier 2: 10 + 1001 × 0.08
        (5000, 2, "410.00"),
        (6000, 3, "320.00"),  # 20 + 6000 × 0.05
    ],
)
async def test_volume_tiers_at_several_usage_levels(
    world: World, usage: int, tier: int, amount: str
) -> None:
    await world.customer("vol", "volume")
    if usage:
        await world.ingest("vol", usage, T0 + timedelta(days=1), "v1")
    await world.set_time(T0 + timedelta(days=5))
    doc = await world.quoter.quote("vol")
    [line] = doc["current"]["lines"]
    assert (line["mode"], line["quantity"], line["amount"]) == ("volume", str(usage), amount)
    assert {c["tier"] for c in line["breakdown"]} == {tier}
    assert doc["current"]["total"] == amount


async def test_volume_ladder_restarts_with_each_version(world: World) -> None:
    """Quoted upgrade from basic to volume: the volume line only counts usage after the edit."""
    policy = Policy.from_yaml("ladder: [basic, volume]\ndefaults: {upgrade: immediate}\n")
    e = world.engine
    quoter = JsonQuoter(Quoter(Collaborators.build(e.client, world.store, policy, e.clock)))
    await world.customer("mix", "basic")
    await world.ingest("mix", 3000, T0 + timedelta(days=1), "m1")
    await world.set_time(T0 + timedelta(days=15))
    doc = await quoter.quote("mix", plan_key="volume")
    new = [ln for ln in doc["with_change"]["lines"] if ln["price_type"] == "tiered"]
    assert [(ln["version"], ln["quantity"], ln["amount"]) for ln in new] == [(1, "0", "5.00")]


async def test_at_and_errors(world: World) -> None:
    await world.customer("acme", "basic")
    await world.set_time(T0 + timedelta(days=1))
    doc = await world.quoter.quote("acme", plan_key="plus", at=T0 + timedelta(days=20))
    assert doc["at"] == "2026-04-30T08:30:45.123456Z"
    fees = {
        ln["version"]: ln["amount"]
        for ln in doc["with_change"]["lines"]
        if ln["key"] == "platform_fee"
    }
    assert fees == {0: "20.00", 1: "30.00"}  # 20/30 of 30 and 10/30 of 90
    with pytest.raises(QuoteError, match="outside the current billing period"):
        await world.quoter.quote("acme", plan_key="plus", at=PERIOD_END)
    assert parse_at("2026-04-30T08:30:00Z") == datetime(2026, 4, 30, 8, 30, tzinfo=UTC)
    assert parse_at("2026-04-30T10:30:00+02:00") == datetime(2026, 4, 30, 8, 30, tzinfo=UTC)
    assert parse_at(None) is None
    with pytest.raises(ValueError, match="no time zone"):
        parse_at("2026-04-30T08:30:00")
    with pytest.raises(ValueError, match="not an RFC 3339 time"):
        parse_at("tomorrow")


async def test_preview_has_charges(world: World) -> None:
    await world.customer("acme", "basic")
    await world.set_time(T0 + timedelta(days=15))
    doc = preview_json(await Queries(world.engine.c).preview("acme", "plus"))
    charges = doc["charges"]
    assert charges["current"]["total"] == "30.00"
    assert charges["with_change"]["total"] == "60.00"  # 15.00 + 45.00 + no usage
    assert charges["difference"]["total"] == "30.00"
