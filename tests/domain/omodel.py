"""A tiny model of OpenMeter's subscription rules at the level of domain types.

It applies planner actions to an ``Observed`` the way OpenMeter would (state machine, frozen
canceled subscriptions, single subscription per customer) so property tests can run whole
sequences of requests without HTTP. The HTTP-level emulator is tested separately.
"""

from __future__ import annotations

import itertools
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from reconciler.domain.actions import (
    Action,
    CreateSubscription,
    DeleteScheduled,
    EditItems,
    ScheduleChange,
    Unschedule,
    tagged_rate_card,
)
from reconciler.domain.model import (
    EntitlementTemplate,
    Observed,
    ObservedEntitlement,
    ObservedItem,
    ObservedPhase,
    ObservedSubscription,
    Plan,
    PlanPhase,
    PlanRef,
    RateCard,
    SubscriptionStatus,
)

T0 = datetime(2026, 3, 10, 8, 30, tzinfo=UTC)
_ids = itertools.count(1)


class ModelError(Exception):
    def __init__(self, status: int, detail: str) -> None:
        super().__init__(f"{status} {detail}")
        self.status = status


def new_id(prefix: str) -> str:
    return f"{prefix}{next(_ids):06d}"


def card(key: str, allowance: int | None, *, fee: str | None = None, tier: str = "") -> RateCard:
    if allowance is not None:
        tpl = EntitlementTemplate(
            type="metered",
            issue_after_reset=Decimal(allowance),
            usage_period="P1M",
            metadata={"tier": tier} if tier else {},
        )
        raw: dict[str, Any] = {
            "type": "usage_based",
            "key": key,
            "name": key,
            "featureKey": key,
            "billingCadence": "P1M",
            "price": None,
            "entitlementTemplate": {
                "type": "metered",
                "issueAfterReset": allowance,
                "usagePeriod": "P1M",
                **({"metadata": {"tier": tier}} if tier else {}),
            },
        }
        return RateCard(key, "usage_based", key, key, "P1M", None, tpl, raw)
    price = {"type": "flat", "amount": fee, "paymentTerm": "in_advance"}
    raw = {"type": "flat_fee", "key": key, "name": key, "billingCadence": "P1M", "price": price}
    return RateCard(key, "flat_fee", key, None, "P1M", price, None, raw)


def make_plan(
    key: str, version: int, cards: list[RateCard], phases: tuple[str, ...] = ("default",)
) -> Plan:
    return Plan(
        id=f"plan_{key}_{version}",
        key=key,
        version=version,
        name=key.title(),
        currency="USD",
        billing_cadence="P1M",
        pro_rating_enabled=True,
        phases=tuple(PlanPhase(p, p, None, tuple(cards)) for p in phases),
    )


FREE = make_plan("free", 1, [card("api_credits", 50_000, tier="free")])
STARTER = make_plan(
    "starter", 1, [card("api_credits", 550_000, tier="starter"), card("base_fee", None, fee="29")]
)
PRO = make_plan(
    "pro", 1, [card("api_credits", 5_000_000, tier="pro"), card("base_fee", None, fee="99")]
)
PLANS = {p.key: p for p in (FREE, STARTER, PRO)}


def item_from_card(
    c: RateCard, start: datetime, sub_start: datetime, tags: dict[str, str] | None = None
) -> ObservedItem:
    raw = tagged_rate_card(c, tags or {})
    ent = None
    if c.entitlement is not None:
        md = dict((raw.get("entitlementTemplate") or {}).get("metadata") or {})
        ent = ObservedEntitlement(
            id=new_id("ent"),
            feature_key=c.feature_key or c.key,
            type=c.entitlement.type,
            template=replace(c.entitlement, metadata=md),
            active_from=start,
            active_to=None,
            measure_usage_from=sub_start,
            usage_period_anchor=sub_start,
            current_usage_period=None,
        )
    return ObservedItem(
        id=new_id("item"),
        key=c.key,
        name=c.name,
        feature_key=c.feature_key,
        billing_cadence=c.billing_cadence,
        price=c.price,
        discounts=None,
        entitlement=ent,
        active_from=start,
        active_to=None,
    )


