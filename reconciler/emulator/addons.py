"""Add-ons, plan add-ons and subscription add-ons (OpenMeter v1.0.0-beta.227).

Sources:

* ``productcatalog/addon/service/addon.go``, ``productcatalog/addon.go``: versions per key
  (draft → ``publish`` → active, ``archive``), instance type ``single``/``multiple``.
* ``productcatalog/planaddon/service/planaddon.go``, ``productcatalog/planaddon.go``
  ``PlanAddon.Validate``: an add-on is linked to a plan *version* in draft/scheduled state; the
  add-on must be active; ``single`` ⇒ no ``maxQuantity``; same currency; ``fromPlanPhase`` must
  exist; add-on rate-card cadences must align with the plan's.
* ``subscription/addon/service/service.go`` ``Create``: not on a custom subscription (400),
  the add-on must be linked to the subscription's plan (400), ``single`` ⇒ quantity 1,
  ``fromPlanPhase`` / ``maxQuantity`` respected; ``workflow/service/addon.go`` ``AddAddon``:
  an add-on already purchased → 409, then ``syncWithAddons``.
* ``subscription/addon/extend.go`` ``SubscriptionAddonRateCard.Apply``/``Restore``: an add-on
  rate card whose key matches an item adds its flat price amount and its metered
  ``issueAfterReset`` to that item, once per unit of quantity; a key the subscription lacks
  becomes a new item. ``syncWithAddons`` restores the old quantities and applies the new ones
  from the edit time on: the affected item of the current phase is split at that time (a new
  item version, hence a new entitlement — ``service/sync.go``), future phases are changed
  whole.
* ``subscription/addon/addon.go`` ``GetInstances``: the quantity history is a timeline of
  instances; there is no delete route, quantity 0 ends the effect but the history stays.
* ``workflow/service/subscription.go`` ``EditRunning`` + ``addon.go`` ``hasAddons``: a
  subscription with any instance of quantity > 0 overlapping its cadence cannot be edited
  (403 ``subscription with addons cannot be edited``) — even after the quantity went back to 0.
  ``ChangeToPlan`` (cancel + create) does not look at add-ons: the new subscription starts
  without them.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from reconciler.emulator import errors as E
from reconciler.emulator.catalogcheck import (
    cadences_align,
    check_currency,
    check_key,
    normalize_rate_card,
    req_str,
)
from reconciler.emulator.state import NAMESPACE, ItemVersion, State, Subscription, num, put
from reconciler.emulator.timeutil import fmt, new_ulid

Json = dict[str, Any]


@dataclass(slots=True)
class Addon:
    id: str
    key: str
    version: int
    name: str
    description: str | None
    metadata: dict[str, str] | None
    instance_type: str
    currency: str
    rate_cards: list[Json]
    created_at: datetime
    updated_at: datetime
    effective_from: datetime | None = None
    effective_to: datetime | None = None
    deleted_at: datetime | None = None

    def status(self, now: datetime) -> str:
        if self.effective_from is None or self.effective_from > now:
            return "draft"
        if self.effective_to is not None and self.effective_to <= now:
            return "archived"
        return "active"


@dataclass(slots=True)
class PlanAddon:
    id: str
    plan_id: str
    addon_id: str
    from_plan_phase: str
    max_quantity: int | None
    metadata: dict[str, str] | None
    created_at: datetime
    updated_at: datetime


@dataclass(slots=True)
class SubscriptionAddon:
    id: str
    subscription_id: str
    addon_id: str
    name: str
    description: str | None
    metadata: dict[str, str] | None
    created_at: datetime
    updated_at: datetime
    # (activeFrom, quantity), sorted by time
    quantities: list[tuple[datetime, int]] = field(default_factory=list)

    def quantity_at(self, at: datetime) -> int:
        q = 0
        for t, n in self.quantities:
            if t <= at:
                q = n
        return q

    def instances(self) -> list[tuple[datetime, datetime | None, int]]:
        out: list[tuple[datetime, datetime | None, int]] = []
        for i, (t, n) in enumerate(self.quantities):
            end = self.quantities[i + 1][0] if i + 1 < len(self.quantities) else None
            out.append((t, end, n))
        return out


class Addons:
    """The add-on part of the emulator's state (kept in ``State.extensions['addons']``)."""

    def __init__(self, state: State) -> None:
        self.state = state
        self.addons: dict[str, Addon] = {}
        self.by_key: dict[str, list[str]] = {}
        self.plan_addons: dict[str, PlanAddon] = {}
        self.sub_addons: dict[str, SubscriptionAddon] = {}
        self.by_sub: dict[str, list[str]] = {}

    @staticmethod
    def of(state: State) -> Addons:
        book = state.extensions.get("addons")
        if not isinstance(book, Addons):
            book = Addons(state)
            state.extensions["addons"] = book
        return book

    # ------------------------------------------------------------------ add-ons

    def create(self, body: Any) -> Addon:
        st = self.state
        if not isinstance(body, dict):
            raise E.bad_request("request body has an error: value must be an object")
        key = req_str(body, "key", "addon")
        check_key(key, "key")
        name = req_str(body, "name", "addon")
        currency = check_currency(body.get("currency"))
        itype = body.get("instanceType")
        if itype not in ("single", "multiple"):
            raise E.bad_request(
                "request body has an error: doesn't match schema: Error at "
                '"/instanceType": value is not one of the allowed values ["single","multiple"]'
            )
        rcs = body.get("rateCards")
        if not isinstance(rcs, list):
            raise E.bad_request('request body has an error: property "rateCards" is missing')
        cards = [normalize_rate_card(rc, st.feature_lookup) for rc in rcs]
        if len({c["key"] for c in cards}) != len(cards):
            raise E.validation("invalid add-on: duplicated rate card key")
        now = st.now()
        versions = [self.addons[i] for i in self.by_key.get(key, [])]
        live = [a for a in versions if a.deleted_at is None]
        if any(a.status(now) == "draft" for a in live):
            raise E.validation("only a single draft version is allowed for add-on")
        a = Addon(
            id=new_ulid(now),
            key=key,
            version=max((a.version for a in versions), default=0) + 1,
            name=name,
            description=body.get("description"),
            metadata=body.get("metadata"),
            instance_type=itype,
            currency=currency,
            rate_cards=cards,
            created_at=now,
            updated_at=now,
        )
        self.addons[a.id] = a
        self.by_key.setdefault(key, []).append(a.id)
        return a

    def get(self, id_or_key: str) -> Addon:
        a = self.addons.get(id_or_key)
        if a is not None and a.deleted_at is None:
            return a
        now = self.state.now()
        for aid in self.by_key.get(id_or_key, []):
            cand = self.addons[aid]
            if cand.deleted_at is None and cand.status(now) == "active":
                return cand
        raise E.not_found(f"add-on not found [namespace={NAMESPACE} id={id_or_key}]")

    def publish(self, addon_id: str) -> Addon:
        a = self.get(addon_id)
        now = self.state.now()
        if a.status(now) != "draft":
            raise E.validation(
                f"invalid add-on: only add-ons in [draft] can be published, but it has "
                f"{a.status(now)} state"
            )
        for oid in self.by_key.get(a.key, []):
            other = self.addons[oid]
            if other is not a and other.deleted_at is None and other.status(now) == "active":
                other.effective_to = now
                other.updated_at = now
        a.effective_from = now
        a.updated_at = now
        return a

    def archive(self, addon_id: str) -> Addon:
        a = self.get(addon_id)
        now = self.state.now()
        if a.status(now) != "active":
            raise E.validation(
                f"invalid add-on: only add-ons in [active] can be archived, but it has "
                f"{a.status(now)} state"
            )
        a.effective_to = now
        a.updated_at = now
        return a

    # ------------------------------------------------------------------ plan add-ons

    def link(self, plan_id: str, body: Any) -> PlanAddon:
        st = self.state
        plan = st.plan_by_id(plan_id)
        if not isinstance(body, dict):
            raise E.bad_request("request body has an error: value must be an object")
        addon_id = req_str(body, "addonId", "planAddon")
        from_phase = req_str(body, "fromPlanPhase", "planAddon")
        addon = self.get(addon_id)
        now = st.now()
        if any(
            pa.plan_id == plan.id and pa.addon_id == addon.id for pa in self.plan_addons.values()
        ):
            raise E.conflict(
                f"plan add-on assignment already exists [namespace={NAMESPACE} "
                f"plan.id={plan.id} addon.id={addon.id}]"
            )
        problems = []
        if plan.status(now) not in ("draft", "scheduled"):
            problems.append(f"plan: invalid status {plan.status(now)}")
        if addon.status(now) != "active" or addon.effective_to is not None:
            problems.append(f"addon: invalid status {addon.status(now)}")
        maxq = body.get("maxQuantity")
        if addon.instance_type == "single" and maxq is not None:
            problems.append("max quantity must not be set for add-on with single instance type")
        if addon.instance_type == "multiple" and maxq is not None and maxq <= 0:
            problems.append("max quantity must be set for add-on with multiple instance type")
        if addon.currency != plan.currency:
            problems.append("addon: currency mismatch")
        for rc in addon.rate_cards:
            cad = rc.get("billingCadence")
            if cad is not None and not cadences_align(plan.billing_cadence, cad):
                problems.append(f"ratecard {rc['key']}: billing cadence unaligned")
        if not any(ph["key"] == from_phase for ph in plan.phases):
            problems.append(f"unknown plan phase key: {from_phase}")
        if problems:
            raise E.validation(
                f"invalid plan add-on [namespace={NAMESPACE} plan.id={plan.id} "
                f"addon.id={addon.id}]: " + "; ".join(problems)
            )
        pa = PlanAddon(
            id=new_ulid(now),
            plan_id=plan.id,
            addon_id=addon.id,
            from_plan_phase=from_phase,
            max_quantity=maxq,
            metadata=body.get("metadata"),
            created_at=now,
            updated_at=now,
        )
        self.plan_addons[pa.id] = pa
        return pa

    def plan_links(self, plan_id: str) -> list[PlanAddon]:
        plan = self.state.plan_by_id(plan_id)
        return [pa for pa in self.plan_addons.values() if pa.plan_id == plan.id]

    # ------------------------------------------------------------------ subscription add-ons

    def of_subscription(self, sub_id: str) -> list[SubscriptionAddon]:
        return [self.sub_addons[i] for i in self.by_sub.get(sub_id, [])]

    def forbid_edit(self, sub: Subscription) -> None:
        if self.has_addons(sub):
            raise E.forbidden("subscription with addons cannot be edited")

    def has_addons(self, sub: Subscription) -> bool:
        """``workflow/service/addon.go`` ``hasAddons``: an instance with quantity > 0 whose
        period intersects the subscription's cadence."""
        for sa in self.of_subscription(sub.id):
            for start, end, q in sa.instances():
                if q <= 0:
                    continue
                if (sub.active_to is None or start < sub.active_to) and (
                    end is None or end > sub.active_from
                ):
                    return True
        return False

    def _timing(self, sub: Subscription, timing: Any) -> datetime:
        st = self.state
        now = st.now()
        if timing == "immediate":
            return now
        if timing == "next_billing_cycle":
            return st._next_billing_cycle(sub, now)
        if isinstance(timing, str):
            at = st._time(timing, "timing")
            if at < now:
                raise E.validation(
                    "invalid timing for adding add-on: validation error: cannot execute in the past"
                )
            return at
        raise E.bad_request('request body has an error: property "timing" is missing')

    def purchase(self, sub_id: str, body: Any) -> SubscriptionAddon:
        st = self.state
        sub = st.subscription(sub_id)
        if not isinstance(body, dict):
            raise E.bad_request("request body has an error: value must be an object")
        ref = body.get("addon")
        if not isinstance(ref, dict) or not isinstance(ref.get("id"), str):
            raise E.bad_request('request body has an error: property "addon" is missing')
        name = req_str(body, "name", "subscriptionAddon")
        quantity = body.get("quantity")
        if isinstance(quantity, bool) or not isinstance(quantity, int) or quantity < 0:
            raise E.bad_request('request body has an error: property "quantity" is invalid')
        addon = self.get(ref["id"])
        if sub.plan_ref is None:
            raise E.validation("cannot add addon to a custom subscription")
        if addon.instance_type == "single" and quantity != 1:
            raise E.validation(
                "invalid input: single instance add-on must have initial quantity of 1"
            )
        link = next(
            (
                pa
                for pa in self.plan_addons.values()
                if pa.plan_id == sub.plan_ref["id"] and pa.addon_id == addon.id
            ),
            None,
        )
        if link is None:
            raise E.validation(
                f"addon {addon.key}@{addon.version} is not linked to the plan "
                f"{sub.plan_ref['key']}@{sub.plan_ref['version']}"
            )
        if any(sa.addon_id == addon.id for sa in self.of_subscription(sub.id)):
            raise E.conflict("subscription already has that addon purchased")
        at = self._timing(sub, body.get("timing"))
        phase = sub.current_phase(at)
        if phase is None:
            raise E.validation(f"subscription doesn't have an active phase at {fmt(at)}")
        keys = [p.key for p in sub.phases]
        if link.from_plan_phase in keys and keys.index(phase.key) < keys.index(
            link.from_plan_phase
        ):
            raise E.validation(
                f"addon {addon.key}@{addon.version} can be only added starting with phase "
                f"{link.from_plan_phase}, current phase is {phase.key}"
            )
        if link.max_quantity is not None and quantity > link.max_quantity:
            raise E.validation(
                f"addon {addon.key}@{addon.version} can be added a maximum of "
                f"{link.max_quantity} times"
            )
        if not (sub.active_from <= at and (sub.active_to is None or at < sub.active_to)):
            raise E.validation("subscription is not active at the time of adding the addon")
        now = st.now()
        sa = SubscriptionAddon(
            id=new_ulid(now),
            subscription_id=sub.id,
            addon_id=addon.id,
            name=name,
            description=body.get("description"),
            metadata=body.get("metadata"),
            created_at=now,
            updated_at=now,
            quantities=[(at, quantity)],
        )
        self._sync(sub, addon, sa.id, 0, quantity, at)
        self.sub_addons[sa.id] = sa
        self.by_sub.setdefault(sub.id, []).append(sa.id)
        return sa

    def get_sub_addon(self, sub_id: str, sa_id: str) -> SubscriptionAddon:
        self.state.subscription(sub_id)
        sa = self.sub_addons.get(sa_id)
        if sa is None or sa.subscription_id != sub_id:
            raise E.not_found(f"subscription addon not found: {sa_id}")
        return sa

    def update_sub_addon(self, sub_id: str, sa_id: str, body: Any) -> SubscriptionAddon:
        """``workflow/service/addon.go`` ``ChangeAddonQuantity``: a new timeline entry from the
        timing on; the subscription is re-synced (old quantity restored, new one applied)."""
        st = self.state
        sa = self.get_sub_addon(sub_id, sa_id)
        sub = st.subscription(sub_id)
        if not isinstance(body, dict):
            raise E.bad_request("request body has an error: value must be an object")
        now = st.now()
        for k in ("name", "description", "metadata"):
            if k in body:
                setattr(sa, k, body[k])
        if "quantity" in body:
            q = body["quantity"]
            if isinstance(q, bool) or not isinstance(q, int) or q < 0:
                raise E.bad_request('request body has an error: property "quantity" is invalid')
            addon = self.addons[sa.addon_id]
            if addon.instance_type == "single" and q not in (0, 1):
                raise E.validation("single instance add-on can only have quantity 0 or 1")
            at = self._timing(sub, body.get("timing", "immediate"))
            old = sa.quantity_at(at)
            self._sync(sub, addon, sa.id, old, q, at)
            sa.quantities = [(t, n) for t, n in sa.quantities if t < at] + [(at, q)]
        sa.updated_at = now
        return sa

    # ------------------------------------------------------------------ spec effects

    def _sync(
        self, sub: Subscription, addon: Addon, sa_id: str, old_q: int, new_q: int, at: datetime
    ) -> None:
        st = self.state
        if old_q == new_q:
            return
        old_ids = st._sub_ent_ids(sub)
        work = copy.deepcopy(sub)
        current = work.current_phase(at)
        for phase, pstart, _pend in work.phase_bounds():
            if pstart < at and phase is not current:
                continue  # past phases are history
            for arc in addon.rate_cards:
                key = arc["key"]
                versions = phase.items.setdefault(key, [])
                if phase is current:
                    off = at - pstart
                    live = [
                        v
                        for v in versions
                        if (v.from_off is None or v.from_off <= off)
                        and (v.to_off is None or v.to_off > off)
                    ]
                    last = live[-1] if live else None
                    base = last.rate_card if last is not None else None
                    new_rc = _merge(base, arc, old_q, new_q)
                    created = last.addon_created if last is not None else True
                    if last is not None and (last.from_off or timedelta(0)) == off:
                        # same instant: replace instead of a zero-length version
                        versions.remove(last)
                    elif last is not None:
                        last.to_off = off
                    if new_rc is not None and not (created and new_q == 0):
                        nv = ItemVersion(key=key, rate_card=new_rc, from_off=off)
                        nv.addon_ids = sorted(
                            {*(last.addon_ids if last else []), sa_id}
                            if new_q > 0
                            else set(last.addon_ids if last else []) - {sa_id}
                        )
                        nv.addon_created = created
                        versions.append(nv)
                else:
                    last = versions[-1] if versions else None
                    base = last.rate_card if last is not None else None
                    new_rc = _merge(base, arc, old_q, new_q)
                    created = last.addon_created if last is not None else True
                    if last is not None:
                        versions.remove(last)
                    if new_rc is not None and not (created and new_q == 0):
                        nv = ItemVersion(key=key, rate_card=new_rc)
                        nv.addon_ids = [sa_id] if new_q > 0 else []
                        nv.addon_created = created
                        versions.append(nv)
                if not versions:
                    del phase.items[key]
        work.updated_at = st.now()
        st.subs[sub.id] = work
        st._materialize(work, old_ids)


