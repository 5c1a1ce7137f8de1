"""The usage proof of an edit, and the marker of a cancelation the engine caused itself.

Every in-place edit is bracketed by reads of the entitlement usage of every metered feature it
touches: ``proof_before`` right before it (stored durably with the decision, as
``proof_before``), ``proof_after`` right after it. An edit that lost usage fails the change
(``usage_not_preserved``) instead of being retried. A crash between the edit and its after-read
leaves ``proof_before`` behind; the next pass finishes the proof from its own observation.

``resuming`` names the subscription whose successor the engine deleted (stored before the
DELETE): while that subscription shows ``canceled``, the cancelation is ours to undo.
"""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal
from typing import Any

from reconciler.domain.model import EntitlementValue, Observed, Plan, SubscriptionStatus
from reconciler.engine.observe import Observer, plan_metered_features
from reconciler.engine.results import Hooks, Outcome
from reconciler.engine.views import value_view
from reconciler.store.types import ChangeRecord


async def proof_before(observer: Observer, observed: Observed, target: Plan) -> dict[str, Any]:
    """Usage of every metered feature of the current and target items, right before the
    edit. The observation that planned the edit has just read the current ones; only the
    target's features it did not cover are read now."""
    features = set(observed.values) | plan_metered_features(target)
    values = dict(observed.values)
    missing = features - set(values)
    if missing:
        values.update(await observer.values(observed.customer_id, missing))
    return {k: value_view(v) for k, v in sorted(values.items())}


async def proof_after(
    observer: Observer,
    hooks: Hooks,
    change: ChangeRecord,
    customer_id: str,
    before: Mapping[str, Any],
    outcome: Outcome,
) -> tuple[dict[str, Any], dict[str, EntitlementValue]]:
    """The change's details with the finished proof (``proof_before`` dropped), and the values
    read; a feature whose usage went down is reported on ``outcome`` and to ``hooks``."""
    after_vals = await observer.values(customer_id, before.keys())
    return finished(hooks, change, before, after_vals, outcome), after_vals


def finished(
    hooks: Hooks,
    change: ChangeRecord,
    before: Mapping[str, Any],
    after_vals: Mapping[str, EntitlementValue],
    outcome: Outcome,
) -> dict[str, Any]:
    """The change's details with the proof finished from ``after_vals`` (read after the edit)."""
    after = {k: value_view(v) for k, v in sorted(after_vals.items())}
    lost = usage_lost(before, after)
    outcome.usage_not_preserved.extend(lost)
    for feature in lost:
        if hooks.on_usage_not_preserved:
            hooks.on_usage_not_preserved(feature.split(":")[0])
    details = {k: v for k, v in change.details.items() if k != "proof_before"}
    details["proof"] = {"before": dict(before), "after": after, "usage_preserved": not lost}
    details["entitlements_after"] = after
    return details


def usage_lost(before: Mapping[str, Any], after: Mapping[str, Any]) -> list[str]:
    """``feature: usage b -> a`` for every feature whose usage is lower after than before."""
    lost = []
    for feature, b in before.items():
        a = after.get(feature)
        if not b or not a or b.get("usage") is None:
            continue
        if a.get("usage") is None or Decimal(str(a["usage"])) < Decimal(str(b["usage"])):
            lost.append(f"{feature}: usage {b['usage']} -> {a.get('usage')}")
    return lost


def resuming(change: ChangeRecord, observed: Observed) -> bool:
    """True while the current subscription is canceled because we deleted its successor."""
    cur = observed.current
    return (
        cur is not None
        and cur.status is SubscriptionStatus.CANCELED
        and change.details.get("resuming") == cur.id
    )


def without_resuming(change: ChangeRecord, observed: Observed) -> dict[str, Any] | None:
    """The change's details without a ``resuming`` marker that no longer holds (None: nothing
    to clear)."""
    if change.details.get("resuming") is None or resuming(change, observed):
        return None
    return {k: v for k, v in change.details.items() if k != "resuming"}
