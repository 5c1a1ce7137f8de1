"""One reconcile pass of one customer: its claims and the writes it stages and commits.

Writes are staged and committed together (:meth:`Pass.commit`): before the pass's first
mutation and before any mutation that needs a durable marker (``proof_before``, ``resuming``),
after every mutation (with its audit row) before any other OpenMeter call, and when the pass
ends. A commit is one store transaction carrying the change's fields, the audit rows of the
calls made since the last one, the decisions noted and the events of a status transition,
under the pass's claim.
"""

from __future__ import annotations

import dataclasses
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from reconciler.engine.audit import AuditWriter
from reconciler.engine.pacing import Pacer
from reconciler.store import Store
from reconciler.store.errors import StaleChangeError
from reconciler.store.store import KEEP, Claim, Keep
from reconciler.store.types import AuditEntry, AuditKind, ChangeRecord, NewEvent


@dataclass
class Pass:
    store: Store
    pacer: Pacer
    call_audit: AuditWriter | None
    claim: Claim
    aliases: AsyncExitStack  # the claims of the customer's other addresses (``aliases``)
    fields: dict[str, Any] = field(default_factory=dict)
    notes: list[AuditEntry] = field(default_factory=list)
    reschedule: datetime | Keep | None = KEEP
    customer_id: str | None = None
    durable: bool = False  # a staged field must be stored before the next mutation
    acted: bool = False  # a mutation was sent in this pass
    # a mutation's audit row is staged, to be committed before the next OpenMeter call
    owed: bool = False

    def stage(self, change: ChangeRecord, *, durable: bool = False, **fields: Any) -> ChangeRecord:
        """Stage fields of the change for the next commit; returns the change as it will be."""
        self.fields.update(fields)
        self.durable = self.durable or durable
        if "customer_id" in fields:
            self.customer_id = fields["customer_id"]
        return dataclasses.replace(change, **fields)

    def note(self, change: ChangeRecord, operation: str, at: datetime, **fields: Any) -> None:
        """Stage a decision row of the audit log for this change."""
        self.notes.append(
            AuditEntry(
                at=at,
                kind=AuditKind.DECISION,
                operation=operation,
                customer=change.customer,
                change_id=change.id,
                **fields,
            )
        )

    def schedule(self, at: datetime | None) -> None:
        """Stage when the worker should look at this customer next (None: nothing due)."""
        self.reschedule = at

    async def commit(
        self, change: ChangeRecord | None, customer: str, events: list[NewEvent] | None = None
    ) -> ChangeRecord | None:
        """Write what the pass staged, the audit rows of its calls and ``events`` in one store
        transaction (see ``Store.commit``)."""
        await self.pacer.yield_point()
        audit = [*(self.call_audit.take(customer) if self.call_audit else ()), *self.notes]
        fields, reschedule = self.fields, self.reschedule
        self.fields, self.notes, self.reschedule, self.durable = {}, [], KEEP, False
        self.owed = False
        if change is None:
            fields = {}
        try:
            stored = await self.store.commit(
                change.id if change is not None else None,
                fields=fields,
                events=events or (),
                audit=audit,
                claim=self.claim,
                customer_id=self.customer_id,
                reschedule=reschedule,
            )
        except StaleChangeError:
            await self.store.append_audit(audit)  # what was called stays on record
            raise
        return stored if stored is not None else change

    async def commit_change(
        self, change: ChangeRecord, events: list[NewEvent] | None = None
    ) -> ChangeRecord:
        stored = await self.commit(change, change.customer, events)
        assert stored is not None
        return stored

    async def close(self, customer: str) -> None:
        """The pass ends: what it called and noted after its last commit goes on record."""
        if self.call_audit is not None:
            await self.call_audit.flush(customer)
        if self.notes:
            await self.store.append_audit(self.notes)
