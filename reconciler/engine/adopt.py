"""Adoption: a customer's desired state re-derived from the tags OpenMeter holds.

The reconciler tags what it writes: the successor it schedules carries
``reconciler.plan/version/change`` in its metadata and the items it adds carry them in their
entitlement metadata. A customer without desired state in our store (a lost or new database)
gets it back from those tags; a customer without tags is left alone.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime

from reconciler.domain.model import META_CHANGE, META_PLAN, META_VERSION, Observed
from reconciler.engine.collaborators import Collaborators
from reconciler.engine.submit import ChangeRequest, submit
from reconciler.logs import get_logger
from reconciler.store.types import ChangeRecord, ChangeSource

log = get_logger("reconciler.engine")


def tags_of(observed: Observed, now: datetime) -> tuple[Mapping[str, str], datetime] | None:
    """The newest reconciler tags visible in OpenMeter, and when they were written."""
    succ = observed.successor
    if succ is not None and succ.metadata.get(META_PLAN):
        return succ.metadata, succ.active_from if succ.active_from < now else now
    cur = observed.current
    if cur is None:
        return None
    phase = cur.phase_at(now)
    tagged = [i for i in (phase.items if phase else ()) if i.provenance.get(META_PLAN)]
    if tagged:
        latest = max(tagged, key=lambda i: i.active_from)
        return latest.provenance, latest.active_from
    if cur.metadata.get(META_PLAN):
        return cur.metadata, cur.active_from
    return None


async def adopt(c: Collaborators, customer: str) -> ChangeRecord | None:
    """The desired state stored for ``customer`` from its tags; None when it already has one or
    OpenMeter shows no tags."""
    if await c.store.desired_for(customer) is not None:
        return None
    now = await c.clock.now()
    observed = await c.observer.observe(customer, now, values=False)
    found = tags_of(observed, now)
    if found is None:
        return None
    tags, requested_at = found
    try:
        version: int | None = int(tags.get(META_VERSION, ""))
    except ValueError:
        version = None
    result = await submit(
        c.store,
        c.clock,
        ChangeRequest(customer, tags[META_PLAN], version, requested_at),
        ChangeSource.SWEEP,
        tags.get(META_CHANGE) or f"adopted-{observed.customer_id}",
        customer_id=observed.customer_id,
    )
    log.info(
        "desired_state_adopted",
        customer=customer,
        plan=tags[META_PLAN],
        change=result.change.id,
    )
    return result.change
