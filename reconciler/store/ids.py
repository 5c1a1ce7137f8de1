"""ULIDs: 48-bit millisecond timestamp + 80 random bits, Crockford base32 (26 characters).

Lexicographic order follows creation time, which keeps keyset pagination and indexes tidy.
"""

from __future__ import annotations

import secrets
import time

_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def new_ulid(now_ms: int | None = None) -> str:
    ms = int(time.time() * 1000) if now_ms is None else now_ms
    value = (ms & ((1 << 48) - 1)) << 80 | secrets.randbits(80)
    out = []
    for _ in range(26):
        out.append(_ALPHABET[value & 31])
        value >>= 5
    return "".join(reversed(out))


def new_event_id() -> str:
    return "evt_" + new_ulid().lower()
