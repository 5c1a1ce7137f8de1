"""OpenMeter's problem+json errors (``pkg/models/problem.go``, ``pkg/models/errors.go``).

``detail`` carries the prefix of the typed error that matched, e.g. ``validation error: …``
(``GenericValidationError.Error``) or ``patch forbidden error: …``
(``openmeter/subscription/patch.go`` ``PatchForbiddenError.Error``).
"""

from __future__ import annotations

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


def issue(status: int, code: str, message: str, field: str | None = None) -> ApiError:
    """A validation *issue* with an HTTP status attribute (``HandleIssueIfHTTPStatusKnown``):
    ``detail`` is the issue message, ``extensions.validationErrors`` lists the issue."""
    ext: dict[str, Any] = {"code": code, "message": message, "severity": "critical"}
    if field:
        ext["field"] = field
    return ApiError(status, message, {"validationErrors": [ext]})


def transition(action: str, state: str) -> ApiError:
    """``openmeter/subscription/state.go`` ``CanTransitionOrErr``."""
    return forbidden(f"transition {action} in state {state} not allowed")


SINGLE_SUB_CODE = "only_single_subscription_allowed_per_customer_at_a_time"


def single_subscription() -> ApiError:
    """``openmeter/subscription/errors.go`` ``ErrOnlySingleSubscriptionAllowed`` (409 issue)."""
    return issue(409, SINGLE_SUB_CODE, "only single subscription is allowed per customer at a time")
