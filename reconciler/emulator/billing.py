"""Billing: the invoice lines OpenMeter's subscription sync writes, and their invoices (beta.227).

Only what the reconciler reads is modelled: per-subscription lines for flat fees and usage
prices, the customer's gathering invoice, standard invoices through draft → issued → paid, and
``GET /api/v1/billing/invoices[/{id}]``. Billing is off until it is switched on
(``/_emulator/billing`` or ``openmeter-emulator --billing``); a deployment without billing lists
no invoices.

Sources (tag ``v1.0.0-beta.227`` of openmeterio/openmeter):

* ``billing/worker/subscriptionsync/service/sync.go``: ``SynchronizeSubscription`` runs on every
  subscription change and when the last generation limit (``NextSyncAfter``) passes; it
  generates the lines up to the end of the current aligned billing period
  (``collectUpcomingLines``: the limit is the period end unless ``asOf`` is its start, the
  subscription start before it starts), matches them with the existing lines by unique id
  ``<sub>/<phase>/<item key>/v[<version>]/period[<n>]`` (one-time items: without the period),
  deletes those that are no longer expected, updates period and flat amount of the others
  (``getPatchesForExistingLine``) and adds the new ones to the gathering invoice. Then
  ``invoicePendingLines`` turns every line whose ``invoiceAt`` has passed into a new invoice
  (progressive billing off), "so that any in advance fees are invoiced immediately".
* ``lineFromSubscriptionRateCard``: a flat price becomes a line of the rounded (prorated)
  amount, none if that is zero; an in-arrears line waits for a non-empty full service period.
  ``shouldProrate``: only flat prices, only with ``proRatingConfig`` enabled in mode
  ``prorate_prices``, and not when the subscription ends at or before the service period's
  end ("We do not prorate due to the subscription ending").
* ``phaseiterator.go``: per item version, service periods from the item's own cadence anchored
  at the subscription's billing anchor (``GetFullServicePeriodAt``) cut to the version's
  activity; ``PeriodPercentage`` = service / full (by nanoseconds); ``GetInvoiceAt``: a flat fee
  in advance at the start of the aligned billing period, everything else at
  ``max(service end, billing period end)``; periods truncated to the second, empty usage
  periods dropped (``truncateItemsIfNeeded``).
* ``invoiceupdate.go``: patches to the gathering invoice and to mutable (draft) invoices are
  applied; an immutable (issued) invoice cannot change — the sync only records a warning
  validation issue (``ImmutableInvoiceHandlingNotSupportedErrorCode``, component
  ``subscription_sync``), as OpenMeter has no credit notes.
* ``billing/defaults.go``: the default profile collects ``PT1H`` after the lines' period
  (subscription alignment), auto-advances, ``draftPeriod: P0D``, ``dueAfter: P30D``.
  ``invoicecalc/collectionat.go``: ``collectionAt`` = latest usage line ``invoiceAt`` + the
  interval, or the creation time when there is no usage line; ``draftuntil.go``:
  ``draftUntil = max(collectionAt, createdAt) + draftPeriod`` when auto-advancing.
  ``service/stdinvoicestate.go``: draft.created → waiting_for_collection → collecting →
  validating → waiting_auto_approval (or manual_approval_needed) → ready_to_issue → issuing →
  issued → payment_processing.pending; the sandbox app (``app/sandbox/app.go``) then pays it
  (or leaves it pending when told otherwise), numbering it ``OM-SANDBOX-<prefix>-<n>``
  (``billing/service/seq.go`` ``getCustomerPrefix``).
* ``billing/httpdriver/invoice.go`` ``ListInvoices``: every invoice, gathering ones included, is
  mapped by ``MapStandardInvoiceToAPI`` with its totals recalculated on the fly;
  ``invoiceline.go`` ``mapInvoiceLineToAPI`` writes every line as ``type: usage_based`` (a flat
  fee carries a ``flat`` price) and — kept here on purpose — swaps the ids in the line's
  ``subscription`` reference: ``subscription.id`` holds the *item* id and ``item.id`` the
  subscription id (``mapSubscriptionReferencesToAPI``).

Not modelled: discounts, taxes, progressive billing, credit notes, manual invoice actions,
detailed child lines (``children``), anchored collection alignment.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation, localcontext
from typing import Any

from reconciler.emulator import errors as E
from reconciler.emulator.state import Customer, Phase, State, Subscription
from reconciler.emulator.timeutil import Duration, DurationError, fmt, new_ulid, period_at

Json = dict[str, Any]
Period = tuple[datetime, datetime]

KEY = "billing"
ULID_CHARS = set("0123456789ABCDEFGHJKMNPQRSTVWXYZabcdefghjkmnpqrstvwxyz")
SECOND = timedelta(seconds=1)
MAX_TICKS = 20_000

# Currencies whose subunits are not 2 (gobl's table, which ``currencyx`` rounds with).
_SUBUNITS = {
    "BCH": 8, "BHD": 3, "BIF": 0, "BTC": 8, "BYR": 0, "CLF": 4, "CLP": 0, "DJF": 0, "GBX": 1,
    "GNF": 0, "HUF": 0, "IQD": 3, "ISK": 0, "JOD": 3, "JPY": 0, "KMF": 0, "KRW": 0, "KWD": 3,
    "LYD": 3, "MGA": 5, "MRU": 5, "OMR": 3, "PYG": 0, "RWF": 0, "TND": 3, "UGX": 0, "VND": 0,
    "VUV": 0, "XAF": 0, "XAG": 0, "XAU": 0, "XBA": 0, "XBB": 0, "XBC": 0, "XBD": 0, "XDR": 0,
    "XOF": 0, "XPD": 0, "XPF": 0, "XPT": 0, "XTS": 0,
}  # fmt: skip

FINAL = ("paid", "payment_processing.pending", "voided", "uncollectible", "deleted")


def money(amount: Decimal, currency: str) -> Decimal:
    """``RoundToPrecision``: half away from zero to the currency's subunits."""
    places = _SUBUNITS.get(currency, 2)
    return amount.quantize(Decimal(1).scaleb(-places), rounding=ROUND_HALF_UP)


