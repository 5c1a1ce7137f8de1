"""Validation of product-catalog inputs (plans, phases, rate cards, prices, templates).

Rules from OpenMeter beta.227:

* ``openmeter/productcatalog/price.go`` ``TieredPrice.Validate`` / ``PriceTier.Validate``: at least
  one tier, at least one open-ended tier (``upToAmount`` null), no duplicate ``upToAmount``, each
  tier has a flat and/or unit price, non-negative amounts.
* ``openmeter/productcatalog/entitlement.go`` ``MeteredEntitlementTemplate.Validate``:
  ``usagePeriod`` at least one hour; it defaults to the rate card's ``billingCadence``
  (``openmeter/productcatalog/http/mapping.go`` ``AsEntitlementTemplate``).
* ``openmeter/entitlement/metered/connector.go``: a metered entitlement needs a feature with a
  meter (``Feature has no meter``).
* ``openmeter/productcatalog/plan/service/plan.go`` ``expandFeatures``: unknown feature key →
  400 ``feature with key X not found``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from decimal import Decimal, InvalidOperation
from typing import Any

from reconciler.emulator.errors import ApiError, bad_request, validation
from reconciler.emulator.timeutil import Duration, DurationError

KEY_RE = re.compile(r"^[a-z0-9]+(?:_[a-z0-9]+)*$")
CURRENCY_RE = re.compile(r"^[A-Z]{3}$")
PRICE_TYPES = {"flat", "unit", "tiered", "package", "dynamic"}

FeatureLookup = Callable[[str], dict[str, Any] | None]


def req_str(obj: dict[str, Any], field: str, where: str) -> str:
    value = obj.get(field)
    if not isinstance(value, str) or value == "":
        raise bad_request(
            f'request body has an error: doesn\'t match schema: property "{field}" '
            f"is missing or not a string ({where})"
        )
    return value


def check_key(value: str, field: str) -> None:
    if not KEY_RE.match(value) or len(value) > 64:
        raise bad_request(
            "request body has an error: doesn't match schema: "
            f'Error at "/{field}": string doesn\'t '
            'match the regular expression "^[a-z0-9]+(?:_[a-z0-9]+)*$"'
        )


def parse_duration_field(value: Any, field: str) -> Duration:
    """Parse an ISO duration field (400 when missing or malformed)."""
    if not isinstance(value, str):
        raise bad_request(
            f'request body has an error: doesn\'t match schema: Error at "/{field}": '
            "value must be a string"
        )
    try:
        return Duration.parse(value)
    except DurationError as exc:
        raise validation(f"invalid {field}: {exc}") from exc


def numeric(value: Any, field: str) -> Decimal:
    if not isinstance(value, str):
        raise bad_request(
            f'request body has an error: doesn\'t match schema: Error at "/{field}": '
            "value must be a string"
        )
    try:
        dec = Decimal(value)
    except InvalidOperation as exc:
        raise validation(f"invalid {field}: {value!r} is not a decimal number") from exc
    if not dec.is_finite():
        raise validation(f"invalid {field}: {value!r} is not a decimal number")
    return dec


def check_price(price: Any, rate_card_type: str) -> None:
    if price is None:
        return
    if not isinstance(price, dict) or price.get("type") not in PRICE_TYPES:
        raise bad_request(
            "request body has an error: doesn't match schema: price: discriminator "
            'property "type" has invalid value'
        )
    ptype = price["type"]
    if rate_card_type == "flat_fee" and ptype != "flat":
        raise validation(f"invalid price: flat fee rate card must have a flat price, got {ptype}")
    if ptype in ("flat", "unit", "package") and numeric(price.get("amount"), "price.amount") < 0:
        raise validation("invalid price: amount must not be negative")
    if ptype == "flat" and price.get("paymentTerm") not in (None, "in_advance", "in_arrears"):
        raise validation("invalid price: invalid payment term")
    if ptype == "package" and numeric(price.get("quantityPerPackage"), "quantityPerPackage") <= 0:
        raise validation("invalid price: quantity per package must be greater than 0")
    if (
        ptype == "dynamic"
        and price.get("multiplier") is not None
        and numeric(price["multiplier"], "multiplier") <= 0
    ):
        raise validation("invalid price: multiplier must be greater than 0")
    for commit in ("minimumAmount", "maximumAmount"):
        if price.get(commit) is not None and numeric(price[commit], commit) < 0:
            raise validation(f"invalid price: {commit} must not be negative")
    if (
        price.get("minimumAmount") is not None
        and price.get("maximumAmount") is not None
        and numeric(price["minimumAmount"], "minimumAmount")
        > numeric(price["maximumAmount"], "maximumAmount")
    ):
        raise validation("invalid price: minimum amount must not exceed maximum amount")
    if ptype == "tiered":
        if price.get("mode") not in ("volume", "graduated"):
            raise validation("invalid price: invalid tiered price mode")
        tiers = price.get("tiers")
        if not isinstance(tiers, list) or not tiers:
            raise validation("invalid price: at least one price tier must be provided")
        seen: set[Decimal] = set()
        open_ended = 0
        for tier in tiers:
            if not isinstance(tier, dict):
                raise validation("invalid price: invalid price tier")
            up = tier.get("upToAmount")
            if up is None:
                open_ended += 1
            else:
                amount = numeric(up, "upToAmount")
                if amount < 0:
                    raise validation("invalid price: up-to-amount must not be negative")
                if amount in seen:
                    raise validation("invalid price: multiple price tiers with same up-to amount")
                seen.add(amount)
            if tier.get("flatPrice") is None and tier.get("unitPrice") is None:
                raise validation("invalid price: price tier must have flat or unit price")
            for sub in ("flatPrice", "unitPrice"):
                if tier.get(sub) is not None and numeric(tier[sub].get("amount"), sub) < 0:
                    raise validation("invalid price: tier price amount must not be negative")
        if open_ended == 0:
            raise validation(
                "invalid price: at least one price tier must have no up-to-amount (open-ended)"
            )


def normalize_rate_card(rc: Any, features: FeatureLookup) -> dict[str, Any]:
    """Validate a RateCard body and return the stored form (defaults filled in)."""
    if not isinstance(rc, dict):
        raise bad_request(
            "request body has an error: doesn't match schema: rateCard must be an object"
        )
    rtype = rc.get("type")
    if rtype not in ("flat_fee", "usage_based"):
        raise bad_request(
            "request body has an error: doesn't match schema: discriminator property "
            f'"type" has invalid value: {rtype!r}'
        )
    key = req_str(rc, "key", "rateCard")
    check_key(key, "key")
    req_str(rc, "name", "rateCard")
    if "price" not in rc:
        raise bad_request(
            'request body has an error: doesn\'t match schema: property "price" is missing'
        )
    cadence = rc.get("billingCadence")
    if rtype == "usage_based" and cadence is None:
        raise bad_request(
            'request body has an error: doesn\'t match schema: property "billingCadence" is missing'
        )
    if cadence is not None:
        parse_duration_field(cadence, "billingCadence")
    check_price(rc.get("price"), rtype)
    if rtype == "flat_fee" and rc.get("price") is None and rc.get("entitlementTemplate") is None:
        pass  # a free flat fee is accepted
    feature_key = rc.get("featureKey")
    feature = None
    if feature_key is not None:
        if not isinstance(feature_key, str):
            raise bad_request("request body has an error: featureKey must be a string")
        feature = features(feature_key)
        if feature is None:
            raise validation(f"feature with key {feature_key} not found")
        if key != feature_key:
            raise validation(f"rate card key {key} must match feature key {feature_key}")
    out = dict(rc)
    tpl = rc.get("entitlementTemplate")
    if tpl is not None:
        if not isinstance(tpl, dict) or tpl.get("type") not in ("metered", "static", "boolean"):
            raise bad_request(
                "request body has an error: doesn't match schema: "
                'entitlementTemplate: discriminator property "type" has invalid '
                "value"
            )
        if feature is None:
            raise validation(
                "invalid entitlement template: feature is required for entitlement template"
            )
        tpl = dict(tpl)
        if tpl["type"] == "metered":
            if not feature.get("meterSlug"):
                raise validation("invalid entitlement template: Feature has no meter")
            period = tpl.get("usagePeriod") or cadence
            if period is None:
                raise validation("invalid entitlement template: usagePeriod is required")
            dur = parse_duration_field(period, "usagePeriod")
            if dur.approx_seconds() < 3600:
                raise validation(
                    "invalid entitlement template: UsagePeriod must be at least 1 hour"
                )
            tpl["usagePeriod"] = period
            iar = tpl.get("issueAfterReset")
            if iar is not None and (
                isinstance(iar, bool) or not isinstance(iar, int | float) or iar < 0
            ):
                raise validation(
                    "invalid entitlement template: issueAfterReset must be a non-negative number"
                )
            tpl.setdefault("isSoftLimit", False)
            tpl.setdefault("preserveOverageAtReset", False)
        elif tpl["type"] == "static":
            config = tpl.get("config")
            if not isinstance(config, str):
                raise bad_request('request body has an error: property "config" is missing')
            try:
                json.loads(config)
            except ValueError as exc:
                raise validation("invalid entitlement template: config must be valid JSON") from exc
        out["entitlementTemplate"] = tpl
    return out


def check_currency(value: Any) -> str:
    if not isinstance(value, str) or not CURRENCY_RE.match(value):
        raise bad_request('request body has an error: doesn\'t match schema: Error at "/currency"')
    return value


def normalize_pro_rating(value: Any) -> dict[str, Any]:
    if value is None:
        return {"enabled": True, "mode": "prorate_prices"}
    if (
        not isinstance(value, dict)
        or not isinstance(value.get("enabled"), bool)
        or value.get("mode") != "prorate_prices"
    ):
        raise bad_request(
            'request body has an error: doesn\'t match schema: Error at "/proRatingConfig"'
        )
    return {"enabled": value["enabled"], "mode": value["mode"]}


def normalize_phases(phases: Any, features: FeatureLookup) -> list[dict[str, Any]]:
    if not isinstance(phases, list) or not phases:
        raise validation("invalid plan: at least one plan phase is required")
    seen: set[str] = set()
    out = []
    for i, phase in enumerate(phases):
        if not isinstance(phase, dict):
            raise bad_request("request body has an error: phase must be an object")
        key = req_str(phase, "key", "phase")
        check_key(key, "key")
        req_str(phase, "name", "phase")
        if key in seen:
            raise validation(f"invalid plan: duplicated plan phase key: {key}")
        seen.add(key)
        duration = phase.get("duration")
        if duration is not None:
            if parse_duration_field(duration, "duration").approx_seconds() <= 0:
                raise validation("invalid plan phase: duration must be positive")
        elif i != len(phases) - 1:
            raise validation(f"invalid plan: only the last phase can have no duration ({key})")
        cards = phase.get("rateCards")
        if not isinstance(cards, list):
            raise bad_request('request body has an error: property "rateCards" is missing')
        norm_cards = [normalize_rate_card(rc, features) for rc in cards]
        keys = [rc["key"] for rc in norm_cards]
        if len(set(keys)) != len(keys):
            raise validation(f"invalid plan phase: duplicated rate card key in phase {key}")
        p = dict(phase)
        p["duration"] = duration
        p["rateCards"] = norm_cards
        out.append(p)
    return out


def ensure(cond: bool, err: ApiError) -> None:
    if not cond:
        raise err


# --------------------------------------------------------------------------- alignment

UNALIGNED_CODE = "rate_card_billing_cadence_unaligned"
UNALIGNED_MESSAGE = "ratecards with prices must have compatible billing cadence"
IAR_PRIORITY_CODE = "entitlement_template_invalid_issue_after_reset_with_priority"
IAR_PRIORITY_MESSAGE = (
    "invalid entitlement template as issue after reset is required if issue after reset "
    "priority is set"
)


def cadences_align(base: str, cadence: str) -> bool:
    """``productcatalog/alignment.go`` ``ValidateBillingCadencesAlign``: equal, or one divides the
    other (approximated on the cadences' lengths in seconds)."""
    a = Duration.parse(base).approx_seconds()
    b = Duration.parse(cadence).approx_seconds()
    big, small = max(a, b), min(a, b)
    if small <= 0:
        return False
    ratio = big / small
    return abs(ratio - round(ratio)) <= 0.02


def warning_issue(code: str, message: str, field: str) -> dict[str, Any]:
    """``pkg/models/validationissue.go`` ``AsErrorExtension`` of a warning-severity issue."""
    return {"code": code, "message": message, "severity": "warning", "field": field}


def plan_alignment_issues(cadence: str, phases: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``productcatalog/plan.go`` ``ValidatePlanHasAlignedBillingCadences``: every *billable*
    rate card (one with a price) with a billing cadence must align with the plan's. The issue
    is of warning severity: ``plan/httpdriver/plan.go`` creates and updates with
    ``IgnoreNonCriticalIssues`` (the plan is stored and shows the issue in
    ``validationErrors``); publishing refuses it (400)."""
    out = []
    for ph in phases:
        for rc in ph.get("rateCards", []):
            rcc = rc.get("billingCadence")
            if rc.get("price") is None or rcc is None:
                continue
            if not cadences_align(cadence, rcc):
                out.append(
                    warning_issue(
                        UNALIGNED_CODE,
                        UNALIGNED_MESSAGE,
                        f"$.phases[?(@.key=='{ph['key']}')].rateCards[?(@.key=='{rc['key']}')]"
                        ".billingCadence",
                    )
                )
    return out


def entitlement_template_issues(phase_key: str, rc: Any) -> list[dict[str, Any]]:
    """``productcatalog/entitlement.go`` ``MeteredEntitlementTemplate.Validate``:
    ``issueAfterResetPriority`` without ``issueAfterReset``. In an edit this runs in the patch's
    ``Validate`` (``subscription/patch/additem.go``), before the patch is applied and so before
    the feature (and its meter) is resolved; the field is the patch's descriptor
    (``$.phases[?(@.key=='P')].items.K``) + ``entitlementTemplate.issueAfterReset``."""
    if not isinstance(rc, dict):
        return []
    tpl = rc.get("entitlementTemplate")
    if not isinstance(tpl, dict) or tpl.get("type") != "metered":
        return []
    if tpl.get("issueAfterResetPriority") is not None and tpl.get("issueAfterReset") is None:
        return [
            warning_issue(
                IAR_PRIORITY_CODE,
                IAR_PRIORITY_MESSAGE,
                f"$.phases[?(@.key=='{phase_key}')].items.{rc.get('key')}"
                ".entitlementTemplate.issueAfterReset",
            )
        ]
    return []
