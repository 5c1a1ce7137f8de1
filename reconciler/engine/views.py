"""JSON views of everything the engine reports: the one place that knows the wire shape.

``reconciler change --json``, ``status --json``, ``quote --json``, the admin API and the events'
payloads all come from here, so the CLI and the HTTP service show the same document for the
same result. Amounts are strings (exact decimals), times RFC 3339 with ``Z``, quantities
integers where they are whole.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime
from decimal import Decimal
from typing import Any

from reconciler.domain.convergence import Convergence, Suppression
from reconciler.domain.effects import EntitlementEffect, entitlement_effects
from reconciler.domain.invoices import Invoiced, InvoicesState
from reconciler.domain.model import EntitlementValue, ObservedSubscription, Plan
from reconciler.domain.planner import PlanResult, effective_plan
from reconciler.domain.pricing import ItemVersion, Quote, QuoteDifference
from reconciler.domain.pricing.credits import CreditDue, credits_due
from reconciler.domain.pricing.currency import round_money
from reconciler.domain.timefmt import iso_offset, iso_z, parse_iso
from reconciler.engine.results import (
    AppliedCall,
    ChangeReport,
    Charges,
    Credits,
    DesiredStatus,
    Preview,
    QuoteReport,
    StatusReport,
)
from reconciler.store.types import AuditEntry, ChangeRecord

__all__ = [
    "applied_json",
    "change_json",
    "change_summary",
    "charges_json",
    "convergence_from_json",
    "convergence_view",
    "credits_from_json",
    "credits_json",
    "credits_of",
    "desired_convergence",
    "money",
    "preview_json",
    "quote_json",
    "response_summary",
    "status_json",
    "stored_convergence",
    "stored_credits",
    "subscription_view",
    "value_view",
    "values_view",
]

JsonDoc = dict[str, Any]


def num(d: Decimal | None) -> int | str | None:
    """A quantity: an integer when whole, else its exact decimal string."""
    if d is None:
        return None
    return int(d) if d == d.to_integral_value() else str(d)


def _s(d: Decimal | None) -> str | None:
    return None if d is None else format(d, "f")


# -- entitlements and subscriptions ----------------------------------------------------------


def value_view(v: EntitlementValue | None) -> JsonDoc | None:
    if v is None:
        return None
    return {
        "has_access": v.has_access,
        "usage": num(v.usage),
        "balance": num(v.balance),
        "total_available_grant_amount": num(v.total_available_grant_amount),
    }


def values_view(values: Mapping[str, EntitlementValue | None]) -> JsonDoc:
    return {k: value_view(v) for k, v in sorted(values.items())}


def subscription_view(sub: ObservedSubscription | None, now: datetime) -> JsonDoc | None:
    if sub is None:
        return None
    phase = sub.phase_at(now)
    eff = effective_plan(sub, phase) if phase else sub.plan
    return {
        "id": sub.id,
        "status": sub.status.value,
        "plan": str(sub.plan) if sub.plan else None,
        "effective_plan": str(eff) if eff else None,
        "active_from": iso_z(sub.active_from),
        "active_to": iso_z(sub.active_to),
        "current_period": (
            {"from": iso_z(sub.current_period[0]), "to": iso_z(sub.current_period[1])}
            if sub.current_period
            else None
        ),
        "phase": phase.key if phase else None,
        "items": [
            {
                "key": i.key,
                "feature_key": i.feature_key,
                "allowance": num(i.entitlement.template.issue_after_reset)
                if i.entitlement
                else None,
                "entitlement_id": i.entitlement.id if i.entitlement else None,
                "tags": dict(i.provenance),
            }
            for i in (phase.items if phase else ())
        ],
    }


# -- a planned change ------------------------------------------------------------------------


def convergence_view(result: PlanResult) -> JsonDoc | None:
    """How the plan record converges: when, whether deferred for billing, and why."""
    c = result.convergence
    if c is None:
        return None
    return {
        "converges_at": iso_z(c.at),
        "schedule_at": iso_z(c.schedule_at),
        "deferred": c.deferred,
        "reason": c.reason,
        "suppressed": [
            {
                "item": x.item,
                "boundary": iso_z(x.boundary),
                "service_period": {
                    "from": iso_z(x.service_period[0]),
                    "to": iso_z(x.service_period[1]),
                },
                "prorated": str(x.prorated),
                "billed_if_scheduled": str(x.billed),
            }
            for x in c.suppressed
        ],
    }


def convergence_from_json(doc: Mapping[str, Any]) -> Convergence:
    """A convergence the engine stored on a change (``convergence_view``), read back."""
    return Convergence(
        at=parse_iso(doc.get("converges_at")),
        schedule_at=parse_iso(doc.get("schedule_at")),
        deferred=bool(doc.get("deferred")),
        reason=str(doc.get("reason") or ""),
        suppressed=tuple(
            Suppression(
                item=x["item"],
                boundary=_time(x["boundary"]),
                service_period=(
                    _time(x["service_period"]["from"]),
                    _time(x["service_period"]["to"]),
                ),
                prorated=Decimal(x["prorated"]),
                billed=Decimal(x["billed_if_scheduled"]),
            )
            for x in doc.get("suppressed") or ()
        ),
    )


def stored_convergence(change: ChangeRecord | None) -> Convergence | None:
    """How the plan record converges, as the engine recorded it when it decided."""
    doc = change.details.get("convergence") if change is not None else None
    return convergence_from_json(doc) if isinstance(doc, dict) else None


def change_summary(result: PlanResult, target: Plan) -> JsonDoc:
    """What a planned change is, as the preview and the quote both report it: the target, the
    plan it comes from, the planner's state, direction and timing, and when it takes effect and
    converges."""
    return {
        "target": {"key": target.key, "version": target.version},
        "from_plan": str(result.from_plan) if result.from_plan else None,
        "state": result.state.value,
        "direction": result.direction.value,
        "timing": result.timing.value if result.timing else None,
        "effective_at": iso_z(result.effective_at),
        "converges_at": iso_z(result.converges_at),
        "convergence": convergence_view(result),
    }


def _effect_view(e: EntitlementEffect) -> JsonDoc:
    doc: JsonDoc = {"before": value_view(e.before), "after": value_view(e.after)}
    if e.has_boundary:
        doc["at_boundary"] = value_view(e.at_boundary)
    return doc


def preview_json(p: Preview) -> JsonDoc:
    result = p.result
    return {
        "customer": p.customer,
        "customer_id": p.observed.customer_id,
        **change_summary(result, p.target),
        "rule": result.rule,
        "reason": result.reason,
        "refusal": result.refusal,
        "actions": [a.request().as_dict() for a in result.actions],
        "entitlements": {
            f: _effect_view(e)
            for f, e in entitlement_effects(p.observed, result, p.target, p.now).items()
        },
        "warnings": list(result.warnings),
        "charges": charges_json(p.charges) if p.charges is not None else {"error": p.charges_error},
    }


# -- what a pass applied ---------------------------------------------------------------------


def _brief(d: Any) -> Any:
    if not isinstance(d, dict):
        return d
    keys = ("id", "status", "plan", "activeFrom", "activeTo")
    return {k: d[k] for k in keys if k in d}


#: The fields of a subscription ``response_summary`` keeps (model names; shown by alias).
_BRIEF = {"id", "status", "plan", "active_from", "active_to"}


def response_summary(resp: Any) -> Any:
    """The identifying fields of an OpenMeter response (a change: both subscriptions). Only
    those are dumped: an expanded subscription's phases are never serialised for this."""
    if resp is None:
        return None
    dump = getattr(resp, "model_dump", None)
    if dump is None:
        return resp
    fields = getattr(type(resp), "model_fields", {})
    if "current" in fields and "next" in fields:
        data: Any = dump(
            by_alias=True,
            mode="json",
            exclude_none=True,
            include={"current": _BRIEF, "next": _BRIEF},
        )
        return {"current": _brief(data["current"]), "next": _brief(data["next"])}
    if _BRIEF & set(fields):
        return _brief(dump(by_alias=True, mode="json", exclude_none=True, include=_BRIEF))
    return _brief(dump(by_alias=True, mode="json", exclude_none=True))


