"""OpenMeter's billing-period arithmetic, reproduced exactly (beta.227).

Small pure functions: every instant is an argument, nothing reads the clock.

Sources (``openmeterio/openmeter`` at tag ``v1.0.0-beta.227``):

* ``pkg/datetime/durationstring.go`` ``ISODurationString.Parse`` delegates to
  ``rickb777/period`` v1.0.22 ``Period.Parse``: ISO 8601 with an optional leading ``+``/``-``,
  a per-field ``-`` sign, weeks mixable with other fields, a fraction allowed only in the last
  field, upper-case designators.
* ``pkg/datetime/datetime.go`` ``DateTime.Add``: ``AddYearsNoOverflow(years)`` then
  ``AddMonthsNoOverflow(months)`` (each clamps the day to the last day of the target month),
  then ``AddWeeks``, ``AddDays``, ``AddHours``, ``AddMinutes``, ``AddSeconds`` (plain
  arithmetic). Years and months are clamped in two separate steps: Feb 29 + ``P1Y1M`` is
  Feb 28 + 1 month = Mar 28, not Mar 29.
* ``pkg/timeutil/recurrence.go`` ``Recurrence.addIntervalNTimes``: ``Interval.Mul(n)`` (field by
  field, ``rickb777/period`` ``Period.Mul``: "the result is not normalised") and then
  ``AddTo(anchor)``. Boundary ``B(n)`` is always computed from the anchor, so month clamping
  never drifts (anchor Jan 31: Feb 28, Mar 31, Apr 30 ...).
* ``pkg/timeutil/recurrence.go`` ``Recurrence.GetPeriodAt``: ``[B(k), B(k+1))`` with
  ``B(k) <= t < B(k+1)``; ``Recurrence.Validate``: the interval must be positive.
* ``openmeter/subscription/subscriptionspec.go`` ``SubscriptionSpec.GetAlignedBillingPeriodAt``
  and ``openmeter/subscription/timing.go`` ``Timing.ResolveForSpec`` (``next_billing_cycle`` is
  the ``To`` of the aligned period at now).
* ``openmeter/subscription/subscriptionspec.go``
  ``SubscriptionItemSpec.ToScheduleSubscriptionEntitlementInput`` (anchor and phase start
  truncated to the minute), ``openmeter/entitlement/metered/connector.go``
  ``connector.BeforeCreate`` (measureUsageFrom truncated, first period starts there) and
  ``openmeter/entitlement/usageperiod.go`` ``UsagePeriod.GetCurrentPeriodAt`` (a query before
  the start returns the first period; the period start is clipped to measureUsageFrom).

Go's recurrence walks one interval at a time (``MAX_SAFE_ITERATIONS``); here the index is
estimated from the average interval length and then corrected, which gives the same periods in
O(1) steps for any distance between anchor and ``t``.

All arithmetic happens in UTC (OpenMeter stores and returns UTC instants). Inputs must be
timezone-aware; results are returned in the timezone of the input instant.
"""

from __future__ import annotations

import calendar
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import NamedTuple

__all__ = [
    "Duration",
    "Period",
    "add",
    "add_duration",
    "aligned_billing_period",
    "boundaries_after",
    "boundary",
    "entitlement_usage_period_at",
    "next_billing_cycle",
    "next_boundary",
    "parse_duration",
    "period_at",
    "truncate_minute",
]

_FIELDS = ("years", "months", "weeks", "days", "hours", "minutes", "seconds")
_DATE_DESIGNATORS = {"Y": "years", "M": "months", "W": "weeks", "D": "days"}
_TIME_DESIGNATORS = {"H": "hours", "M": "minutes", "S": "seconds"}
_FIELD_RE = re.compile(r"(-?[0-9]+(?:[.,][0-9]+)?)([A-Z])")
_MICRO = Decimal("0.000001")