def subscription(
    plan: Plan,
    *,
    start: datetime = T0,
    status: SubscriptionStatus = SubscriptionStatus.ACTIVE,
    items_plan: Plan | None = None,
    tags: dict[str, str] | None = None,
    now: datetime = T0,
) -> ObservedSubscription:
    src = items_plan or plan
    items = tuple(item_from_card(c, start, start, tags) for c in src.phases[0].rate_cards)
    phase = ObservedPhase(
        key=plan.phases[0].key,
        name=plan.phases[0].name,
        active_from=start,
        active_to=None,
        items=items,
        timelines={i.key: (i,) for i in items},
    )
    return ObservedSubscription(
        id=new_id("sub"),
        customer_id="cust1",
        status=status,
        plan=plan.ref,
        name=plan.name,
        currency="USD",
        billing_cadence="P1M",
        billing_anchor=start,
        active_from=start,
        active_to=None,
        pro_rating_enabled=True,
        phases=(phase,),
        current_period=period(start, now),
    )


def add_months(dt: datetime, n: int) -> datetime:
    month = dt.month - 1 + n
    year = dt.year + month // 12
    month = month % 12 + 1
    return dt.replace(year=year, month=month, day=min(dt.day, 28))


def period(anchor: datetime, now: datetime) -> tuple[datetime, datetime]:
    n = 0
    while add_months(anchor, n + 1) <= now:
        n += 1
    return add_months(anchor, n), add_months(anchor, n + 1)


class World:
    """One customer's OpenMeter state, mutated by planner actions."""

    def __init__(
        self,
        current: ObservedSubscription | None,
        successor: ObservedSubscription | None = None,
        now: datetime = T0,
    ) -> None:
        self.current = current
        self.successor = successor
        self.now = now
        self.mutations: list[str] = []

    def observe(self) -> Observed:
        cur = self.current
        if cur is not None and cur.status is SubscriptionStatus.ACTIVE:
            cur = replace(cur, current_period=period(cur.billing_anchor, self.now))
            self.current = cur
        return Observed("cust1", "acme", self.now, self.current, self.successor)

    def apply(self, action: Action) -> None:
        self.mutations.append(action.kind)
        cur, succ = self.current, self.successor
        if isinstance(action, EditItems):
            if cur is None or cur.id != action.subscription_id:
                raise ModelError(404, "subscription not found")
            if cur.status is not SubscriptionStatus.ACTIVE:
                raise ModelError(403, f"transition update in state {cur.status} not allowed")
            phase = cur.phases[0]
            items = {i.key: i for i in phase.items}
            for key in action.remove:
                items.pop(key)
            for c in action.add:
                items[c.key] = item_from_card(c, self.now, cur.active_from, dict(action.tags))
            phase = replace(
                phase, items=tuple(items.values()), timelines={k: (v,) for k, v in items.items()}
            )
            self.current = replace(cur, phases=(phase,))
        elif isinstance(action, ScheduleChange):
            if cur is None or cur.status is not SubscriptionStatus.ACTIVE:
                raise ModelError(403, "transition cancel not allowed")
            boundary = period(cur.billing_anchor, self.now)[1]
            plan = PLANS[action.plan.key]
            nxt = subscription(
                plan, start=boundary, status=SubscriptionStatus.SCHEDULED, now=boundary
            )
            nxt = replace(
                nxt,
                billing_anchor=cur.billing_anchor,
                annotations={"subscription.previous.id": cur.id},
            )
            self.current = replace(
                cur,
                status=SubscriptionStatus.CANCELED,
                active_to=boundary,
                annotations={"subscription.superseding.id": nxt.id},
            )
            self.successor = nxt
        elif isinstance(action, DeleteScheduled):
            if succ is None or succ.id != action.subscription_id:
                raise ModelError(404, "subscription not found")
            self.successor = None
            if cur is not None:
                self.current = replace(cur, annotations={})
        elif isinstance(action, Unschedule):
            if cur is None or cur.status is not SubscriptionStatus.CANCELED:
                raise ModelError(403, "transition continue not allowed")
            if succ is not None:
                raise ModelError(409, "only_single_subscription_allowed_per_customer_at_a_time")
            self.current = replace(cur, status=SubscriptionStatus.ACTIVE, active_to=None)
        elif isinstance(action, CreateSubscription):
            if cur is not None or succ is not None:
                raise ModelError(409, "only_single_subscription_allowed_per_customer_at_a_time")
            self.current = subscription(PLANS[action.plan.key], start=self.now, now=self.now)
        else:  # pragma: no cover - exhaustive
            raise AssertionError(action)

    def advance(self, delta: timedelta) -> None:
        self.now += delta
        cur = self.current
        if cur is not None and cur.active_to is not None and cur.active_to <= self.now:
            succ = self.successor
            if succ is not None and succ.active_from <= self.now:
                self.current = replace(succ, status=SubscriptionStatus.ACTIVE, annotations={})
                self.successor = None
            else:
                self.current = None


def plan_of(ref: PlanRef | None) -> Plan | None:
    return PLANS.get(ref.key) if ref else None
