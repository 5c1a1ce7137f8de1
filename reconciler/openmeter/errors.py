"""Typed errors for OpenMeter responses (RFC 7807 ``application/problem+json``).

OpenMeter (beta.227, ``pkg/models/problem.go`` ``StatusProblem``) answers errors with
``{type, title, status, detail, instance, extensions?}`` where ``extensions`` is a *nested*
object that may carry ``validationErrors: [{code, message, field, severity, component}]``. The
``detail`` string carries the matched error's prefix (``validation error: …``, ``forbidden error:
…``). 500 answers have an empty ``detail``.

Every exception carries ``status`` (``None`` for :class:`TransportError`), ``detail``, the parsed
``problem`` mapping (empty when the body was not problem JSON), ``method`` and ``path``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import httpx

_BODY_SNIPPET = 300


class OpenMeterError(Exception):
    """Base class of every error the OpenMeter client raises."""

    def __init__(
        self,
        status: int | None,
        detail: str,
        problem: Mapping[str, Any] | None = None,
        *,
        method: str = "",
        path: str = "",
    ) -> None:
        self.status = status
        self.detail = detail
        self.problem: Mapping[str, Any] = problem or {}
        self.method = method
        self.path = path
        where = f"{method} {path}".strip()
        code = f" {status}" if status is not None else ""
        super().__init__(f"OpenMeter{code}: {detail}" + (f" ({where})" if where else ""))

    @property
    def title(self) -> str | None:
        v = self.problem.get("title")
        return str(v) if v is not None else None

    @property
    def instance(self) -> str | None:
        v = self.problem.get("instance")
        return str(v) if v is not None else None

    @property
    def validation_errors(self) -> list[Mapping[str, Any]]:
        """``extensions.validationErrors`` (tolerating a top-level ``validationErrors``)."""
        ext = self.problem.get("extensions")
        raw: Any = None
        if isinstance(ext, Mapping):
            raw = ext.get("validationErrors")
        if raw is None:
            raw = self.problem.get("validationErrors")
        if not isinstance(raw, list):
            return []
        return [e for e in raw if isinstance(e, Mapping)]

    @property
    def codes(self) -> list[str]:
        """The ``code`` of every validation error, in order."""
        return [str(e["code"]) for e in self.validation_errors if e.get("code")]


class BadRequest(OpenMeterError):
    """400: request validation failed (OpenAPI validation, patch validation, bad timing)."""


class Forbidden(OpenMeterError):
    """403: state-machine transition refused, entitlement managed by subscription, …"""


class NotFound(OpenMeterError):
    """404: unknown subscription/customer/plan, or unknown route."""


class Conflict(OpenMeterError):
    """409: e.g. ``only_single_subscription_allowed_per_customer_at_a_time`` (see ``.codes``)."""


class PreconditionFailed(OpenMeterError):
    """412: e.g. the customer is deleted."""


class RateLimited(OpenMeterError):
    """429. Self-hosted OpenMeter has no rate limiter; a proxy in front of it may."""

    def __init__(self, *args: Any, retry_after: float | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.retry_after = retry_after


class ServerError(OpenMeterError):
    """5xx (500 has an empty ``detail`` in OpenMeter; 501 for historical subscription reads)."""

    def __init__(self, *args: Any, retry_after: float | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.retry_after = retry_after


class UnexpectedStatus(OpenMeterError):
    """Any other non-2xx status (401, 405, 408, …), or a 2xx body that could not be parsed."""


class TransportError(OpenMeterError):
    """No (usable) response: connect error, timeout, dropped connection.

    ``ambiguous`` is true when the request was a mutation that may have reached OpenMeter and
    been applied; the caller must re-observe before deciding anything. A failure to *connect*
    (nothing was sent) is never ambiguous.
    """

    def __init__(
        self,
        detail: str,
        *,
        method: str,
        path: str,
        ambiguous: bool,
        cause: BaseException | None = None,
    ) -> None:
        super().__init__(None, detail, None, method=method, path=path)
        self.ambiguous = ambiguous
        self.cause = cause


_BY_STATUS: dict[int, type[OpenMeterError]] = {
    400: BadRequest,
    403: Forbidden,
    404: NotFound,
    409: Conflict,
    412: PreconditionFailed,
    429: RateLimited,
}


def parse_problem(response: httpx.Response) -> tuple[dict[str, Any], str]:
    """Return (problem mapping, human detail) for an error response, whatever its body is."""
    text = response.text if response.content else ""
    problem: dict[str, Any] = {}
    try:
        parsed = json.loads(text) if text else None
    except ValueError:
        parsed = None
    if isinstance(parsed, dict):
        problem = parsed
    detail = ""
    if problem:
        for k in ("detail", "title", "message", "error"):
            v = problem.get(k)
            if isinstance(v, str) and v:
                detail = v
                break
    if not detail:
        snippet = " ".join(text.split())[:_BODY_SNIPPET]
        reason = response.reason_phrase or "error"
        ctype = response.headers.get("content-type", "no content type")
        detail = f"HTTP {response.status_code} {reason}" + (
            f" ({ctype}): {snippet}" if snippet else " (empty body)"
        )
    return problem, detail


def error_for_response(
    response: httpx.Response,
    *,
    method: str,
    path: str,
    retry_after: float | None = None,
) -> OpenMeterError:
    """Build the typed exception for a non-2xx ``response``."""
    problem, detail = parse_problem(response)
    status = response.status_code
    if status >= 500:
        return ServerError(
            status, detail, problem, method=method, path=path, retry_after=retry_after
        )
    if status == 429:
        return RateLimited(
            status, detail, problem, method=method, path=path, retry_after=retry_after
        )
    cls = _BY_STATUS.get(status, UnexpectedStatus)
    return cls(status, detail, problem, method=method, path=path)
