"""Application layer: the reconcile loop, previews, quotes and status, built on the domain.

See docs/ARCHITECTURE.md for the modules and their layers (``pyproject.toml`` enforces them).
"""

from reconciler.engine.adopt import adopt
from reconciler.engine.clock import Clock, FixedClock, HttpClock, SystemClock
from reconciler.engine.collaborators import Collaborators
from reconciler.engine.engine import Engine
from reconciler.engine.quote import QuoteError, Quoter, parse_at
from reconciler.engine.reads import Queries
from reconciler.engine.results import (
    AppliedCall,
    ChangeReport,
    Hooks,
    Outcome,
    OutcomeState,
    Preview,
    QuoteReport,
    StatusReport,
)
from reconciler.engine.submit import ChangeRequest, IdempotencyConflict, submit

__all__ = [
    "AppliedCall",
    "ChangeReport",
    "ChangeRequest",
    "Clock",
    "Collaborators",
    "Engine",
    "FixedClock",
    "Hooks",
    "HttpClock",
    "IdempotencyConflict",
    "Outcome",
    "OutcomeState",
    "Preview",
    "Queries",
    "QuoteError",
    "QuoteReport",
    "Quoter",
    "StatusReport",
    "SystemClock",
    "adopt",
    "parse_at",
    "submit",
]
