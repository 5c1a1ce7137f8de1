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
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from contextvars import ContextVar

_BACKGROUND: ContextVar[bool] = ContextVar("reconciler_background", default=False)


@contextlib.contextmanager
def background() -> Iterator[None]:
    """Mark the work done in this block (and the tasks it starts) as background."""
    token = _BACKGROUND.set(True)
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
        self._idle = asyncio.Event()
        self._idle.set()
        self.held = 0  # yield points that waited (for metrics and tests)

    def _now(self) -> float:
        return asyncio.get_running_loop().time()

    @property
    def busy(self) -> bool:
        return self._active > 0 or self._now() - self._last_end < self.linger

    @contextlib.contextmanager
    def foreground(self) -> Iterator[None]:
        """A request that background work should make way for (a webhook)."""
        self._active += 1
        self._idle.clear()
        try:
            yield
        finally:
            self._active -= 1
            self._last_end = self._now()
            if self._active == 0:
                asyncio.get_running_loop().call_later(self.linger, self._maybe_idle)

    def _maybe_idle(self) -> None:
        if self._active == 0 and self._now() - self._last_end >= self.linger:
            self._idle.set()

    async def yield_point(self) -> None:
        """In background work: wait while foreground requests are in flight (bounded)."""
        if self.max_hold <= 0 or not _BACKGROUND.get() or not self.busy:
            return
        self.held += 1
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), self.max_hold)
