"""Application layer: the reconcile loop, previews and status, built on the domain planner."""

from reconciler.engine.clock import Clock, FixedClock, HttpClock, SystemClock
from reconciler.engine.engine import Engine, Hooks, Outcome, Queries

__all__ = [
    "Clock",
    "Engine",
    "FixedClock",
    "Hooks",
    "HttpClock",
    "Outcome",
    "Queries",
    "SystemClock",
]