def dec(value: Any) -> Decimal:
    try:
        return Decimal(str(value))
    except (InvalidOperation, ValueError):
        return Decimal(0)


def trunc_second(dt: datetime) -> datetime:
    return dt.replace(microsecond=0)


def nanos(a: datetime, b: datetime) -> int:
    d = b - a
    return (d.days * 86_400 + d.seconds) * 1_000_000_000 + d.microseconds * 1000


def iso(d: Duration) -> str:
    """``datetime.ISODuration.String``: the zero duration prints as ``P0D``."""
    return "P0D" if d.is_zero() else d.iso()


def customer_prefix(name: str) -> str:
    parts = name.upper().split(" ")
    if not parts or parts == [""]:
        return "UNKN"
    if len(parts) == 1:
        return parts[0][:4]
    return parts[0][:2] + parts[1][:2]


@dataclass(slots=True)
class Profile:
    """The default billing profile's workflow (``billing/defaults.go``) and the sandbox app."""

    auto_advance: bool = True
    draft_period: Duration = field(default_factory=Duration)
    collection_interval: Duration = field(default_factory=lambda: Duration(micros=3_600_000_000))
    due_after: Duration = field(default_factory=lambda: Duration(days=30))
    payment: str = "paid"  # the sandbox app's target status: paid | pending
    # how long after a change the worker syncs it (OpenMeter syncs from an event queue, so the
    # calls of one request burst are seen together); 0 = at once
    sync_lag: Duration = field(default_factory=lambda: Duration(micros=1_000_000))
    id: str = field(default_factory=new_ulid)

    @staticmethod
    def parse(body: Any) -> Profile:
        if not isinstance(body, dict):
            raise E.bad_request("billing settings must be an object")
        p = Profile()
        try:
            if "autoAdvance" in body:
                if not isinstance(body["autoAdvance"], bool):
                    raise E.bad_request("autoAdvance must be a boolean")
                p.auto_advance = body["autoAdvance"]
            if "draftPeriod" in body:
                p.draft_period = Duration.parse(str(body["draftPeriod"]))
            if "collectionInterval" in body:
                p.collection_interval = Duration.parse(str(body["collectionInterval"]))
            if "syncLag" in body:
                p.sync_lag = Duration.parse(str(body["syncLag"]))
        except DurationError as exc:
            raise E.bad_request(str(exc)) from None
        if "payment" in body:
            if body["payment"] not in ("paid", "pending"):
                raise E.bad_request("payment must be paid or pending")
            p.payment = body["payment"]
        return p

    def workflow(self) -> Json:
        return {
            "collection": {
                "alignment": {"type": "subscription"},
                "interval": iso(self.collection_interval),
            },
            "invoicing": {
                "autoAdvance": self.auto_advance,
                "draftPeriod": iso(self.draft_period),
                "dueAfter": iso(self.due_after),
                "progressiveBilling": True,
            },
            "payment": {"collectionMethod": "charge_automatically"},
            "tax": {"enabled": True, "enforced": False},
        }

    def view(self) -> Json:
        return {
            "enabled": True,
            "autoAdvance": self.auto_advance,
            "draftPeriod": iso(self.draft_period),
            "collectionInterval": iso(self.collection_interval),
            "payment": self.payment,
            "syncLag": iso(self.sync_lag),
        }


