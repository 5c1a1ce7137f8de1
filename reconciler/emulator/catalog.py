"""Catalog documents (YAML or JSON) and the in-process bulk loader.

Format (see docs/EMULATOR.md)::

    meters:    [MeterCreate, ...]
    features:  [FeatureCreateInputs, ...]
    plans:     [PlanCreate + optional "publish": false, ...]   # published by default
    customers: [CustomerCreate + optional "subscription": {"plan": key, ...}, ...]
"""

from __future__ import annotations

import json
from typing import Any

import yaml

from reconciler.emulator import errors as E
from reconciler.emulator.state import State
from reconciler.emulator.timeutil import new_ulid

Json = dict[str, Any]


def parse_catalog_text(text: str) -> Json:
    text = text.strip()
    if not text:
        return {}
    doc = json.loads(text) if text.startswith("{") else yaml.safe_load(text)
    if doc is None:
        return {}
    if not isinstance(doc, dict):
        raise ValueError("a catalog document must be a mapping")
    return doc


def _as_list(doc: Json, key: str) -> list[Any]:
    value = doc.get(key) or []
    if not isinstance(value, list):
        raise E.bad_request(f"catalog: {key} must be a list")
    return value


def load_catalog(state: State, doc: Json) -> Json:
    """Create meters, features, plans (published unless ``publish: false``) and customers
    (with an optional subscription). Existing items with the same slug/key are skipped."""
    created = {"meters": 0, "features": 0, "plans": 0, "customers": 0, "subscriptions": 0}
    with state.lock:
        for m in _as_list(doc, "meters"):
            if any(x.slug == m.get("slug") for x in state.meters.values()):
                continue
            state.create_meter(m)
            created["meters"] += 1
        for f in _as_list(doc, "features"):
            if f.get("key") in state.feature_by_key:
                continue
            state.create_feature(f)
            created["features"] += 1
        for p in _as_list(doc, "plans"):
            body = {k: v for k, v in p.items() if k != "publish"}
            plan = state.create_plan(body)
            created["plans"] += 1
            if p.get("publish", True):
                state.publish_plan(plan.id)
        for c in _as_list(doc, "customers"):
            sub = c.get("subscription")
            body = {k: v for k, v in c.items() if k != "subscription"}
            cust = state.create_customer(body)
            created["customers"] += 1
            if sub:
                sbody = {k: v for k, v in sub.items() if k != "plan"}
                plan_ref = (
                    sub["plan"] if isinstance(sub.get("plan"), dict) else {"key": sub["plan"]}
                )
                state.create_subscription({**sbody, "customerId": cust.id, "plan": plan_ref})
                created["subscriptions"] += 1
    return {"created": created}


def bulk_load(state: State, body: Json) -> Json:
    """``POST /_emulator/bulk``: N customers (key ``{keyPrefix}{i}``), each subscribed to
    ``plan`` now, optionally with one usage event each — in-process, no HTTP per item."""
    n = int(body["customers"])
    prefix = str(body.get("keyPrefix", "cust-"))
    start = int(body.get("startIndex", 0))
    plan_key = body.get("plan")
    usage = body.get("usage")
    with state.lock:
        plan = state.resolve_plan({"key": plan_key}) if plan_key else None
        now = state.now()
        meters = list(state.meters.values())
        first_id = None
        for i in range(start, start + n):
            key = f"{prefix}{i}"
            cust = state.create_customer(
                {"name": key, "key": key, "usageAttribution": {"subjectKeys": [key]}}
            )
            first_id = first_id or cust.id
            if plan is not None:
                state._create_from_plan(cust, plan, now, None, None, {}, check=False)
            if usage:
                event = {
                    "specversion": "1.0",
                    "id": new_ulid(now),
                    "source": "emulator-bulk",
                    "type": usage.get("type") or usage.get("eventType"),
                    "subject": key,
                    "data": usage.get("data", {}),
                }
                state.events.ingest(event, now, meters)
    return {"customers": n, "plan": plan_key, "keyPrefix": prefix, "firstCustomerId": first_id}
