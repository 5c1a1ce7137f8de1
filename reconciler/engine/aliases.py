"""One OpenMeter customer, one intent: requests that address it by id and by key.

A portal may address one OpenMeter customer by id in one request and by key in another; the
store then holds two desired states for it. They are reconciled under both claims, and the
latest ``requested_at`` wins: the older one is superseded, so the two can never undo each other.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from reconciler.domain.model import Observed
from reconciler.engine.passes import Pass
from reconciler.engine.results import Outcome, OutcomeState
from reconciler.logs import get_logger
from reconciler.store import Store
from reconciler.store.types import ChangeRecord, ChangeStatus

log = get_logger("reconciler.engine")


async def one_customer_one_intent(
    store: Store,
    p: Pass,
    change: ChangeRecord,
    observed: Observed,
    now: datetime,
    busy_retry: timedelta,
) -> tuple[ChangeRecord, Outcome | None]:
    """Claim the customer's other addresses; supersede the older of two open requests.
    Returns the change (as staged) and, when this pass must stop, its outcome."""
    customer, cid = change.customer, observed.customer_id
    if change.customer_id is None:
        change = p.stage(change, customer_id=cid)
    elif p.claim.customer_id is None:
        p.customer_id = cid
    for rec in await store.aliases(cid):
        if rec.customer == customer:
            continue
        other_claim = await p.aliases.enter_async_context(store.claim(rec.customer))
        if other_claim is None:  # being worked on right now: look again shortly
            p.schedule(now + busy_retry)
            change = await p.commit_change(change)
            return change, Outcome(customer, change.id, change.status.value, OutcomeState.BUSY)
        other = other_claim.desired
        if other is None or other.status in (ChangeStatus.SUPERSEDED, ChangeStatus.FAILED):
            continue
        ours_newer = change.requested_at >= other.requested_at
        older, newer, newer_ref = (
            (other, change, customer) if ours_newer else (change, other, rec.customer)
        )
        reason = (
            f"superseded by change {newer.id} (requested {newer.requested_at.isoformat()}) "
            f"for the same OpenMeter customer {cid}, addressed as '{newer_ref}'"
        )
        if not ours_newer:
            p.schedule(None)
            updated = p.stage(
                change, status=ChangeStatus.SUPERSEDED, last_error=reason, next_attempt_at=None
            )
            updated = await p.commit_change(updated)
            log.warning("alias_superseded", superseded=older.id, winner=newer.id, customer_id=cid)
            return updated, Outcome(
                customer, change.id, "superseded", OutcomeState.SUPERSEDED, error=reason
            )
        await store.update_change(
            older.id, status=ChangeStatus.SUPERSEDED, last_error=reason, next_attempt_at=None
        )
        log.warning("alias_superseded", superseded=older.id, winner=newer.id, customer_id=cid)
    return change, None