@dataclass(slots=True)
class Expected:
    """One service period of one item version, as the phase iterator yields it."""

    unique_id: str
    sub: Subscription
    phase: Phase
    item_id: str
    rate_card: Json
    period: Period
    full: Period
    billing: Period

    @property
    def price(self) -> Json:
        return dict(self.rate_card.get("price") or {})

    def is_flat(self) -> bool:
        return self.price.get("type") == "flat"

    def in_advance(self) -> bool:
        return self.is_flat() and self.price.get("paymentTerm", "in_advance") == "in_advance"

    def invoice_at(self) -> datetime:
        if self.in_advance():
            return self.billing[0]
        return max(self.period[1], self.billing[1])


@dataclass(slots=True)
class Line:
    id: str
    unique_id: str
    invoice_id: str
    customer_id: str
    sub_id: str
    phase_id: str
    item_id: str
    name: str
    description: str | None
    currency: str
    feature_key: str | None
    price: Json
    period: Period
    billing: Period
    invoice_at: datetime
    created_at: datetime
    updated_at: datetime
    deleted_at: datetime | None = None
    quantity: Decimal | None = None  # snapshotted on a standard invoice (usage lines)

    def is_flat(self) -> bool:
        return self.price.get("type") == "flat"


@dataclass(slots=True)
class Invoice:
    id: str
    customer_id: str
    currency: str
    status: str  # extended status
    number: str
    created_at: datetime
    updated_at: datetime
    lines: list[str] = field(default_factory=list)
    collection_at: datetime | None = None
    draft_until: datetime | None = None
    issued_at: datetime | None = None
    due_at: datetime | None = None
    sent_at: datetime | None = None
    snapshot_at: datetime | None = None
    deleted_at: datetime | None = None
    issues: list[Json] = field(default_factory=list)

    @property
    def gathering(self) -> bool:
        return self.status == "gathering"

    @property
    def immutable(self) -> bool:
        return not (self.gathering or self.status.startswith("draft."))

    @property
    def short_status(self) -> str:
        return self.status.split(".", 1)[0]


