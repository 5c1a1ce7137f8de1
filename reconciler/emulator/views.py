"""JSON shapes of OpenMeter's API (``api/openapi.yaml`` of beta.227).

Mappings: ``productcatalog/subscription/http/mapping.go`` (``MapSubscriptionToAPI``,
``MapSubscriptionViewToAPI``, ``MapSubscriptionPhaseToAPI``, ``MapSubscriptionItemToAPI``),
``entitlement/driver/parser.go`` (v1 entitlement), ``entitlement/driver/v2/mapping.go`` (v2),
``customer/httpdriver/apimapping.go`` ``CustomerToAPI``. Go omits nil optional fields
(``omitempty``), so absent values are left out rather than sent as null.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from reconciler.emulator.catalogcheck import plan_alignment_issues
from reconciler.emulator.state import (
    Customer,
    Entitlement,
    Feature,
    ItemVersion,
    Phase,
    Plan,
    State,
    Subscription,
    num,
    put,
)
from reconciler.emulator.timeutil import Duration, fmt
from reconciler.emulator.usage import Meter

Json = dict[str, Any]

_INTERVALS = {
    "P1D": "DAY",
    "P1W": "WEEK",
    "P7D": "WEEK",
    "P1M": "MONTH",
    "P1Y": "YEAR",
    "P12M": "YEAR",
}


def customer(c: Customer, subs: list[Subscription] | None, now: datetime, expand: bool) -> Json:
    out: Json = {
        "id": c.id,
        "name": c.name,
        "createdAt": fmt(c.created_at),
        "updatedAt": fmt(c.updated_at),
    }
    put(out, "key", c.key)
    put(out, "description", c.description)
    put(out, "primaryEmail", c.primary_email)
    put(out, "deletedAt", fmt(c.deleted_at))
    put(out, "metadata", c.metadata)
    put(out, "currency", c.currency)
    out["usageAttribution"] = {"subjectKeys": list(c.subject_keys)}
    if subs:
        out["currentSubscriptionId"] = subs[0].id
        if expand:
            out["subscriptions"] = [subscription(s, now) for s in subs]
    return out


def meter(m: Meter) -> Json:
    out: Json = {
        "id": m.id,
        "slug": m.slug,
        "name": m.name,
        "aggregation": m.aggregation,
        "eventType": m.event_type,
        "createdAt": fmt(m.created_at),
        "updatedAt": fmt(m.updated_at),
    }
    put(out, "description", m.description)
    put(out, "valueProperty", m.value_property)
    put(out, "eventFrom", fmt(m.event_from))
    put(out, "metadata", m.metadata)
    if m.group_by:
        out["groupBy"] = dict(m.group_by)
    return out


def feature(f: Feature) -> Json:
    out: Json = {
        "id": f.id,
        "key": f.key,
        "name": f.name,
        "createdAt": fmt(f.created_at),
        "updatedAt": fmt(f.updated_at),
    }
    put(out, "meterSlug", f.meter_slug)
    put(out, "metadata", f.metadata)
    filters = f.meter_group_by_filters
    if filters:
        # ``productcatalog/driver/parser.go`` ``MapFeatureToResponse``: the legacy map only when
        # every filter is an equality (``ConvertMeterGroupByFiltersToMapString``)
        if all(set(v) == {"$eq"} for v in filters.values()):
            out["meterGroupByFilters"] = {k: v["$eq"] for k, v in filters.items()}
        out["advancedMeterGroupByFilters"] = {k: dict(v) for k, v in filters.items()}
    put(out, "archivedAt", fmt(f.archived_at))
    return out


def rate_card(rc: Json) -> Json:
    out = {k: v for k, v in rc.items() if v is not None or k in ("price", "billingCadence")}
    out.setdefault("price", None)
    out.setdefault("billingCadence", None)
    return out


def plan(p: Plan, now: datetime) -> Json:
    out: Json = {
        "id": p.id,
        "key": p.key,
        "version": p.version,
        "name": p.name,
        "currency": p.currency,
        "billingCadence": p.billing_cadence,
        "proRatingConfig": dict(p.pro_rating),
        "alignment": {"billablesMustAlign": True},
        "status": p.status(now),
        "createdAt": fmt(p.created_at),
        "updatedAt": fmt(p.updated_at),
        # ``productcatalog/http/mapping.go`` ``FromValidationErrors``: message, field, code
        "validationErrors": [
            {k: i[k] for k in ("code", "message", "field")}
            for i in plan_alignment_issues(p.billing_cadence, p.phases)
        ]
        or None,
        "phases": [
            {
                **{k: v for k, v in ph.items() if k not in ("rateCards",) and v is not None},
                "duration": ph.get("duration"),
                "rateCards": [rate_card(rc) for rc in ph["rateCards"]],
            }
            for ph in p.phases
        ],
    }
    put(out, "description", p.description)
    put(out, "metadata", p.metadata)
    put(out, "effectiveFrom", fmt(p.effective_from))
    put(out, "effectiveTo", fmt(p.effective_to))
    put(out, "deletedAt", fmt(p.deleted_at))
    return out


def subscription(s: Subscription, now: datetime) -> Json:
    out: Json = {
        "id": s.id,
        "name": s.name,
        "createdAt": fmt(s.created_at),
        "updatedAt": fmt(s.updated_at),
        "activeFrom": fmt(s.active_from),
        "status": s.status(now),
        "customerId": s.customer_id,
        "currency": s.currency,
        "billingCadence": s.billing_cadence,
        "billingAnchor": fmt(s.billing_anchor),
        "proRatingConfig": dict(s.pro_rating),
        "alignment": {"billablesMustAlign": True},
    }
    put(out, "description", s.description)
    put(out, "metadata", s.metadata)
    put(out, "activeTo", fmt(s.active_to))
    put(out, "deletedAt", fmt(s.deleted_at))
    if s.annotations:
        out["annotations"] = dict(s.annotations)
    if s.plan_ref is not None:
        out["plan"] = dict(s.plan_ref)
    return out


def usage_period(e: Entitlement) -> Json:
    assert e.usage_period and e.usage_anchor
    iso = e.usage_period
    try:
        norm = Duration.parse(iso).iso()
    except ValueError:
        norm = iso
    return {
        "interval": _INTERVALS.get(norm, iso),
        "intervalISO": iso,
        "anchor": fmt(e.usage_anchor),
    }


def entitlement(state: State, e: Entitlement, *, v2: bool) -> Json:
    """v1 ``Entitlement`` (``subjectKey``) or v2 ``EntitlementV2`` (``customerId/Key``)."""
    now = state.now()
    cust = state.customers[e.customer_id]
    out: Json = {
        "type": e.type,
        "id": e.id,
        "featureKey": e.feature_key,
        "featureId": e.feature_id,
        "createdAt": fmt(e.created_at),
        "updatedAt": fmt(e.updated_at),
        "activeFrom": fmt(e.active_from or e.created_at),
    }
    put(out, "activeTo", fmt(e.active_to))
    put(out, "deletedAt", fmt(e.deleted_at))
    if e.metadata:
        out["metadata"] = dict(e.metadata)
    if e.annotations:
        out["annotations"] = dict(e.annotations)
    if v2:
        out["customerId"] = cust.id
        put(out, "customerKey", cust.key)
    else:
        subjects = cust.subjects()
        out["subjectKey"] = subjects[0] if subjects else (cust.key or cust.id)
    if e.type == "metered":
        assert e.measure_usage_from is not None
        frm, to = e.usage_period_at(now)
        out.update(
            {
                "measureUsageFrom": fmt(e.measure_usage_from),
                "lastReset": fmt(e.measure_usage_from),
                "usagePeriod": usage_period(e),
                "currentUsagePeriod": {"from": fmt(frm), "to": fmt(to)},
                "isSoftLimit": e.is_soft_limit,
                "isUnlimited": False,
                "preserveOverageAtReset": e.preserve_overage,
            }
        )
        if e.issue_after_reset is not None:
            out["issueAfterReset"] = num(e.issue_after_reset)
            if e.issue_priority is not None:
                out["issueAfterResetPriority"] = e.issue_priority
            if v2:
                issue: Json = {"amount": num(e.issue_after_reset)}
                put(issue, "priority", e.issue_priority)
                out["issue"] = issue
    elif e.type == "static":
        out["config"] = e.config or "{}"
    return out


def item(
    state: State, s: Subscription, pstart: datetime, pend: datetime | None, v: ItemVersion
) -> Json:
    rc = v.rate_card
    start, end = s.item_cadence(pstart, pend, v)
    out: Json = {
        "id": v.id,
        "key": v.key,
        "name": rc.get("name", v.key),
        "createdAt": fmt(v.created_at),
        "updatedAt": fmt(v.updated_at),
        "activeFrom": fmt(start),
        "billingCadence": rc.get("billingCadence"),
        "price": rc.get("price"),
    }
    put(out, "activeTo", fmt(end))
    put(out, "description", rc.get("description"))
    put(out, "metadata", rc.get("metadata"))
    put(out, "featureKey", rc.get("featureKey"))
    put(out, "discounts", rc.get("discounts"))
    put(out, "taxConfig", rc.get("taxConfig"))
    fkey = rc.get("featureKey")
    if fkey and fkey in state.feature_by_key:
        included: Json = {"feature": feature(state.features[state.feature_by_key[fkey]])}
        if v.entitlement_id and v.entitlement_id in state.ents:
            included["entitlement"] = entitlement(state, state.ents[v.entitlement_id], v2=False)
        out["included"] = included
    return out


def phase(
    state: State, s: Subscription, p: Phase, pstart: datetime, pend: datetime | None, now: datetime
) -> Json:
    """Items flattening (``MapSubscriptionPhaseToAPI``): current phase → the version active now
    (keys with no active version omitted); past phase → last version; future → first."""
    timelines: dict[str, list[Json]] = {}
    items: list[Json] = []
    is_current = pstart <= now and (pend is None or now < pend)
    is_past = pend is not None and pend <= now
    for key, versions in p.items.items():
        rendered = [item(state, s, pstart, pend, v) for v in versions]
        timelines[key] = rendered
        if not versions:
            continue
        if is_current:
            for v, r in zip(versions, rendered, strict=True):
                st, en = s.item_cadence(pstart, pend, v)
                if st <= now and (en is None or now < en):
                    items.append(r)
        elif is_past:
            items.append(rendered[-1])
        else:
            items.append(rendered[0])
    out: Json = {
        "id": p.id,
        "key": p.key,
        "name": p.name,
        "createdAt": fmt(p.created_at),
        "updatedAt": fmt(p.updated_at),
        "activeFrom": fmt(pstart),
        "items": items,
        "itemTimelines": timelines,
    }
    put(out, "activeTo", fmt(pend))
    put(out, "description", p.description)
    put(out, "metadata", p.metadata)
    return out


def subscription_expanded(state: State, s: Subscription) -> Json:
    now = state.now()
    out = subscription(s, now)
    period = s.aligned_period_at(now)
    if period is not None:
        out["alignment"] = {
            "billablesMustAlign": True,
            "currentAlignedBillingPeriod": {"from": fmt(period[0]), "to": fmt(period[1])},
        }
    out["phases"] = [phase(state, s, p, st, en, now) for p, st, en in s.phase_bounds()]
    return out


def page(items: list[Any], total: int, page_no: int, size: int) -> Json:
    return {"totalCount": total, "page": page_no, "pageSize": size, "items": items}
