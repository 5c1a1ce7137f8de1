"""Time maths of the emulator, written independently of the product's ``domain.periods``.

OpenMeter facts implemented here (beta.227):

* ISO 8601 durations are added year/month part first, clamping the day to the last day of the
  target month (no overflow), then weeks/days/time are added normally
  (``pkg/datetime/datetime.go`` ``DateTime.Add`` / ``AddMonthsNoOverflow``).
* Recurrence boundaries are ``B(n) = anchor + n * interval`` computed from the anchor each time
  (``pkg/timeutil/recurrence.go`` ``Recurrence.GetPeriodAt`` / ``addIntervalNTimes``), so an
  anchor on Jan 31 gives Feb 28/29 then Mar 31 (no cumulative drift). Periods are
  start-inclusive, end-exclusive.
"""

from __future__ import annotations

import calendar
import math
import os
import re
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

_DURATION_RE = re.compile(
    r"^(?P<sign>-)?P(?:(?P<y>\d+)Y)?(?:(?P<mo>\d+)M)?(?:(?P<w>\d+)W)?(?:(?P<d>\d+)D)?"
    r"(?:T(?:(?P<h>\d+)H)?(?:(?P<mi>\d+)M)?(?:(?P<s>\d+(?:[.,]\d+)?)S)?)?$"
)


class DurationError(ValueError):
    """An ISO 8601 duration string that cannot be parsed."""