# Average lengths used only to *estimate* a period index; the exact boundary is always
# recomputed with OpenMeter's arithmetic and the estimate corrected.
_AVG_SECONDS = {
    "years": 365.2425 * 86400,
    "months": 365.2425 * 86400 / 12,
    "weeks": 7 * 86400.0,
    "days": 86400.0,
    "hours": 3600.0,
    "minutes": 60.0,
}


@dataclass(frozen=True, slots=True)
class Duration:
    """An ISO 8601 duration as OpenMeter keeps it: separate, signed calendar fields.

    ``seconds`` is a ``Decimal`` (OpenMeter's ``AddSeconds`` takes a decimal); the others are
    integers. Fields are not normalised: ``P12M`` and ``P1Y`` are different durations (they can
    give different boundaries when combined with other fields).
    """

    years: int = 0
    months: int = 0
    weeks: int = 0
    days: int = 0
    hours: int = 0
    minutes: int = 0
    seconds: Decimal = Decimal(0)

    def __post_init__(self) -> None:
        if not isinstance(self.seconds, Decimal):
            object.__setattr__(self, "seconds", Decimal(self.seconds))
        if self.seconds != self.seconds.quantize(_MICRO, rounding="ROUND_DOWN"):
            raise ValueError(f"duration seconds {self.seconds} are finer than a microsecond")

    @classmethod
    def parse(cls, text: str) -> Duration:
        return parse_duration(text)

    def _values(self) -> tuple[Decimal, ...]:
        return tuple(Decimal(getattr(self, f)) for f in _FIELDS)

    @property
    def is_zero(self) -> bool:
        return all(v == 0 for v in self._values())

    @property
    def is_positive(self) -> bool:
        """Every field >= 0 and at least one > 0 (what a recurrence interval must be)."""
        vals = self._values()
        return all(v >= 0 for v in vals) and any(v > 0 for v in vals)

    def __mul__(self, n: int) -> Duration:
        """Field-by-field multiplication (``rickb777/period`` ``Period.Mul``, not normalised)."""
        if not isinstance(n, int) or isinstance(n, bool):
            return NotImplemented
        return Duration(
            years=self.years * n,
            months=self.months * n,
            weeks=self.weeks * n,
            days=self.days * n,
            hours=self.hours * n,
            minutes=self.minutes * n,
            seconds=self.seconds * n,
        )

    __rmul__ = __mul__

    def __neg__(self) -> Duration:
        return self * -1

    def approx_seconds(self) -> float:
        """Average length in seconds (365.2425-day years); for estimates only, never exact."""
        total = float(self.seconds)
        for f, secs in _AVG_SECONDS.items():
            total += getattr(self, f) * secs
        return total

    def isoformat(self) -> str:
        """Canonical ISO 8601 text: ``P1M``, ``P2W``, ``PT1H``, ``P1DT12H``, ``-P1M``, ``P0D``.

        A duration whose non-zero fields are all negative is written with one leading ``-``
        (as ``rickb777/period`` does); mixed signs are written per field (``P1M-1D``).
        """
        vals = self._values()
        if all(v == 0 for v in vals):
            return "P0D"
        neg = all(v <= 0 for v in vals)
        sign = "-" if neg else ""
        vals = tuple(-v if neg else v for v in vals)

        def num(v: Decimal) -> str:
            s = format(v.normalize(), "f") if v != v.to_integral_value() else str(int(v))
            return s

        date = "".join(f"{num(v)}{d}" for v, d in zip(vals[:4], "YMWD", strict=True) if v != 0)
        time = "".join(f"{num(v)}{d}" for v, d in zip(vals[4:], "HMS", strict=True) if v != 0)
        return f"{sign}P{date}" + (f"T{time}" if time else "")

    def __str__(self) -> str:
        return self.isoformat()


