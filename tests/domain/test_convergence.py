"""The billing-safe plan-record rule (reconciler.domain.convergence), against OpenMeter's
``shouldProrate``: a scheduled change sets ``activeTo`` and stops the proration of a flat fee
whose service period ends there."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from hypothesis import given, settings
from hypothesis import strategies as st

from reconciler.domain.convergence import (
    MAX_CANDIDATES,
    PlanRecordMode,
    _candidates,  # the candidate walk, checked against its definition
    plan_record_convergence,
)
from reconciler.domain.model import (
    ObservedPhase,
    ObservedSubscription,
    PlanRef,
    SubscriptionStatus,
)
from reconciler.domain.periods import parse_duration, period_at
from reconciler.domain.pricing.quote import ItemVersion

SAFE = PlanRecordMode.BILLING_SAFE


def sub(anchor: datetime, *, prorate: bool = True, cadence: str = "P1M") -> ObservedSubscription:
    return ObservedSubscription(
        id="sub1",
        customer_id="c1",
        status=SubscriptionStatus.ACTIVE,
        plan=PlanRef("basic", 1),
        name="Basic",
        currency="USD",
        billing_cadence=cadence,
        billing_anchor=anchor,
        active_from=anchor,
        active_to=None,
        pro_rating_enabled=prorate,
        phases=(),
        current_period=None,
    )


def fee(
    key: str,
    amount: str,
    start: datetime,
    end: datetime | None = None,
    *,
    cadence: str | None = "P1M",
    term: str = "in_advance",
) -> ItemVersion:
    price = {"type": "flat", "amount": amount, "paymentTerm": term}
    return ItemVersion(key, key, start, end, price, cadence)


def usage(key: str, start: datetime) -> ItemVersion:
    return ItemVersion(key, key, start, None, {"type": "unit", "amount": "5"}, "P1M", key)


APR1 = datetime(2027, 4, 1, tzinfo=UTC)
APR16 = datetime(2027, 4, 16, tzinfo=UTC)
MAY1 = datetime(2027, 5, 1, tzinfo=UTC)
JUN1 = datetime(2027, 6, 1, tzinfo=UTC)


def upgraded(at: datetime) -> list[ItemVersion]:
    """Basic 150 in advance until ``at``, then Advanced 300, and a per-user usage price."""
    return [fee("base_fee", "150", APR1, at), fee("base_fee", "300", at), usage("users", APR1)]


def test_mid_period_upgrade_defers_the_record_one_period() -> None:
    c = plan_record_convergence(sub(APR1), upgraded(APR16), first=MAY1, mode=SAFE)
    assert (c.at, c.schedule_at, c.deferred) == (JUN1, MAY1, True)
    assert c.reason.startswith(
        "deferred: scheduling at 2027-05-01T00:00:00Z would stop OpenMeter prorating base_fee"
    )
    [s] = c.suppressed
    assert (s.item, s.boundary, s.service_period) == ("base_fee", MAY1, (APR16, MAY1))
    assert (s.prorated, s.billed) == (Decimal("150.00"), Decimal("300.00"))
    assert not c.due(APR16) and c.due(MAY1)


def test_next_boundary_mode_converges_at_the_next_boundary_whatever_it_bills() -> None:
    c = plan_record_convergence(
        sub(APR1), upgraded(APR16), first=MAY1, mode=PlanRecordMode.NEXT_BOUNDARY
    )
    assert (c.at, c.schedule_at, c.deferred, c.suppressed) == (MAY1, None, False, ())


def test_nothing_to_defer_without_proration_flat_fees_or_a_partial_version() -> None:
    off = plan_record_convergence(sub(APR1, prorate=False), upgraded(APR16), first=MAY1, mode=SAFE)
    assert (off.at, off.deferred) == (MAY1, False) and "does not prorate" in off.reason
    allowance_only = [usage("api_credits", APR1), usage("api_credits", APR16)]
    none = plan_record_convergence(sub(APR1), allowance_only, first=MAY1, mode=SAFE)
    assert (none.at, none.deferred) == (MAY1, False) and "no flat fee" in none.reason
    on_boundary = plan_record_convergence(sub(APR1), upgraded(MAY1), first=JUN1, mode=SAFE)
    assert (on_boundary.at, on_boundary.deferred, on_boundary.suppressed) == (JUN1, False, ())
    zero = [fee("base_fee", "0", APR16)]
    assert not plan_record_convergence(sub(APR1), zero, first=MAY1, mode=SAFE).deferred


def test_month_end_anchor_defers_to_the_clamped_boundaries() -> None:
    jan31 = datetime(2027, 1, 31, 12, tzinfo=UTC)
    feb28 = datetime(2027, 2, 28, 12, tzinfo=UTC)
    mar31 = datetime(2027, 3, 31, 12, tzinfo=UTC)
    edit = datetime(2027, 2, 10, tzinfo=UTC)
    versions = [fee("base_fee", "10", jan31, edit), fee("base_fee", "40", edit)]
    c = plan_record_convergence(sub(jan31), versions, first=feb28, mode=SAFE)
    assert (c.at, c.schedule_at) == (mar31, feb28)


def test_a_yearly_fee_started_mid_year_waits_for_a_whole_year_of_its_own() -> None:
    jan1 = datetime(2027, 1, 1, tzinfo=UTC)
    versions = [fee("support", "1200", APR16, cadence="P1Y")]
    c = plan_record_convergence(sub(jan1), versions, first=MAY1, mode=SAFE)
    # Ending on Jan 1 2028 bills the partial first year in full; the first year the version
    # covers whole ends on Jan 1 2029.
    assert c.at == datetime(2029, 1, 1, tzinfo=UTC)
    assert c.schedule_at == datetime(2028, 12, 1, tzinfo=UTC)
    assert [(x.prorated, x.billed) for x in c.suppressed] == [
        (Decimal("49.32"), Decimal("1200.00"))
    ]


def test_a_sub_second_anchor_is_prorated_anyway() -> None:
    """``shouldProrate`` compares the untruncated ``activeTo`` with the second-truncated service
    end: with a sub-second anchor the subscription ends after it and the fee stays prorated."""
    anchor = APR1 + timedelta(microseconds=123456)
    versions = [fee("base_fee", "150", anchor, APR16), fee("base_fee", "300", APR16)]
    c = plan_record_convergence(
        sub(anchor), versions, first=MAY1 + timedelta(microseconds=123456), mode=SAFE
    )
    assert not c.deferred and c.suppressed == ()


anchors = st.datetimes(
    min_value=datetime(2026, 1, 1), max_value=datetime(2028, 12, 31), timezones=st.just(UTC)
)


@settings(max_examples=200, deadline=None)
@given(
    anchor=anchors,
    offset=st.floats(min_value=0.0, max_value=0.999),
    amount=st.sampled_from(["0.03", "9.99", "29", "150", "300", "1000000"]),
    term=st.sampled_from(["in_advance", "in_arrears"]),
    cadence=st.sampled_from(["P1M", "P1W", "P1D"]),
)
def test_the_chosen_boundary_is_reached_by_next_billing_cycle_from_schedule_at(
    anchor: datetime, offset: float, amount: str, term: str, cadence: str
) -> None:
    """Whatever the anchor, edit time, amount and payment term: the record converges within
    two boundaries, ``schedule_at`` is where OpenMeter's ``next_billing_cycle`` resolves to
    ``at``, and a deferral is made only when ending at the next boundary changes an amount."""
    d = parse_duration(cadence)
    period = period_at(anchor, d, anchor + timedelta(days=40))
    edit = period.start + (period.end - period.start) * offset
    s = sub(anchor, cadence=cadence)
    versions = [
        fee("base_fee", "1", period.start, edit, cadence=cadence, term=term),
        fee("base_fee", amount, edit, cadence=cadence, term=term),
    ]
    c = plan_record_convergence(s, versions, first=period.end, mode=SAFE)
    if not c.deferred:
        assert c.at == period.end and c.schedule_at is None
        return
    assert c.schedule_at == period.end
    assert c.at == period_at(anchor, d, period.end).end
    [hit] = c.suppressed
    assert hit.prorated < hit.billed and edit > period.start


def _candidates_by_definition(s: ObservedSubscription, first: datetime) -> list[datetime]:
    """``first``, then repeatedly the earliest of the next billing boundary and the next phase
    start, until the subscription's end or ``MAX_CANDIDATES``."""
    d = parse_duration(s.billing_cadence)
    starts = sorted(p.active_from for p in s.phases if p.active_from > first)
    out = [first]
    while len(out) < MAX_CANDIDATES:
        nxt = min(
            [period_at(s.billing_anchor, d, out[-1]).end] + [x for x in starts if x > out[-1]]
        )
        if s.active_to is not None and nxt > s.active_to:
            break
        out.append(nxt)
    return out


