"""OpenMeter's problem+json errors (``pkg/models/problem.go``, ``pkg/models/errors.go``).

``detail`` carries the prefix of the typed error that matched, e.g. ``validation error: …``
(``GenericValidationError.Error``) or ``patch forbidden error: …``
(``openmeter/subscription/patch.go`` ``PatchForbiddenError.Error``).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any


class ApiError(Exception):
    def __init__(self, status: int, detail: str, extensions: dict[str, Any] | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.extensions = extensions


def validation(msg: str) -> ApiError:
    return ApiError(400, f"validation error: {msg}")


def bad_request(msg: str) -> ApiError:
    """A 400 without the ``validation error:`` prefix (request decoding / kin-openapi)."""
    return ApiError(400, msg)


def not_found(msg: str) -> ApiError:
    return ApiError(404, f"not found error: {msg}")


def conflict(msg: str) -> ApiError:
    return ApiError(409, f"conflict error: {msg}")


def forbidden(msg: str) -> ApiError:
    return ApiError(403, f"forbidden error: {msg}")


def precondition(msg: str) -> ApiError:
    return ApiError(412, f"precondition failed error: {msg}")


def patch_validation(msg: str) -> ApiError:
    return ApiError(400, f"patch validation error: {msg}")


def patch_forbidden(msg: str) -> ApiError:
    return ApiError(403, f"patch forbidden error: {msg}")


def patch_conflict(msg: str) -> ApiError:
    return ApiError(409, f"patch conflict error: {msg}")


def issue(
    status: int, code: str, message: str, field: str | None = None, *more_fields: str
) -> ApiError:
    """A validation *issue* with an HTTP status attribute (``HandleIssueIfHTTPStatusKnown``):
    ``detail`` is the issue message, ``extensions.validationErrors`` lists the issue, once per
    field it concerns (``pkg/models/validationissue.go`` ``AsErrorExtension``: ``field`` is the
    issue's field descriptor as a JSON path, omitted when empty)."""
    entries = []
    for f in (field, *more_fields):
        ext: dict[str, Any] = {"code": code, "message": message, "severity": "critical"}
        if f:
            ext["field"] = f
        entries.append(ext)
    return ApiError(status, message, {"validationErrors": entries})


def issues(status: int, detail: str, entries: list[dict[str, Any]]) -> ApiError:
    """Pre-built issue extensions (``validationErrors``) under ``detail``."""
    return ApiError(status, detail, {"validationErrors": entries})


def go_time(dt: datetime) -> str:
    """Go's ``time.Time.String()`` for a UTC time: ``2026-01-15 10:00:00.5 +0000 UTC``."""
    frac = f".{dt.microsecond:06d}".rstrip("0") if dt.microsecond else ""
    return dt.strftime("%Y-%m-%d %H:%M:%S") + frac + " +0000 UTC"


def subscription_field(
    plan: dict[str, Any] | None, customer_id: str, start: datetime, end: datetime | None
) -> str:
    """``openmeter/subscription/uniqueness.go`` ``subscriptionSpecToFieldSelectors`` rendered by
    ``FieldDescriptor.JSONPath`` (``pkg/models/fielddescriptor.go``, ``fieldexpression.go``)."""
    if plan is None:
        head = "plans"
    else:
        attrs = [("key", plan.get("key")), ("version", plan.get("version")), ("id", plan.get("id"))]
        cond = " && ".join(f"@.{k}=='{v}'" for k, v in attrs if v not in (None, "", 0))
        head = f"plans[?({cond})]"
    sub = [("customerId", customer_id), ("activeFrom", go_time(start))]
    if end is not None:
        sub.append(("activeTo", go_time(end)))
    cond = " && ".join(f"@.{k}=='{v}'" for k, v in sub)
    return f"$.{head}.subscriptions[?({cond})]"


def transition(action: str, state: str) -> ApiError:
    """``openmeter/subscription/state.go`` ``CanTransitionOrErr``."""
    return forbidden(f"transition {action} in state {state} not allowed")


SINGLE_SUB_CODE = "only_single_subscription_allowed_per_customer_at_a_time"


def single_subscription(this_field: str, other_field: str) -> ApiError:
    """``openmeter/subscription/errors.go`` ``ErrOnlySingleSubscriptionAllowed`` (409 issue),
    reported once for each side of the overlap (``uniqueness.go``)."""
    return issue(
        409,
        SINGLE_SUB_CODE,
        "only single subscription is allowed per customer at a time",
        this_field,
        other_field,
    )
