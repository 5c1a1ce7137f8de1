"""Read one customer's state from OpenMeter into the planner's ``Observed``.

Statuses come from OpenMeter (computed at its clock), so the reconciler and OpenMeter never
disagree about whether a boundary has passed.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Awaitable, Callable, Iterable, Mapping
from datetime import datetime
from typing import Any, Protocol, TypeVar

from reconciler.domain.cancelation import ended_at
from reconciler.domain.model import (
    EntitlementValue,
    Observed,
    ObservedSubscription,
    Plan,
    SubscriptionStatus,
)
from reconciler.engine.pacing import Pacer
from reconciler.openmeter import mapping
from reconciler.openmeter.client import OpenMeterClient
from reconciler.openmeter.errors import OpenMeterError
from reconciler.openmeter.models import Subscription, SubscriptionChangeResponse

LIVE = ("active", "canceled")


class Listed(Protocol):
    """What ``pick`` reads of a listed subscription (full or slim wire model)."""

    @property
    def id(self) -> str: ...
    @property
    def status(self) -> str: ...
    @property
    def active_from(self) -> datetime: ...
    @property
    def active_to(self) -> datetime | None: ...
    @property
    def annotations(self) -> dict[str, Any] | None: ...


S = TypeVar("S", bound=Listed)

# the listed current subscription's plan (key, version) -> the features whose values to read
# with the expanded subscription, or None to read none (``Observer.observe``)
Prefetch = Callable[[tuple[str, int] | None], Awaitable[Iterable[str] | None]]


def _status(sub: Listed) -> str:
    return str(getattr(sub.status, "value", sub.status))


def pick(subs: Iterable[S]) -> tuple[S | None, S | None]:
    """The customer's current subscription (active or canceled) and its scheduled successor."""
    subs = list(subs)
    if len(subs) == 1:  # the usual listing (a sweep checks one per customer): no sorting
        only = subs[0]
        status = _status(only)
        if status in LIVE:
            return only, None
        return (None, only) if status == "scheduled" else (None, None)
    live = sorted((s for s in subs if _status(s) in LIVE), key=lambda s: s.active_from)
    current = live[-1] if live else None
    scheduled = sorted((s for s in subs if _status(s) == "scheduled"), key=lambda s: s.active_from)
    successor = None
    if current is not None:
        superseding = (current.annotations or {}).get("subscription.superseding.id")
        successor = next((s for s in scheduled if s.id == superseding), None)
        if successor is None and current.active_to is not None:
            successor = next((s for s in scheduled if s.active_from >= current.active_to), None)
    elif scheduled:
        successor = scheduled[0]
    return current, successor


