"""OpenMeter adapter: async HTTP client, wire models, typed errors, mapping to domain types."""

from reconciler.openmeter.client import CallRecord, OpenMeterClient
from reconciler.openmeter.errors import (
    BadRequest,
    Conflict,
    Forbidden,
    NotFound,
    OpenMeterError,
    PreconditionFailed,
    RateLimited,
    ServerError,
    TransportError,
    UnexpectedStatus,
)

__all__ = [
    "BadRequest",
    "CallRecord",
    "Conflict",
    "Forbidden",
    "NotFound",
    "OpenMeterClient",
    "OpenMeterError",
    "PreconditionFailed",
    "RateLimited",
    "ServerError",
    "TransportError",
    "UnexpectedStatus",
]
