"""Standard Webhooks verification and the portal's ``plan_change.requested`` payload.

Verification follows https://www.standardwebhooks.com (the scheme Svix uses): the signed content
is ``"{webhook-id}.{webhook-timestamp}.{raw body}"``, signed with HMAC-SHA256; the
``webhook-signature`` header holds a space-separated list of ``v1,<base64 digest>`` entries
(several while the sender rotates secrets). The ``svix-*`` header names are accepted as well.

Secrets: ``whsec_<base64>`` is decoded as Standard Webhooks defines. A secret without the prefix
is tried both as its raw UTF-8 bytes and, when it is valid base64, as the decoded bytes (the
``standardwebhooks`` library decodes unprefixed secrets too). Every configured secret is tried,
so a new secret can be added before the sender switches to it and the old one removed after.

All comparisons are constant time (``hmac.compare_digest``). Nothing here parses the body
before its signature has been checked.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from reconciler.service.problems import ProblemError

SECRET_PREFIX = "whsec_"  # noqa: S105 - the Standard Webhooks prefix, not a secret
EVENT_PLAN_CHANGE = "plan_change.requested"

# OpenMeter's key pattern (api/openapi.yaml ``Key``): lowercase alphanumerics and underscores.
PLAN_KEY_RE = re.compile(r"^[a-z0-9]+(?:_[a-z0-9]+)*$")
PLAN_KEY_MAX = 64
CUSTOMER_MAX = 256
WEBHOOK_ID_MAX = 256
VERSION_MAX = 2**31 - 1
_RFC3339 = re.compile(
    r"^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(?:\.\d{1,9})?(?:[Zz]|[+-]\d{2}:\d{2})$"
)
_TIMESTAMP = re.compile(r"^[0-9]{1,12}$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class WebhookConfigError(ValueError):
    """A configured secret is unusable (the message never contains the secret)."""


def secret_keys(secrets: Sequence[str]) -> list[bytes]:
    """HMAC keys for the configured secrets (see the module docstring for the rules)."""
    keys: list[bytes] = []
    for n, secret in enumerate(secrets, start=1):
        if secret.startswith(SECRET_PREFIX):
            raw = secret[len(SECRET_PREFIX) :]
            try:
                key = base64.b64decode(raw + "=" * (-len(raw) % 4), validate=True)
            except (binascii.Error, ValueError) as exc:
                raise WebhookConfigError(
                    f"webhook secret #{n} starts with {SECRET_PREFIX} but is not valid base64"
                ) from exc
            if not key:
                raise WebhookConfigError(f"webhook secret #{n} is empty")
            keys.append(key)
            continue
        keys.append(secret.encode())
        try:
            decoded = base64.b64decode(secret, validate=True)
        except (binascii.Error, ValueError):
            decoded = b""
        if decoded and len(secret) % 4 == 0:
            keys.append(decoded)
    return keys


def sign(key: bytes, msg_id: str, timestamp: int | str, body: bytes) -> str:
    """One ``v1,<base64>`` signature (used by tests and by tools that replay webhooks)."""
    digest = hmac.new(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


@dataclass(frozen=True, slots=True)
class VerifiedHeaders:
    msg_id: str
    timestamp: int


def _header(headers: Mapping[str, str], name: str) -> tuple[str, str] | None:
    for prefix in ("webhook-", "svix-"):
        value = headers.get(prefix + name)
        if value is not None:
            return prefix + name, value
    return None


def verify(
    headers: Mapping[str, str],
    body: bytes,
    keys: Sequence[bytes],
    *,
    tolerance_seconds: int,
    now: float,
) -> VerifiedHeaders:
    """Check the three headers and the signature over the raw body; raise a 401 problem."""
    found: dict[str, tuple[str, str]] = {}
    for name in ("id", "timestamp", "signature"):
        got = _header(headers, name)
        if got is None:
            raise ProblemError(
                401, f"missing header webhook-{name} (or svix-{name})", kind="webhook-unauthorized"
            )
        found[name] = got
    id_name, msg_id = found["id"]
    ts_name, ts_raw = found["timestamp"]
    sig_name, sig_raw = found["signature"]
    if not msg_id.strip():
        raise ProblemError(401, f"header {id_name} is empty", kind="webhook-unauthorized")
    ts_text = ts_raw.strip()
    if not _TIMESTAMP.match(ts_text):
        raise ProblemError(
            401,
            f"header {ts_name} is not an integer Unix timestamp in seconds",
            kind="webhook-unauthorized",
        )
    timestamp = int(ts_text)
    skew = now - timestamp
    if skew > tolerance_seconds:
        raise ProblemError(
            401,
            f"header {ts_name} is {int(skew)} s in the past; the tolerance is "
            f"{tolerance_seconds} s (replayed or delayed message)",
            kind="webhook-unauthorized",
        )
    if -skew > tolerance_seconds:
        raise ProblemError(
            401,
            f"header {ts_name} is {int(-skew)} s in the future; the tolerance is "
            f"{tolerance_seconds} s (check the sender's clock)",
            kind="webhook-unauthorized",
        )
    candidates: list[bytes] = []
    for entry in sig_raw.split():
        version, sep, value = entry.partition(",")
        if not sep or version != "v1":
            continue
        try:
            candidates.append(base64.b64decode(value, validate=True))
        except (binascii.Error, ValueError):
            continue
    if not candidates:
        raise ProblemError(
            401, f"header {sig_name} holds no v1 signature", kind="webhook-unauthorized"
        )
    signed = f"{msg_id}.{ts_text}.".encode() + body
    matched = False
    for key in keys:
        expected = hmac.new(key, signed, hashlib.sha256).digest()
        for candidate in candidates:
            # Evaluate every pair (no early exit) so timing does not depend on which matched.
            matched |= hmac.compare_digest(expected, candidate)
    if not matched:
        raise ProblemError(
            401,
            f"no signature in header {sig_name} matches the body with a configured secret",
            kind="webhook-unauthorized",
        )
    if len(msg_id) > WEBHOOK_ID_MAX:
        raise ProblemError(
            400, f"header {id_name} is longer than {WEBHOOK_ID_MAX} characters", kind="invalid"
        )
    return VerifiedHeaders(msg_id, timestamp)


# ---------------------------------------------------------------------------------------------
# payloads


@dataclass(frozen=True, slots=True)
class PlanChange:
    customer: str
    plan: str
    plan_version: int | None
    requested_at: datetime | None


@dataclass(frozen=True, slots=True)
class Ignored:
    type: str


def parse_json(body: bytes) -> Any:
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ProblemError(
            400, f"body is not valid UTF-8 (byte {exc.start})", kind="invalid-json"
        ) from exc
    try:
        return json.loads(text, parse_constant=_reject_constant)
    except ValueError as exc:
        raise ProblemError(400, f"body is not valid JSON: {exc}", kind="invalid-json") from exc
    except RecursionError as exc:
        raise ProblemError(
            400, "body is not valid JSON: nested too deeply", kind="invalid-json"
        ) from exc


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _bad(field: str, why: str) -> ProblemError:
    return ProblemError(400, f"field {field}: {why}", kind="invalid", extra={"field": field})


def check_customer(value: Any, field: str = "data.customer") -> str:
    if not isinstance(value, str):
        raise _bad(field, "required, a string (OpenMeter customer id or key)")
    if not value.strip():
        raise _bad(field, "must not be empty")
    if len(value) > CUSTOMER_MAX:
        raise _bad(field, f"longer than {CUSTOMER_MAX} characters")
    if _CONTROL.search(value) or "/" in value or value != value.strip():
        raise _bad(field, "must not contain control characters, '/' or surrounding spaces")
    return value


def check_plan(value: Any, field: str = "data.plan") -> str:
    if not isinstance(value, str):
        raise _bad(field, "required, a plan key string")
    if len(value) > PLAN_KEY_MAX or not PLAN_KEY_RE.match(value):
        raise _bad(
            field,
            f"{_show(value)} is not a plan key (lowercase letters, digits and single "
            f"underscores, at most {PLAN_KEY_MAX} characters)",
        )
    return value


def check_version(value: Any, field: str = "data.plan_version") -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise _bad(field, "must be a positive integer or null")
    if value < 1 or value > VERSION_MAX:
        raise _bad(field, f"{value} is not a positive plan version")
    return value


def check_time(
    value: Any, field: str, *, not_after: datetime | None = None, required: bool = True
) -> datetime | None:
    if value is None and not required:
        return None
    if not isinstance(value, str):
        raise _bad(field, "required, an RFC 3339 date-time with a time zone")
    if not _RFC3339.match(value):
        raise _bad(field, f"{_show(value)} is not an RFC 3339 date-time with a time zone")
    try:
        parsed = datetime.fromisoformat(value.replace("z", "Z").replace("Z", "+00:00"))
    except ValueError as exc:
        raise _bad(field, f"{_show(value)} is not a valid date-time: {exc}") from exc
    parsed = parsed.astimezone(UTC)
    if not_after is not None and parsed > not_after:
        raise _bad(field, f"{value} is in the future")
    return parsed


def _show(value: str) -> str:
    return json.dumps(value[:80] + ("…" if len(value) > 80 else ""))


def parse_event(doc: Any, *, future_limit: datetime) -> PlanChange | Ignored:
    if not isinstance(doc, dict):
        raise ProblemError(400, "body must be a JSON object", kind="invalid")
    kind = doc.get("type")
    if not isinstance(kind, str) or not kind:
        raise _bad("type", "required, a non-empty string")
    if kind != EVENT_PLAN_CHANGE:
        return Ignored(kind)
    data = doc.get("data")
    if not isinstance(data, dict):
        raise _bad("data", "required, an object")
    return PlanChange(
        customer=check_customer(data.get("customer")),
        plan=check_plan(data.get("plan")),
        plan_version=check_version(data.get("plan_version")),
        requested_at=check_time(
            data.get("requested_at"), "data.requested_at", not_after=future_limit
        ),
    )


def future_limit(now: datetime, tolerance_seconds: int) -> datetime:
    """Latest acceptable ``requested_at``: a request from the future would pin the customer's
    desired state until that time (every later request would be older)."""
    return now + timedelta(seconds=tolerance_seconds)
