"""Event storage with per-(subject, meter) time indexes.

Each ingested event is appended to the index of every meter whose ``eventType`` matches, keyed
by the event's ``subject``; entries are kept sorted by time so a period query is two bisects
plus a slice (no scan of all events). Aggregations follow
``openmeter/streaming/clickhouse/meter_query.go``: SUM/MAX/AVG/MIN of ``valueProperty`` parsed
as a number (non-numeric or missing values are ignored, like ``toFloat64OrNull``), COUNT of
events, UNIQUE_COUNT of distinct ``valueProperty`` values (``uniqExact``) — LATEST is the value
of the last event.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any


@dataclass
class Meter:
    id: str
    slug: str
    name: str
    description: str | None
    aggregation: str
    event_type: str
    value_property: str | None
    group_by: dict[str, str]
    event_from: datetime | None
    metadata: dict[str, str] | None
    created_at: datetime
    updated_at: datetime


@dataclass
class Series:
    """Time-sorted (time, value, group values) entries of one subject for one meter."""

    times: list[float] = field(default_factory=list)
    values: list[Any] = field(default_factory=list)
    groups: list[dict[str, str]] = field(default_factory=list)

    def insert(self, t: float, value: Any, groups: dict[str, str]) -> None:
        i = bisect.bisect_right(self.times, t)
        self.times.insert(i, t)
        self.values.insert(i, value)
        self.groups.insert(i, groups)

    def span(self, start: float | None, end: float | None) -> tuple[int, int]:
        lo = 0 if start is None else bisect.bisect_left(self.times, start)
        hi = len(self.times) if end is None else bisect.bisect_left(self.times, end)
        return lo, max(lo, hi)


def json_path(data: Any, path: str | None) -> Any:
    """Resolve a simple JSONPath (``$.a.b`` or ``$['a']``) in an event's data."""
    if path is None:
        return None
    p = path.strip()
    if not p.startswith("$"):
        return None
    p = p[1:]
    parts: list[str] = []
    for raw in p.replace("['", ".").replace("']", "").split("."):
        if raw:
            parts.append(raw)
    cur = data
    for part in parts:
        if not isinstance(cur, dict) or part not in cur:
            return None
        cur = cur[part]
    return cur


def to_number(value: Any) -> float | None:
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int | float):
        out = float(value)
    elif isinstance(value, str):
        try:
            out = float(value)
        except ValueError:
            return None
    else:
        return None
    # ``streaming/clickhouse/meter_query.go`` filters rows whose value is NaN or infinite
    # (e2e ``TestInvalidIngest``: SUM over "100", "NaN" and "Inf" is 100).
    return out if math.isfinite(out) else None


def aggregate(aggregation: str, values: Iterable[Any]) -> float:
    vals = list(values)
    if aggregation == "COUNT":
        return float(len(vals))
    if aggregation == "UNIQUE_COUNT":
        return float(len({str(v) for v in vals if v is not None}))
    if aggregation == "LATEST":
        present = [n for n in (to_number(v) for v in vals) if n is not None]
        return present[-1] if present else 0.0
    nums: list[float] = [n for n in (to_number(v) for v in vals) if n is not None]
    if aggregation == "SUM":
        return float(sum(nums))
    if aggregation == "MAX":
        return max(nums) if nums else 0.0
    if aggregation == "MIN":
        return min(nums) if nums else 0.0
    if aggregation == "AVG":
        return sum(nums) / len(nums) if nums else 0.0
    raise ValueError(f"unsupported aggregation {aggregation}")


class EventStore:
    def __init__(self) -> None:
        self.index: dict[tuple[str, str], Series] = {}
        self.seen: set[tuple[str, str]] = set()
        self.count = 0

    def ingest(self, event: dict[str, Any], when: datetime, meters: Iterable[Meter]) -> bool:
        """Store one CloudEvent; returns False for a duplicate (same ``source`` and ``id``)."""
        dedupe = (str(event.get("source")), str(event.get("id")))
        if dedupe in self.seen:
            return False
        self.seen.add(dedupe)
        self.count += 1
        t = when.timestamp()
        subject = str(event["subject"])
        for meter in meters:
            if meter.event_type != event.get("type"):
                continue
            if meter.event_from is not None and when < meter.event_from:
                continue
            data = event.get("data")
            value = json_path(data, meter.value_property) if meter.value_property else 1
            groups = {
                k: str(v)
                for k, p in meter.group_by.items()
                if (v := json_path(data, p)) is not None
            }
            series = self.index.setdefault((subject, meter.slug), Series())
            series.insert(t, value, groups)
        return True

    def series(self, subject: str, meter_slug: str) -> Series | None:
        return self.index.get((subject, meter_slug))

    def total(
        self,
        subjects: Iterable[str],
        meter: Meter,
        start: datetime | None,
        end: datetime | None,
    ) -> float:
        """Aggregate ``meter`` over events of ``subjects`` in ``[start, end)``."""
        s = None if start is None else start.timestamp()
        e = None if end is None else end.timestamp()
        values: list[Any] = []
        for subject in dict.fromkeys(subjects):
            series = self.index.get((subject, meter.slug))
            if series is None:
                continue
            lo, hi = series.span(s, e)
            if meter.aggregation == "COUNT":
                values.extend([1] * (hi - lo))
            else:
                values.extend(series.values[lo:hi])
        if meter.aggregation == "SUM" and not values:
            return 0.0
        return aggregate(meter.aggregation, values)
