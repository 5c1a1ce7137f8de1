"""Outbound events to the portal: Standard Webhooks-signed POSTs from the transactional outbox.

See docs/EVENTS.md for the event types, payloads, signatures, retries and dead letters.
"""

from reconciler.events.deliver import (
    BACKOFF_BASE,
    BACKOFF_CAP,
    RETRY_WINDOW,
    DeliveryStats,
    EventDeliverer,
    body_of,
    nominal_attempts,
    retry_delay,
)
from reconciler.events.signing import decode_secret, sign

__all__ = [
    "BACKOFF_BASE",
    "BACKOFF_CAP",
    "RETRY_WINDOW",
    "DeliveryStats",
    "EventDeliverer",
    "body_of",
    "decode_secret",
    "nominal_attempts",
    "retry_delay",
    "sign",
]
