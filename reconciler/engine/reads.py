"""The read side: previews (dry runs) and status reports.

Built on the same observation and planner as ``Engine.reconcile``, so a preview shows exactly
the calls a reconcile would make now. Results are typed (:mod:`reconciler.engine.results`);
:mod:`reconciler.engine.views` renders them as JSON.
"""

from __future__ import annotations

from reconciler.domain.addons import AddonMode, addons_matter
from reconciler.domain.addons import gate as addon_gate
from reconciler.domain.model import Desired
from reconciler.domain.planner import plan
from reconciler.engine.catalog import UnknownPlan
from reconciler.engine.collaborators import Collaborators
from reconciler.engine.quote import QuoteError, Quoter
from reconciler.engine.results import DesiredStatus, Preview, StatusReport
from reconciler.openmeter.errors import OpenMeterError
from reconciler.store.types import ChangeStatus


class Queries:
    """``preview`` (what a change would do now) and ``status`` (where a customer stands)."""

    def __init__(self, c: Collaborators, quoter: Quoter | None = None) -> None:
        self.c = c
        self.quoter = quoter or Quoter(c)

    async def preview(
        self, customer: str, plan_key: str, plan_version: int | None = None
    ) -> Preview:
        c = self.c
        target = await c.catalog.get(plan_key, plan_version)
        now = await c.clock.now()
        observed = await c.observer.observe(customer, now)
        desired = Desired("preview", target.key, target.version, now)
        result = plan(observed, desired, target, c.policy, now)
        if addons_matter(result):
            observed = await c.observer.with_addons(observed)
            mode = getattr(c.policy, "addons", AddonMode.REFUSE)
            result = addon_gate(result, observed, target, mode, desired.change_id)
        if observed.current is None:
            return Preview(
                observed, result, target, now, None, "no current subscription: nothing to quote"
            )
        try:
            charges = await self.quoter.charges(observed, result, target, now)
        except QuoteError as exc:
            return Preview(observed, result, target, now, None, str(exc))
        except OpenMeterError as exc:  # e.g. a meter query refused: the dry run still answers
            error = f"cannot read usage from OpenMeter: {exc.detail or exc}"
            return Preview(observed, result, target, now, None, error)
        return Preview(observed, result, target, now, charges)

    async def status(self, customer: str, *, audit_limit: int = 20) -> StatusReport:
        c = self.c
        now = await c.clock.now()
        observed = await c.observer.observe(customer, now)
        change = await c.store.desired_for(customer)
        if change is None and observed.customer_key and observed.customer_key != customer:
            change = await c.store.desired_for(observed.customer_key)
        if change is None:
            change = await c.store.desired_for(observed.customer_id)
        convergence = "no_desired_state"
        desired: DesiredStatus | None = None
        if change is not None:
            try:
                target = await c.catalog.get(change.plan_key, change.plan_version)
            except UnknownPlan as exc:
                convergence = f"unknown plan: {exc}"
                desired = DesiredStatus(change, None, plan_error=str(exc))
            else:
                result = plan(
                    observed,
                    change.to_desired(),
                    target,
                    c.policy,
                    now,
                    settled=change.status is ChangeStatus.CONVERGED,
                )
                convergence = result.state.value
                desired = DesiredStatus(change, result)
        audit = await c.store.list_audit(
            customer=change.customer if change else customer, limit=audit_limit
        )
        return StatusReport(customer, observed, now, desired, convergence, tuple(audit))
