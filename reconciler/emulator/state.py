"""In-memory OpenMeter state and the behaviour of beta.227 (subscriptions, plans, entitlements).

Sources (tag ``v1.0.0-beta.227`` of openmeterio/openmeter) for each rule are cited inline; the
reference note ``openmeter-semantics.md`` §2–§5 summarises them.
"""

from __future__ import annotations

import copy
import hashlib
import json
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from reconciler.emulator import errors as E
from reconciler.emulator.catalogcheck import (
    UNALIGNED_CODE,
    UNALIGNED_MESSAGE,
    cadences_align,
    check_currency,
    check_key,
    entitlement_template_issues,
    normalize_phases,
    normalize_pro_rating,
    normalize_rate_card,
    parse_duration_field,
    plan_alignment_issues,
    req_str,
    warning_issue,
)
from reconciler.emulator.clock import Clock
from reconciler.emulator.timeutil import (
    Duration,
    TimeParseError,
    ceil_minute,
    fmt,
    new_ulid,
    parse_time,
    period_at,
    trunc_minute,
)
from reconciler.emulator.usage import EventStore, Meter

Json = dict[str, Any]
NAMESPACE = "default"


def put(d: Json, key: str, value: Any) -> None:
    if value is not None:
        d[key] = value


def _group_by_filters(body: Json) -> dict[str, Json] | None:
    """``productcatalog/driver/parser.go`` ``MapFeatureCreateInputsRequest``: the advanced filters
    win; otherwise each legacy ``meterGroupByFilters`` entry becomes ``{"$eq": value}``
    (``feature/feature.go`` ``ConvertMapStringToMeterGroupByFilters``)."""
    adv = body.get("advancedMeterGroupByFilters")
    if isinstance(adv, dict) and adv:
        return {str(k): dict(v) for k, v in adv.items() if isinstance(v, dict)}
    legacy = body.get("meterGroupByFilters")
    if isinstance(legacy, dict) and legacy:
        return {str(k): {"$eq": v} for k, v in legacy.items()}
    return None


def num(x: float) -> float | int:
    return int(x) if float(x).is_integer() and abs(x) < 2**53 else x


# --------------------------------------------------------------------------- records


@dataclass(slots=True)
class Customer:
    id: str
    name: str
    key: str | None
    subject_keys: list[str]
    description: str | None
    metadata: dict[str, str] | None
    currency: str | None
    primary_email: str | None
    created_at: datetime
    updated_at: datetime
    deleted_at: datetime | None = None

    def subjects(self) -> list[str]:
        """``openmeter/streaming/usageattribution.go`` ``GetValues``: key ∪ subject keys."""
        out = list(self.subject_keys)
        if self.key and self.key not in out:
            out.append(self.key)
        return out


@dataclass(slots=True)
class Feature:
    id: str
    key: str
    name: str
    meter_slug: str | None
    metadata: dict[str, str] | None
    meter_group_by_filters: dict[str, Json] | None
    created_at: datetime
    updated_at: datetime
    archived_at: datetime | None = None


@dataclass(slots=True)
class Plan:
    id: str
    key: str
    version: int
    name: str
    description: str | None
    metadata: dict[str, str] | None
    currency: str
    billing_cadence: str
    pro_rating: Json
    phases: list[Json]
    created_at: datetime
    updated_at: datetime
    effective_from: datetime | None = None
    effective_to: datetime | None = None
    deleted_at: datetime | None = None

    def status(self, now: datetime) -> str:
        """Adapter ``ListPlans`` filters: draft / scheduled / active / archived."""
        if self.effective_from is None:
            return "draft"
        if self.effective_from > now:
            return "scheduled"
        if self.effective_to is not None and self.effective_to <= now:
            return "archived"
        return "active"


@dataclass(slots=True)
class ItemVersion:
    key: str
    rate_card: Json
    from_off: timedelta | None = None
    to_off: timedelta | None = None
    annotations: Json = field(default_factory=dict)
    id: str = ""
    created_at: datetime | None = None
    updated_at: datetime | None = None
    entitlement_id: str | None = None
    sig: str | None = None
    # subscription add-ons whose rate cards this version includes (``addons.py``), and whether
    # the item exists only because of an add-on (removed when its quantity drops to 0)
    addon_ids: list[str] = field(default_factory=list)
    addon_created: bool = False


@dataclass(slots=True)
class Phase:
    key: str
    name: str
    description: str | None
    metadata: dict[str, str] | None
    start_after: Duration
    items: dict[str, list[ItemVersion]] = field(default_factory=dict)
    id: str = ""
    created_at: datetime | None = None
    updated_at: datetime | None = None
    sig: str | None = None


@dataclass(slots=True)
class Subscription:
    id: str
    customer_id: str
    plan_ref: Json | None
    name: str
    description: str | None
    metadata: dict[str, str] | None
    active_from: datetime
    active_to: datetime | None
    billing_anchor: datetime
    billing_cadence: str
    pro_rating: Json
    currency: str
    phases: list[Phase]
    created_at: datetime
    updated_at: datetime
    annotations: Json = field(default_factory=dict)
    deleted_at: datetime | None = None

    def status(self, now: datetime) -> str:
        """``openmeter/subscription/subscription.go`` ``Subscription.GetStatusAt``."""
        if self.deleted_at is not None and self.deleted_at <= now:
            return "inactive"
        if self.active_from > now:
            return "scheduled"
        if self.active_to is None:
            return "active"
        if self.active_to > now:
            return "canceled"
        return "inactive"

    def phase_start(self, phase: Phase) -> datetime:
        return phase.start_after.add_to(self.active_from)

    def phase_bounds(self) -> list[tuple[Phase, datetime, datetime | None]]:
        """``GetPhaseCadence``: ``[activeFrom+startAfter, nextPhaseStart | activeTo)``."""
        out: list[tuple[Phase, datetime, datetime | None]] = []
        starts = [self.phase_start(p) for p in self.phases]
        for i, p in enumerate(self.phases):
            end = starts[i + 1] if i + 1 < len(self.phases) else self.active_to
            if end is not None and self.active_to is not None and end > self.active_to:
                end = self.active_to
            out.append((p, starts[i], end))
        return out

    def current_phase(self, at: datetime) -> Phase | None:
        """``SubscriptionSpec.GetCurrentPhaseAt``: the phase whose cadence contains ``at``."""
        for p, start, end in self.phase_bounds():
            if start <= at and (end is None or at < end):
                return p
        return None

    def item_cadence(
        self, phase_start: datetime, phase_end: datetime | None, v: ItemVersion
    ) -> tuple[datetime, datetime | None]:
        """``SubscriptionItemSpec.GetCadence``; zero-length when the phase ends before start."""
        start = phase_start + v.from_off if v.from_off is not None else phase_start
        end = phase_end
        if v.to_off is not None:
            own = phase_start + v.to_off
            end = own if end is None or own < end else end
        if phase_end is not None and phase_end < start:
            return phase_end, phase_end
        return start, end

    def aligned_period_at(self, at: datetime) -> tuple[datetime, datetime] | None:
        """``SubscriptionSpec.GetAlignedBillingPeriodAt`` (None when ``at`` < activeFrom)."""
        if at < self.active_from:
            return None
        bounds = self.phase_bounds()
        chosen = None
        for _p, start, end in bounds:
            if start <= at and (end is None or at < end):
                chosen = (start, end)
        if chosen is None:
            cands = [(s, e) for _, s, e in bounds if self.active_to is None or s < self.active_to]
            chosen = cands[-1] if cands else (self.active_from, self.active_to)
        frm, to = period_at(self.billing_anchor, Duration.parse(self.billing_cadence), at)
        if chosen[1] is not None and chosen[1] < to:
            to = chosen[1]
        if chosen[0] > frm:
            frm = chosen[0]
        return frm, to