def _merge(base: Json | None, arc: Json, old_q: int, new_q: int) -> Json | None:
    """``extend.go`` ``Apply``/``Restore`` ``new_q − old_q`` times: flat price amounts and
    metered ``issueAfterReset`` add up; other parts come from the base (or the add-on's rate
    card when the subscription has no such item)."""
    delta = new_q - old_q
    if base is None:
        if new_q <= 0:
            return None
        out = copy.deepcopy(arc)
        _scale(out, new_q)
        return out
    out = copy.deepcopy(base)
    price = arc.get("price")
    if price is not None:
        tp = out.get("price")
        if tp is None:
            out["price"] = copy.deepcopy(price)
        elif tp.get("type") == "flat" and price.get("type") == "flat":
            amount = Decimal(str(tp["amount"])) + Decimal(str(price["amount"])) * delta
            if amount < 0:
                raise E.validation(
                    f"restoring flat price would yield a negative amount: {tp['amount']}"
                )
            tp["amount"] = _dec(amount)
        else:
            raise E.validation(f"not supported price type: {tp.get('type')}")
    atpl = arc.get("entitlementTemplate")
    if atpl is not None:
        ttpl = out.get("entitlementTemplate")
        if ttpl is None:
            out["entitlementTemplate"] = copy.deepcopy(atpl)
        elif ttpl.get("type") == "metered" and atpl.get("type") == "metered":
            total = (
                float(ttpl.get("issueAfterReset") or 0)
                + float(atpl.get("issueAfterReset") or 0) * delta
            )
            ttpl["issueAfterReset"] = num(total)
    return out