def applied_json(a: AppliedCall) -> JsonDoc:
    return {
        "action": a.action,
        "method": a.method,
        "path": a.path,
        "body": a.body,
        "result": a.result,
    }


def change_json(r: ChangeReport) -> JsonDoc:
    """``reconciler change``: the preview, then what the pass did and what OpenMeter shows now."""
    doc = preview_json(r.preview)
    out, change = r.outcome, r.change
    doc["change_id"] = out.change_id
    doc["status"] = out.status
    doc["applied"] = [applied_json(a) for a in out.applied]
    doc["error"] = out.error
    doc["usage_not_preserved"] = list(out.usage_not_preserved)
    if change is not None:
        if change.details.get("proof"):
            doc["proof"] = change.details["proof"]
        conv = change.details.get("convergence")
        if conv:
            # What the engine decided when it acted (the preview may predate the edit).
            doc["convergence"] = conv
            doc["converges_at"] = conv["converges_at"]
        if change.details.get("credit_due") is not None:
            doc["credit_due"] = change.details["credit_due"]
    for f, v in values_view(r.values_now).items():
        doc["entitlements"].setdefault(f, {"before": None})["after"] = v
    return doc


# -- status ----------------------------------------------------------------------------------


def desired_convergence(d: DesiredStatus) -> JsonDoc | None:
    """As the planner decides it now, or as recorded when the engine decided it."""
    if d.result is not None and d.result.convergence is not None:
        return convergence_view(d.result)
    stored = d.change.details.get("convergence")
    return stored if isinstance(stored, dict) else None