@dataclass(slots=True)
class Entitlement:
    id: str
    customer_id: str
    feature_id: str
    feature_key: str
    type: str
    active_from: datetime | None
    active_to: datetime | None
    created_at: datetime
    updated_at: datetime
    metadata: dict[str, str] | None
    annotations: Json
    measure_usage_from: datetime | None = None
    usage_period: str | None = None
    usage_anchor: datetime | None = None
    issue_after_reset: float | None = None
    issue_priority: int | None = None
    is_soft_limit: bool = False
    preserve_overage: bool = False
    config: str | None = None
    grant_effective_at: datetime | None = None
    grant_id: str | None = None
    deleted_at: datetime | None = None

    def is_deleted(self, now: datetime) -> bool:
        return self.deleted_at is not None and self.deleted_at <= now

    def active_at(self, now: datetime) -> bool:
        if self.is_deleted(now):
            return False
        if self.active_from is not None and self.active_from > now:
            return False
        return self.active_to is None or now < self.active_to

    def usage_period_at(self, at: datetime) -> tuple[datetime, datetime]:
        """``openmeter/entitlement/usageperiod.go`` ``UsagePeriod.GetCurrentPeriodAt``: before the
        first recurrence the first period is returned; the start is clipped at measureUsageFrom."""
        assert self.usage_period and self.usage_anchor and self.measure_usage_from
        t = max(at, self.measure_usage_from)
        frm, to = period_at(self.usage_anchor, Duration.parse(self.usage_period), t)
        return max(frm, self.measure_usage_from), to

    @property
    def managed(self) -> bool:
        return "subscription.id" in self.annotations


# --------------------------------------------------------------------------- state