def _dec(d: Decimal) -> str:
    """A decimal as OpenMeter's numeric strings (no exponent, no trailing zeros)."""
    return format(d.normalize(), "f") if d != 0 else "0"


def _scale(rc: Json, q: int) -> None:
    price = rc.get("price")
    if price is not None and price.get("type") == "flat":
        price["amount"] = _dec(Decimal(str(price["amount"])) * q)
    tpl = rc.get("entitlementTemplate")
    if tpl is not None and tpl.get("type") == "metered" and tpl.get("issueAfterReset"):
        tpl["issueAfterReset"] = num(float(tpl["issueAfterReset"]) * q)


# ---------------------------------------------------------------------- views


def addon_view(a: Addon, now: datetime) -> Json:
    from reconciler.emulator.views import rate_card

    out: Json = {
        "id": a.id,
        "key": a.key,
        "version": a.version,
        "name": a.name,
        "instanceType": a.instance_type,
        "currency": a.currency,
        "status": a.status(now),
        "rateCards": [rate_card(rc) for rc in a.rate_cards],
        "validationErrors": None,
        "createdAt": fmt(a.created_at),
        "updatedAt": fmt(a.updated_at),
    }
    put(out, "description", a.description)
    put(out, "metadata", a.metadata)
    put(out, "effectiveFrom", fmt(a.effective_from))
    put(out, "effectiveTo", fmt(a.effective_to))
    put(out, "deletedAt", fmt(a.deleted_at))
    return out