@dataclass(frozen=True)
class Duration:
    """An ISO 8601 duration kept as calendar components (months) plus exact parts."""

    months: int = 0
    days: int = 0
    micros: int = 0

    @staticmethod
    def parse(text: str) -> Duration:
        m = _DURATION_RE.match(text.strip()) if isinstance(text, str) else None
        if m is None or text.strip() in ("P", "-P") or text.strip().endswith("T"):
            raise DurationError(f"invalid ISO 8601 duration: {text!r}")
        sign = -1 if m.group("sign") else 1
        years = int(m.group("y") or 0)
        months = int(m.group("mo") or 0)
        weeks = int(m.group("w") or 0)
        days = int(m.group("d") or 0)
        hours = int(m.group("h") or 0)
        minutes = int(m.group("mi") or 0)
        seconds = float((m.group("s") or "0").replace(",", "."))
        micros = round(((hours * 60 + minutes) * 60 + seconds) * 1_000_000)
        return Duration(
            months=sign * (years * 12 + months),
            days=sign * (weeks * 7 + days),
            micros=sign * micros,
        )

    @staticmethod
    def of(delta: timedelta) -> Duration:
        return Duration(
            micros=(delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds
        )

    def is_zero(self) -> bool:
        return self.months == 0 and self.days == 0 and self.micros == 0

    def __add__(self, other: Duration) -> Duration:
        return Duration(
            self.months + other.months, self.days + other.days, self.micros + other.micros
        )

    def __sub__(self, other: Duration) -> Duration:
        return Duration(
            self.months - other.months, self.days - other.days, self.micros - other.micros
        )

    def __neg__(self) -> Duration:
        return Duration(-self.months, -self.days, -self.micros)

    def times(self, n: int) -> Duration:
        return Duration(self.months * n, self.days * n, self.micros * n)

    def approx_seconds(self) -> float:
        return self.months * 30.436875 * 86_400 + self.days * 86_400 + self.micros / 1e6

    def add_to(self, dt: datetime) -> datetime:
        """``dt + self`` with month-end clamping (months first, then days and time)."""
        out = add_months(dt, self.months) if self.months else dt
        if self.days or self.micros:
            out = out + timedelta(days=self.days, microseconds=self.micros)
        return out

    def iso(self) -> str:
        if self.is_zero():
            return "PT0S"
        neg = self.months < 0 or self.days < 0 or self.micros < 0
        months, days, micros = abs(self.months), abs(self.days), abs(self.micros)
        out = "-P" if neg else "P"
        years, months = divmod(months, 12)
        if years:
            out += f"{years}Y"
        if months:
            out += f"{months}M"
        if days:
            out += f"{days}D"
        if micros:
            secs_total, us = divmod(micros, 1_000_000)
            hours, rem = divmod(secs_total, 3600)
            minutes, secs = divmod(rem, 60)
            out += "T"
            if hours:
                out += f"{hours}H"
            if minutes:
                out += f"{minutes}M"
            if secs or us:
                out += f"{secs}.{us:06d}".rstrip("0").rstrip(".") + "S"
        return out


def add_months(dt: datetime, months: int) -> datetime:
    """Add ``months`` calendar months, clamping the day to the end of the target month."""
    total = dt.year * 12 + (dt.month - 1) + months
    year, month0 = divmod(total, 12)
    month = month0 + 1
    day = min(dt.day, calendar.monthrange(year, month)[1])
    return dt.replace(year=year, month=month, day=day)


def boundary(anchor: datetime, interval: Duration, n: int) -> datetime:
    """``B(n) = anchor + n * interval``, always computed from the anchor."""
    return interval.times(n).add_to(anchor)


def period_at(anchor: datetime, interval: Duration, at: datetime) -> tuple[datetime, datetime]:
    """The recurrence period ``[B(k), B(k+1))`` containing ``at``."""
    approx = interval.approx_seconds()
    if approx <= 0:
        raise DurationError("recurrence interval must be positive")
    k = math.floor((at - anchor).total_seconds() / approx)
    while boundary(anchor, interval, k) > at:
        k -= 1
    while boundary(anchor, interval, k + 1) <= at:
        k += 1
    return boundary(anchor, interval, k), boundary(anchor, interval, k + 1)


def trunc_minute(dt: datetime) -> datetime:
    return dt.replace(second=0, microsecond=0)


def ceil_minute(dt: datetime) -> datetime:
    """Round up to the next full minute (unchanged when already on a minute)."""
    t = trunc_minute(dt)
    return t if t == dt else t + timedelta(minutes=1)


def fmt(dt: datetime | None) -> str | None:
    """RFC 3339 in UTC like Go's ``time.RFC3339Nano``: sub-second digits, trailing zeros cut."""
    if dt is None:
        return None
    dt = dt.astimezone(UTC)
    base = dt.strftime("%Y-%m-%dT%H:%M:%S")
    if dt.microsecond:
        base += ("." + f"{dt.microsecond:06d}").rstrip("0")
    return base + "Z"


class TimeParseError(ValueError):
    pass


def parse_time(text: object) -> datetime:
    """Parse an RFC 3339 timestamp (an offset is required) into an aware UTC datetime."""
    if not isinstance(text, str) or "T" not in text.upper():
        raise TimeParseError(f"invalid RFC 3339 date-time: {text!r}")
    raw = text.strip()
    if raw.endswith(("z", "Z")):
        raw = raw[:-1] + "+00:00"
    # Python accepts at most 6 fractional digits; RFC 3339 allows more (nanoseconds).
    m = re.match(r"^(.*T\d{2}:\d{2}:\d{2})(\.\d+)?(.*)$", raw)
    if m and m.group(2) and len(m.group(2)) > 7:
        raw = m.group(1) + m.group(2)[:7] + m.group(3)
    try:
        dt = datetime.fromisoformat(raw)
    except ValueError as exc:
        raise TimeParseError(f"invalid RFC 3339 date-time: {text!r}") from exc
    if dt.tzinfo is None:
        raise TimeParseError(f"invalid RFC 3339 date-time (no offset): {text!r}")
    return dt.astimezone(UTC)


_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def new_ulid(at: datetime | None = None) -> str:
    """A ULID (48-bit millisecond time + 80 random bits, Crockford base32)."""
    ms = int((at.timestamp() if at else time.time()) * 1000) & ((1 << 48) - 1)
    value = (ms << 80) | int.from_bytes(os.urandom(10), "big")
    chars = []
    for _ in range(26):
        value, rem = divmod(value, 32)
        chars.append(_CROCKFORD[rem])
    return "".join(reversed(chars))