def parse_duration(text: str) -> Duration:
    """Parse an ISO 8601 duration the way OpenMeter accepts it.

    Grammar (``rickb777/period`` v1.0.22 ``Period.Parse``, used by
    ``pkg/datetime/durationstring.go`` ``ISODurationString.Parse``): optional ``+``/``-``, then
    ``P``, date fields ``nY nM nW nD`` (order not enforced, as in Go), optionally ``T`` and
    ``nH nM nS``; each number may carry a ``-``; ``W`` may be combined with other fields; a
    designator may occur once. Restrictions of this
    implementation: only ``S`` may have a fraction (OpenMeter's ``DateTime.Add`` truncates a
    fractional year/month/week/day/hour/minute to its integer part, which is never what a
    plan author meant), with at most microsecond precision.

    Raises ``ValueError`` naming the text and the problem.
    """
    if not isinstance(text, str):
        raise ValueError(f"duration must be a string, got {type(text).__name__}")
    original = text
    s = text.strip()
    if not s:
        raise ValueError("cannot parse a blank string as an ISO 8601 duration")
    neg = False
    if s[0] in "+-":
        neg = s[0] == "-"
        s = s[1:]
    if not s.startswith("P"):
        raise ValueError(f"{original!r}: an ISO 8601 duration must start with 'P' (e.g. 'P1M')")
    s = s[1:]
    date_part, _, time_part = s.partition("T")
    if "T" in time_part:
        raise ValueError(f"{original!r}: 'T' may occur only once")
    if "T" in s and not time_part:
        raise ValueError(f"{original!r}: 'T' must be followed by hours, minutes or seconds")

    values: dict[str, Decimal] = {}
    fraction_seen: str | None = None
    for part, designators in ((date_part, _DATE_DESIGNATORS), (time_part, _TIME_DESIGNATORS)):
        pos = 0
        while pos < len(part):
            m = _FIELD_RE.match(part, pos)
            if m is None:
                rest = part[pos:]
                if re.fullmatch(r"-?[0-9.,]+", rest):
                    raise ValueError(f"{original!r}: missing designator at the end")
                raise ValueError(
                    f"{original!r}: expected a number followed by a designator at {rest!r}"
                )
            number, des = m.group(1), m.group(2)
            if des not in "YMWDHS":
                raise ValueError(
                    f"{original!r}: unknown designator '{des}' (expected Y, M, W, D, and after 'T'"
                    " H, M, S)"
                )
            if des not in designators:
                where = "after 'T'" if designators is _TIME_DESIGNATORS else "before 'T'"
                raise ValueError(f"{original!r}: designator '{des}' cannot occur {where}")
            field_name = designators[des]
            if field_name in values:
                raise ValueError(f"{original!r}: designator '{des}' cannot occur more than once")
            if fraction_seen is not None:
                raise ValueError(
                    f"{original!r}: only the last field can have a fraction ({fraction_seen})"
                )
            try:
                value = Decimal(number.replace(",", "."))
            except InvalidOperation as exc:  # pragma: no cover - regex guarantees digits
                raise ValueError(f"{original!r}: invalid number {number!r}") from exc
            if "." in number or "," in number:
                fraction_seen = f"{number}{des}"
                if field_name != "seconds":
                    raise ValueError(
                        f"{original!r}: a fraction is supported only on seconds, not on {des!r}"
                    )
            values[field_name] = value
            pos = m.end()
    if not values:
        raise ValueError(f"{original!r}: expected at least one of Y, M, W, D, H, M, S")

    seconds = values.pop("seconds", Decimal(0))
    if seconds != seconds.quantize(_MICRO, rounding="ROUND_DOWN"):
        raise ValueError(f"{original!r}: seconds finer than a microsecond are not supported")
    d = Duration(seconds=seconds, **{k: int(v) for k, v in values.items()})
    return -d if neg else d


