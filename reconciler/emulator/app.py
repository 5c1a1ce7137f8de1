"""The ASGI application: OpenMeter's API (``/api/v1``, ``/api/v2``) plus ``/_emulator`` control.

Request flow: :class:`EmulatorASGI` (request log + fault injection) → a small method/path router
→ a handler that runs under the state lock and returns ``(status, json)``.
"""

from __future__ import annotations

import asyncio
import fnmatch
import http
import itertools
import json
import re
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qsl
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml

from reconciler.emulator import errors as E
from reconciler.emulator import views
from reconciler.emulator.addons import Addons, addon_view, plan_addon_view, sub_addon_view
from reconciler.emulator.billing import Billing, Profile, check_ulid, invoice_view
from reconciler.emulator.catalog import load_catalog, parse_catalog_text
from reconciler.emulator.clock import Clock
from reconciler.emulator.state import Customer, State, num
from reconciler.emulator.timeutil import (
    Duration,
    DurationError,
    TimeParseError,
    add_months,
    fmt,
    parse_time,
)
from reconciler.emulator.usage import json_path

Json = dict[str, Any]
Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


class ConnectionDropped(Exception):
    """Raised to abort a connection after a mutation was applied (fault ``dropAfterApply``)."""


@dataclass
class Request:
    method: str
    path: str
    query: list[tuple[str, str]]
    headers: dict[str, str]
    body: bytes
    params: dict[str, str] = field(default_factory=dict)

    def q(self, name: str) -> str | None:
        for k, v in self.query:
            if k == name:
                return v
        return None

    def qs(self, name: str) -> list[str]:
        return [v for k, v in self.query if k == name]

    def json(self, *, required: bool = True) -> Any:
        if not self.body.strip():
            if required:
                raise E.bad_request("request body has an error: value is required but missing")
            return None
        try:
            return json.loads(self.body)
        except ValueError as exc:
            raise E.bad_request(
                f"request body has an error: failed to decode request body: {exc}"
            ) from exc


Handler = Callable[[Request], tuple[int, Any]]


@dataclass
class FaultRule:
    id: int
    method: str | None
    path: str
    status: int | None
    delay: float
    drop_after_apply: bool
    apply_before_status: bool
    remaining: int | None

    def matches(self, method: str, path: str) -> bool:
        if self.remaining is not None and self.remaining <= 0:
            return False
        if self.method and self.method.upper() != method:
            return False
        return fnmatch.fnmatchcase(path, self.path)

    def as_json(self) -> Json:
        return {
            "id": self.id,
            "method": self.method,
            "path": self.path,
            "status": self.status,
            "delaySeconds": self.delay,
            "dropAfterApply": self.drop_after_apply,
            "applyBeforeStatus": self.apply_before_status,
            "count": self.remaining,
        }