def _desired_json(d: DesiredStatus) -> JsonDoc:
    c = d.change
    doc: JsonDoc = {
        "change_id": c.id,
        "plan": c.plan_key,
        "plan_version": c.plan_version,
        "status": c.status.value,
        "requested_at": iso_offset(c.requested_at),
        "effective_at": iso_offset(c.effective_at),
        "converges_at": iso_offset(c.converges_at),
        "last_error": c.last_error,
    }
    if c.details.get("credit_due") is not None:
        doc["credit_due"] = c.details["credit_due"]
    if d.result is not None:
        doc["pending_actions"] = [a.request().as_dict() for a in d.result.actions]
        doc["convergence"] = desired_convergence(d)
    return doc


def _audit_json(a: AuditEntry) -> JsonDoc:
    return {
        "at": iso_offset(a.at),
        "kind": a.kind.value,
        "operation": a.operation,
        "method": a.method,
        "path": a.path,
        "status": a.status,
        "detail": a.detail,
    }


def status_json(s: StatusReport) -> JsonDoc:
    cur = s.observed.current
    return {
        "customer": s.customer,
        "customer_id": s.observed.customer_id,
        "customer_key": s.observed.customer_key,
        "observed_at": iso_offset(s.now),
        "plan_on_record": str(cur.plan) if cur and cur.plan else None,
        "subscription": subscription_view(cur, s.now),
        "scheduled_successor": subscription_view(s.observed.successor, s.now),
        "entitlements": values_view(s.observed.values),
        "desired": _desired_json(s.desired) if s.desired is not None else None,
        "convergence": s.convergence,
        "recent_audit": [_audit_json(a) for a in s.audit],
    }


# -- money -----------------------------------------------------------------------------------


def credits_of(
    sub: ObservedSubscription, versions: Iterable[ItemVersion], invoiced: Invoiced
) -> Credits:
    """What is owed for ``sub`` whose item versions are (or would be) ``versions``."""
    if invoiced.state is not InvoicesState.READ:
        return Credits(invoiced.state, detail=invoiced.detail)
    credits = tuple(credits_due(sub, list(versions), invoiced.of_subscription(sub.id)))
    totals: dict[str, Decimal] = {}
    for c in credits:
        totals[c.currency] = totals.get(c.currency, Decimal(0)) + c.amount
    return Credits(invoiced.state, credits, dict(sorted(totals.items())), invoiced.detail)


def money(amount: Decimal, currency: str) -> str:
    """An amount rounded to the currency's minor unit, as a plain decimal string."""
    return format(round_money(amount, currency), "f")


def credits_json(c: Credits) -> JsonDoc:
    """``{"invoices": "read" | "no invoices" | "billing not available" | "not needed",
    "credits": [...], "total": {currency: amount}}``."""
    out: JsonDoc = {
        "invoices": c.state.value,
        "credits": [
            {
                "item": x.item,
                "amount": money(x.amount, x.currency),
                "currency": x.currency,
                "period": {"from": iso_z(x.period[0]), "to": iso_z(x.period[1])},
                "invoiced": money(x.invoiced, x.currency),
                "due": money(x.due, x.currency),
                "invoice_id": x.invoice_id,
                "line_id": x.line_id,
            }
            for x in c.credits
        ],
        "total": {cur: money(v, cur) for cur, v in c.totals.items()},
    }
    if c.detail:
        out["detail"] = c.detail
    return out