class Billing:
    """The billing part of the emulator's state (``State.extensions['billing']``)."""

    def __init__(self, state: State, profile: Profile) -> None:
        self.state = state
        self.profile = profile
        self.lines: dict[str, Line] = {}
        self.by_unique: dict[str, str] = {}
        self.invoices: dict[str, Invoice] = {}
        self.gathering: dict[tuple[str, str], str] = {}
        self.seen: dict[str, tuple[Any, ...]] = {}
        self.next_sync: dict[str, datetime] = {}
        self.dirty: dict[str, datetime] = {}  # changed subscriptions → when the worker syncs
        self.seq: dict[str, int] = {}
        self.last: datetime | None = None

    @staticmethod
    def of(state: State) -> Billing | None:
        book = state.extensions.get(KEY)
        return book if isinstance(book, Billing) else None

    @staticmethod
    def enable(state: State, profile: Profile) -> Billing:
        book = Billing.of(state)
        if book is None:
            book = Billing(state, profile)
            state.extensions[KEY] = book
            book.after_mutation()
        else:
            book.profile = profile
        return book

    # ------------------------------------------------------------------ the worker

    def catch_up(self) -> None:
        """Run what OpenMeter's billing worker would have run since the last look, in order:
        syncs when a generation limit passes, invoicing when a line's ``invoiceAt`` passes,
        invoice advancement at ``collectionAt`` and ``draftUntil``."""
        now = self.state.now()
        if self.last is None:
            self.last = now
        for _ in range(MAX_TICKS):
            t = self._next_event(self.last, now)
            if t is None:
                break
            self._tick(t)
            self.last = t
        if self.last < now:
            self._tick(now)
        self.last = max(self.last, now)

    def _next_event(self, after: datetime, until: datetime) -> datetime | None:
        times = [t for t in self.next_sync.values() if after < t <= until]
        times += [t for t in self.dirty.values() if after < t <= until]
        for inv in self.invoices.values():
            if inv.gathering:
                for lid in inv.lines:
                    line = self.lines[lid]
                    if line.deleted_at is None and after < line.invoice_at <= until:
                        times.append(line.invoice_at)
            elif inv.status not in FINAL:
                for t2 in (inv.collection_at, inv.draft_until):
                    if t2 is not None and after < t2 <= until:
                        times.append(t2)
        return min(times) if times else None

    def _tick(self, t: datetime) -> None:
        customers: set[str] = set()
        due = {s for s, at in self.next_sync.items() if at <= t}
        due |= {s for s, at in self.dirty.items() if at <= t}
        for sub_id in due:
            self.dirty.pop(sub_id, None)
            customers |= self._sync_or_drop(sub_id, t)
        for inv in list(self.invoices.values()):
            if inv.gathering and any(
                self.lines[lid].deleted_at is None and self.lines[lid].invoice_at <= t
                for lid in inv.lines
            ):
                customers.add(inv.customer_id)
        for cid in customers:
            self.invoice_pending(cid, t)
        self._advance_all(t)

    def _sync_or_drop(self, sub_id: str, t: datetime) -> set[str]:
        sub = self.state.subs.get(sub_id)
        if sub is not None:
            self.sync(sub, t)
            return {sub.customer_id}
        self.next_sync.pop(sub_id, None)
        lines = self._lines_of(sub_id)
        for line in lines:
            self._delete(line, t)
        return {line.customer_id for line in lines}

    def after_mutation(self) -> None:
        """Queue a sync of every subscription that changed (OpenMeter publishes a sync event per
        change; its worker runs ``sync_lag`` later, or at once when the lag is zero)."""
        now = self.state.now()
        changed = [s for s in self.seen if s not in self.state.subs]
        for sub_id in changed:
            self.seen.pop(sub_id, None)
        for sub in self.state.subs.values():
            sig = (id(sub), sub.updated_at, sub.active_to, sub.deleted_at)
            if self.seen.get(sub.id) != sig:
                self.seen[sub.id] = sig
                changed.append(sub.id)
        at = self.profile.sync_lag.add_to(now)
        for sub_id in changed:
            self.dirty[sub_id] = min(self.dirty.get(sub_id, at), at)
        if at <= now:
            self._tick(now)
        self.last = now

    # ------------------------------------------------------------------ sync

    def expected(self, sub: Subscription, as_of: datetime) -> tuple[list[Expected], datetime]:
        """``collectUpcomingLines``: the in-scope service periods and the generation limit."""
        out: list[Expected] = []
        max_limit = sub.active_from
        for phase, start, end in sorted(sub.phase_bounds(), key=lambda b: b[1]):
            if not any(v.rate_card.get("price") for vs in phase.items.values() for v in vs):
                continue
            limit = as_of
            current = sub.aligned_period_at(as_of)
            if current is None:
                limit = sub.active_from
            elif limit != current[0]:
                limit = current[1]
            if start > limit:
                first = self._generate(sub, phase, start, end, None)
                if not first:
                    continue
                limit = min(e.invoice_at() for e in first)
            out.extend(self._generate(sub, phase, start, end, limit))
            max_limit = max(max_limit, limit)
            if end is not None and end >= as_of:
                break
        return out, max_limit

    def _generate(
        self,
        sub: Subscription,
        phase: Phase,
        start: datetime,
        end: datetime | None,
        limit: datetime | None,
    ) -> list[Expected]:
        """``PhaseIterator.generateAligned`` (``limit`` None: only each version's first period)."""
        out: list[Expected] = []
        until = None if limit is None else trunc_second(limit) + SECOND - timedelta(microseconds=1)
        for key, versions in phase.items.items():
            for idx, v in enumerate(versions):
                rc = v.rate_card
                if not rc.get("price"):
                    continue
                i_from, i_to = sub.item_cadence(start, end, v)
                base = f"{sub.id}/{phase.key}/{key}/v[{idx}]"
                cadence = rc.get("billingCadence")
                if cadence is None:
                    bp = sub.aligned_period_at(i_from) or (i_from, i_from)
                    to = end if end is not None else (i_to if i_to is not None else i_from)
                    item = Expected(base, sub, phase, v.id, rc, (i_from, to), (i_from, to), bp)
                    out.append(self._truncated(item))
                    continue
                if sub.active_to is not None and i_from >= sub.active_to:
                    break
                if end is not None and i_from >= end:
                    break
                at, n = i_from, 0
                interval = Duration.parse(cadence)
                while n <= 1000:
                    bp = sub.aligned_period_at(at) or period_at(
                        sub.billing_anchor, Duration.parse(sub.billing_cadence), at
                    )
                    full = period_at(sub.billing_anchor, interval, at)
                    lo = max(full[0], i_from)
                    hi = full[1] if i_to is None else min(full[1], i_to)
                    if i_to is not None and i_from == i_to:
                        lo = hi = i_from
                    item = Expected(f"{base}/period[{n}]", sub, phase, v.id, rc, (lo, hi), full, bp)
                    n += 1
                    at = hi
                    if until is not None and item.invoice_at() > until:
                        break
                    out.append(self._truncated(item))
                    if limit is None:
                        break
                    if i_to is not None and at >= i_to:
                        break
                    if end is not None and at >= end:
                        break
        return [e for e in out if e.period[0] < e.period[1] or e.is_flat()]

    @staticmethod
    def _truncated(e: Expected) -> Expected:
        def t(p: Period) -> Period:
            return trunc_second(p[0]), trunc_second(p[1])

        e.period, e.full, e.billing = t(e.period), t(e.full), t(e.billing)
        return e

    def _should_prorate(self, e: Expected) -> bool:
        cfg = e.sub.pro_rating
        if not cfg.get("enabled") or not e.is_flat():
            return False
        if e.sub.active_to is not None and e.sub.active_to <= e.period[1]:
            return False
        return bool(cfg.get("mode") == "prorate_prices")

    def _line_price(self, e: Expected) -> Json | None:
        """``lineFromSubscriptionRateCard``: the price the line carries, None for no line."""
        price = e.price
        if price.get("paymentTerm") == "in_arrears" and e.full[0] == e.full[1]:
            return None
        if not e.is_flat():
            return price
        amount = money(dec(price.get("amount")), e.sub.currency)
        if e.period[0] < e.period[1] and self._should_prorate(e):
            full = nanos(*e.full)
            if full:
                with localcontext() as ctx:
                    ctx.prec = 60
                    pct = (Decimal(nanos(*e.period)) / Decimal(full)).quantize(
                        Decimal("1e-16"), rounding=ROUND_HALF_UP
                    )
                    amount = money(dec(price.get("amount")) * pct, e.sub.currency)
        if amount == 0:
            return None
        return {
            "type": "flat",
            "amount": _num(amount),
            "paymentTerm": price.get("paymentTerm", "in_advance"),
        }

    def _lines_of(self, sub_id: str) -> list[Line]:
        return [line for line in self.lines.values() if line.sub_id == sub_id]

    def sync(self, sub: Subscription, as_of: datetime) -> None:
        """``SynchronizeSubscription`` for one subscription at ``as_of``."""
        expected, limit = self.expected(sub, as_of)
        billable = any(
            v.rate_card.get("price") for p in sub.phases for vs in p.items.values() for v in vs
        )
        if not billable:
            self.next_sync.pop(sub.id, None)
            return
        self.next_sync[sub.id] = limit if limit > as_of else as_of + SECOND
        wanted = {e.unique_id: e for e in expected}
        existing = {line.unique_id: line for line in self._lines_of(sub.id)}
        for uid, line in existing.items():
            e = wanted.get(uid)
            price = None if e is None else self._line_price(e)
            if e is None or price is None:
                if line.deleted_at is None:
                    self._delete(line, as_of)
                continue
            self._update(line, e, price, as_of)
        for uid, e in wanted.items():
            if uid in existing:
                continue
            price = self._line_price(e)
            if price is not None:
                self._create(e, price, as_of)

    def _invoice_of(self, line: Line) -> Invoice:
        return self.invoices[line.invoice_id]

    def _delete(self, line: Line, at: datetime) -> None:
        inv = self._invoice_of(line)
        if line.deleted_at is not None:
            return
        if inv.immutable:
            self._issue(inv, line, "line should be deleted, but the invoice is immutable", at)
            return
        line.deleted_at = at
        line.updated_at = at
        inv.updated_at = at
        if not inv.gathering:
            self._recalculate(inv, at)
        elif all(self.lines[lid].deleted_at is not None for lid in inv.lines):
            inv.deleted_at = at
            self.gathering.pop((inv.customer_id, inv.currency), None)

    def _update(self, line: Line, e: Expected, price: Json, at: datetime) -> None:
        inv = self._invoice_of(line)
        period_changed = line.period != e.period
        amount_changed = line.is_flat() and dec(line.price.get("amount")) != dec(price["amount"])
        if inv.immutable:
            if amount_changed:
                msg = "flat fee line's per unit amount cannot be changed on immutable invoice"
                self._issue(inv, line, f"{msg} (new per unit amount: {price['amount']})", at)
            elif period_changed and not line.is_flat():
                qty = self._usage(line, e.period)
                if qty != line.quantity:
                    msg = "usage based line's quantity cannot be changed on immutable invoice"
                    self._issue(inv, line, f"{msg} (new qty: {qty})", at)
            return
        if not line.is_flat() and e.period[0] == e.period[1]:
            self._delete(line, at)
            return
        changed = period_changed or amount_changed or line.deleted_at is not None
        if not changed:
            return
        line.period = e.period
        if inv.gathering:
            line.invoice_at = e.invoice_at()
        if amount_changed:
            line.price = price
        line.deleted_at = None
        line.updated_at = at
        inv.updated_at = at
        inv.deleted_at = None
        if not inv.gathering:
            self._recalculate(inv, at)

    def _create(self, e: Expected, price: Json, at: datetime) -> None:
        sub = e.sub
        inv = self._gathering_invoice(sub.customer_id, sub.currency, at)
        rc = e.rate_card
        line = Line(
            id=new_ulid(at),
            unique_id=e.unique_id,
            invoice_id=inv.id,
            customer_id=sub.customer_id,
            sub_id=sub.id,
            phase_id=e.phase.id,
            item_id=e.item_id,
            name=str(rc.get("name") or rc.get("key")),
            description=rc.get("description"),
            currency=sub.currency,
            feature_key=rc.get("featureKey"),
            price=price,
            period=e.period,
            billing=e.billing,
            invoice_at=e.invoice_at(),
            created_at=at,
            updated_at=at,
        )
        self.lines[line.id] = line
        self.by_unique[line.unique_id] = line.id
        inv.lines.append(line.id)
        inv.updated_at = at
        inv.deleted_at = None

    def _gathering_invoice(self, customer_id: str, currency: str, at: datetime) -> Invoice:
        key = (customer_id, currency)
        inv_id = self.gathering.get(key)
        if inv_id is not None:
            return self.invoices[inv_id]
        prefix = customer_prefix(self.state.customers[customer_id].name)
        number = f"GATHER-{prefix}-{currency}-{self._next('gathering')}"
        inv = self._new_invoice(customer_id, currency, "gathering", number, at)
        self.gathering[key] = inv.id
        return inv

    def _new_invoice(
        self, customer_id: str, currency: str, status: str, number: str, at: datetime
    ) -> Invoice:
        inv = Invoice(new_ulid(at), customer_id, currency, status, number, at, at)
        self.invoices[inv.id] = inv
        return inv

    def _next(self, scope: str) -> int:
        self.seq[scope] = self.seq.get(scope, 0) + 1
        return self.seq[scope]

    def _issue(self, inv: Invoice, line: Line, message: str, at: datetime) -> None:
        path = f"lines/{line.id}"
        for issue in inv.issues:
            if issue["field"] == path and issue["message"] == message:
                return
        inv.issues.append(
            {
                "id": new_ulid(at),
                "createdAt": fmt(at),
                "updatedAt": fmt(at),
                "severity": "warning",
                "message": message,
                "code": "immutable_invoice_handling_not_supported",
                "component": "subscription_sync",
                "field": path,
            }
        )
        inv.updated_at = at

    # ------------------------------------------------------------------ invoices

    def invoice_pending(self, customer_id: str, at: datetime) -> None:
        """``InvoicePendingLines``: lines whose ``invoiceAt`` passed → one new invoice."""
        for (cid, currency), inv_id in list(self.gathering.items()):
            if cid != customer_id:
                continue
            gathering = self.invoices[inv_id]
            due = [
                lid
                for lid in gathering.lines
                if self.lines[lid].deleted_at is None and self.lines[lid].invoice_at <= at
            ]
            if not due:
                continue
            prefix = customer_prefix(self.state.customers[customer_id].name)
            number = f"DRAFT-{prefix}-{self._next('draft')}"
            inv = self._new_invoice(customer_id, currency, "draft.created", number, at)
            for lid in due:
                gathering.lines.remove(lid)
                self.lines[lid].invoice_id = inv.id
                self.lines[lid].updated_at = at
                inv.lines.append(lid)
            gathering.updated_at = at
            if not any(self.lines[lid].deleted_at is None for lid in gathering.lines):
                gathering.deleted_at = at
                self.gathering.pop((cid, currency), None)
            self._recalculate(inv, at)
            inv.status = "draft.waiting_for_collection"

    def _recalculate(self, inv: Invoice, at: datetime) -> None:
        live = [self.lines[lid] for lid in inv.lines if self.lines[lid].deleted_at is None]
        usage_at = [line.invoice_at for line in live if not line.is_flat()]
        if usage_at:
            inv.collection_at = self.profile.collection_interval.add_to(max(usage_at))
        else:
            inv.collection_at = inv.created_at
        if self.profile.auto_advance:
            base = max(inv.collection_at, inv.created_at)
            inv.draft_until = self.profile.draft_period.add_to(base)
        else:
            inv.draft_until = None
        if inv.status.startswith("draft.") and inv.status != "draft.waiting_for_collection":
            inv.status = "draft.waiting_for_collection"

    def _advance_all(self, at: datetime) -> None:
        for inv in list(self.invoices.values()):
            if not inv.gathering and inv.status not in FINAL:
                self._advance(inv, at)

    def _advance(self, inv: Invoice, at: datetime) -> None:
        if inv.status == "draft.waiting_for_collection":
            if inv.collection_at is None or inv.collection_at > at:
                return
            for lid in inv.lines:
                line = self.lines[lid]
                if line.deleted_at is None:
                    line.quantity = Decimal(1) if line.is_flat() else self._usage(line, line.period)
            inv.snapshot_at = at
            inv.updated_at = at
            if not any(self.lines[lid].deleted_at is None for lid in inv.lines):
                inv.status = "deleted"
                inv.deleted_at = at
                return
            inv.status = (
                "draft.waiting_auto_approval"
                if self.profile.auto_advance
                else "draft.manual_approval_needed"
            )
        if inv.status == "draft.waiting_auto_approval":
            if inv.draft_until is None or inv.draft_until > at:
                return
            cust = self.state.customers[inv.customer_id]
            inv.number = f"OM-SANDBOX-{customer_prefix(cust.name)}-{self._next('sandbox')}"
            inv.issued_at = at
            inv.sent_at = at
            inv.due_at = self.profile.due_after.add_to(at)
            inv.updated_at = at
            inv.status = "paid" if self.profile.payment == "paid" else "payment_processing.pending"

    # ------------------------------------------------------------------ amounts

    def _usage(self, line: Line, period: Period) -> Decimal:
        if not line.feature_key:
            return Decimal(0)
        cust = self.state.customers.get(line.customer_id)
        fid = self.state.feature_by_key.get(line.feature_key)
        if cust is None or fid is None:
            return Decimal(0)
        slug = self.state.features[fid].meter_slug
        meter = next((m for m in self.state.meters.values() if m.slug == slug), None)
        if meter is None:
            return Decimal(0)
        end = min(period[1], self.state.now())
        if end <= period[0]:
            return Decimal(0)
        return dec(self.state.events.total(cust.subjects(), meter, period[0], end))

    def quantity(self, line: Line) -> Decimal:
        if line.is_flat():
            return Decimal(1)
        if line.quantity is not None and not self._invoice_of(line).gathering:
            return line.quantity
        return self._usage(line, line.period)

    def totals(self, line: Line) -> tuple[Decimal, Decimal, Decimal]:
        """(amount, charges, discounts) of one line (``lineservice``'s pricers)."""
        return price_line(line.price, self.quantity(line), line.currency)


