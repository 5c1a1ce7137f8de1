"""Prometheus metrics. One :class:`Metrics` (with its own ``CollectorRegistry``) per app."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from reconciler.engine import Hooks
from reconciler.openmeter.client import CallRecord
from reconciler.store.types import ChangeStatus, EventStatus

NS = "reconciler"
CONTENT_TYPE = CONTENT_TYPE_LATEST

WEBHOOK_OUTCOMES = (
    "accepted",
    "superseded",
    "duplicate",
    "conflict",
    "ignored",
    "unauthorized",
    "invalid",
    "too_large",
    "disabled",
    "error",
)


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry(auto_describe=True)
        self.changes = Gauge(
            f"{NS}_changes", "Change requests in the store by status.", ["status"], registry=r
        )
        self.events = Gauge(
            f"{NS}_outbound_events",
            "Outbound events in the outbox by status.",
            ["status"],
            registry=r,
        )
        self.queue_depth = Gauge(
            f"{NS}_queue_depth", "Customers due for reconciliation now.", registry=r
        )
        self.leader = Gauge(
            f"{NS}_leader",
            "1 while this replica holds the sweep leadership.",
            ["name"],
            registry=r,
        )
        self.calls = Counter(
            f"{NS}_openmeter_calls",
            "OpenMeter HTTP attempts by operation and status (status 'error': no response).",
            ["operation", "method", "status"],
            registry=r,
        )
        self.call_seconds = Histogram(
            f"{NS}_openmeter_call_duration_seconds",
            "OpenMeter HTTP attempt latency.",
            ["operation"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=r,
        )
        self.retries = Counter(
            f"{NS}_openmeter_retries",
            "OpenMeter attempts after the first (the client's read retries).",
            ["operation"],
            registry=r,
        )
        self.actions = Counter(
            f"{NS}_actions",
            "Mutations the engine sent, by kind and outcome.",
            ["kind", "outcome"],
            registry=r,
        )
        self.transitions = Counter(
            f"{NS}_change_transitions",
            "Change requests reaching a status.",
            ["status"],
            registry=r,
        )
        self.drift_healed = Counter(
            f"{NS}_drift_healed",
            "Mutations applied to a converged customer whose OpenMeter state had drifted.",
            ["kind"],
            registry=r,
        )
        self.drift_found = Counter(
            f"{NS}_drift_found",
            "Converged customers whose OpenMeter state was found drifted (items: the plan on "
            "record is right but the items are not; subscription: plan, successor or status).",
            ["kind"],
            registry=r,
        )
        self.usage_not_preserved = Counter(
            f"{NS}_usage_not_preserved",
            "Edits after which a feature's consumed usage was lower than before.",
            ["feature"],
            registry=r,
        )
        self.reconciles = Counter(
            f"{NS}_reconciles",
            "Reconcile passes by trigger and resulting state.",
            ["trigger", "state"],
            registry=r,
        )
        self.sweep_seconds = Histogram(
            f"{NS}_sweep_duration_seconds",
            "Duration of a sweep over OpenMeter's customers.",
            ["kind"],
            buckets=(0.1, 0.5, 1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600),
            registry=r,
        )
        self.sweep_customers = Counter(
            f"{NS}_sweep_customers",
            "Customers looked at by sweeps, by result (in_sync, reconciled, adopted, skipped).",
            ["kind", "result"],
            registry=r,
        )
        self.event_attempts = Counter(
            f"{NS}_outbound_event_attempts",
            "Outbound event delivery attempts by event type and outcome.",
            ["type", "outcome"],
            registry=r,
        )
        self.webhooks = Counter(
            f"{NS}_webhook_requests",
            "Portal webhook requests by outcome.",
            ["outcome"],
            registry=r,
        )
        for outcome in WEBHOOK_OUTCOMES:
            self.webhooks.labels(outcome)
        for kind in ("items", "subscription"):
            self.drift_found.labels(kind)
        for s in ChangeStatus:
            self.changes.labels(s.value)
        for e in EventStatus:
            self.events.labels(e.value)
        self.leader.labels("sweep").set(0)

    # -- engine and client callbacks ---------------------------------------------------------

    def observe_call(self, rec: CallRecord) -> None:
        status = str(rec.status) if rec.status is not None else "error"
        self.calls.labels(rec.operation, rec.method, status).inc()
        self.call_seconds.labels(rec.operation).observe(rec.duration_s)
        if rec.attempt > 1:
            self.retries.labels(rec.operation).inc()

    def count_event_attempt(self, event_type: str, outcome: str) -> None:
        self.event_attempts.labels(event_type, outcome).inc()

    def hooks(self) -> Hooks:
        return Hooks(
            on_action=lambda kind, outcome: self.actions.labels(kind, outcome).inc(),
            on_status=lambda status: self.transitions.labels(status).inc(),
            on_usage_not_preserved=lambda feature: self.usage_not_preserved.labels(feature).inc(),
            on_drift_healed=lambda kind: self.drift_healed.labels(kind).inc(),
            on_drift_found=lambda kind: self.drift_found.labels(kind).inc(),
        )

    # -- store-derived gauges ----------------------------------------------------------------

    def set_counts(self, changes: dict[str, int], events: dict[str, int]) -> None:
        for status, n in changes.items():
            self.changes.labels(status).set(n)
        for status, n in events.items():
            self.events.labels(status).set(n)

    def render(self) -> bytes:
        return bytes(generate_latest(self.registry))