class Period(NamedTuple):
    """A half-open interval ``[start, end)`` (OpenMeter ``timeutil.ClosedPeriod``, used so).

    A named tuple, so ``start, end = period_at(...)`` works and it compares equal to the
    ``(start, end)`` tuples of ``reconciler.domain.model``.
    """

    start: datetime
    end: datetime

    def contains(self, t: datetime) -> bool:
        return self.start <= t < self.end


def _require_aware(name: str, dt: datetime) -> None:
    if dt.tzinfo is None or dt.utcoffset() is None:
        raise ValueError(f"{name} must be timezone-aware (got naive {dt.isoformat()})")


def _add_months_no_overflow(dt: datetime, months: int) -> datetime:
    """``DateTime.AddMonthsNoOverflow``: same day, clamped to the target month's last day."""
    if months == 0:
        return dt
    total = dt.year * 12 + (dt.month - 1) + months
    year, month0 = divmod(total, 12)
    month = month0 + 1
    last = calendar.monthrange(year, month)[1]
    return dt.replace(year=year, month=month, day=min(dt.day, last))


def add_duration(dt: datetime, d: Duration, n: int = 1) -> datetime:
    """``dt + n·d`` with OpenMeter's arithmetic (``DateTime.Add`` of ``Interval.Mul(n)``).

    The duration is multiplied first, field by field, then added in this order
    (``pkg/datetime/datetime.go`` ``DateTime.Add``): years (clamped to month end), months
    (clamped), weeks, days, hours, minutes, seconds. So Jan 31 + ``P1M`` = Feb 28/29 and
    Jan 31 + ``P1M``×2 = Mar 31 (not Mar 28). Computed in UTC.
    """
    _require_aware("dt", dt)
    dd = d * n
    tz = dt.tzinfo
    u = dt.astimezone(UTC)
    u = _add_months_no_overflow(u, 12 * dd.years)  # AddYearsNoOverflow == 12-month clamp
    u = _add_months_no_overflow(u, dd.months)
    micro = int(dd.seconds * 1_000_000)  # Go truncates toward zero (BigInt)
    u = u + timedelta(
        weeks=dd.weeks, days=dd.days, hours=dd.hours, minutes=dd.minutes, microseconds=micro
    )
    return u.astimezone(tz)


add = add_duration  # the name used in docs/ARCHITECTURE.md


def _require_interval(d: Duration) -> None:
    if not d.is_positive:
        raise ValueError(
            f"recurrence interval must be positive, got {d.isoformat()} "
            "(timeutil.Recurrence.Validate)"
        )


def boundary(anchor: datetime, d: Duration, n: int) -> datetime:
    """``B(n) = anchor + n·d`` (``Recurrence.addIntervalNTimes``); n may be negative."""
    _require_interval(d)
    return add_duration(anchor, d, n)


def _index_at(anchor: datetime, d: Duration, t: datetime) -> int:
    """The k with ``B(k) <= t < B(k+1)``: estimated from the average length, then corrected.

    B is strictly increasing in k for a positive interval (each field's contribution is
    non-decreasing and at least one strictly increases), so the correction terminates; the
    estimate is off by at most a couple of steps (month lengths vary by 3 days).
    """
    _require_interval(d)
    _require_aware("t", t)
    _require_aware("anchor", anchor)
    approx = d.approx_seconds()
    k = math.floor((t - anchor).total_seconds() / approx)
    while add_duration(anchor, d, k) > t:
        k -= 1
    while add_duration(anchor, d, k + 1) <= t:
        k += 1
    return k


def period_at(anchor: datetime, d: Duration, t: datetime) -> Period:
    """``Recurrence.GetPeriodAt(t)``: ``[B(k), B(k+1))`` containing ``t``.

    Start-inclusive, end-exclusive: a ``t`` exactly on a boundary starts a period. The anchor
    may lie before or after ``t``.
    """
    k = _index_at(anchor, d, t)
    return Period(add_duration(anchor, d, k), add_duration(anchor, d, k + 1))