def price_line(price: Json, qty: Decimal, currency: str) -> tuple[Decimal, Decimal, Decimal]:
    """Detailed lines rounded one by one, then the commitments: a minimum spend is a charge,
    a maximum spend a discount (``lineservice/price*.go``, ``commitments.go``)."""
    kind = price.get("type")
    parts: list[Decimal] = []
    if kind == "flat":
        parts.append(money(dec(price.get("amount")), currency))
    elif kind == "unit":
        if qty > 0:
            parts.append(money(qty * dec(price.get("amount")), currency))
    elif kind == "package":
        size = dec(price.get("quantityPerPackage"))
        packages = Decimal(math.ceil(qty / size)) if size > 0 else Decimal(0)
        if packages > 0:
            parts.append(money(packages * dec(price.get("amount")), currency))
    elif kind == "dynamic":
        if qty > 0:
            parts.append(money(qty * dec(price.get("multiplier", "1")), currency))
    elif kind == "tiered":
        parts.extend(_tiered(price, qty, currency))
    amount = sum(parts, Decimal(0))
    charges = discounts = Decimal(0)
    minimum, maximum = price.get("minimumAmount"), price.get("maximumAmount")
    if maximum is not None and amount > money(dec(maximum), currency):
        discounts = amount - money(dec(maximum), currency)
    if minimum is not None and amount < dec(minimum):
        charges = money(dec(minimum) - amount, currency)
    return amount, charges, discounts


