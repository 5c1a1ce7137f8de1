"""What a sweep compares to tell that a converged customer's OpenMeter state drifted.

OpenMeter's customer listing (``GET /api/v1/customers?expand=subscriptions``) carries each
subscription's id, status, plan reference, annotations and ``updatedAt``, but not its phases or
items. So when a change converges (or a cancelation made outside is respected) the engine stores
an *observed mark* with the change: the current subscription's *token* (``id@updatedAt``, which
OpenMeter moves on every edit, cancelation, change and unschedule) and a *digest* of its items
(every phase's item keys and content: feature, price, entitlement type / allowance / usage
period, as in ``item_fingerprint``).

* The quick sweep compares the listing's token with the mark's, for free; only a customer whose
  token moved costs one read (``GET /subscriptions/{id}``), whose items digest is compared with
  the mark's: the same digest (a metadata edit, say) refreshes the token, a different one is
  drift and the customer is reconciled.
* The nightly full sweep does not trust the token: it reads every converged customer's current
  subscription once and compares digests.

Pure: no I/O, no clock.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from reconciler.domain.model import ObservedPhase, ObservedSubscription

#: The token of "no current subscription" (a cancelation that took effect, respected).
NO_SUBSCRIPTION = "-"


def subscription_token(sub_id: str | None, updated_at: datetime | None) -> str:
    """``id@updatedAt`` of a subscription as the listing and the expanded read both show it."""
    if sub_id is None:
        return NO_SUBSCRIPTION
    return f"{sub_id}@{updated_at.isoformat() if updated_at is not None else ''}"


def items_digest(phases: Iterable[ObservedPhase]) -> str:
    """Digest of every phase's items (key and content, the reconciler's tags excluded)."""
    h = hashlib.sha256()
    for phase in phases:
        h.update(b"\x00phase\x00" + phase.key.encode())
        for fp in sorted(f"{i.key}\x01{i.fingerprint()}" for i in phase.items):
            h.update(b"\x00" + fp.encode())
    return h.hexdigest()[:32]


@dataclass(frozen=True, slots=True)
class ObservedMark:
    token: str
    digest: str

    def encode(self) -> str:
        return f"{self.token} {self.digest}"

    @classmethod
    def decode(cls, text: str | None) -> ObservedMark | None:
        if not text:
            return None
        token, _, digest = text.partition(" ")
        return cls(token, digest)


def mark_of(sub: ObservedSubscription | None) -> ObservedMark:
    """The mark of the current subscription (or of none)."""
    if sub is None:
        return ObservedMark(NO_SUBSCRIPTION, "")
    return ObservedMark(subscription_token(sub.id, sub.updated_at), items_digest(sub.phases))


def items_summary(sub: ObservedSubscription | None, now: datetime) -> dict[str, object]:
    """What was found, for the audit log: the current phase's items by key with their feature
    and allowance."""
    if sub is None:
        return {"subscription": None}
    phase = sub.phase_at(now)
    items: dict[str, object] = {}
    for i in phase.items if phase else ():
        ent = i.entitlement.template if i.entitlement else None
        items[i.key] = {
            "feature": i.feature_key,
            "entitlement": ent.type if ent else None,
            "allowance": (
                format(ent.issue_after_reset.normalize(), "f")
                if ent is not None and ent.issue_after_reset is not None
                else None
            ),
        }
    return {
        "subscription": sub.id,
        "plan": str(sub.plan) if sub.plan else None,
        "phase": phase.key if phase else None,
        "items": items,
    }