class Observer:
    def __init__(self, client: OpenMeterClient, pacer: Pacer | None = None) -> None:
        self.client = client
        self.pacer = pacer or Pacer(0)

    async def observe(
        self,
        customer: str,
        now: datetime,
        *,
        values: bool = True,
        identity: tuple[str, str | None] | None = None,
        known_values: Mapping[str, EntitlementValue] | None = None,
        prefetch: Prefetch | None = None,
        listing: Awaitable[list[Subscription]] | None = None,
    ) -> Observed:
        """``identity`` (id, key) skips the customer lookup; ``known_values`` are used instead
        of reading the entitlement values again (the caller read them moments ago).

        ``prefetch``: the caller will likely need entitlement values (a change is about to be
        acted on), so they are read *together with* the current subscription rather than after
        it — one round trip less before a mutation. Given the plan (key, version) the listing
        names, it returns the features to guess (e.g. the target's and that plan version's: a
        published version never changes, the catalog caches it), or None to read no values.
        Features the expanded subscription shows that the guess missed are read afterwards,
        so the values are complete whenever a guess was made.

        ``listing``: the customer's subscriptions (by ``customer``, key or id), already being
        read by the caller; used, without ``identity``, instead of reading them here."""
        pace = self.pacer.yield_point
        await pace()
        if identity is None and not looks_like_id(customer):
            # A key, never an id (OpenMeter's ids are ULIDs): each listed subscription names
            # the customer's id, so the customer itself is read only when it lists none.
            subs = await (listing or self.client.list_customer_subscriptions(customer))
            if subs:
                identity = (subs[0].customer_id, customer)
            else:
                cust = await self.client.get_customer(customer)
                identity = (cust.id, cust.key)
        elif identity is None:
            # OpenMeter resolves a customer id or key in both paths the same way, so the
            # listing need not wait for the customer's id: one round trip instead of two.
            cust, subs = await asyncio.gather(
                self.client.get_customer(customer),
                listing or self.client.list_customer_subscriptions(customer),
            )
            identity = (cust.id, cust.key)
        else:
            subs = await self.client.list_customer_subscriptions(identity[0])
        cid, ckey = identity
        current, successor = pick(subs)
        await pace()
        vals: dict[str, EntitlementValue] = {}
        addons: tuple[str, ...] | None = None
        guessed: dict[str, EntitlementValue] | None = None
        if known_values is None and prefetch is not None and current is not None:
            cur_x, succ_x, (guessed, addons) = await asyncio.gather(
                self._expanded(current),
                self._expanded(successor),
                self._guess(cid, current, prefetch),
            )
        else:
            cur_x, succ_x = await asyncio.gather(self._expanded(current), self._expanded(successor))
        if known_values is not None:
            vals = dict(known_values)
        elif guessed is not None:
            vals = guessed
            if cur_x is not None:
                missing = set(metered_features(cur_x, now)) - set(vals)
                if missing:
                    vals.update(await self.values(cid, missing))
        elif values and cur_x is not None:
            vals = await self.values(cid, metered_features(cur_x, now))
        return Observed(
            customer_id=cid,
            customer_key=ckey,
            observed_at=now,
            current=cur_x,
            successor=succ_x,
            values=vals,
            addons=addons if cur_x is not None and addons is not None else None,
        )

    async def _guess(
        self, customer_id: str, listed: Listed, prefetch: Prefetch
    ) -> tuple[dict[str, EntitlementValue] | None, tuple[str, ...] | None]:
        """What an edit will need, read while the subscription is: the guessed features'
        values and the subscription's add-ons (OpenMeter refuses to edit one with add-ons)."""
        plan = getattr(listed, "plan", None)
        features = await prefetch((plan.key, plan.version) if plan is not None else None)
        if features is None:
            return None, None
        vals, addons = await asyncio.gather(
            self.values(customer_id, features), self._addon_keys(listed.id)
        )
        return vals, addons

    async def follow(
        self,
        prev: Observed,
        now: datetime,
        values: Mapping[str, EntitlementValue],
        successor: ObservedSubscription | None,
        fresh: Awaitable[ObservedSubscription | None] | None = None,
    ) -> Observed | None:
        """The observation after one of our mutations, from one read instead of a full one.

        ``successor`` is what the mutation left scheduled: unchanged by an edit, the ``next``
        of a change's response (OpenMeter's own view). Only the current subscription is read
        again; it witnesses its successor (``activeTo`` and the ``superseding`` annotation
        change whenever anything is scheduled after it, as subscriptions of one customer
        cannot overlap). When it does not match ``successor``, someone else acted meanwhile
        and None is returned: observe in full. ``fresh`` is that read started earlier
        (``read_current_soon``); None from it (the read failed) also means: observe in full.
        """
        cur = prev.current
        if cur is None:
            return None
        if fresh is not None:
            got = await fresh
            return self._followed(prev, now, values, successor, got) if got else None
        await self.pacer.yield_point()
        got = mapping.to_observed_subscription(await self.client.get_subscription(cur.id))
        return self._followed(prev, now, values, successor, got)

    def answered(
        self,
        prev: Observed,
        now: datetime,
        values: Mapping[str, EntitlementValue],
        successor: ObservedSubscription,
        current: Subscription,
    ) -> Observed | None:
        """The observation after our own scheduled change, from OpenMeter's answer instead of
        a read: ``current`` is the response's current subscription (plain: status, end,
        annotations, ``updatedAt``, as OpenMeter left it), its phases and items those ``prev``
        read after our edit, cut at the new end (``domain/cancelation.py``). None when the
        answer is not exactly that subscription ending where ``successor`` starts, or its view
        is not predicted: then ``follow`` reads it. Planned on, never acted on: the engine
        reads before any mutation this observation would lead to."""
        cur = prev.current
        if cur is None or current.id != cur.id or current.active_to is None:
            return None
        cut = ended_at(cur, current.active_to)
        if cut is None or _status(current) not in LIVE:
            return None
        fresh = dataclasses.replace(
            cut,
            status=SubscriptionStatus(_status(current)),
            annotations=dict(current.annotations or {}),
            metadata=dict(current.metadata or {}),
            updated_at=current.updated_at,
        )
        return self._followed(prev, now, values, successor, fresh)

    def read_current_soon(self, prev: Observed) -> asyncio.Task[ObservedSubscription | None] | None:
        """Start the read ``follow`` makes of ``prev``'s current subscription now, right after
        our mutation was answered, so that it overlaps what the engine does before its next
        step (the mutation's commit, the usage proof's after-read): one round trip fewer on
        the way to the next mutation. A failed read yields None (the next step observes in
        full, which reports the error if it persists)."""
        cur = prev.current
        if cur is None:
            return None
        return asyncio.ensure_future(self._read_current(cur.id))

    def values_soon(
        self, customer_id: str, features: Iterable[str]
    ) -> asyncio.Task[dict[str, EntitlementValue] | None]:
        """Start reading entitlement values now (an edit's after-read), to be awaited later; a
        failed read yields None (the caller reads again, and reports the error if it persists)."""
        return asyncio.ensure_future(self._values_or_none(customer_id, list(features)))

    async def _values_or_none(
        self, customer_id: str, features: list[str]
    ) -> dict[str, EntitlementValue] | None:
        try:
            return await self.values(customer_id, features)
        except OpenMeterError:
            return None

    def after_change(
        self,
        prev: Observed,
        now: datetime,
        values: Mapping[str, EntitlementValue],
        reread: ObservedSubscription | None,
        answer: SubscriptionChangeResponse,
    ) -> tuple[
        tuple[Observed, ObservedSubscription | None] | None,
        Subscription | None,
        Awaitable[ObservedSubscription | None] | None,
    ]:
        """What to observe after our edit and the change sent on the edit's answer, given the
        subscription re-read after the edit (while the change was sent): the engine's
        ``follow``, ``answered`` and ``soon``. The re-read was served before the change or
        after it. Before, it shows the edit and no end: the next step plans on it, ended by the
        change's answer (``answered``), or reads the subscription again (``follow``). After, it
        ends where the answer's successor starts: ``follow`` checks it as its read. A failed
        re-read, or one showing something else: (None, None, None), observe in full."""
        if reread is None:
            return None, None, None
        successor = mapping.to_observed_subscription(answer.next)
        if reread.active_to is None and reread.superseding_id is None:
            edited = self._followed(prev, now, values, None, reread)
            if edited is None:
                return None, None, None
            return (edited, successor), answer.current, None
        return (prev, successor), None, _ready(reread)

    async def _read_current(self, subscription_id: str) -> ObservedSubscription | None:
        await self.pacer.yield_point()
        try:
            sub = await self.client.get_subscription(subscription_id)
        except OpenMeterError:
            return None
        return mapping.to_observed_subscription(sub)

    @staticmethod
    def _followed(
        prev: Observed,
        now: datetime,
        values: Mapping[str, EntitlementValue],
        successor: ObservedSubscription | None,
        fresh: ObservedSubscription,
    ) -> Observed | None:
        if fresh.status.value not in LIVE:
            return None
        if successor is None:
            if fresh.active_to is not None or fresh.superseding_id is not None:
                return None
        elif (
            successor.status.value != "scheduled"
            or fresh.superseding_id not in (None, successor.id)
            or fresh.active_to != successor.active_from
        ):
            return None
        return Observed(
            customer_id=prev.customer_id,
            customer_key=prev.customer_key,
            observed_at=now,
            current=fresh,
            successor=successor,
            values=dict(values),
        )

    async def with_values(self, observed: Observed, now: datetime) -> Observed:
        """``observed`` with the entitlement values of its current subscription's metered
        features read now (for an observation made with ``values=False``)."""
        if observed.current is None:
            return observed
        vals = await self.values(observed.customer_id, metered_features(observed.current, now))
        return dataclasses.replace(observed, values=vals)

    async def with_addons(self, observed: Observed) -> Observed:
        """``observed`` with the add-ons of its current subscription (one read). An add-on
        counts when any segment of its quantity timeline is above 0: OpenMeter's ``hasAddons``
        (``workflow/service/addon.go``) looks at the whole history, so a quantity set back to 0
        still forbids edits."""
        if observed.current is None:
            return dataclasses.replace(observed, addons=())
        return dataclasses.replace(observed, addons=await self._addon_keys(observed.current.id))

    async def _addon_keys(self, subscription_id: str) -> tuple[str, ...]:
        await self.pacer.yield_point()
        rows = await self.client.list_subscription_addons(subscription_id)
        return tuple(
            sorted(
                str((row.get("addon") or {}).get("key") or row.get("id"))
                for row in rows
                if any((seg.get("quantity") or 0) > 0 for seg in row.get("timeline") or ())
            )
        )

    async def _expanded(self, sub: Subscription | None) -> ObservedSubscription | None:
        if sub is None:
            return None
        return mapping.to_observed_subscription(await self.client.get_subscription(sub.id))

    async def values(
        self, customer_id: str, features: Iterable[str]
    ) -> dict[str, EntitlementValue]:
        keys = sorted(set(features))
        await self.pacer.yield_point()
        got = await asyncio.gather(
            *(self.client.get_entitlement_value(customer_id, k) for k in keys)
        )
        return {k: mapping.to_entitlement_value(v) for k, v in zip(keys, got, strict=True)}


async def _ready(sub: ObservedSubscription) -> ObservedSubscription:
    return sub


_CROCKFORD = frozenset("0123456789ABCDEFGHJKMNPQRSTVWXYZ")


def looks_like_id(customer: str) -> bool:
    """Whether ``customer`` could be an OpenMeter id (a ULID: 26 Crockford base-32 digits)."""
    return len(customer) == 26 and _CROCKFORD.issuperset(customer.upper())


def plan_metered_features(plan: Plan) -> set[str]:
    """Every metered feature of any phase of ``plan``."""
    return {
        card.feature_key
        for phase in plan.phases
        for card in phase.rate_cards
        if card.entitlement and card.entitlement.type == "metered" and card.feature_key
    }


def metered_features(sub: ObservedSubscription, now: datetime) -> list[str]:
    phase = sub.phase_at(now) or (sub.phases[-1] if sub.phases else None)
    if phase is None:
        return []
    return [
        i.entitlement.feature_key
        for i in phase.items
        if i.entitlement is not None and i.entitlement.type == "metered"
    ]
