"""Webhook intake goes first: background reconciles step aside while a request is being taken in.

One process serves the portal's webhooks and runs the worker on the same event loop. A busy
worker (eight reconciles, each a dozen OpenMeter calls and store writes) makes every await of a
webhook wait behind its callbacks, so the portal's 202 slows exactly when it matters: during a
burst. Senders time out and retry, adding load.

``Pacer`` gives intake priority without starving anyone: while any foreground request is in
flight, background work waits at its next yield point (before an OpenMeter call or a store
write) until the foreground is idle again, but never longer than ``max_hold`` seconds per yield
point, so the worker always moves. Background work is whatever runs with ``background()`` set
(the worker's reconciles); everything else, including admin requests, is never held.

Priority inheritance: a webhook for a customer whose pass is under way may wait for that pass
(on PostgreSQL the pass holds the customer's row lock, which the webhook's write needs). The
webhook ``boost``s its customer, and that pass is never held until the webhook is done —
otherwise each would wait for the other until ``max_hold`` ran out, step after step.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from contextvars import ContextVar

_BACKGROUND: ContextVar[tuple[bool, str | None]] = ContextVar(
    "reconciler_background", default=(False, None)
)


@contextlib.contextmanager
def background(customer: str | None = None) -> Iterator[None]:
    """Mark the work done in this block (and the tasks it starts) as background: a pass over
    ``customer`` when given."""
    token = _BACKGROUND.set((True, customer))
    try:
        yield
    finally:
        _BACKGROUND.reset(token)


class Pacer:
    def __init__(self, max_hold: float = 0.25, *, linger: float = 0.005) -> None:
        self.max_hold = max_hold
        # A sender posting back to back leaves a gap of about a millisecond between one 202 and
        # its next request: the foreground counts as busy that much longer, or the worker would
        # fill every gap and the next webhook would find the loop full again.
        self.linger = linger
        self._active = 0
        self._last_end = float("-inf")
        self._boosted: dict[str, int] = {}  # customer -> foreground requests waiting on it
        self._held_passes: dict[str, int] = {}  # customer -> its pass's yield points now held
        self._changed = asyncio.Event()  # pulsed when holds may end (idle, or a boost)
        self.held = 0  # yield points that waited (for metrics and tests)

    def _now(self) -> float:
        return asyncio.get_running_loop().time()

    @property
    def busy(self) -> bool:
        return self._active > 0 or self._now() - self._last_end < self.linger

    def _pulse(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    @contextlib.contextmanager
    def foreground(self) -> Iterator[None]:
        """A request that background work should make way for (a webhook)."""
        self._active += 1
        try:
            yield
        finally:
            self._active -= 1
            self._last_end = self._now()
            if self._active == 0:
                asyncio.get_running_loop().call_later(self.linger, self._maybe_idle)

    @contextlib.contextmanager
    def boost(self, customer: str) -> Iterator[None]:
        """The foreground may wait for ``customer``'s pass: never hold that pass meanwhile."""
        self._boosted[customer] = self._boosted.get(customer, 0) + 1
        if customer in self._held_passes:  # wake only when that pass is being held
            self._pulse()
        try:
            yield
        finally:
            n = self._boosted.pop(customer) - 1
            if n:
                self._boosted[customer] = n

    def _maybe_idle(self) -> None:
        if self._active:
            return  # a new request came: its own end schedules the next check
        left = self.linger - (self._now() - self._last_end)
        if left > 0:  # timers may fire a little early
            asyncio.get_running_loop().call_later(left, self._maybe_idle)
            return
        self._pulse()

    async def yield_point(self) -> None:
        """In background work: wait while foreground requests are in flight, at most
        ``max_hold`` (not at all in a pass a foreground request waits on)."""
        is_background, customer = _BACKGROUND.get()
        if self.max_hold <= 0 or not is_background or not self.busy:
            return
        if customer is not None and customer in self._boosted:
            return
        self.held += 1
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.max_hold
        key = customer or ""
        self._held_passes[key] = self._held_passes.get(key, 0) + 1
        try:
            while self.busy and not (customer is not None and customer in self._boosted):
                left = deadline - loop.time()
                if left <= 0:
                    return
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._changed.wait(), left)
        finally:
            n = self._held_passes.pop(key) - 1
            if n:
                self._held_passes[key] = n