def _int_param(req: Request, name: str, default: int, lo: int, hi: int | None) -> int:
    raw = req.q(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError as exc:
        raise E.bad_request(
            f'parameter "{name}" in query has an error: value {raw}: an invalid '
            "integer: invalid syntax"
        ) from exc
    if value < lo or (hi is not None and value > hi):
        bound = f"number must be at least {lo}" if value < lo else f"number must be at most {hi}"
        raise E.bad_request(f'parameter "{name}" in query has an error: {bound}')
    return value


INVOICE_STATUSES = (
    "gathering", "draft", "issuing", "issued", "payment_processing", "overdue", "paid",
    "uncollectible", "voided",
)  # fmt: skip


def _paging(req: Request) -> tuple[int, int]:
    return _int_param(req, "page", 1, 1, None), _int_param(req, "pageSize", 100, 1, 1000)


def _slice(items: list[Any], page: int, size: int) -> list[Any]:
    return items[(page - 1) * size : page * size]


class Emulator:
    def __init__(
        self,
        clock: Clock | None = None,
        catalog: Json | None = None,
        billing: Profile | None = None,
    ) -> None:
        self.clock = clock or Clock()
        # the billing profile survives ``/_emulator/reset`` (a deployment setting, not data)
        self.billing_profile = billing
        self.state = State(self.clock)
        self.catalog = catalog
        self.seq = itertools.count(1)
        self.log: list[Json] = []
        self.faults: list[FaultRule] = []
        self.fault_ids = itertools.count(1)
        self.routes: list[tuple[str, re.Pattern[str], Handler]] = []
        self._register()
        self.state.edit_guards.append(lambda sub: Addons.of(self.state).forbid_edit(sub))
        if catalog is not None:
            load_catalog(self.state, catalog)
        if billing is not None:
            Billing.enable(self.state, billing)

    # ------------------------------------------------------------------ routing

    def route(self, method: str, pattern: str, handler: Handler) -> None:
        regex = "^" + re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", pattern) + "$"
        self.routes.append((method, re.compile(regex), handler))

    def dispatch(self, req: Request) -> tuple[int, Any]:
        allowed = False
        for method, regex, handler in self.routes:
            m = regex.match(req.path)
            if m is None:
                continue
            if method != req.method:
                allowed = True
                continue
            req.params = m.groupdict()
            with self.state.lock:
                book = Billing.of(self.state) if req.path.startswith("/api/") else None
                if book is None:
                    return handler(req)
                # OpenMeter's billing worker runs beside the API: first what it would have done
                # by now, then the sync that a change to a subscription triggers
                book.catch_up()
                out = handler(req)
                if req.method != "GET" and out[0] < 400:
                    book.after_mutation()
                return out
        if allowed:
            raise E.ApiError(405, "method not allowed")
        raise E.ApiError(404, "not found error: route not found")

    def _register(self) -> None:
        r = self.route
        r("GET", "/api/v1/customers", self.list_customers)
        r("POST", "/api/v1/customers", self.create_customer)
        r("GET", "/api/v1/customers/{c}", self.get_customer)
        r("DELETE", "/api/v1/customers/{c}", self.delete_customer)
        r("GET", "/api/v1/customers/{c}/subscriptions", self.list_customer_subscriptions)
        r("GET", "/api/v1/customers/{c}/access", self.customer_access)
        r("GET", "/api/v1/customers/{c}/entitlements/{f}/value", self.value_v1)
        r("GET", "/api/v2/customers/{c}/entitlements", self.list_ents_v2)
        r("GET", "/api/v2/customers/{c}/entitlements/{e}", self.get_ent_v2)
        r("DELETE", "/api/v2/customers/{c}/entitlements/{e}", self.mutate_ent_v2)
        r("GET", "/api/v2/customers/{c}/entitlements/{e}/value", self.value_v2)
        r("PUT", "/api/v2/customers/{c}/entitlements/{e}/override", self.mutate_ent_v2)
        r("POST", "/api/v2/customers/{c}/entitlements/{e}/grants", self.mutate_ent_v2)
        r("GET", "/api/v2/customers/{c}/entitlements/{e}/grants", self.grants_v2)
        r("POST", "/api/v2/customers/{c}/entitlements/{e}/reset", self.mutate_ent_v2)
        r("GET", "/api/v2/entitlements/{e}", self.get_ent_by_id_v2)
        r("GET", "/api/v1/subjects/{subj}/entitlements/{e}/value", self.subject_value_v1)
        r("GET", "/api/v1/subjects/{subj}/entitlements/{e}", self.get_ent_v1)
        r("DELETE", "/api/v1/subjects/{subj}/entitlements/{e}", self.delete_ent_v1)
        r("GET", "/api/v1/meters", self.list_meters)
        r("POST", "/api/v1/meters", self.create_meter)
        r("GET", "/api/v1/meters/{m}", self.get_meter)
        r("GET", "/api/v1/meters/{m}/query", self.query_meter)
        r("GET", "/api/v1/features", self.list_features)
        r("POST", "/api/v1/features", self.create_feature)
        r("GET", "/api/v1/features/{f}", self.get_feature)
        r("POST", "/api/v1/events", self.ingest_events)
        r("GET", "/api/v1/plans", self.list_plans)
        r("POST", "/api/v1/plans", self.create_plan)
        r("GET", "/api/v1/plans/{p}", self.get_plan)
        r("PUT", "/api/v1/plans/{p}", self.update_plan)
        r("DELETE", "/api/v1/plans/{p}", self.delete_plan)
        r("POST", "/api/v1/plans/{p}/publish", self.publish_plan)
        r("POST", "/api/v1/plans/{p}/archive", self.archive_plan)
        r("POST", "/api/v1/plans/{p}/next", self.next_plan)
        r("GET", "/api/v1/addons", self.list_addons)
        r("POST", "/api/v1/addons", self.create_addon)
        r("GET", "/api/v1/addons/{a}", self.get_addon)
        r("POST", "/api/v1/addons/{a}/publish", self.publish_addon)
        r("POST", "/api/v1/addons/{a}/archive", self.archive_addon)
        r("GET", "/api/v1/plans/{p}/addons", self.list_plan_addons)
        r("POST", "/api/v1/plans/{p}/addons", self.create_plan_addon)
        r("GET", "/api/v1/subscriptions/{s}/addons", self.list_sub_addons)
        r("POST", "/api/v1/subscriptions/{s}/addons", self.create_sub_addon)
        r("GET", "/api/v1/subscriptions/{s}/addons/{sa}", self.get_sub_addon)
        r("PATCH", "/api/v1/subscriptions/{s}/addons/{sa}", self.update_sub_addon)
        r("POST", "/api/v1/subscriptions", self.create_subscription)
        r("GET", "/api/v1/subscriptions/{s}", self.get_subscription)
        r("PATCH", "/api/v1/subscriptions/{s}", self.edit_subscription)
        r("DELETE", "/api/v1/subscriptions/{s}", self.delete_subscription)
        r("POST", "/api/v1/subscriptions/{s}/change", self.change_subscription)
        r("POST", "/api/v1/subscriptions/{s}/cancel", self.cancel_subscription)
        r("POST", "/api/v1/subscriptions/{s}/unschedule-cancelation", self.unschedule)
        r("POST", "/api/v1/subscriptions/{s}/restore", self.restore)
        r("POST", "/api/v1/subscriptions/{s}/migrate", self.migrate)
        r("GET", "/api/v1/billing/invoices", self.list_invoices)
        r("GET", "/api/v1/billing/invoices/{i}", self.get_invoice)
        # control API
        r("GET", "/_emulator/clock", self.get_clock)
        r("POST", "/_emulator/clock", self.set_clock)
        r("POST", "/_emulator/clock/real", self.real_clock)
        r("POST", "/_emulator/reset", self.reset)
        r("POST", "/_emulator/catalog", self.load_catalog)
        r("GET", "/_emulator/requests", self.get_requests)
        r("DELETE", "/_emulator/requests", self.clear_requests)
        r("POST", "/_emulator/bulk", self.bulk)
        r("GET", "/_emulator/faults", self.list_faults)
        r("POST", "/_emulator/faults", self.add_fault)
        r("DELETE", "/_emulator/faults", self.clear_faults)
        r("GET", "/_emulator/health", lambda req: (200, {"status": "ok"}))
        r("GET", "/_emulator/billing", self.get_billing)
        r("POST", "/_emulator/billing", self.set_billing)

    # ------------------------------------------------------------------ customers

    def _customer_subs(self, c: Customer) -> list[Any]:
        return self.state.customer_subscriptions_active_at(c, self.state.now())

    def _expand(self, req: Request) -> bool:
        """``customer/httpdriver/customer.go``: ``expand`` defaults to ``[subscriptions]``."""
        values = req.qs("expand")
        return not values or "subscriptions" in values

    def list_customers(self, req: Request) -> tuple[int, Any]:
        page, size = _paging(req)
        st = self.state
        include_deleted = req.q("includeDeleted") == "true"
        key = req.q("key")
        if key is not None:
            cid = st.customer_by_key.get(key)
            ids = [cid] if cid else []
        else:
            ids = st.customer_order
        subject = req.q("subject")
        if subject is not None:
            cid = st.customer_by_subject.get(subject)
            ids = [i for i in ids if i == cid]
        customers = [st.customers[i] for i in ids]
        plan_key = req.q("planKey")
        if plan_key is not None:
            # ``customer/adapter/customer.go`` ``applyActiveSubscriptionFilterWithPlanKey``
            now_ = st.now()
            customers = [
                c
                for c in customers
                if any(
                    s.plan_ref is not None and s.plan_ref.get("key") == plan_key
                    for s in st.customer_subscriptions_active_at(c, now_)
                    if s.created_at <= now_
                )
            ]
        if not include_deleted:
            customers = [c for c in customers if c.deleted_at is None]
        name = req.q("name")
        if name is not None:
            customers = [c for c in customers if name.lower() in c.name.lower()]
        order_by = req.q("orderBy") or "id"
        if order_by == "name":
            customers.sort(key=lambda c: c.name)
        elif order_by == "createdAt":
            customers.sort(key=lambda c: c.created_at)
        if req.q("order") == "DESC":
            customers.reverse()
        now = st.now()
        expand = self._expand(req)
        items = [
            views.customer(c, self._customer_subs(c), now, expand)
            for c in _slice(customers, page, size)
        ]
        return 200, views.page(items, len(customers), page, size)

    def create_customer(self, req: Request) -> tuple[int, Any]:
        c = self.state.create_customer(req.json())
        return 201, views.customer(c, [], self.state.now(), True)

    def get_customer(self, req: Request) -> tuple[int, Any]:
        c = self.state.customer(req.params["c"], allow_deleted=True)
        expand = self._expand(req)
        subs = self._customer_subs(c) if expand else []
        return 200, views.customer(c, subs, self.state.now(), expand)

    def delete_customer(self, req: Request) -> tuple[int, Any]:
        self.state.delete_customer(req.params["c"])
        return 204, None

    def list_customer_subscriptions(self, req: Request) -> tuple[int, Any]:
        """``productcatalog/subscription/http/get.go`` ``ListCustomerSubscriptions``: server default
        order activeFrom DESC; no page params ⇒ all items with page 0 / pageSize 0."""
        st = self.state
        c = st.customer(req.params["c"])
        now = st.now()
        subs = [
            st.subs[i]
            for i in st.subs_by_customer.get(c.id, [])
            if (d := st.subs[i].deleted_at) is None or d > now
        ]
        statuses = req.qs("status")
        for s_ in statuses:
            if s_ not in ("active", "inactive", "canceled", "scheduled"):
                raise E.bad_request(
                    f'parameter "status" in query has an error: value is not one '
                    f"of the allowed values: {s_}"
                )
        if statuses:
            subs = [s for s in subs if s.status(now) in statuses]
        order_by = req.q("orderBy") or "activeFrom"
        far = datetime.max.replace(tzinfo=UTC)
        if order_by == "activeTo":
            subs.sort(key=lambda s: s.active_to or far)
        else:
            subs.sort(key=lambda s: s.active_from)
        if (req.q("order") or "DESC") == "DESC":
            subs.reverse()
        if req.q("page") is None and req.q("pageSize") is None:
            return 200, views.page([views.subscription(s, now) for s in subs], len(subs), 0, 0)
        page, size = _paging(req)
        items = [views.subscription(s, now) for s in _slice(subs, page, size)]
        return 200, views.page(items, len(subs), page, size)

    # ------------------------------------------------------------------ entitlements

    def value_v1(self, req: Request) -> tuple[int, Any]:
        st = self.state
        c = st.customer(req.params["c"])
        return 200, st.entitlement_value(c, st.entitlement_of_feature(c, req.params["f"]))

    def value_v2(self, req: Request) -> tuple[int, Any]:
        st = self.state
        c = st.customer(req.params["c"])
        return 200, st.entitlement_value(c, st.entitlement_by_id_or_feature(c, req.params["e"]))

    def customer_access(self, req: Request) -> tuple[int, Any]:
        st = self.state
        c = st.customer(req.params["c"])
        now = st.now()
        out: Json = {}
        for eid in st.ents_by_customer.get(c.id, []):
            e = st.ents[eid]
            if e.active_at(now):
                out[e.feature_key] = st.entitlement_value(c, e)
        return 200, {"entitlements": out}

    def list_ents_v2(self, req: Request) -> tuple[int, Any]:
        st = self.state
        c = st.customer(req.params["c"])
        page, size = _paging(req)
        now = st.now()
        ents = [st.ents[i] for i in st.ents_by_customer.get(c.id, []) if st.ents[i].active_at(now)]
        items = [views.entitlement(st, e, v2=True) for e in _slice(ents, page, size)]
        return 200, views.page(items, len(ents), page, size)

    def get_ent_v2(self, req: Request) -> tuple[int, Any]:
        st = self.state
        c = st.customer(req.params["c"])
        e = st.entitlement_by_id_or_feature(c, req.params["e"])
        if e is None:
            raise E.not_found(f"entitlement not found: {req.params['e']}")
        return 200, views.entitlement(st, e, v2=True)

    def get_ent_by_id_v2(self, req: Request) -> tuple[int, Any]:
        st = self.state
        e = st.ents.get(req.params["e"])
        if e is None or e.is_deleted(st.now()):
            raise E.not_found(f"entitlement not found: {req.params['e']}")
        return 200, views.entitlement(st, e, v2=True)

    def _ent_v1(self, req: Request) -> Any:
        """``entitlement/driver/entitlement.go``: the v1 subject routes look the entitlement up
        by id only (the subject in the path is not used)."""
        st = self.state
        e = st.ents.get(req.params["e"])
        if e is None or e.is_deleted(st.now()):
            raise E.not_found(f"entitlement not found: {req.params['e']}")
        return e

    def subject_value_v1(self, req: Request) -> tuple[int, Any]:
        """``GET /api/v1/subjects/{subject}/entitlements/{idOrFeatureKey}/value``
        (``entitlement/driver/entitlement.go`` ``GetEntitlementValue``): the subject resolves to
        the customer whose usage attribution lists it (``customer.go``
        ``GetCustomerByUsageAttribution``, 404 otherwise); the value is the customer's, so usage
        counts every subject of that customer (e2e ``multisubject_test.go``)."""
        st = self.state
        cid = st.customer_by_subject.get(req.params["subj"])
        c = st.customers.get(cid) if cid else None
        if c is None or c.deleted_at is not None:
            raise E.not_found(f"subject not found: {req.params['subj']}")
        return 200, st.entitlement_value(c, st.entitlement_by_id_or_feature(c, req.params["e"]))

    def get_ent_v1(self, req: Request) -> tuple[int, Any]:
        return 200, views.entitlement(self.state, self._ent_v1(req), v2=False)

    def delete_ent_v1(self, req: Request) -> tuple[int, Any]:
        """``DeleteEntitlement`` → connector → ``entitlement/hooks/subscription/hook.go``
        ``PreDelete``: 403 for a subscription-managed entitlement, as on the v2 route."""
        e = self._ent_v1(req)
        self.state.forbid_managed(e)
        raise E.ApiError(
            501, "not implemented: only subscription-managed entitlements are emulated"
        )

    def mutate_ent_v2(self, req: Request) -> tuple[int, Any]:
        """Override / grant / reset / delete: 403 for subscription-managed entitlements
        (``entitlement/hooks/subscription/hook.go``). Only managed entitlements exist here."""
        st = self.state
        c = st.customer(req.params["c"])
        e = st.entitlement_by_id_or_feature(c, req.params["e"])
        if e is None:
            raise E.not_found(f"entitlement not found: {req.params['e']}")
        st.forbid_managed(e)
        raise E.ApiError(
            501, "not implemented: only subscription-managed entitlements are emulated"
        )

    def grants_v2(self, req: Request) -> tuple[int, Any]:
        st = self.state
        c = st.customer(req.params["c"])
        e = st.entitlement_by_id_or_feature(c, req.params["e"])
        if e is None:
            raise E.not_found(f"entitlement not found: {req.params['e']}")
        items = []
        if e.grant_id and e.issue_after_reset is not None and e.grant_effective_at:
            amount = num(e.issue_after_reset)
            items.append(
                {
                    "id": e.grant_id,
                    "entitlementId": e.id,
                    "amount": amount,
                    "priority": e.issue_priority or 1,
                    "effectiveAt": fmt(e.grant_effective_at),
                    "minRolloverAmount": amount,
                    "maxRolloverAmount": amount,
                    "annotations": {"issueAfterReset": True},
                    "createdAt": fmt(e.created_at),
                    "updatedAt": fmt(e.updated_at),
                }
            )
        return 200, views.page(items, len(items), 1, 100)

    # ------------------------------------------------------------------ meters / features

    def list_meters(self, req: Request) -> tuple[int, Any]:
        return 200, [views.meter(m) for m in self.state.meters.values()]

    def create_meter(self, req: Request) -> tuple[int, Any]:
        """``meter/httphandler/meter.go`` ``CreateMeter`` encodes with ``http.StatusOK``; the
        OpenAPI document declares 201. The implementation wins."""
        return 200, views.meter(self.state.create_meter(req.json()))

    def get_meter(self, req: Request) -> tuple[int, Any]:
        return 200, views.meter(self.state.meter(req.params["m"]))

    def list_features(self, req: Request) -> tuple[int, Any]:
        feats = [views.feature(f) for f in self.state.features.values()]
        if req.q("page") is None and req.q("pageSize") is None:
            return 200, feats
        page, size = _paging(req)
        return 200, views.page(_slice(feats, page, size), len(feats), page, size)

    def create_feature(self, req: Request) -> tuple[int, Any]:
        return 201, views.feature(self.state.create_feature(req.json()))

    def get_feature(self, req: Request) -> tuple[int, Any]:
        return 200, views.feature(self.state.feature(req.params["f"]))

    def query_meter(self, req: Request) -> tuple[int, Any]:
        """``meter/httphandler/query.go`` + ``streaming/clickhouse/meter_query.go``: events with
        ``from ≤ time < to``; windows are ClickHouse tumbling windows in ``windowTimeZone``;
        only windows with events are returned; without ``windowSize`` the row spans
        ``[from, to]`` (``connector.go`` ``QueryMeter`` replaces the window with the period).
        ``filterCustomerId`` adds ``customer_id`` to the group-by; ``subject`` adds ``subject``."""
        st = self.state
        meter = st.meter(req.params["m"])

        def t(name: str) -> datetime | None:
            raw = req.q(name)
            if raw is None:
                return None
            try:
                return parse_time(raw)
            except TimeParseError as exc:
                raise E.bad_request(
                    f'parameter "{name}" in query has an error: string doesn\'t '
                    'match the format "date-time"'
                ) from exc

        frm, to = t("from"), t("to")
        if frm is not None and to is not None:
            if frm == to:
                raise E.validation("from and to cannot be equal")
            if frm > to:
                raise E.validation("from must be before to")
        window = req.q("windowSize")
        if window is not None and window not in ("MINUTE", "HOUR", "DAY", "MONTH"):
            raise E.bad_request(
                'parameter "windowSize" in query has an error: value is not one of '
                "the allowed values"
            )
        tzname = req.q("windowTimeZone") or "UTC"
        try:
            tz = ZoneInfo(tzname)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise E.validation(f"invalid time zone: unknown time zone {tzname}") from exc
        group_by = list(req.qs("groupBy"))
        for g in group_by:
            if g not in ("subject", "customer_id") and g not in meter.group_by:
                raise E.validation(f"invalid group by: {g}")
        subjects_filter = req.qs("subject")
        if subjects_filter and "subject" not in group_by:
            group_by.append("subject")
        cust_ids = req.qs("filterCustomerId")
        customers: list[Customer] = []
        for cid in cust_ids:
            if cid not in st.customers:
                raise E.not_found(f"customer with id {cid} not found in default namespace")
            customers.append(st.customers[cid])
        if customers and "customer_id" not in group_by:
            group_by.append("customer_id")
        if len(subjects_filter) > 1 and "subject" not in group_by:
            raise E.validation("multiple subject filters are only allowed with subject group by")
        if "customer_id" in group_by and not customers:
            raise E.validation("customer filter is required with customer_id group by")
        # candidate (subject, customer) pairs
        pairs: list[tuple[str, Customer | None]] = []
        if customers:
            for c in customers:
                for s in c.subjects():
                    if not subjects_filter or s in subjects_filter:
                        pairs.append((s, c))
        else:
            known = {s for (s, slug) in st.events.index if slug == meter.slug}
            for s in sorted(known):
                if not subjects_filter or s in subjects_filter:
                    pairs.append((s, st.customers.get(st.customer_by_subject.get(s, ""))))
        lo = None if frm is None else frm.timestamp()
        hi = None if to is None else to.timestamp()
        buckets: dict[tuple[Any, ...], list[Any]] = {}
        row_subject: str | None
        bounds: dict[tuple[Any, ...], tuple[float, float]] = {}
        for subject, cust in pairs:
            series = st.events.series(subject, meter.slug)
            if series is None:
                continue
            a, b = series.span(lo, hi)
            for i in range(a, b):
                ts = series.times[i]
                groups = series.groups[i]
                if window is not None:
                    ws, we = _window(ts, window, tz)
                else:
                    ws, we = 0.0, 0.0
                gkey = tuple(
                    sorted(
                        (g, groups.get(g)) for g in group_by if g not in ("subject", "customer_id")
                    )
                )
                key = (
                    ws,
                    we,
                    subject if "subject" in group_by else None,
                    cust.id if (cust and "customer_id" in group_by) else None,
                    gkey,
                )
                buckets.setdefault(key, []).append(
                    1 if meter.aggregation == "COUNT" else series.values[i]
                )
                old = bounds.get(key, (ts, ts))
                bounds[key] = (min(old[0], ts), max(old[1], ts))
        from reconciler.emulator.usage import aggregate

        rows = []
        for key in sorted(buckets, key=lambda k: (k[0], str(k[2]), str(k[3]), str(k[4]))):
            ws, we, row_subject, row_cid, gkey = key
            if window is None:
                first, last = bounds[key]
                start = frm or datetime.fromtimestamp(first - first % 60, UTC)
                end = to or datetime.fromtimestamp(last - last % 60 + 60, UTC)
            else:
                start = datetime.fromtimestamp(ws, UTC)
                end = datetime.fromtimestamp(we, UTC)
            row: Json = {
                "value": num(aggregate(meter.aggregation, buckets[key])),
                "windowStart": fmt(start),
                "windowEnd": fmt(end),
                "subject": row_subject,
                "groupBy": {g: v for g, v in gkey},
            }
            if row_cid is not None:
                row["customerId"] = row_cid
            rows.append(row)
        out: Json = {"data": rows}
        if frm is not None:
            out["from"] = fmt(frm)
        if to is not None:
            out["to"] = fmt(to)
        if window is not None:
            out["windowSize"] = window
        return 200, out

    # ------------------------------------------------------------------ events

    def ingest_events(self, req: Request) -> tuple[int, Any]:
        ctype = req.headers.get("content-type", "application/json").split(";")[0].strip()
        payload = req.json()
        if ctype == "application/cloudevents+json":
            events = [payload]
        elif ctype == "application/cloudevents-batch+json":
            if not isinstance(payload, list):
                raise E.bad_request("request body has an error: batch must be an array")
            events = payload
        elif ctype == "application/json":
            events = payload if isinstance(payload, list) else [payload]
        else:
            raise E.bad_request(f"request body has an error: unsupported content type {ctype}")
        self.state.ingest(events)
        return 204, None

    # ------------------------------------------------------------------ plans

    def list_plans(self, req: Request) -> tuple[int, Any]:
        st = self.state
        now = st.now()
        page, size = _paging(req)
        keys = req.qs("key")
        key_versions: dict[str, set[int]] = {}
        for k, v in req.query:
            m = re.match(r"^keyVersion\[(.+)\]$", k)
            if m:
                try:
                    key_versions.setdefault(m.group(1), set()).add(int(v))
                except ValueError as exc:
                    raise E.bad_request(
                        f'parameter "keyVersion" in query has an error: {v} is not an integer'
                    ) from exc
        ids = req.qs("id")
        statuses = req.qs("status")
        currencies = req.qs("currency")
        include_deleted = req.q("includeDeleted") == "true"
        plans = list(st.plans.values())
        if not include_deleted:
            plans = [p for p in plans if p.deleted_at is None]
        if keys or key_versions:
            plans = [
                p for p in plans if p.key in keys or p.version in key_versions.get(p.key, set())
            ]
        if ids:
            plans = [p for p in plans if p.id in ids]
        if statuses:
            plans = [p for p in plans if p.status(now) in statuses]
        if currencies:
            plans = [p for p in plans if p.currency in currencies]
        order_by = req.q("orderBy") or "created_at"
        sort_key: dict[str, Callable[[Any], Any]] = {
            "id": lambda p: p.id,
            "key": lambda p: (p.key, p.version),
            "version": lambda p: (p.version, p.key),
            "created_at": lambda p: p.created_at,
            "updated_at": lambda p: p.updated_at,
        }
        if order_by not in sort_key:
            raise E.bad_request(
                'parameter "orderBy" in query has an error: value is not one of the allowed values'
            )
        plans.sort(key=sort_key[order_by])
        if req.q("order") == "DESC":
            plans.reverse()
        items = [views.plan(p, now) for p in _slice(plans, page, size)]
        return 200, views.page(items, len(plans), page, size)

    def create_plan(self, req: Request) -> tuple[int, Any]:
        return 201, views.plan(self.state.create_plan(req.json()), self.state.now())

    def get_plan(self, req: Request) -> tuple[int, Any]:
        p = self.state.get_plan(req.params["p"], req.q("includeLatest") == "true")
        return 200, views.plan(p, self.state.now())

    def update_plan(self, req: Request) -> tuple[int, Any]:
        return 200, views.plan(
            self.state.update_plan(req.params["p"], req.json()), self.state.now()
        )

    def delete_plan(self, req: Request) -> tuple[int, Any]:
        self.state.delete_plan(req.params["p"])
        return 204, None

    def publish_plan(self, req: Request) -> tuple[int, Any]:
        return 200, views.plan(self.state.publish_plan(req.params["p"]), self.state.now())

    def archive_plan(self, req: Request) -> tuple[int, Any]:
        return 200, views.plan(self.state.archive_plan(req.params["p"]), self.state.now())

    def next_plan(self, req: Request) -> tuple[int, Any]:
        return 201, views.plan(self.state.next_plan(req.params["p"]), self.state.now())

    # ------------------------------------------------------------------ subscriptions

    def create_subscription(self, req: Request) -> tuple[int, Any]:
        s = self.state.create_subscription(req.json())
        return 201, views.subscription(s, self.state.now())

    def get_subscription(self, req: Request) -> tuple[int, Any]:
        if req.q("at") is not None:
            raise E.ApiError(501, "historical queries are not supported")
        return 200, views.subscription_expanded(
            self.state, self.state.subscription(req.params["s"])
        )

    def edit_subscription(self, req: Request) -> tuple[int, Any]:
        s = self.state.edit_subscription(req.params["s"], req.json())
        return 200, views.subscription(s, self.state.now())

    def delete_subscription(self, req: Request) -> tuple[int, Any]:
        self.state.delete_subscription(req.params["s"])
        return 204, None

    def change_subscription(self, req: Request) -> tuple[int, Any]:
        cur, nxt = self.state.change_subscription(req.params["s"], req.json())
        return 200, {
            "current": views.subscription(cur, self.state.now()),
            "next": views.subscription_expanded(self.state, nxt),
        }

    def cancel_subscription(self, req: Request) -> tuple[int, Any]:
        s = self.state.cancel_subscription(req.params["s"], req.json())
        return 200, views.subscription(s, self.state.now())

    def unschedule(self, req: Request) -> tuple[int, Any]:
        s = self.state.unschedule_cancelation(req.params["s"])
        return 200, views.subscription(s, self.state.now())

    def restore(self, req: Request) -> tuple[int, Any]:
        s = self.state.restore_subscription(req.params["s"])
        return 200, views.subscription(s, self.state.now())

    def migrate(self, req: Request) -> tuple[int, Any]:
        cur, nxt = self.state.migrate_subscription(req.params["s"], req.json())
        return 200, {
            "current": views.subscription(cur, self.state.now()),
            "next": views.subscription_expanded(self.state, nxt),
        }

    # ------------------------------------------------------------------ add-ons (addons.py)

    def _addons(self) -> Addons:
        return Addons.of(self.state)

    def list_addons(self, req: Request) -> tuple[int, Any]:
        book = self._addons()
        now = self.state.now()
        page, size = _paging(req)
        items = [a for a in book.addons.values() if a.deleted_at is None]
        if keys := req.qs("key"):
            items = [a for a in items if a.key in keys]
        if statuses := req.qs("status"):
            items = [a for a in items if a.status(now) in statuses]
        views_ = [addon_view(a, now) for a in _slice(items, page, size)]
        return 200, views.page(views_, len(items), page, size)

    def create_addon(self, req: Request) -> tuple[int, Any]:
        return 201, addon_view(self._addons().create(req.json()), self.state.now())

    def get_addon(self, req: Request) -> tuple[int, Any]:
        return 200, addon_view(self._addons().get(req.params["a"]), self.state.now())

    def publish_addon(self, req: Request) -> tuple[int, Any]:
        return 200, addon_view(self._addons().publish(req.params["a"]), self.state.now())

    def archive_addon(self, req: Request) -> tuple[int, Any]:
        return 200, addon_view(self._addons().archive(req.params["a"]), self.state.now())

    def list_plan_addons(self, req: Request) -> tuple[int, Any]:
        book = self._addons()
        now = self.state.now()
        page, size = _paging(req)
        links = book.plan_links(req.params["p"])
        items = [plan_addon_view(book, pa, now) for pa in _slice(links, page, size)]
        return 200, views.page(items, len(links), page, size)

    def create_plan_addon(self, req: Request) -> tuple[int, Any]:
        book = self._addons()
        pa = book.link(req.params["p"], req.json())
        return 201, plan_addon_view(book, pa, self.state.now())

    def list_sub_addons(self, req: Request) -> tuple[int, Any]:
        """``subscription/addon/http/list.go``: a plain array."""
        book = self._addons()
        self.state.subscription(req.params["s"])
        now = self.state.now()
        return 200, [sub_addon_view(book, sa, now) for sa in book.of_subscription(req.params["s"])]

    def create_sub_addon(self, req: Request) -> tuple[int, Any]:
        book = self._addons()
        sa = book.purchase(req.params["s"], req.json())
        return 201, sub_addon_view(book, sa, self.state.now())

    def get_sub_addon(self, req: Request) -> tuple[int, Any]:
        book = self._addons()
        sa = book.get_sub_addon(req.params["s"], req.params["sa"])
        return 200, sub_addon_view(book, sa, self.state.now())

    def update_sub_addon(self, req: Request) -> tuple[int, Any]:
        book = self._addons()
        sa = book.update_sub_addon(req.params["s"], req.params["sa"], req.json())
        return 200, sub_addon_view(book, sa, self.state.now())

    # ------------------------------------------------------------------ control API

    def _clock_json(self) -> Json:
        return {"now": fmt(self.clock.now()), "frozen": self.clock.frozen}

    def get_clock(self, req: Request) -> tuple[int, Any]:
        return 200, self._clock_json()

    def set_clock(self, req: Request) -> tuple[int, Any]:
        body = req.json()
        if not isinstance(body, dict):
            raise E.bad_request("clock body must be an object")
        try:
            if "now" in body:
                self.clock.set(parse_time(body["now"]))
            elif "advance" in body:
                self.clock.advance(Duration.parse(str(body["advance"])))
            elif "advanceSeconds" in body:
                secs = float(body["advanceSeconds"])
                self.clock.advance(Duration.of(timedelta(seconds=secs)))
            else:
                raise E.bad_request('clock body needs "now", "advance" or "advanceSeconds"')
        except (TimeParseError, DurationError, ValueError, TypeError) as exc:
            if isinstance(exc, E.ApiError):
                raise
            raise E.bad_request(f"invalid clock body: {exc}") from exc
        return 200, self._clock_json()

    def real_clock(self, req: Request) -> tuple[int, Any]:
        self.clock.real()
        return 200, self._clock_json()

    def reset(self, req: Request) -> tuple[int, Any]:
        body = req.json(required=False) or {}
        self.state.reset()
        if self.billing_profile is not None:
            Billing.enable(self.state, self.billing_profile)
        self.log.clear()
        self.faults.clear()
        if body.get("catalog") is not None:
            doc = body["catalog"]
            self.catalog = parse_catalog_text(doc) if isinstance(doc, str) else doc
        if body.get("reloadCatalog", True) and self.catalog is not None:
            load_catalog(self.state, self.catalog)
        return 200, {
            "status": "reset",
            "catalogLoaded": self.catalog is not None and body.get("reloadCatalog", True),
        }

    # ------------------------------------------------------------------ billing

    def list_invoices(self, req: Request) -> tuple[int, Any]:
        """``billing/httpdriver/invoice.go`` ``ListInvoices`` (gathering invoices included, their
        totals calculated on the fly); no billing ⇒ no invoices."""
        page, size = _paging(req)
        customers = req.qs("customers")
        for cid in customers:
            check_ulid(cid, "customers")
        statuses = req.qs("statuses")
        for st in statuses:
            if st not in INVOICE_STATUSES:
                raise E.bad_request(
                    f'parameter "statuses" in query has an error: value is not one of the '
                    f"allowed values: {st}"
                )
        expand = req.qs("expand")
        for ex in expand:
            if ex not in ("lines", "preceding", "workflow.apps"):
                raise E.bad_request(
                    f'parameter "expand" in query has an error: value is not one of the '
                    f"allowed values: {ex}"
                )
        extended = req.qs("extendedStatuses")
        include_deleted = (req.q("includeDeleted") or "false") == "true"
        book = Billing.of(self.state)
        if book is None:
            return 200, {"totalCount": 0, "page": page, "pageSize": size, "items": []}
        out = [
            inv
            for inv in book.invoices.values()
            if (not customers or inv.customer_id in customers)
            and (not statuses or inv.short_status in statuses)
            and (not extended or inv.status in extended)
            and (include_deleted or inv.deleted_at is None)
        ]
        order_by = req.q("orderBy") or "createdAt"
        keys: dict[str, Callable[[Any], Any]] = {
            "createdAt": lambda i: i.created_at,
            "updatedAt": lambda i: i.updated_at,
            "issuedAt": lambda i: i.issued_at or i.created_at,
            "status": lambda i: i.status,
            "periodStart": lambda i: i.created_at,
            "customer.name": lambda i: self.state.customers[i.customer_id].name,
        }
        if order_by not in keys:
            raise E.bad_request(
                f'parameter "orderBy" in query has an error: value is not one of the allowed '
                f"values: {order_by}"
            )
        out.sort(key=lambda i: (keys[order_by](i), i.id), reverse=req.q("order") == "DESC")
        items = [
            invoice_view(book, inv, lines="lines" in expand) for inv in _slice(out, page, size)
        ]
        return 200, {"totalCount": len(out), "page": page, "pageSize": size, "items": items}

    def get_invoice(self, req: Request) -> tuple[int, Any]:
        book = Billing.of(self.state)
        inv = None if book is None else book.invoices.get(req.params["i"])
        if book is None or inv is None:
            raise E.not_found(f"invoice not found: {req.params['i']}")
        expand = req.qs("expand")
        deleted = (req.q("includeDeletedLines") or "false") == "true"
        return 200, invoice_view(book, inv, lines="lines" in expand, deleted_lines=deleted)

    def get_billing(self, req: Request) -> tuple[int, Any]:
        book = Billing.of(self.state)
        return 200, {"enabled": False} if book is None else book.profile.view()

    def set_billing(self, req: Request) -> tuple[int, Any]:
        """Switch billing on (with the default profile unless told otherwise) or off."""
        body = req.json(required=False) or {}
        if body.get("enabled", True) is False:
            self.billing_profile = None
            self.state.extensions.pop("billing", None)
            return 200, {"enabled": False}
        profile = Profile.parse({k: v for k, v in body.items() if k != "enabled"})
        self.billing_profile = profile
        return 200, Billing.enable(self.state, profile).profile.view()

    def load_catalog(self, req: Request) -> tuple[int, Any]:
        try:
            doc = parse_catalog_text(req.body.decode())
        except (yaml.YAMLError, ValueError) as exc:
            raise E.bad_request(f"invalid catalog document: {exc}") from exc
        summary = load_catalog(self.state, doc)
        self.catalog = doc
        return 200, summary

    def get_requests(self, req: Request) -> tuple[int, Any]:
        method = req.q("method")
        prefix = req.q("pathPrefix")
        out = [
            e
            for e in self.log
            if (method is None or e["method"] == method.upper())
            and (prefix is None or e["path"].startswith(prefix))
        ]
        return 200, {"requests": out}

    def clear_requests(self, req: Request) -> tuple[int, Any]:
        self.log.clear()
        return 204, None

    def bulk(self, req: Request) -> tuple[int, Any]:
        from reconciler.emulator.catalog import bulk_load

        body = req.json()
        if not isinstance(body, dict) or not isinstance(body.get("customers"), int):
            raise E.bad_request('bulk body needs an integer "customers"')
        started = time.perf_counter()
        result = bulk_load(self.state, body)
        result["seconds"] = round(time.perf_counter() - started, 3)
        return 200, result

    def list_faults(self, req: Request) -> tuple[int, Any]:
        return 200, {"faults": [f.as_json() for f in self.faults]}

    def add_fault(self, req: Request) -> tuple[int, Any]:
        body = req.json()
        if not isinstance(body, dict) or not isinstance(body.get("path"), str):
            raise E.bad_request('fault rule needs a "path" glob')
        status = body.get("status")
        if status is not None and not (isinstance(status, int) and 100 <= status <= 599):
            raise E.bad_request("fault status must be an HTTP status code or null")
        count = body.get("count")
        rule = FaultRule(
            id=next(self.fault_ids),
            method=body.get("method"),
            path=body["path"],
            status=status,
            delay=float(body.get("delaySeconds") or 0),
            drop_after_apply=bool(body.get("dropAfterApply", False)),
            apply_before_status=bool(body.get("applyBeforeStatus", False)),
            remaining=None if count is None else int(count),
        )
        self.faults.append(rule)
        return 201, rule.as_json()

    def clear_faults(self, req: Request) -> tuple[int, Any]:
        self.faults.clear()
        return 204, None

    def take_fault(self, method: str, path: str) -> FaultRule | None:
        if not path.startswith("/api/"):
            return None
        for rule in self.faults:
            if rule.matches(method, path):
                if rule.remaining is not None:
                    rule.remaining -= 1
                return rule
        return None


def _window(ts: float, size: str, tz: ZoneInfo) -> tuple[float, float]:
    local = datetime.fromtimestamp(ts, tz)
    if size == "MINUTE":
        start = local.replace(second=0, microsecond=0)
        end = start + timedelta(minutes=1)
    elif size == "HOUR":
        start = local.replace(minute=0, second=0, microsecond=0)
        end = start + timedelta(hours=1)
    elif size == "DAY":
        start = local.replace(hour=0, minute=0, second=0, microsecond=0)
        end = (start + timedelta(days=1, hours=2)).replace(hour=0)  # DST-safe next midnight
    else:
        start = local.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
        end = add_months(start, 1)
    # re-localise (wall-clock arithmetic) to get correct offsets around DST changes
    start = start.replace(tzinfo=tz)
    end = end.replace(tzinfo=tz)
    return start.timestamp(), end.timestamp()


def problem(status: int, detail: str, extensions: Json | None = None) -> Json:
    """``pkg/models/problem.go`` ``NewStatusProblem``: 500 details are blanked."""
    out: Json = {
        "type": "about:blank",
        "title": http.HTTPStatus(status).phrase
        if status in http.HTTPStatus._value2member_map_
        else "Error",
        "status": status,
        "detail": "" if status == 500 else detail,
        "instance": f"urn:request:emulator/{uuid.uuid4().hex[:12]}",
    }
    if extensions:
        out["extensions"] = extensions
    return out


class EmulatorASGI:
    """ASGI entry point: runs the router, logs ``/api`` requests, applies fault rules."""

    def __init__(self, emulator: Emulator) -> None:
        self.emulator = emulator

    @property
    def state(self) -> State:
        return self.emulator.state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                msg = await receive()
                if msg["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif msg["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        body = b""
        while True:
            msg = await receive()
            body += msg.get("body", b"")
            if not msg.get("more_body"):
                break
        headers = {k.decode().lower(): v.decode() for k, v in scope.get("headers", [])}
        query = parse_qsl(scope.get("query_string", b"").decode(), keep_blank_values=True)
        req = Request(
            method=scope["method"], path=scope["path"], query=query, headers=headers, body=body
        )
        emu = self.emulator
        with emu.state.lock:
            rule = emu.take_fault(req.method, req.path)
        if rule is not None and rule.delay:
            await asyncio.sleep(rule.delay)
        apply = (
            rule is None
            or rule.status is None
            or rule.apply_before_status
            or (rule.drop_after_apply)
        )
        status, payload, headers_out = 0, None, {}
        if apply:
            status, payload = self._run(req)
        logged = status if apply else (rule.status or 0 if rule else 0)
        entry = self._log(req, logged, apply, rule)
        if rule is not None and rule.drop_after_apply:
            if entry is not None:
                entry["status"] = None
                entry["dropped"] = True
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [(b"content-length", b"64"), (b"content-type", b"application/json")],
                }
            )
            raise ConnectionDropped(f"connection dropped after applying {req.method} {req.path}")
        if rule is not None and rule.status is not None:
            status = rule.status
            payload = problem(status, f"emulator fault injected: {status}")
            if entry is not None:
                entry["status"] = status
        if status >= 400 and isinstance(payload, dict) and "type" in payload:
            headers_out["content-type"] = "application/problem+json"
        else:
            headers_out["content-type"] = "application/json"
        raw = (
            b""
            if status == 204 or payload is None
            else json.dumps(payload, separators=(",", ":")).encode()
        )
        hdrs = [(k.encode(), v.encode()) for k, v in headers_out.items()]
        if status != 204:
            hdrs.append((b"content-length", str(len(raw)).encode()))
        else:
            hdrs = []
        await send({"type": "http.response.start", "status": status, "headers": hdrs})
        await send({"type": "http.response.body", "body": raw})

    def _run(self, req: Request) -> tuple[int, Any]:
        try:
            return self.emulator.dispatch(req)
        except E.ApiError as err:
            return err.status, problem(err.status, err.detail, err.extensions)

    def _log(self, req: Request, status: int, applied: bool, rule: FaultRule | None) -> Json | None:
        if not req.path.startswith("/api/"):
            return None
        emu = self.emulator
        try:
            body = json.loads(req.body) if req.body.strip() else None
        except ValueError:
            body = req.body.decode(errors="replace")
        entry: Json = {
            "seq": next(emu.seq),
            "method": req.method,
            "path": req.path,
            "query": req.headers.get("x-raw-query") or "&".join(f"{k}={v}" for k, v in req.query),
            "body": body,
            "status": status,
            "applied": bool(
                applied
                and status
                and status < 400
                and req.method in ("POST", "PUT", "PATCH", "DELETE")
            ),
            "emulatorTime": fmt(emu.clock.now()),
            "wallTime": fmt(datetime.now(UTC)),
        }
        if rule is not None:
            entry["fault"] = rule.id
        with emu.state.lock:
            emu.log.append(entry)
        return entry


def create_app(
    *, catalog: Json | str | None = None, clock: Clock | None = None, billing: bool = False
) -> EmulatorASGI:
    """Build the emulator ASGI app. ``catalog`` is a catalog document (dict) or YAML/JSON text;
    ``billing`` switches OpenMeter's billing on with the default profile (``billing.py``)."""
    doc = parse_catalog_text(catalog) if isinstance(catalog, str) else catalog
    return EmulatorASGI(Emulator(clock=clock, catalog=doc, billing=Profile() if billing else None))


__all__ = ["ConnectionDropped", "Emulator", "EmulatorASGI", "create_app", "json_path"]