def _phase(start: datetime) -> ObservedPhase:
    return ObservedPhase("p", "P", start, None, (), {})


@settings(max_examples=150, deadline=None)
@given(
    anchor=anchors,
    cadence=st.sampled_from(["P1M", "P1W", "P1D", "P1Y"]),
    after=st.timedeltas(min_value=timedelta(0), max_value=timedelta(days=60)),
    phase_days=st.lists(st.integers(min_value=-30, max_value=400), max_size=4),
    on_a_boundary=st.booleans(),
    ends_after_days=st.none() | st.integers(min_value=0, max_value=900),
)
def test_the_candidate_walk_is_its_definition(
    anchor: datetime,
    cadence: str,
    after: timedelta,
    phase_days: list[int],
    on_a_boundary: bool,
    ends_after_days: int | None,
) -> None:
    """Billing boundaries and phase starts in order, each once (a phase may start on a
    boundary, two phases at one time), cut at ``activeTo``, at most ``MAX_CANDIDATES``."""
    d = parse_duration(cadence)
    first = period_at(anchor, d, anchor + after).end
    starts = [first + timedelta(days=n) for n in phase_days]
    if on_a_boundary:
        starts.append(period_at(anchor, d, first).end)
    s = dataclasses.replace(
        sub(anchor, cadence=cadence),
        phases=tuple(_phase(x) for x in starts + starts[:1]),
        active_to=None if ends_after_days is None else first + timedelta(days=ends_after_days),
    )
    assert list(_candidates(s, first)) == _candidates_by_definition(s, first)


def test_a_subscription_ending_before_any_safe_boundary_says_how_far_it_looked() -> None:
    """A yearly fee started mid-year on a daily subscription that ends within a year: every
    candidate would stop the proration, so the record stays at the next boundary."""
    jan1 = datetime(2027, 1, 1, tzinfo=UTC)
    s = dataclasses.replace(sub(jan1, cadence="P1D"), active_to=datetime(2027, 6, 1, tzinfo=UTC))
    versions = [fee("support", "1200", APR16, cadence="P1Y")]
    c = plan_record_convergence(s, versions, first=datetime(2027, 4, 17, tzinfo=UTC), mode=SAFE)
    assert (c.at, c.deferred) == (datetime(2027, 4, 17, tzinfo=UTC), False)
    assert c.reason.startswith("at the next boundary: no boundary within 46 periods keeps")