def plan_addon_view(book: Addons, pa: PlanAddon, now: datetime) -> Json:
    out: Json = {
        "createdAt": fmt(pa.created_at),
        "updatedAt": fmt(pa.updated_at),
        "addon": addon_view(book.addons[pa.addon_id], now),
        "fromPlanPhase": pa.from_plan_phase,
        "validationErrors": None,
    }
    put(out, "maxQuantity", pa.max_quantity)
    put(out, "metadata", pa.metadata)
    return out


def sub_addon_view(book: Addons, sa: SubscriptionAddon, now: datetime) -> Json:
    """``subscription/addon/http/mapping.go`` ``MapSubscriptionAddonToResponse``."""
    a = book.addons[sa.addon_id]
    sub = book.state.subs.get(sa.subscription_id)
    inst = sa.instances()
    affected: dict[str, list[str]] = {rc["key"]: [] for rc in a.rate_cards}
    if sub is not None:
        for ph in sub.phases:
            for key, versions in ph.items.items():
                if key in affected:
                    affected[key] += [v.id for v in versions if sa.id in v.addon_ids and v.id]
    out: Json = {
        "id": sa.id,
        "name": sa.name,
        "createdAt": fmt(sa.created_at),
        "updatedAt": fmt(sa.updated_at),
        "activeFrom": fmt(inst[0][0]),
        "addon": {
            "id": a.id,
            "key": a.key,
            "version": a.version,
            "instanceType": a.instance_type,
        },
        "quantityAt": fmt(now),
        "quantity": sa.quantity_at(now),
        "timeline": [
            {
                "activeFrom": fmt(s),
                "quantity": q,
                **({"activeTo": fmt(e)} if e is not None else {}),
            }
            for s, e, q in inst
        ],
        "subscriptionId": sa.subscription_id,
        "rateCards": [
            {"rateCard": rate_card_view(rc), "affectedSubscriptionItemIds": affected[rc["key"]]}
            for rc in a.rate_cards
        ],
    }
    put(out, "description", sa.description)
    put(out, "metadata", sa.metadata)
    return out


def rate_card_view(rc: Json) -> Json:
    from reconciler.emulator.views import rate_card

    return rate_card(rc)


__all__ = ["Addon", "Addons", "PlanAddon", "SubscriptionAddon"]
