"""OpenMeter billing-period arithmetic: hand-computed cases and properties."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from reconciler.domain.periods import (
    Duration,
    Period,
    add_duration,
    aligned_billing_period,
    boundaries_after,
    boundary,
    entitlement_usage_period_at,
    next_billing_cycle,
    next_boundary,
    parse_duration,
    period_at,
    truncate_minute,
)


def utc(y: int, mo: int, d: int, h: int = 0, mi: int = 0, s: int = 0, us: int = 0) -> datetime:
    return datetime(y, mo, d, h, mi, s, us, tzinfo=UTC)


P1M = parse_duration("P1M")
P1Y = parse_duration("P1Y")
P1W = parse_duration("P1W")
P1D = parse_duration("P1D")
PT1H = parse_duration("PT1H")


# --- parsing and formatting -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("P1M", Duration(months=1)),
        ("P1Y", Duration(years=1)),
        ("P2W", Duration(weeks=2)),
        ("PT1H", Duration(hours=1)),
        ("P1DT12H", Duration(days=1, hours=12)),
        ("P1Y2M3W4DT5H6M7S", Duration(1, 2, 3, 4, 5, 6, Decimal(7))),
        ("PT1M", Duration(minutes=1)),
        ("PT0.5S", Duration(seconds=Decimal("0.5"))),
        ("PT1,25S", Duration(seconds=Decimal("1.25"))),
        ("-P1M", Duration(months=-1)),
        ("+P3M", Duration(months=3)),
        ("P1M-1D", Duration(months=1, days=-1)),
        ("P0D", Duration()),
        ("P2M1W", Duration(months=2, weeks=1)),
        ("P1D1M", Duration(months=1, days=1)),  # Go does not enforce field order
    ],
)
def test_parse_duration(text: str, expected: Duration) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "blank"),
        ("   ", "blank"),
        ("1M", "must start with 'P'"),
        ("P", "at least one"),
        ("PT", "'T' must be followed"),
        ("P1", "missing designator"),
        ("P1X", "unknown designator 'X'"),
        ("PxM", "expected a number followed by a designator"),
        ("P1H", "designator 'H' cannot occur before 'T'"),
        ("PT1D", "designator 'D' cannot occur after 'T'"),
        ("P1M1M", "more than once"),
        ("P1.5M", "fraction is supported only on seconds"),
        ("PT1.5S2S", "more than once"),
        ("PT0.0000001S", "microsecond"),
        ("p1m", "must start with 'P'"),
        ("P1DT1HT1M", "'T' may occur only once"),
    ],
)
def test_parse_duration_errors(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_duration(text)


@pytest.mark.parametrize(
    "text", ["P1M", "P1Y", "P2W", "PT1H", "P1DT12H", "-P1M", "P1M-1D", "PT0.5S", "P0D"]
)
def test_isoformat_round_trips(text: str) -> None:
    assert parse_duration(text).isoformat() == text
    assert str(parse_duration(text)) == text


durations = st.builds(
    Duration,
    years=st.integers(-3, 3),
    months=st.integers(-30, 30),
    weeks=st.integers(-10, 10),
    days=st.integers(-40, 40),
    hours=st.integers(-50, 50),
    minutes=st.integers(-100, 100),
    seconds=st.decimals(-1000, 1000, places=6, allow_nan=False, allow_infinity=False),
)


@given(durations)
def test_isoformat_parse_property(d: Duration) -> None:
    assert parse_duration(d.isoformat()) == d


def test_multiplication_is_field_by_field() -> None:
    assert parse_duration("P1M2D") * 3 == Duration(months=3, days=6)
    assert -parse_duration("P1Y") == Duration(years=-1)


# --- add_duration -----------------------------------------------------------------------------


def test_month_end_clamping_from_the_anchor_without_drift() -> None:
    jan31 = utc(2026, 1, 31, 8, 30, 45, 123456)
    assert add_duration(jan31, P1M) == utc(2026, 2, 28, 8, 30, 45, 123456)
    assert add_duration(jan31, P1M, 2) == utc(2026, 3, 31, 8, 30, 45, 123456)
    assert add_duration(jan31, P1M, 3) == utc(2026, 4, 30, 8, 30, 45, 123456)
    assert add_duration(jan31, P1M, 4) == utc(2026, 5, 31, 8, 30, 45, 123456)
    # leap year
    assert add_duration(utc(2028, 1, 31), P1M) == utc(2028, 2, 29)
    # negative n walks backwards with the same clamping
    assert add_duration(jan31, P1M, -2) == utc(2025, 11, 30, 8, 30, 45, 123456)


def test_years_then_months_are_clamped_separately() -> None:
    # DateTime.Add: AddYearsNoOverflow(1) -> 2025-02-28, then AddMonthsNoOverflow(1) -> 03-28
    feb29 = utc(2024, 2, 29)
    assert add_duration(feb29, parse_duration("P1Y1M")) == utc(2025, 3, 28)
    # whereas 13 months in one step keeps the 29th
    assert add_duration(feb29, parse_duration("P13M")) == utc(2025, 3, 29)


def test_p1y_from_feb_29() -> None:
    feb29 = utc(2024, 2, 29, 12)
    assert add_duration(feb29, P1Y) == utc(2025, 2, 28, 12)
    assert add_duration(feb29, P1Y, 4) == utc(2028, 2, 29, 12)
    assert add_duration(feb29, P1Y, -1) == utc(2023, 2, 28, 12)


def test_month_clamp_then_days() -> None:
    # months are clamped first, then days are added plainly: Jan 31 + P1M1D = Feb 28 + 1 = Mar 1
    assert add_duration(utc(2026, 1, 31), parse_duration("P1M1D")) == utc(2026, 3, 1)


def test_small_units_and_fractional_seconds() -> None:
    t = utc(2026, 3, 1, 23, 30)
    assert add_duration(t, PT1H) == utc(2026, 3, 2, 0, 30)
    assert add_duration(t, P1W, 2) == utc(2026, 3, 15, 23, 30)
    assert add_duration(t, parse_duration("PT1.5S")) == utc(2026, 3, 1, 23, 30, 1, 500000)
    assert add_duration(t, parse_duration("P1DT12H")) == utc(2026, 3, 3, 11, 30)


def test_add_duration_keeps_the_input_timezone_but_computes_in_utc() -> None:
    cet = timezone(timedelta(hours=1))
    # 2026-01-31T00:30+01:00 is 2026-01-30T23:30Z; +1M in UTC = 2026-02-28T23:30Z
    out = add_duration(datetime(2026, 1, 31, 0, 30, tzinfo=cet), P1M)
    assert out == utc(2026, 2, 28, 23, 30)
    assert out.utcoffset() == timedelta(hours=1)


def test_naive_datetimes_are_refused() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        add_duration(datetime(2026, 1, 1), P1M)


# --- recurrence -------------------------------------------------------------------------------


def test_boundaries_and_periods_jan31_anchor() -> None:
    a = utc(2026, 1, 31, 8, 30, 45, 123456)
    assert [boundary(a, P1M, n).date().isoformat() for n in range(4)] == [
        "2026-01-31",
        "2026-02-28",
        "2026-03-31",
        "2026-04-30",
    ]
    p = period_at(a, P1M, utc(2026, 3, 15))
    assert p == Period(utc(2026, 2, 28, 8, 30, 45, 123456), utc(2026, 3, 31, 8, 30, 45, 123456))


def test_t_exactly_on_a_boundary_starts_the_period() -> None:
    a = utc(2026, 1, 10, 8, 30, 45, 123456)
    b = utc(2026, 3, 10, 8, 30, 45, 123456)
    assert period_at(a, P1M, b) == Period(b, utc(2026, 4, 10, 8, 30, 45, 123456))
    just_before = b - timedelta(microseconds=1)
    assert period_at(a, P1M, just_before).end == b
    assert next_boundary(a, P1M, b) == utc(2026, 4, 10, 8, 30, 45, 123456)
    assert period_at(a, P1M, a) == Period(a, utc(2026, 2, 10, 8, 30, 45, 123456))


@settings(max_examples=150, deadline=None)
@given(
    anchor=st.datetimes(
        min_value=datetime(2020, 1, 1), max_value=datetime(2030, 12, 31), timezones=st.just(UTC)
    ),
    later=st.timedeltas(min_value=timedelta(days=-800), max_value=timedelta(days=800)),
    cadence=st.sampled_from(["P1M", "P3M", "P1Y", "P1W", "P1D", "PT1H", "P1M2DT3H"]),
)
def test_boundaries_after_walks_the_periods_one_by_one(
    anchor: datetime, later: timedelta, cadence: str
) -> None:
    """Each boundary is the end of the period that starts at the one before it, the first
    being the end of the period containing ``t``, on or off a boundary."""
    d = parse_duration(cadence)
    t = anchor + later
    walked = boundaries_after(anchor, d, t)
    expected = period_at(anchor, d, t).end
    for _ in range(30):
        got = next(walked)
        assert got == expected and got > t
        expected = period_at(anchor, d, got).end
    on_a_boundary = next(boundaries_after(anchor, d, t))
    assert (
        next(boundaries_after(anchor, d, on_a_boundary)) == period_at(anchor, d, on_a_boundary).end
    )


def test_anchor_in_the_future() -> None:
    a = utc(2026, 6, 30)
    assert period_at(a, P1M, utc(2026, 2, 15)) == Period(utc(2026, 1, 30), utc(2026, 2, 28))
    assert period_at(a, P1M, utc(2026, 2, 28)) == Period(utc(2026, 2, 28), utc(2026, 3, 30))


def test_far_away_anchor_is_fast_and_exact() -> None:
    a = utc(1900, 1, 31)
    p = period_at(a, P1M, utc(2100, 3, 15))
    assert p == Period(utc(2100, 2, 28), utc(2100, 3, 31))  # 2100 is not a leap year
    assert period_at(a, PT1H, utc(2026, 5, 5, 7, 59)) == Period(
        utc(2026, 5, 5, 7), utc(2026, 5, 5, 8)
    )


def test_yearly_weekly_daily_hourly() -> None:
    assert period_at(utc(2024, 2, 29), P1Y, utc(2026, 6, 1)) == Period(
        utc(2026, 2, 28), utc(2027, 2, 28)
    )
    assert period_at(utc(2028, 2, 29), P1Y, utc(2026, 6, 1)) == Period(
        utc(2026, 2, 28), utc(2027, 2, 28)
    )
    # 2026-01-05 is a Monday
    assert period_at(utc(2026, 1, 5, 9), P1W, utc(2026, 3, 4)) == Period(
        utc(2026, 3, 2, 9), utc(2026, 3, 9, 9)
    )
    assert period_at(utc(2026, 1, 1, 6), P1D, utc(2026, 7, 4, 5)) == Period(
        utc(2026, 7, 3, 6), utc(2026, 7, 4, 6)
    )
    assert period_at(utc(2026, 1, 1, 0, 15), PT1H, utc(2026, 7, 4, 5, 14, 59)) == Period(
        utc(2026, 7, 4, 4, 15), utc(2026, 7, 4, 5, 15)
    )


@pytest.mark.parametrize("text", ["P0D", "-P1M", "P1M-1D"])
def test_recurrence_interval_must_be_positive(text: str) -> None:
    with pytest.raises(ValueError, match="must be positive"):
        period_at(utc(2026, 1, 1), parse_duration(text), utc(2026, 2, 1))


# --- aligned billing period -------------------------------------------------------------------


def test_aligned_billing_period_inside_the_phase() -> None:
    a = utc(2026, 1, 10, 8, 30, 45, 123456)
    p = aligned_billing_period(a, P1M, utc(2026, 3, 20, 12), a, None)
    assert p == Period(utc(2026, 3, 10, 8, 30, 45, 123456), utc(2026, 4, 10, 8, 30, 45, 123456))
    assert next_billing_cycle(a, P1M, utc(2026, 3, 20, 12), a, None) == p.end


def test_aligned_billing_period_clipped_to_phase_end_and_start() -> None:
    a = utc(2026, 1, 10)
    # trial phase ends 2026-01-24: the period containing 01-20 ends there, not on 02-10
    assert aligned_billing_period(a, P1M, utc(2026, 1, 20), a, utc(2026, 1, 24)) == Period(
        a, utc(2026, 1, 24)
    )
    assert next_billing_cycle(a, P1M, utc(2026, 1, 20), a, utc(2026, 1, 24)) == utc(2026, 1, 24)
    # the paid phase starts 01-24: its first period starts at the phase start
    assert aligned_billing_period(a, P1M, utc(2026, 1, 30), utc(2026, 1, 24), None) == Period(
        utc(2026, 1, 24), utc(2026, 2, 10)
    )
    # a phase end after the boundary does not matter
    assert next_billing_cycle(a, P1M, utc(2026, 1, 20), a, utc(2026, 5, 1)) == utc(2026, 2, 10)


def test_aligned_billing_period_refuses_t_before_phase() -> None:
    with pytest.raises(ValueError, match="before the phase start"):
        aligned_billing_period(utc(2026, 1, 1), P1M, utc(2026, 1, 5), utc(2026, 1, 6), None)


# --- entitlement usage period -----------------------------------------------------------------


def test_truncate_minute() -> None:
    assert truncate_minute(utc(2026, 1, 10, 8, 30, 45, 123456)) == utc(2026, 1, 10, 8, 30)


def test_entitlement_usage_period_matches_reference_example() -> None:
    # openmeter-semantics.md §4.1 (a) worked example
    anchor = utc(2026, 1, 10, 8, 30, 45, 123456)
    p = entitlement_usage_period_at(anchor, P1M, anchor, utc(2026, 3, 20, 12, 0, 30))
    assert p == Period(utc(2026, 3, 10, 8, 30), utc(2026, 4, 10, 8, 30))


def test_entitlement_first_period_clipped_at_measure_usage_from() -> None:
    anchor = utc(2026, 1, 10, 8, 30, 45)
    phase_start = utc(2026, 2, 20, 14, 5, 59)  # change creates a new phase mid-period
    p = entitlement_usage_period_at(anchor, P1M, phase_start, utc(2026, 2, 25))
    assert p == Period(utc(2026, 2, 20, 14, 5), utc(2026, 3, 10, 8, 30))
    # queried before measurement starts: the first period is returned
    assert entitlement_usage_period_at(anchor, P1M, phase_start, utc(2026, 1, 1)) == p
    # later periods are not clipped
    assert entitlement_usage_period_at(anchor, P1M, phase_start, utc(2026, 3, 10, 8, 30)) == (
        Period(utc(2026, 3, 10, 8, 30), utc(2026, 4, 10, 8, 30))
    )


# --- properties -------------------------------------------------------------------------------

instants = st.datetimes(
    min_value=datetime(1990, 1, 1), max_value=datetime(2060, 12, 31), timezones=st.just(UTC)
)
intervals = st.one_of(
    st.sampled_from([P1M, P1Y, P1W, P1D, PT1H, parse_duration("P3M"), parse_duration("P1M1D")]),
    st.builds(
        Duration,
        months=st.integers(0, 14),
        days=st.integers(0, 40),
        hours=st.integers(0, 30),
        seconds=st.decimals(0, 100, places=6, allow_nan=False, allow_infinity=False),
    ).filter(lambda d: d.approx_seconds() >= 3600),
)


@settings(max_examples=300, deadline=None)
@given(anchor=instants, d=intervals, t=instants)
def test_period_contains_t(anchor: datetime, d: Duration, t: datetime) -> None:
    p = period_at(anchor, d, t)
    assert p.start <= t < p.end
    assert p.contains(t)
    start, end = p
    assert (start, end) == p


@settings(max_examples=200, deadline=None)
@given(anchor=instants, d=intervals, t=instants)
def test_consecutive_periods_tile(anchor: datetime, d: Duration, t: datetime) -> None:
    p = period_at(anchor, d, t)
    nxt = period_at(anchor, d, p.end)
    prev = period_at(anchor, d, p.start - timedelta(microseconds=1))
    assert nxt.start == p.end
    assert prev.end == p.start
    assert period_at(anchor, d, p.start) == p
    assert next_boundary(anchor, d, t) == p.end


@settings(max_examples=200, deadline=None)
@given(anchor=instants, d=intervals, n=st.integers(-60, 60))
def test_boundaries_are_monotonic_and_are_period_starts(
    anchor: datetime, d: Duration, n: int
) -> None:
    b0, b1 = boundary(anchor, d, n), boundary(anchor, d, n + 1)
    assert b0 < b1
    assert period_at(anchor, d, b0) == Period(b0, b1)


@settings(max_examples=200, deadline=None)
@given(anchor=instants, months=st.integers(-50, 50))
def test_month_boundary_day_is_clamped_anchor_day(anchor: datetime, months: int) -> None:
    b = add_duration(anchor, P1M, months)
    assert b.day == min(anchor.day, _month_len(b.year, b.month))
    assert b.time() == anchor.time()
    assert (b.year * 12 + b.month) - (anchor.year * 12 + anchor.month) == months


def _month_len(year: int, month: int) -> int:
    nxt = datetime(year + (month == 12), month % 12 + 1, 1)
    return (nxt - timedelta(days=1)).day


@settings(max_examples=200, deadline=None)
@given(
    anchor=instants,
    t=instants,
    phase=st.tuples(st.integers(0, 100), st.integers(1, 100)),
)
def test_aligned_period_within_phase(anchor: datetime, t: datetime, phase: tuple[int, int]) -> None:
    start = t - timedelta(days=phase[0])
    end = t + timedelta(days=phase[1])
    p = aligned_billing_period(anchor, P1M, t, start, end)
    assert start <= p.start <= t < p.end <= end
    assert next_billing_cycle(anchor, P1M, t, start, end) == min(period_at(anchor, P1M, t).end, end)