def boundaries_after(anchor: datetime, d: Duration, t: datetime) -> Iterator[datetime]:
    """The boundaries strictly after ``t``, in order, without end: ``B(k+1), B(k+2), …`` for
    the period ``[B(k), B(k+1))`` containing ``t``. Each is ``anchor + n·d`` as in
    :func:`period_at`, one addition per boundary."""
    k = _index_at(anchor, d, t)
    while True:
        k += 1
        yield add_duration(anchor, d, k)


def next_boundary(anchor: datetime, d: Duration, t: datetime) -> datetime:
    """The first boundary strictly after ``t`` (``IterateFromNextAfter(t, Exclusive)``)."""
    return period_at(anchor, d, t).end


def aligned_billing_period(
    anchor: datetime,
    cadence: Duration,
    t: datetime,
    phase_start: datetime,
    phase_end: datetime | None,
) -> Period:
    """``SubscriptionSpec.GetAlignedBillingPeriodAt``: the billing period at ``t``, clipped
    to the phase (``subscriptionspec.go``).

    ``anchor`` is the subscription's ``billingAnchor`` (full precision), ``cadence`` its
    ``billingCadence``; ``phase_start``/``phase_end`` the cadence of the phase OpenMeter picks
    (the phase active at ``t``, or after the subscription ended, the last phase starting no
    later than ``activeTo``; ``phase_end`` is ``None`` for an open-ended last phase and is
    already capped at the subscription's ``activeTo``, ``GetPhaseCadence``).

    ``period.end = min(B(k+1), phase_end)``, ``period.start = max(B(k), phase_start)``.
    OpenMeter refuses a ``t`` before the subscription start; here a ``t`` before
    ``phase_start`` (the caller passed the wrong phase) raises ``ValueError``.
    """
    _require_aware("phase_start", phase_start)
    if t < phase_start:
        raise ValueError(
            f"t={t.isoformat()} is before the phase start {phase_start.isoformat()}: "
            "pass the phase active at t"
        )
    p = period_at(anchor, cadence, t)
    start, end = p.start, p.end
    if phase_end is not None and phase_end < end:
        end = phase_end
    if phase_start > start:
        start = phase_start
    return Period(start, end)


def next_billing_cycle(
    anchor: datetime,
    cadence: Duration,
    now: datetime,
    phase_start: datetime,
    phase_end: datetime | None,
) -> datetime:
    """When ``timing: next_billing_cycle`` takes effect: ``min(B(k+1), phase_end)``.

    ``openmeter/subscription/timing.go`` ``Timing.ResolveForSpec`` returns
    ``GetAlignedBillingPeriodAt(now).To``.
    """
    return aligned_billing_period(anchor, cadence, now, phase_start, phase_end).end


def truncate_minute(dt: datetime) -> datetime:
    """Go's ``time.Truncate(time.Minute)`` for a UTC-offset-whole-minute instant."""
    return dt.replace(second=0, microsecond=0)


def entitlement_usage_period_at(
    billing_anchor: datetime,
    usage_period: Duration,
    measure_usage_from: datetime,
    t: datetime,
) -> Period:
    """The ``currentUsagePeriod`` at ``t`` of a subscription-managed metered entitlement.

    The recurrence anchor is ``trunc_min(billing_anchor)``
    (``ToScheduleSubscriptionEntitlementInput``); the usage period starts at
    ``trunc_min(measure_usage_from)`` (the phase start for subscription entitlements;
    ``connector.BeforeCreate``). ``UsagePeriod.GetCurrentPeriodAt``: a ``t`` before the start
    is treated as the start (the first period is returned), and the period's start is clipped
    to ``measure_usage_from``.
    """
    anchor = truncate_minute(billing_anchor)
    start = truncate_minute(measure_usage_from)
    at = max(t, start)
    p = period_at(anchor, usage_period, at)
    return Period(max(p.start, start), p.end)