class State:
    """All emulator state. Guarded by one re-entrant lock (handlers are short)."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.lock = threading.RLock()
        # checks run before an edit's patches (``EditRunning``: the add-on check, addons.py)
        self.edit_guards: list[Callable[[Subscription], None]] = []
        self.reset()

    def reset(self) -> None:
        self.extensions: dict[str, Any] = {}
        self.customers: dict[str, Customer] = {}
        self.customer_by_key: dict[str, str] = {}
        self.customer_by_subject: dict[str, str] = {}
        self.customer_order: list[str] = []
        self.meters: dict[str, Meter] = {}
        self.features: dict[str, Feature] = {}
        self.feature_by_key: dict[str, str] = {}
        self.plans: dict[str, Plan] = {}
        self.plans_by_key: dict[str, list[str]] = {}
        self.subs: dict[str, Subscription] = {}
        self.subs_by_customer: dict[str, list[str]] = {}
        self.ents: dict[str, Entitlement] = {}
        self.ents_by_customer: dict[str, list[str]] = {}
        self.events = EventStore()

    def now(self) -> datetime:
        return self.clock.now()

    # ------------------------------------------------------------------ lookups

    def feature_lookup(self, key: str) -> Json | None:
        fid = self.feature_by_key.get(key)
        if fid is None:
            return None
        f = self.features[fid]
        return {"id": f.id, "key": f.key, "meterSlug": f.meter_slug}

    def customer(self, id_or_key: str, *, allow_deleted: bool = False) -> Customer:
        cid = id_or_key if id_or_key in self.customers else self.customer_by_key.get(id_or_key)
        if cid is None:
            raise E.not_found(
                f"customer with id or key {id_or_key} not found in {NAMESPACE} namespace"
            )
        c = self.customers[cid]
        if c.deleted_at is not None and not allow_deleted:
            raise E.precondition(f"customer is deleted [namespace={NAMESPACE} customer.id={c.id}]")
        return c

    def subscription(self, sub_id: str) -> Subscription:
        s = self.subs.get(sub_id)
        if s is None or (s.deleted_at is not None and s.deleted_at <= self.now()):
            raise E.not_found(f"subscription {sub_id} not found")
        return s

    def meter(self, id_or_slug: str) -> Meter:
        for m in self.meters.values():
            if m.slug == id_or_slug or m.id == id_or_slug:
                return m
        raise E.not_found(f"meter not found: {id_or_slug}")

    # ------------------------------------------------------------------ customers

    def create_customer(self, body: Any) -> Customer:
        if not isinstance(body, dict):
            raise E.bad_request("request body has an error: value must be an object")
        name = req_str(body, "name", "customer")
        key = body.get("key")
        ua = body.get("usageAttribution") or {}
        subjects = ua.get("subjectKeys") if isinstance(ua, dict) else None
        if subjects is None:
            subjects = []
        if not isinstance(subjects, list) or not all(isinstance(s, str) for s in subjects):
            raise E.bad_request(
                "request body has an error: doesn't match schema: Error at "
                '"/usageAttribution/subjectKeys"'
            )
        if key is not None and not isinstance(key, str):
            raise E.bad_request(
                'request body has an error: Error at "/key": value must be a string'
            )
        if key is not None and key in self.customer_by_key:
            raise E.conflict(f"customer with key {key} already exists in {NAMESPACE} namespace")
        for s in [*subjects, *([key] if key else [])]:
            owner = self.customer_by_subject.get(s)
            if owner is not None and (key is None or self.customers[owner].key != key):
                raise E.conflict(
                    f"customer with subject key {s} already exists in {NAMESPACE} namespace"
                )
        if body.get("currency") is not None:
            check_currency(body["currency"])
        now = self.now()
        c = Customer(
            id=new_ulid(now),
            name=name,
            key=key,
            subject_keys=list(subjects),
            description=body.get("description"),
            metadata=body.get("metadata"),
            currency=body.get("currency"),
            primary_email=body.get("primaryEmail"),
            created_at=now,
            updated_at=now,
        )
        self._index_customer(c)
        return c

    def _index_customer(self, c: Customer) -> None:
        self.customers[c.id] = c
        self.customer_order.append(c.id)
        if c.key:
            self.customer_by_key[c.key] = c.id
        for s in c.subjects():
            self.customer_by_subject[s] = c.id

    def delete_customer(self, id_or_key: str) -> None:
        c = self.customer(id_or_key)
        now = self.now()
        for sid in self.subs_by_customer.get(c.id, []):
            st = self.subs[sid].status(now)
            if st in ("active", "canceled", "scheduled"):
                raise E.validation(
                    f"customer {c.id} still has active subscriptions, please cancel "
                    "them before deleting the customer"
                )
        c.deleted_at = now
        c.updated_at = now

    def customer_subscriptions_active_at(self, c: Customer, at: datetime) -> list[Subscription]:
        """``subscriptionrepo`` ``SubscriptionActiveAt``: activeFrom ≤ at < activeTo|∞."""
        out = []
        for sid in self.subs_by_customer.get(c.id, []):
            s = self.subs[sid]
            if s.deleted_at is not None and s.deleted_at <= at:
                continue
            if s.active_from <= at and (s.active_to is None or s.active_to > at):
                out.append(s)
        return out

    # ------------------------------------------------------------------ meters / features

    def create_meter(self, body: Any) -> Meter:
        if not isinstance(body, dict):
            raise E.bad_request("request body has an error: value must be an object")
        slug = req_str(body, "slug", "meter")
        check_key(slug, "slug")
        agg = body.get("aggregation")
        if agg not in ("SUM", "COUNT", "UNIQUE_COUNT", "AVG", "MIN", "MAX", "LATEST"):
            raise E.bad_request(
                "request body has an error: doesn't match schema: Error at "
                '"/aggregation": value is not one of the allowed values'
            )
        event_type = req_str(body, "eventType", "meter")
        vp = body.get("valueProperty")
        if agg != "COUNT" and not (isinstance(vp, str) and vp.startswith("$")):
            raise E.validation("meter value property is required for non-count aggregations")
        if agg == "COUNT" and vp is not None:
            raise E.validation("meter value property is not allowed for count aggregation")
        if any(m.slug == slug for m in self.meters.values()):
            raise E.conflict(f"meter with slug {slug} already exists")
        now = self.now()
        ef = body.get("eventFrom")
        m = Meter(
            id=new_ulid(now),
            slug=slug,
            name=body.get("name") or slug,
            description=body.get("description"),
            aggregation=agg,
            event_type=event_type,
            value_property=vp,
            group_by=dict(body.get("groupBy") or {}),
            event_from=self._time(ef, "eventFrom") if ef else None,
            metadata=body.get("metadata"),
            created_at=now,
            updated_at=now,
        )
        self.meters[m.id] = m
        return m

    def create_feature(self, body: Any) -> Feature:
        if not isinstance(body, dict):
            raise E.bad_request("request body has an error: value must be an object")
        key = req_str(body, "key", "feature")
        check_key(key, "key")
        name = req_str(body, "name", "feature")
        slug = body.get("meterSlug")
        if slug is not None and not any(m.slug == slug for m in self.meters.values()):
            raise E.not_found(f"meter not found: {slug}")
        if key in self.feature_by_key:
            raise E.conflict(f"feature with key {key} already exists")
        now = self.now()
        f = Feature(
            id=new_ulid(now),
            key=key,
            name=name,
            meter_slug=slug,
            metadata=body.get("metadata"),
            meter_group_by_filters=_group_by_filters(body),
            created_at=now,
            updated_at=now,
        )
        self.features[f.id] = f
        self.feature_by_key[key] = f.id
        return f

    def feature(self, id_or_key: str) -> Feature:
        fid = id_or_key if id_or_key in self.features else self.feature_by_key.get(id_or_key)
        if fid is None:
            raise E.not_found(f"feature not found: {id_or_key}")
        return self.features[fid]

    # ------------------------------------------------------------------ events

    def ingest(self, events: list[Json]) -> None:
        prepared = []
        for ev in events:
            if not isinstance(ev, dict):
                raise E.bad_request("request body has an error: event must be an object")
            for f in ("id", "source", "type", "subject"):
                if not isinstance(ev.get(f), str) or not ev.get(f):
                    raise E.bad_request(
                        f"request body has an error: doesn't match schema: "
                        f'property "{f}" is missing'
                    )
            if ev.get("specversion", "1.0") != "1.0":
                raise E.bad_request("request body has an error: specversion must be 1.0")
            # ``server/router/router.go``: requests are validated against the OpenAPI document
            # (kin-openapi); ``Event.datacontenttype`` is an enum of ``application/json`` and
            # ``Event.data`` an object (e2e ``TestInvalidIngest``: XML data and string data → 400).
            dct = ev.get("datacontenttype")
            if dct is not None and dct != "application/json":
                raise E.bad_request(
                    "request body has an error: doesn't match schema: Error at "
                    '"/datacontenttype": value is not one of the allowed values '
                    '["application/json"]'
                )
            data = ev.get("data")
            if data is not None and not isinstance(data, dict):
                raise E.bad_request(
                    "request body has an error: doesn't match schema: Error at "
                    '"/data": value must be an object'
                )
            when = self._time(ev["time"], "time") if ev.get("time") else self.now()
            prepared.append((ev, when))
        meters = list(self.meters.values())
        for ev, when in prepared:
            self.events.ingest(ev, when, meters)

    # ------------------------------------------------------------------ plans

    def create_plan(self, body: Any) -> Plan:
        if not isinstance(body, dict):
            raise E.bad_request("request body has an error: value must be an object")
        key = req_str(body, "key", "plan")
        check_key(key, "key")
        name = req_str(body, "name", "plan")
        currency = check_currency(body.get("currency"))
        cadence = body.get("billingCadence")
        if parse_duration_field(cadence, "billingCadence").approx_seconds() <= 0 or not isinstance(
            cadence, str
        ):
            raise E.validation("invalid plan: billing cadence must be positive")
        phases = normalize_phases(body.get("phases"), self.feature_lookup)
        # alignment is a warning-severity issue: stored, refused at publish (``publish_plan``)
        versions = [self.plans[i] for i in self.plans_by_key.get(key, [])]
        live = [p for p in versions if p.deleted_at is None]
        now = self.now()
        if any(p.status(now) == "draft" for p in live):
            raise E.validation("only a single draft version is allowed for Plan")
        version = max((p.version for p in versions), default=0) + 1
        p = Plan(
            id=new_ulid(now),
            key=key,
            version=version,
            name=name,
            description=body.get("description"),
            metadata=body.get("metadata"),
            currency=currency,
            billing_cadence=cadence,
            pro_rating=normalize_pro_rating(body.get("proRatingConfig")),
            phases=phases,
            created_at=now,
            updated_at=now,
        )
        self.plans[p.id] = p
        self.plans_by_key.setdefault(key, []).append(p.id)
        return p

    def update_plan(self, plan_id: str, body: Any) -> Plan:
        p = self.plan_by_id(plan_id)
        now = self.now()
        if p.status(now) not in ("draft", "scheduled"):
            raise E.validation(
                f"only Plans in [draft scheduled] can be updated, but it has {p.status(now)} state"
            )
        if not isinstance(body, dict):
            raise E.bad_request("request body has an error: value must be an object")
        p.name = req_str(body, "name", "plan")
        if "phases" in body:
            p.phases = normalize_phases(body["phases"], self.feature_lookup)
        if "billingCadence" in body:
            parse_duration_field(body["billingCadence"], "billingCadence")
            p.billing_cadence = body["billingCadence"]
        if "proRatingConfig" in body:
            p.pro_rating = normalize_pro_rating(body["proRatingConfig"])
        p.description = body.get("description", p.description)
        p.metadata = body.get("metadata", p.metadata)
        p.updated_at = now
        return p

    def plan_by_id(self, plan_id: str) -> Plan:
        p = self.plans.get(plan_id)
        if p is None or p.deleted_at is not None:
            raise E.not_found(f"plan not found. [namespace={NAMESPACE} id={plan_id}]")
        return p

    def get_plan(self, id_or_key: str, include_latest: bool = False) -> Plan:
        """``GET /plans/{planIdOrKey}``: ULID ⇒ exact version; key ⇒ active version, or with
        ``includeLatest`` the highest version (draft included)."""
        if id_or_key in self.plans and self.plans[id_or_key].deleted_at is None:
            return self.plans[id_or_key]
        now = self.now()
        versions = [
            self.plans[i]
            for i in self.plans_by_key.get(id_or_key, [])
            if self.plans[i].deleted_at is None
        ]
        if include_latest and versions:
            return max(versions, key=lambda p: p.version)
        for p in versions:
            if p.status(now) == "active":
                return p
        raise E.not_found(f"plan not found. [namespace={NAMESPACE} key={id_or_key}]")

    def publish_plan(self, plan_id: str, effective_from: datetime | None = None) -> Plan:
        """``plan/service/plan.go`` ``PublishPlan``: version N>1 archives the active version at the
        new ``effectiveFrom``."""
        p = self.plan_by_id(plan_id)
        now = self.now()
        st = p.status(now)
        if st not in ("draft", "scheduled"):
            raise E.validation(
                f"invalid Plan: only Plans in [draft scheduled] can be "
                f"published/rescheduled, but it has {st} state"
            )
        for ph in p.phases:
            if not ph["rateCards"]:
                raise E.validation(
                    f"invalid plan [id={p.id} key={p.key} version={p.version}]: "
                    f"plan phase {ph['key']} has no rate cards"
                )
        issues = plan_alignment_issues(p.billing_cadence, p.phases)
        if issues:
            # ``productcatalog/http/errors.go`` ``ValidationErrorEncoder``: 400 ``invalid plan``
            raise E.issues(400, "invalid plan", issues)
        eff = effective_from or now
        for oid in self.plans_by_key.get(p.key, []):
            other = self.plans[oid]
            if other is p or other.deleted_at is not None:
                continue
            if other.status(now) in ("active", "scheduled") and (
                other.effective_to is None or other.effective_to > eff
            ):
                other.effective_to = eff
                other.updated_at = now
        p.effective_from = eff
        p.effective_to = None
        p.updated_at = now
        return p

    def archive_plan(self, plan_id: str) -> Plan:
        p = self.plan_by_id(plan_id)
        now = self.now()
        st = p.status(now)
        if st != "active":
            raise E.validation(f"only Plans in [active] can be archived, but it has {st} state")
        p.effective_to = now
        p.updated_at = now
        return p

    def delete_plan(self, plan_id: str) -> None:
        p = self.plan_by_id(plan_id)
        now = self.now()
        st = p.status(now)
        if st not in ("draft", "scheduled", "archived"):
            raise E.validation(
                f"only Plans in [archived draft scheduled] can be deleted, but it has {st} state"
            )
        p.deleted_at = now

    def next_plan(self, id_or_key: str) -> Plan:
        """``POST /plans/{planIdOrKey}/next``: a new draft version copied from the latest."""
        src = self.get_plan(id_or_key, include_latest=True)
        body = {
            "key": src.key,
            "name": src.name,
            "currency": src.currency,
            "billingCadence": src.billing_cadence,
            "proRatingConfig": src.pro_rating,
            "phases": copy.deepcopy(src.phases),
        }
        put(body, "description", src.description)
        put(body, "metadata", src.metadata)
        return self.create_plan(body)

    def resolve_plan(self, ref: Any) -> Plan:
        """``productcatalog/subscription/service/plan.go`` ``getPlanByVersion``: no version ⇒
        the active one; the plan must be active (400) — ``service/create.go``."""
        if not isinstance(ref, dict) or not isinstance(ref.get("key"), str):
            raise E.bad_request(
                'request body has an error: doesn\'t match schema: property "plan" is missing'
            )
        key = ref["key"]
        version = ref.get("version")
        now = self.now()
        versions = [
            self.plans[i]
            for i in self.plans_by_key.get(key, [])
            if self.plans[i].deleted_at is None
        ]
        if version is None:
            actives = [p for p in versions if p.status(now) == "active"]
            if not actives:
                raise E.not_found(f"plan not found. [namespace={NAMESPACE} key={key}]")
            plan = actives[0]
        else:
            match = [p for p in versions if p.version == version]
            if not match:
                raise E.not_found(
                    f"plan not found. [namespace={NAMESPACE} key={key} version={version}]"
                )
            plan = match[0]
        if plan.status(now) != "active":
            raise E.validation(f"plan {plan.key}@{plan.version} is not active at {fmt(now)}")
        return plan

    # ------------------------------------------------------------------ subscriptions: create

    def _time(self, value: Any, field_name: str) -> datetime:
        try:
            return parse_time(value)
        except TimeParseError as exc:
            raise E.bad_request(
                f'request body has an error: doesn\'t match schema: Error at "/{field_name}": '
                f'string doesn\'t match the format "date-time"'
            ) from exc

    def _resolve_create_timing(self, timing: Any) -> datetime:
        """``subscription/timing.go`` ``Resolve`` + ``ValidateForAction(create)``."""
        now = self.now()
        if timing is None or timing == "immediate":
            return now
        if timing == "next_billing_cycle":
            raise E.validation("unsupported enum value: next_billing_cycle")
        t = self._time(timing, "timing")
        if t < now - timedelta(minutes=2):
            raise E.validation("cannot create subscription in the past")
        return t

    def _customer_ref(self, body: Json) -> Customer:
        cid = body.get("customerId")
        ckey = body.get("customerKey")
        if cid is None and ckey is None:
            raise E.validation("customerId or customerKey is required")
        if cid is not None:
            if cid not in self.customers:
                raise E.not_found(f"customer with id {cid} not found in {NAMESPACE} namespace")
            return self.customer(cid)
        return self.customer(str(ckey))

    def create_subscription(self, body: Any) -> Subscription:
        if not isinstance(body, dict):
            raise E.bad_request("request body has an error: value must be an object")
        if "customPlan" in body:
            return self._create_custom(body)
        cust = self._customer_ref(body)
        plan = self.resolve_plan(body.get("plan"))
        start = self._resolve_create_timing(body.get("timing"))
        anchor = (
            self._time(body["billingAnchor"], "billingAnchor")
            if body.get("billingAnchor")
            else None
        )
        return self._create_from_plan(cust, plan, start, anchor, body.get("startingPhase"), body)

    def _create_custom(self, body: Json) -> Subscription:
        cust = self._customer_ref(body)
        tmp = self._custom_plan(body)
        # ``workflow/service/subscription.go`` ``CreateFromPlan`` → ``spec.ValidateAlignment``
        issues = plan_alignment_issues(tmp.billing_cadence, tmp.phases)
        if issues:
            raise E.issues(400, UNALIGNED_MESSAGE, issues)
        start = self._resolve_create_timing(body.get("timing"))
        anchor = (
            self._time(body["billingAnchor"], "billingAnchor")
            if body.get("billingAnchor")
            else None
        )
        return self._create_from_plan(cust, tmp, start, anchor, None, body, custom=True)

    def _custom_plan(self, body: Json) -> Plan:
        """A transient plan from a ``customPlan`` body (create or change), validated."""
        cp = body["customPlan"]
        if not isinstance(cp, dict):
            raise E.bad_request("request body has an error: customPlan must be an object")
        req_str(cp, "name", "customPlan")
        check_currency(cp.get("currency"))
        parse_duration_field(cp.get("billingCadence"), "billingCadence")
        now = self.now()
        return Plan(
            id="",
            key="",
            version=0,
            name=cp["name"],
            description=cp.get("description"),
            metadata=cp.get("metadata"),
            currency=cp["currency"],
            billing_cadence=cp["billingCadence"],
            pro_rating=normalize_pro_rating(cp.get("proRatingConfig")),
            phases=normalize_phases(cp.get("phases"), self.feature_lookup),
            created_at=now,
            updated_at=now,
        )

    def _create_from_plan(
        self,
        cust: Customer,
        plan: Plan,
        start: datetime,
        anchor: datetime | None,
        starting_phase: Any,
        body: Json,
        *,
        custom: bool = False,
        annotations: Json | None = None,
        check: bool = True,
    ) -> Subscription:
        """``workflow/service/subscription.go`` ``CreateFromPlan``: ``billingAnchor`` defaults to
        ``activeFrom`` and is stored verbatim; ``startingPhase`` drops the earlier phases."""
        if cust.currency is not None and cust.currency != plan.currency:
            raise E.validation(
                f"currency mismatch: customer currency {cust.currency} and plan "
                f"currency {plan.currency}"
            )
        now = self.now()
        plan_phases = plan.phases
        if starting_phase is not None:
            idx = next((i for i, p in enumerate(plan_phases) if p["key"] == starting_phase), None)
            if idx is None:
                raise E.validation(
                    f"starting phase {starting_phase} not found in plan {plan.key}@{plan.version}"
                )
            plan_phases = plan_phases[idx:]
        phases: list[Phase] = []
        offset = Duration()
        for ph in plan_phases:
            phase = Phase(
                key=ph["key"],
                name=ph["name"],
                description=ph.get("description"),
                metadata=ph.get("metadata"),
                start_after=offset,
            )
            for rc in ph["rateCards"]:
                # plan rate cards are never mutated in place: share them (memory at scale)
                phase.items[rc["key"]] = [ItemVersion(key=rc["key"], rate_card=rc)]
            phases.append(phase)
            if ph.get("duration"):
                offset = offset + Duration.parse(ph["duration"])
        sub = Subscription(
            id=new_ulid(now),
            customer_id=cust.id,
            plan_ref=None if custom else {"id": plan.id, "key": plan.key, "version": plan.version},
            name=body.get("name") or plan.name,
            description=body.get("description", plan.description),
            metadata=body.get("metadata"),
            active_from=start,
            active_to=None,
            billing_anchor=(anchor or start),
            billing_cadence=plan.billing_cadence,
            pro_rating=dict(plan.pro_rating),
            currency=plan.currency,
            phases=phases,
            created_at=now,
            updated_at=now,
            annotations=dict(annotations or {}),
        )
        for new_phase in phases:
            if not new_phase.items:
                raise E.issue(
                    400,
                    "subscription_phase_has_no_items",
                    f"subscription phase {new_phase.key} has no items",
                    f"$.phases.{new_phase.key}",
                )
        if check:
            self._check_overlap(cust, sub, exclude=None)
        self.subs[sub.id] = sub
        self.subs_by_customer.setdefault(cust.id, []).append(sub.id)
        self._materialize(sub, set())
        return sub

    def _check_overlap(self, cust: Customer, sub: Subscription, exclude: str | None) -> None:
        """``validators/subscription/validator.go``: single subscription per customer — no two
        non-deleted subscriptions with overlapping ``[activeFrom, activeTo)``."""
        now = self.now()
        for sid in self.subs_by_customer.get(cust.id, []):
            if sid in (sub.id, exclude):
                continue
            o = self.subs[sid]
            if o.deleted_at is not None and o.deleted_at <= now:
                continue
            a_end = sub.active_to
            b_end = o.active_to
            if (b_end is None or sub.active_from < b_end) and (
                a_end is None or o.active_from < a_end
            ):
                if a_end is not None and a_end == sub.active_from:
                    continue  # zero-length
                raise E.single_subscription(
                    E.subscription_field(sub.plan_ref, sub.customer_id, sub.active_from, a_end),
                    E.subscription_field(o.plan_ref, o.customer_id, o.active_from, b_end),
                )

    # ------------------------------------------------------------------ materialisation

    def _materialize(self, sub: Subscription, old_ent_ids: set[str]) -> None:
        """Sync stored rows with the spec (``subscription/service/sync.go`` ``sync``): any phase
        or item version whose derived create-input changed gets a new id; an item's entitlement
        is soft-deleted (``deletedAt = now``) and re-created. Unchanged versions keep ids."""
        now = self.now()
        keep: set[str] = set()
        for phase, pstart, pend in sub.phase_bounds():
            psig = json.dumps([phase.key, fmt(pstart)])
            if phase.sig != psig:
                phase.id = new_ulid(now)
                phase.created_at = phase.created_at or now
                phase.updated_at = now
                phase.sig = psig
            for key, versions in phase.items.items():
                for idx, v in enumerate(versions):
                    start, end = sub.item_cadence(pstart, pend, v)
                    sig = hashlib.blake2b(
                        json.dumps(
                            [
                                phase.key,
                                key,
                                idx,
                                fmt(pstart),
                                fmt(start),
                                fmt(end),
                                fmt(sub.billing_anchor),
                                v.rate_card,
                                v.annotations,
                            ],
                            sort_keys=True,
                            default=str,
                        ).encode(),
                        digest_size=16,
                    ).hexdigest()
                    if v.sig == sig and v.id:
                        if v.entitlement_id:
                            keep.add(v.entitlement_id)
                        continue
                    v.id = new_ulid(now)
                    v.created_at = now
                    v.updated_at = now
                    v.sig = sig
                    v.entitlement_id = None
                    ent = self._create_item_entitlement(sub, pstart, start, end, v)
                    if ent is not None:
                        v.entitlement_id = ent.id
                        keep.add(ent.id)
        for eid in old_ent_ids - keep:
            ent = self.ents.get(eid)
            if ent is not None and ent.deleted_at is None:
                ent.deleted_at = now
                ent.updated_at = now

    def _create_item_entitlement(
        self,
        sub: Subscription,
        phase_start: datetime,
        start: datetime,
        end: datetime | None,
        v: ItemVersion,
    ) -> Entitlement | None:
        """``subscriptionspec.go`` ``ToScheduleSubscriptionEntitlementInput``: measureUsageFrom =
        trunc-minute(phase start); usage period anchored at trunc-minute(billing anchor);
        active window = the item version's cadence; metadata = template metadata. Default grant
        (``metered/connector.go`` ``AfterCreate``) effective at the usage period containing now
        at creation time."""
        tpl = v.rate_card.get("entitlementTemplate")
        fkey = v.rate_card.get("featureKey")
        if not tpl or not fkey:
            return None
        if end is not None and end <= start:
            return None  # zero-length cadence: nothing to schedule
        feat = self.feature(fkey)
        now = self.now()
        ent = Entitlement(
            id=new_ulid(now),
            customer_id=sub.customer_id,
            feature_id=feat.id,
            feature_key=feat.key,
            type=tpl["type"],
            active_from=start,
            active_to=end,
            created_at=now,
            updated_at=now,
            metadata=tpl.get("metadata") or None,
            annotations={"subscription.id": sub.id},
        )
        if tpl["type"] == "metered":
            ent.measure_usage_from = trunc_minute(phase_start)
            ent.usage_period = tpl.get("usagePeriod") or v.rate_card.get("billingCadence")
            ent.usage_anchor = trunc_minute(sub.billing_anchor)
            ent.issue_after_reset = tpl.get("issueAfterReset")
            ent.issue_priority = tpl.get("issueAfterResetPriority")
            ent.is_soft_limit = bool(tpl.get("isSoftLimit", False))
            ent.preserve_overage = bool(tpl.get("preserveOverageAtReset", False))
            if ent.issue_after_reset is not None:
                ent.grant_effective_at = ent.usage_period_at(now)[0]
                ent.grant_id = new_ulid(now)
        elif tpl["type"] == "static":
            ent.config = tpl.get("config")
        self.ents[ent.id] = ent
        self.ents_by_customer.setdefault(sub.customer_id, []).append(ent.id)
        return ent

    def _sub_ent_ids(self, sub: Subscription) -> set[str]:
        return {
            v.entitlement_id
            for p in sub.phases
            for vs in p.items.values()
            for v in vs
            if v.entitlement_id
        }

    # ------------------------------------------------------------------ timing helpers

    def _next_billing_cycle(self, sub: Subscription, now: datetime) -> datetime:
        """``timing.go`` ``ResolveForSpec``: end of the aligned billing period at now."""
        period = sub.aligned_period_at(now)
        if period is None:
            raise E.validation("subscription is not active at the current time")
        return period[1]

    def _resolve_cancel_timing(self, sub: Subscription, timing: Any) -> datetime:
        """Cancel/change: immediate, next_billing_cycle or a custom time on an aligned billing
        boundary (``timing.go`` ``ValidateForAction``)."""
        now = self.now()
        if timing is None or timing == "immediate":
            return now
        if timing == "next_billing_cycle":
            return self._next_billing_cycle(sub, now)
        if isinstance(timing, str) and not timing[:1].isdigit():
            raise E.bad_request(
                f"request body has an error: doesn't match schema: Error at "
                f'"/timing": value is not one of the allowed values: {timing}'
            )
        t = self._time(timing, "timing")
        period = sub.aligned_period_at(t)
        if period is None or period[0] != t:
            raise E.validation("cannot cancel aligned subscription with custom misaligned timing")
        return t

    # ------------------------------------------------------------------ edit (PATCH)

    def edit_subscription(self, sub_id: str, body: Any) -> Subscription:
        if not isinstance(body, dict):
            raise E.bad_request("request body has an error: value must be an object")
        sub = self.subscription(sub_id)
        cust = self.customer(sub.customer_id, allow_deleted=True)
        if cust.deleted_at is not None:
            raise E.precondition(
                f"customer is deleted [namespace={NAMESPACE} customer.id={cust.id}]"
            )
        ops = body.get("customizations")
        if not isinstance(ops, list):
            raise E.bad_request(
                "request body has an error: doesn't match schema: property "
                '"customizations" is missing'
            )
        if len(ops) > 100:
            raise E.bad_request(
                "request body has an error: doesn't match schema: Error at "
                '"/customizations": maximum number of items is 100'
            )
        if not ops:
            raise E.validation("missing customizations")
        for guard in self.edit_guards:
            guard(sub)
        # ``workflow/service/subscription.go`` ``EditRunning``: every patch's ``Validate`` runs
        # before the timing is resolved and the patches applied
        tpl_issues = [
            issue
            for op in ops
            if isinstance(op, dict) and op.get("op") == "add_item"
            for issue in entitlement_template_issues(str(op.get("phaseKey")), op.get("rateCard"))
        ]
        if tpl_issues:
            raise E.issues(400, tpl_issues[0]["message"], tpl_issues)
        parsed = [self._parse_op(op) for op in ops]
        now = self.now()
        timing = body.get("timing", "immediate")
        # ``workflow/service/subscription.go`` ``EditRunning`` + ``timing.go`` ``ValidateForAction``
        if timing == "immediate":
            at = now
        elif timing == "next_billing_cycle":
            at = self._next_billing_cycle(sub, now)
            cur = sub.current_phase(now)
            nxt = sub.current_phase(at)
            if cur is None or nxt is None or cur.key != nxt.key:
                raise E.validation(
                    "invalid timing: validation error: cannot edit to the next "
                    "billing cycle as it falls into a different phase"
                )
        elif isinstance(timing, str) and timing[:1].isdigit():
            self._time(timing, "timing")
            raise E.validation(
                "invalid timing: validation error: cannot edit running "
                "subscription with custom timing"
            )
        else:
            raise E.bad_request(
                "request body has an error: doesn't match schema: Error at "
                f'"/timing": value is not one of the allowed values: {timing}'
            )
        if at < now:
            raise E.validation("invalid timing: validation error: cannot execute edits in the past")
        old_ids = self._sub_ent_ids(sub)
        work = copy.deepcopy(sub)
        for op in parsed:
            self._apply_op(work, op, at)
            self._validate_spec(work, final=False)
        self._validate_spec(work, final=True)
        self._validate_alignment(work)
        status = sub.status(now)
        if status != "active":
            raise E.transition("update", status)
        work.updated_at = now
        self.subs[sub.id] = work
        self._materialize(work, old_ids)
        return work

    def _validate_alignment(self, sub: Subscription) -> None:
        """``subscriptionspec.go`` ``SubscriptionSpec.ValidateAlignment`` (called by
        ``EditRunning`` after applying the patches): every billable item version (a rate card
        with a price and a billing cadence) must align with the subscription's cadence; the
        field is ``phases[key].itemsByKey.<key>[<index>]`` + the issue's ``billingCadence``."""
        issues = []
        for ph in sub.phases:
            for key, versions in ph.items.items():
                for idx, v in enumerate(versions):
                    rcc = v.rate_card.get("billingCadence")
                    if v.rate_card.get("price") is None or rcc is None:
                        continue
                    if not cadences_align(sub.billing_cadence, rcc):
                        issues.append(
                            warning_issue(
                                UNALIGNED_CODE,
                                UNALIGNED_MESSAGE,
                                f"$.phases[?(@.key=='{ph.key}')].itemsByKey.{key}[{idx}]"
                                ".billingCadence",
                            )
                        )
        if issues:
            raise E.issues(400, UNALIGNED_MESSAGE, issues)

    def _parse_op(self, op: Any) -> Json:
        if not isinstance(op, dict) or op.get("op") not in (
            "add_item",
            "remove_item",
            "add_phase",
            "remove_phase",
            "stretch_phase",
            "unschedule_edit",
        ):
            raise E.bad_request(
                "request body has an error: doesn't match schema: discriminator "
                'property "op" has invalid value'
            )
        kind = op["op"]
        out = dict(op)
        if kind == "add_item":
            req_str(op, "phaseKey", "add_item")
            out["rateCard"] = normalize_rate_card(op.get("rateCard"), self.feature_lookup)
        elif kind == "remove_item":
            req_str(op, "phaseKey", "remove_item")
            req_str(op, "itemKey", "remove_item")
        elif kind == "add_phase":
            ph = op.get("phase")
            if not isinstance(ph, dict):
                raise E.bad_request('request body has an error: property "phase" is missing')
            req_str(ph, "key", "phase")
            check_key(ph["key"], "key")
            req_str(ph, "name", "phase")
            if "startAfter" not in ph:
                raise E.bad_request('request body has an error: property "startAfter" is missing')
            out["_start"] = (
                parse_duration_field(ph["startAfter"], "startAfter")
                if ph["startAfter"] is not None
                else Duration()
            )
            out["_dur"] = (
                parse_duration_field(ph["duration"], "duration") if ph.get("duration") else None
            )
        elif kind == "remove_phase":
            req_str(op, "phaseKey", "remove_phase")
            if op.get("shift") not in ("next", "prev"):
                raise E.bad_request(
                    "request body has an error: doesn't match schema: Error at "
                    '"/shift": value is not one of the allowed values'
                )
        elif kind == "stretch_phase":
            req_str(op, "phaseKey", "stretch_phase")
            out["_by"] = parse_duration_field(op.get("extendBy"), "extendBy")
        return out

    def _apply_op(self, sub: Subscription, op: Json, at: datetime) -> None:
        kind = op["op"]
        if kind == "add_item":
            self._op_add_item(sub, op["phaseKey"], op["rateCard"], at)
        elif kind == "remove_item":
            self._op_remove_item(sub, op["phaseKey"], op["itemKey"], at)
        elif kind == "add_phase":
            self._op_add_phase(sub, op, at)
        elif kind == "remove_phase":
            self._op_remove_phase(sub, op["phaseKey"], op["shift"], at)
        elif kind == "stretch_phase":
            self._op_stretch_phase(sub, op["phaseKey"], op["_by"], at)
        else:
            self._op_unschedule_edit(sub, at)

    def _phase(self, sub: Subscription, key: str) -> Phase | None:
        return next((p for p in sub.phases if p.key == key), None)

    def _op_add_item(self, sub: Subscription, phase_key: str, rc: Json, at: datetime) -> None:
        """``subscription/patch/additem.go`` ``PatchAddItem.ApplyTo``."""
        phase = self._phase(sub, phase_key)
        if phase is None:
            raise E.patch_validation(f"phase {phase_key} not found")
        pstart = sub.phase_start(phase)
        current = sub.current_phase(at)
        key = rc["key"]
        new = ItemVersion(key=key, rate_card=rc, annotations={})
        if current is None:
            if pstart < at:
                raise E.patch_forbidden(
                    f"cannot add item to phase {phase_key} which starts before current phase"
                )
            if phase.items:
                raise E.patch_forbidden(
                    f"cannot add item to future phase {phase_key} which already has items"
                )
        else:
            cstart = sub.phase_start(current)
            if pstart < cstart:
                raise E.patch_forbidden(
                    f"cannot add item to phase {phase_key} which starts before current phase"
                )
            if phase.key == current.key:
                new.from_off = at - pstart
            elif phase.items.get(key):
                raise E.patch_forbidden(
                    f"cannot add item to future phase {phase_key} which already has items"
                )
        versions = phase.items.setdefault(key, [])
        if current is not None and current.key == phase.key and versions:
            last = versions[-1]
            if last.to_off is not None and new.from_off is not None and last.to_off > new.from_off:
                raise E.patch_forbidden(
                    f"cannot add item to phase {phase_key} which would overlap with a current "
                    "item, you should delete first"
                )
            last.to_off = new.from_off
        versions.append(new)

    def _op_remove_item(
        self, sub: Subscription, phase_key: str, item_key: str, at: datetime
    ) -> None:
        """``subscription/patch/removeitem.go`` ``PatchRemoveItem.ApplyTo``."""
        phase = self._phase(sub, phase_key)
        if phase is None:
            raise E.patch_validation(f"phase {phase_key} not found")
        if not phase.items.get(item_key):
            raise E.patch_validation(
                f"items for key {item_key} doesn't exists in phase {phase_key}"
            )
        pstart = sub.phase_start(phase)
        current = sub.current_phase(at)
        if (current is None and pstart < at) or (
            current is not None and pstart < sub.phase_start(current)
        ):
            raise E.patch_forbidden(
                f"cannot remove item from phase {phase_key} which starts before current phase"
            )
        if current is not None and current.key == phase_key:
            phase.items[item_key][-1].to_off = at - pstart
        else:
            phase.items[item_key].pop()
            if not phase.items[item_key]:
                del phase.items[item_key]

    def _op_add_phase(self, sub: Subscription, op: Json, at: datetime) -> None:
        """``subscription/patch/addphase.go``: the phase must start in the future and before the
        subscription end; later phases shift by ``duration − (next.startAfter − startAfter)``."""
        body: Json = op["phase"]
        key = body["key"]
        if self._phase(sub, key) is not None:
            raise E.patch_conflict(f"phase {key} already exists")
        start_after: Duration = op["_start"]
        start = start_after.add_to(sub.active_from)
        if start < at:
            raise E.patch_forbidden("cannot add phase in the past")
        if sub.active_to is not None and start >= sub.active_to:
            raise E.patch_forbidden("cannot add phase after the subscription ends")
        new = Phase(
            key=key,
            name=body["name"],
            description=body.get("description"),
            metadata=body.get("metadata"),
            start_after=start_after,
        )
        later = [p for p in sub.phases if sub.phase_start(p) >= start]
        dur: Duration | None = op["_dur"]
        if later and dur is not None:
            shift = dur - (later[0].start_after - start_after)
            for p in later:
                p.start_after = p.start_after + shift
        sub.phases.append(new)
        sub.phases.sort(key=lambda p: sub.phase_start(p))

    def _op_remove_phase(self, sub: Subscription, key: str, shift: str, at: datetime) -> None:
        """``subscription/patch/removephase.go`` (unknown phase → plain error → 500)."""
        phase = self._phase(sub, key)
        if phase is None:
            raise E.ApiError(500, "")
        if sub.phase_start(phase) <= at:
            raise E.patch_forbidden("cannot remove already started phase")
        idx = sub.phases.index(phase)
        if shift == "next" and idx + 1 < len(sub.phases):
            delta = sub.phases[idx + 1].start_after - phase.start_after
            for p in sub.phases[idx + 1 :]:
                p.start_after = p.start_after - delta
        sub.phases.remove(phase)

    def _op_stretch_phase(self, sub: Subscription, key: str, by: Duration, at: datetime) -> None:
        """``subscription/patch/stretchphase.go``."""
        if by.is_zero():
            raise E.ApiError(500, "")
        phase = self._phase(sub, key)
        if phase is None:
            raise E.ApiError(500, "")
        current = sub.current_phase(at)
        pstart = sub.phase_start(phase)
        if (current is None and pstart < at) or (
            current is not None and pstart < sub.phase_start(current)
        ):
            raise E.patch_forbidden("cannot extend past phase")
        if len(sub.phases) == 1:
            raise E.patch_conflict("cannot stretch a single phase")
        idx = sub.phases.index(phase)
        for p in sub.phases[idx + 1 :]:
            p.start_after = p.start_after + by
        for prev, nxt in zip(sub.phases, sub.phases[1:], strict=False):
            if sub.phase_start(nxt) <= sub.phase_start(prev):
                raise E.patch_conflict(f"phase {prev.key} would disappear due to stretching")

    def _op_unschedule_edit(self, sub: Subscription, at: datetime) -> None:
        """``subscription/patch/unscheduleedit.go``: per key in the current phase, drop versions
        after the one active at ``at`` and clear its scheduled end."""
        current = sub.current_phase(at)
        if current is None:
            raise E.patch_conflict("current phase doesn't exist, cannot unschedule edits")
        pstart = sub.phase_start(current)
        for key in list(current.items):
            versions = current.items[key]
            keep_idx = None
            for i, v in enumerate(versions):
                start = pstart + v.from_off if v.from_off is not None else pstart
                end = pstart + v.to_off if v.to_off is not None else None
                if start <= at and (end is None or at < end):
                    keep_idx = i
            if keep_idx is None:
                continue
            del versions[keep_idx + 1 :]
            versions[keep_idx].to_off = None

    def _validate_spec(self, sub: Subscription, *, final: bool) -> None:
        """Spec validation after each patch (``subscriptionspec.go`` ``Validate``): item versions
        per key sorted and non-overlapping; in the final spec every phase has an item."""
        for phase, pstart, pend in sub.phase_bounds():
            for key, versions in phase.items.items():
                prev_end: datetime | None = None
                for i, v in enumerate(versions):
                    start, end = sub.item_cadence(pstart, pend, v)
                    if i > 0 and (prev_end is None or start < prev_end):
                        raise E.issue(
                            400,
                            "subscription_item_history_overlap",
                            f"item history overlaps for key {key} in phase {phase.key}",
                            f"$.phases.{phase.key}.itemsByKey.{key}[{i}]",
                        )
                    prev_end = end
            if final and not phase.items:
                raise E.issue(
                    400,
                    "subscription_phase_has_no_items",
                    f"subscription phase {phase.key} has no items",
                    f"$.phases.{phase.key}",
                )

    # ------------------------------------------------------------------ cancel / continue / change

    def cancel_subscription(self, sub_id: str, body: Any) -> Subscription:
        """``subscription/service/service.go`` ``Cancel``: only from active; clips cadences."""
        sub = self.subscription(sub_id)
        if not isinstance(body, dict):
            raise E.bad_request("request body has an error: value is required but missing")
        now = self.now()
        status = sub.status(now)
        if status != "active":
            raise E.transition("cancel", status)
        end = self._resolve_cancel_timing(sub, body.get("timing"))
        old = self._sub_ent_ids(sub)
        sub.active_to = end
        sub.updated_at = now
        self._materialize(sub, old)
        return sub

    def unschedule_cancelation(self, sub_id: str) -> Subscription:
        """``service.go`` ``Continue`` + ``BeforeContinue`` overlap check (409)."""
        sub = self.subscription(sub_id)
        now = self.now()
        status = sub.status(now)
        if status != "canceled":
            raise E.transition("continue", status)
        cust = self.customers[sub.customer_id]
        saved = sub.active_to
        sub.active_to = None
        try:
            self._check_overlap(cust, sub, exclude=None)
        except E.ApiError:
            sub.active_to = saved
            raise
        old = self._sub_ent_ids(sub)
        sub.updated_at = now
        self._materialize(sub, old)
        return sub

    def restore_subscription(self, sub_id: str) -> Subscription:
        """Deprecated restore (``workflow/service/subscription.go`` ``Restore``): delete the
        customer's scheduled subscriptions, then continue."""
        sub = self.subscription(sub_id)
        now = self.now()
        for sid in list(self.subs_by_customer.get(sub.customer_id, [])):
            o = self.subs[sid]
            if o.id != sub.id and o.status(now) == "scheduled":
                self.delete_subscription(o.id)
        return self.unschedule_cancelation(sub_id)

    def delete_subscription(self, sub_id: str) -> None:
        """Only ``scheduled``; clears the predecessor's ``subscription.superseding.id``
        (``hooks/annotations/hook.go`` ``BeforeDelete``)."""
        sub = self.subscription(sub_id)
        now = self.now()
        status = sub.status(now)
        if status != "scheduled":
            raise E.transition("delete", status)
        prev = sub.annotations.get("subscription.previous.id")
        if prev and prev in self.subs:
            self.subs[prev].annotations.pop("subscription.superseding.id", None)
            self.subs[prev].updated_at = now
        sub.deleted_at = now
        sub.updated_at = now
        for eid in self._sub_ent_ids(sub):
            ent = self.ents[eid]
            if ent.deleted_at is None:
                ent.deleted_at = now

    def change_subscription(self, sub_id: str, body: Any) -> tuple[Subscription, Subscription]:
        """``workflow/service/subscription.go`` ``ChangeToPlan``: cancel(current, timing) then
        create(plan, custom = current.activeTo, anchor = request or current anchor)."""
        sub = self.subscription(sub_id)
        if not isinstance(body, dict):
            raise E.bad_request("request body has an error: value must be an object")
        if "timing" not in body:
            raise E.bad_request(
                'request body has an error: doesn\'t match schema: property "timing" is missing'
            )
        custom = "customPlan" in body
        plan: Plan | None = None
        if not custom:
            plan = self.resolve_plan(body.get("plan"))
        now = self.now()
        status = sub.status(now)
        if status != "active":
            raise E.transition("cancel", status)
        end = self._resolve_cancel_timing(sub, body.get("timing"))
        anchor = (
            self._time(body["billingAnchor"], "billingAnchor")
            if body.get("billingAnchor")
            else sub.billing_anchor
        )
        cust = self.customers[sub.customer_id]
        old = self._sub_ent_ids(sub)
        saved = (sub.active_to, sub.updated_at)
        sub.active_to = end
        sub.updated_at = now
        try:
            if custom:
                plan = self._custom_plan(body)
            assert plan is not None
            nxt = self._create_from_plan(
                cust,
                plan,
                end,
                anchor,
                body.get("startingPhase"),
                body,
                custom=custom,
                annotations={"subscription.previous.id": sub.id},
            )
        except E.ApiError:
            sub.active_to, sub.updated_at = saved
            raise
        sub.annotations["subscription.superseding.id"] = nxt.id
        self._materialize(sub, old)
        return sub, nxt

    def migrate_subscription(self, sub_id: str, body: Any) -> tuple[Subscription, Subscription]:
        """``productcatalog/subscription/service/migrate.go`` ``Migrate``."""
        sub = self.subscription(sub_id)
        if not isinstance(body, dict):
            raise E.bad_request("request body has an error: value is required but missing")
        if sub.plan_ref is None:
            raise E.validation("subscription has no plan, cannot be migrated")
        key = sub.plan_ref["key"]
        now = self.now()
        versions = sorted(
            (
                self.plans[i]
                for i in self.plans_by_key.get(key, [])
                if self.plans[i].deleted_at is None
            ),
            key=lambda p: p.version,
        )
        target_v = body.get("targetVersion")
        if target_v is None:
            cands = [p for p in versions if p.status(now) == "active"]
            if not cands:
                raise E.not_found(f"plan not found. [namespace={NAMESPACE} key={key}]")
            target = cands[-1]
        else:
            match = [p for p in versions if p.version == target_v]
            if not match:
                raise E.not_found(
                    f"plan not found. [namespace={NAMESPACE} key={key} version={target_v}]"
                )
            target = match[0]
        if target.version <= sub.plan_ref["version"]:
            raise E.validation(
                f"subscription already at version {sub.plan_ref['version']}, cannot migrate to "
                f"version {target.version}"
            )
        if target.status(now) not in ("active", "archived"):
            raise E.validation(f"plan {target.key}@{target.version} is not active or archived")
        change = {
            "timing": body.get("timing", "immediate"),
            "plan": {"key": key, "version": target.version},
        }
        for k in ("startingPhase", "billingAnchor"):
            if body.get(k) is not None:
                change[k] = body[k]
        if target.status(now) == "archived":
            # Migration to an archived version bypasses the "active" check of change.
            return self._change_to(sub, target, change)
        return self.change_subscription(sub_id, change)

    def _change_to(
        self, sub: Subscription, plan: Plan, body: Json
    ) -> tuple[Subscription, Subscription]:
        now = self.now()
        status = sub.status(now)
        if status != "active":
            raise E.transition("cancel", status)
        end = self._resolve_cancel_timing(sub, body.get("timing"))
        anchor = (
            self._time(body["billingAnchor"], "billingAnchor")
            if body.get("billingAnchor")
            else sub.billing_anchor
        )
        old = self._sub_ent_ids(sub)
        saved = sub.active_to
        sub.active_to = end
        try:
            nxt = self._create_from_plan(
                self.customers[sub.customer_id],
                plan,
                end,
                anchor,
                body.get("startingPhase"),
                {},
                annotations={"subscription.previous.id": sub.id},
            )
        except E.ApiError:
            sub.active_to = saved
            raise
        sub.annotations["subscription.superseding.id"] = nxt.id
        sub.updated_at = now
        self._materialize(sub, old)
        return sub, nxt

    # ------------------------------------------------------------------ entitlements

    def entitlement_of_feature(self, cust: Customer, feature_key: str) -> Entitlement | None:
        """``adapter/entitlement.go`` ``GetActiveEntitlementOfCustomerAt`` (at = now)."""
        now = self.now()
        for eid in reversed(self.ents_by_customer.get(cust.id, [])):
            e = self.ents[eid]
            if e.feature_key == feature_key and e.active_at(now):
                return e
        return None

    def entitlement_by_id_or_feature(self, cust: Customer, id_or_key: str) -> Entitlement | None:
        """ID first (soft-deleted rows are invisible), then feature key (active now)."""
        e = self.ents.get(id_or_key)
        if e is not None and e.customer_id == cust.id and not e.is_deleted(self.now()):
            return e
        return self.entitlement_of_feature(cust, id_or_key)

    def usage(self, cust: Customer, ent: Entitlement, start: datetime, end: datetime) -> float:
        feat = self.features[ent.feature_id]
        if feat.meter_slug is None:
            return 0.0
        meter = next((m for m in self.meters.values() if m.slug == feat.meter_slug), None)
        if meter is None:
            return 0.0
        return self.events.total(cust.subjects(), meter, start, end)

    def entitlement_value(self, cust: Customer, ent: Entitlement | None) -> Json:
        """``metered/balance.go`` ``GetEntitlementBalance``: ``at`` rounded up to the minute; the
        grant engine (``credit/engine/run.go``) burns usage+carried overage from the default grant
        once it is effective, resetting at each usage period boundary. With only the default grant
        (rollover = amount) this yields ``balance = max(0, A − U)``, ``overage = max(0, U − A)``
        for the usage ``U`` of the period containing ``at``."""
        if ent is None:
            return {"hasAccess": False}
        if ent.type == "boolean":
            return {"hasAccess": True}
        if ent.type == "static":
            out: Json = {"hasAccess": True}
            put(out, "config", ent.config)
            return out
        now = self.now()
        at = ceil_minute(now)
        pfrom, _ = ent.usage_period_at(at)
        used = self.usage(cust, ent, pfrom, at)
        grant = 0.0
        if (
            ent.issue_after_reset is not None
            and ent.grant_effective_at is not None
            and (ent.grant_effective_at <= at)
        ):
            grant = float(ent.issue_after_reset)
        balance = max(0.0, grant - used)
        overage = max(0.0, used - grant)
        return {
            "hasAccess": bool(ent.is_soft_limit or balance > 0),
            "balance": num(balance),
            "usage": num(used),
            "overage": num(overage),
            "totalAvailableGrantAmount": num(grant),
        }

    def forbid_managed(self, ent: Entitlement | None) -> None:
        """``entitlement/hooks/subscription/hook.go`` ``PreDelete`` / ``PreUpdate``."""
        if ent is not None and ent.managed:
            raise E.forbidden("entitlement is managed by subscription")
