"""The billing-safe plan-record rule (reconciler.domain.convergence), against OpenMeter's
``shouldProrate``: a scheduled change sets ``activeTo`` and stops the proration of a flat fee
whose service period ends there."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

from hypothesis import given, settings
from hypothesis import strategies as st

from reconciler.domain.convergence import PlanRecordMode, plan_record_convergence
from reconciler.domain.model import ObservedSubscription, PlanRef, SubscriptionStatus
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
