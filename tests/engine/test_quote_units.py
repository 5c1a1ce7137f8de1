"""Quote building blocks without OpenMeter: replaying an edit on item timelines, items billed on
a shorter cadence than the subscription, and the meter read per service window."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from types import SimpleNamespace
from typing import Any

from reconciler.domain.actions import EditItems
from reconciler.domain.model import (
    ObservedItem,
    ObservedPhase,
    ObservedSubscription,
    RateCard,
    SubscriptionStatus,
)
from reconciler.domain.pricing import ItemVersion, ProRatingConfig, QuoteRequest, build_quote
from reconciler.domain.pricing.replay import replay_edit
from reconciler.domain.pricing.scenario import split_by_cadence
from reconciler.engine.quote import _Usage, _with_quantities

S = datetime(2026, 3, 1, tzinfo=UTC)
E = datetime(2026, 4, 1, tzinfo=UTC)


def item(
    key: str,
    price: dict[str, Any] | None,
    start: datetime,
    end: datetime | None = None,
    cadence: str | None = "P1M",
    feature: str | None = None,
) -> ObservedItem:
    return ObservedItem(
        id=f"it-{key}-{start.day}",
        key=key,
        name=key,
        feature_key=feature,
        billing_cadence=cadence,
        price=price,
        discounts=None,
        entitlement=None,
        active_from=start,
        active_to=end,
    )


def sub(*items: ObservedItem) -> ObservedSubscription:
    timelines: dict[str, tuple[ObservedItem, ...]] = {}
    for i in items:
        timelines[i.key] = (*timelines.get(i.key, ()), i)
    phase = ObservedPhase("default", "Default", S, None, items, timelines)
    return ObservedSubscription(
        id="sub",
        customer_id="cus",
        status=SubscriptionStatus.ACTIVE,
        plan=None,
        name="x",
        currency="USD",
        billing_cadence="P1M",
        billing_anchor=S,
        active_from=S,
        active_to=None,
        pro_rating_enabled=True,
        phases=(phase,),
        current_period=(S, E),
    )


def card(key: str, price: dict[str, Any]) -> RateCard:
    return RateCard(
        key=key,
        type="flat_fee",
        name=key,
        feature_key=None,
        billing_cadence="P1M",
        price=price,
        entitlement=None,
        raw={"key": key, "price": price},
    )


def test_replay_edit_closes_replaced_versions_and_drops_later_ones() -> None:
    at = S + timedelta(days=10)
    fee = item("fee", {"type": "flat", "amount": "10"}, S)
    later = item("extra", {"type": "flat", "amount": "1"}, S + timedelta(days=20))
    keep = item("keep", {"type": "flat", "amount": "3"}, S)
    s = sub(fee, later, keep)
    versions = [ItemVersion.from_observed(i, version=0) for i in (fee, later, keep)]
    edit = EditItems(
        "sub",
        "default",
        add=(card("fee", {"type": "flat", "amount": "40"}),),
        remove=("extra",),
        unschedule_edits=True,
    )
    after = replay_edit(versions, edit, s, at)
    assert [(v.key, v.version, v.active_from, v.active_to) for v in after] == [
        ("fee", 0, S, at),
        ("keep", 0, S, None),
        ("fee", 1, at, None),
    ]
    q = build_quote(QuoteRequest("USD", (S, E), after, pro_rating=ProRatingConfig(True)))
    # 10 × 10/31 + 40 × 21/31 + 3
    assert [ln.amount for ln in q.lines] == [Decimal("3.23"), Decimal("27.10"), Decimal("3.00")]


def test_shorter_cadence_gives_one_line_per_service_period() -> None:
    weekly = item(
        "support", {"type": "flat", "amount": "7", "paymentTerm": "in_arrears"}, S, cadence="P1W"
    )
    yearly = item("annual", {"type": "flat", "amount": "1200"}, S, cadence="P1Y")
    notes: list[str] = []
    s = sub(weekly, yearly)
    split = split_by_cadence(
        s, (S, E), [ItemVersion.from_observed(i) for i in (weekly, yearly)], notes
    )
    assert [v.full_service_period for v in split] == [
        (S + timedelta(weeks=k), S + timedelta(weeks=k + 1)) for k in range(5)
    ]
    assert notes == [
        "annual: billed every P1Y, longer than the subscription's P1M; not part of this "
        "period's quote"
    ]
    q = build_quote(QuoteRequest("USD", (S, E), split, pro_rating=ProRatingConfig(True)))
    # four full weeks and the 3 days left of the fifth (prorated 3/7)
    assert [ln.amount for ln in q.lines] == [Decimal("7.00")] * 4 + [Decimal("3.00")]


class FakeMeterClient:
    def __init__(self) -> None:
        self.calls: list[tuple[str, datetime | None, datetime | None, Any]] = []

    async def get_feature(self, key: str) -> Any:
        return SimpleNamespace(meter_slug="calls", meter_group_by_filters=None)

    async def query_meter(
        self,
        slug: str,
        from_: datetime | None,
        to: datetime | None,
        window_size: str | None = None,
        filter_customer_id: Any = None,
    ) -> Any:
        self.calls.append((slug, from_, to, filter_customer_id))

        row = SimpleNamespace(value=Decimal(100 if from_ == S else 40))
        return SimpleNamespace(data=[row])


async def test_meter_is_read_over_each_versions_truncated_window() -> None:
    at = S + timedelta(days=10, microseconds=250000)
    unit = {"type": "unit", "amount": "0.5"}
    v0 = ItemVersion("api", "API", S, at, unit, "P1M", feature_key="api", version=0)
    v1 = ItemVersion("api", "API", at, None, unit, "P1M", feature_key="api", version=1)
    req = QuoteRequest("USD", (S, E), (v0, v1))
    client = FakeMeterClient()
    filled = await _with_quantities(req, _Usage(client, "cus-1"))  # type: ignore[arg-type]
    cut = at.replace(microsecond=0)
    assert client.calls == [("calls", S, cut, "cus-1"), ("calls", cut, E, "cus-1")]
    q = build_quote(filled)
    assert [(ln.version, ln.quantity, ln.amount) for ln in q.lines] == [
        (0, Decimal(100), Decimal("50.00")),
        (1, Decimal(40), Decimal("20.00")),
    ]