def _tiered(price: Json, qty: Decimal, currency: str) -> list[Decimal]:
    tiers = list(price.get("tiers") or [])

    def bound(t: Json) -> Decimal | None:
        return None if t.get("upToAmount") is None else dec(t["upToAmount"])

    ordered = sorted(tiers, key=lambda t: (bound(t) is None, bound(t) or Decimal(0)))

    def unit(t: Json) -> Decimal | None:
        u = t.get("unitPrice")
        return None if not u else dec(u.get("amount"))

    def flat(t: Json) -> Decimal | None:
        f = t.get("flatPrice")
        return None if not f else dec(f.get("amount"))

    out: list[Decimal] = []
    if price.get("mode") == "volume":
        idx = next(
            (i for i, t in enumerate(ordered) if bound(t) is None or qty <= (bound(t) or 0)),
            len(ordered) - 1,
        )
        tier = tiers[idx]  # OpenMeter indexes the stored list with the sorted position
        if flat(tier) is not None:
            out.append(money(flat(tier) or Decimal(0), currency))
        if unit(tier) is not None and qty != 0:
            out.append(money(qty * (unit(tier) or Decimal(0)), currency))
        return out
    previous = Decimal(0)
    entered: list[tuple[Json, Decimal, Decimal]] = []
    for t in ordered:
        if previous >= qty:
            break
        upper = bound(t) if bound(t) is not None else qty
        assert upper is not None
        entered.append((t, previous, min(upper, qty)))
        previous = upper
    if qty == 0 and tiers:
        entered.append((tiers[0], Decimal(0), Decimal(0)))
    for t, lo, hi in entered:
        if unit(t) is not None:
            out.append(money((hi - lo) * (unit(t) or Decimal(0)), currency))
        if flat(t) is not None:
            out.append(money(flat(t) or Decimal(0), currency))
        if hi >= qty:
            break
    return out