def credits_from_json(doc: Mapping[str, Any]) -> Credits:
    """A ``credit_due`` the engine stored on a change (``credits_json``), read back."""
    credits = tuple(
        CreditDue(
            item=x["item"],
            amount=Decimal(x["amount"]),
            currency=x["currency"],
            period=(_time(x["period"]["from"]), _time(x["period"]["to"])),
            invoiced=Decimal(x["invoiced"]),
            due=Decimal(x["due"]),
            invoice_id=x["invoice_id"],
            line_id=x["line_id"],
        )
        for x in doc.get("credits", ())
    )
    totals = {cur: Decimal(v) for cur, v in (doc.get("total") or {}).items()}
    return Credits(InvoicesState(doc["invoices"]), credits, totals, doc.get("detail"))


def _time(text: str) -> datetime:
    parsed = parse_iso(text)
    assert parsed is not None
    return parsed


def stored_credits(change: ChangeRecord | None) -> Credits | None:
    """The ``credit_due`` the engine recorded on the change when it was applied."""
    doc = change.details.get("credit_due") if change is not None else None
    return credits_from_json(doc) if isinstance(doc, dict) else None


# -- quotes ----------------------------------------------------------------------------------


def _quote_lines(q: Quote) -> JsonDoc:
    return {
        "total": _s(q.total),
        "totals_by_currency": {c: _s(v) for c, v in q.totals_by_currency.items()},
        "lines": [
            {
                "key": ln.key,
                "name": ln.name,
                "version": ln.version,
                "feature_key": ln.feature_key,
                "period": {"from": iso_z(ln.period_from), "to": iso_z(ln.period_to)},
                "price_type": ln.price_type,
                "mode": ln.mode,
                "payment_term": ln.payment_term,
                "quantity": _s(ln.quantity),
                "billed_quantity": _s(ln.billed_quantity),
                "proration": _s(ln.proration.normalize()) if ln.proration is not None else None,
                "amount": _s(ln.amount),
                "breakdown": [
                    {
                        "name": c.name,
                        "reference": c.reference,
                        "tier": c.tier,
                        "quantity": _s(c.quantity),
                        "unit_amount": _s(c.unit_amount),
                        "amount": _s(c.amount),
                        "discount": _s(c.discount),
                        "total": _s(c.total),
                    }
                    for c in ln.breakdown
                ],
                "notes": list(ln.notes),
            }
            for ln in q.lines
        ],
        "skipped": list(q.skipped),
    }


def _difference(d: QuoteDifference) -> JsonDoc:
    return {
        "total": _s(d.total),
        "by_item": {k: _s(v) for k, v in sorted(d.by_item.items())},
        "lines": [
            {
                "key": ln.key,
                "name": ln.name,
                "period": {"from": iso_z(ln.period_from), "to": iso_z(ln.period_to)},
                "before": _s(ln.before.amount) if ln.before else None,
                "after": _s(ln.after.amount) if ln.after else None,
                "delta": _s(ln.delta),
            }
            for ln in d.lines
        ],
    }


def charges_json(c: Charges) -> JsonDoc:
    """``{period, currency, current, with_change, difference, notes}`` with string amounts."""
    return {
        "period": {"from": iso_z(c.period[0]), "to": iso_z(c.period[1])},
        "currency": c.currency,
        "current": _quote_lines(c.current),
        "with_change": _quote_lines(c.with_change) if c.with_change is not None else None,
        "difference": _difference(c.difference) if c.difference is not None else None,
        "notes": list(c.notes),
    }


def quote_json(q: QuoteReport) -> JsonDoc:
    sub = q.subscription
    change = None
    if q.target is not None and q.result is not None:
        change = {
            **change_summary(q.result, q.target),
            "actions": [a.kind for a in q.result.actions],
            "refusal": q.result.refusal,
        }
    return {
        "customer": q.customer,
        "customer_id": q.observed.customer_id,
        "subscription_id": sub.id,
        "plan": str(sub.plan) if sub.plan else None,
        "as_of": iso_z(q.as_of),
        "at": iso_z(q.at),
        "change": change,
        **charges_json(q.charges),
        "invoices": q.invoiced.state.value,
        "credit_due": credits_json(q.credit_due),
    }