# ---------------------------------------------------------------------- API views


def _num(d: Decimal) -> str:
    text = format(d.normalize(), "f") if d == d.to_integral() else format(d, "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return text or "0"


def _totals(amount: Decimal, charges: Decimal, discounts: Decimal) -> Json:
    return {
        "amount": _num(amount),
        "chargesTotal": _num(charges),
        "discountsTotal": _num(discounts),
        "taxesInclusiveTotal": "0",
        "taxesExclusiveTotal": "0",
        "taxesTotal": "0",
        "total": _num(amount + charges - discounts),
    }


def line_view(book: Billing, line: Line) -> tuple[Json, tuple[Decimal, Decimal, Decimal]]:
    amount, charges, discounts = book.totals(line)
    out: Json = {
        "type": "usage_based",
        "id": line.id,
        "name": line.name,
        "createdAt": fmt(line.created_at),
        "updatedAt": fmt(line.updated_at),
        "invoiceAt": fmt(line.invoice_at),
        "currency": line.currency,
        "status": "valid",
        "managedBy": "subscription",
        "invoice": {"id": line.invoice_id},
        "period": {"from": fmt(line.period[0]), "to": fmt(line.period[1])},
        "price": dict(line.price),
        "rateCard": {"price": dict(line.price)},
        "totals": _totals(amount, charges, discounts),
        "subscription": {
            # beta.227 mapSubscriptionReferencesToAPI: subscription ↔ item ids swapped
            "subscription": {"id": line.item_id},
            "phase": {"id": line.phase_id},
            "item": {"id": line.sub_id},
            "billingPeriod": {"from": fmt(line.billing[0]), "to": fmt(line.billing[1])},
        },
    }
    if line.description:
        out["description"] = line.description
    if line.deleted_at is not None:
        out["deletedAt"] = fmt(line.deleted_at)
    if line.feature_key:
        out["featureKey"] = line.feature_key
        out["rateCard"]["featureKey"] = line.feature_key
    if not book._invoice_of(line).gathering or not line.is_flat():
        out["quantity"] = _num(book.quantity(line))
    return out, (amount, charges, discounts)


def invoice_view(book: Billing, inv: Invoice, *, lines: bool, deleted_lines: bool = False) -> Json:
    cust: Customer = book.state.customers[inv.customer_id]
    shown = [
        book.lines[lid] for lid in inv.lines if deleted_lines or book.lines[lid].deleted_at is None
    ]
    live = [line for line in shown if line.deleted_at is None]
    views = [line_view(book, line) for line in shown]
    amount = charges = discounts = Decimal(0)
    for line, (_v, (a, c, d)) in zip(shown, views, strict=True):
        if line.deleted_at is None:
            amount, charges, discounts = amount + a, charges + c, discounts + d
    out: Json = {
        "id": inv.id,
        "type": "standard",
        "createdAt": fmt(inv.created_at),
        "updatedAt": fmt(inv.updated_at),
        "supplier": {"name": "OpenMeter emulator"},
        "customer": {
            "id": cust.id,
            "name": cust.name,
            "usageAttribution": {"subjectKeys": list(cust.subject_keys)},
        },
        "number": inv.number,
        "currency": inv.currency,
        "totals": _totals(amount, charges, discounts),
        "status": inv.short_status,
        "statusDetails": {
            "immutable": inv.immutable,
            "failed": False,
            "extendedStatus": inv.status,
            "availableActions": {},
        },
        "workflow": {
            "sourceBillingProfileId": book.profile.id,
            "workflow": book.profile.workflow(),
        },
    }
    if cust.key:
        out["customer"]["key"] = cust.key
    for name, value in (
        ("collectionAt", inv.collection_at),
        ("draftUntil", inv.draft_until),
        ("issuedAt", inv.issued_at),
        ("dueAt", inv.due_at),
        ("sentToCustomerAt", inv.sent_at),
        ("quantitySnapshotedAt", inv.snapshot_at),
        ("deletedAt", inv.deleted_at),
    ):
        if value is not None:
            out[name] = fmt(value)
    if live:
        out["period"] = {
            "from": fmt(min(line.period[0] for line in live)),
            "to": fmt(max(line.period[1] for line in live)),
        }
    if inv.issues:
        out["validationIssues"] = [dict(i) for i in inv.issues]
    if lines and views:
        out["lines"] = [v for v, _ in views]
    return out


def check_ulid(value: str, name: str) -> None:
    if len(value) != 26 or value[0] not in "01234567" or not set(value) <= ULID_CHARS:
        raise E.bad_request(
            f'parameter "{name}" in query has an error: string doesn\'t match the regular '
            'expression "^[0-7][0-9A-HJKMNP-TV-Za-hjkmnp-tv-z]{25}$"'
        )


__all__ = ["Billing", "Profile", "invoice_view", "line_view", "price_line"]
