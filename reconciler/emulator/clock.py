"""The emulator's controllable clock: real time plus an offset, or frozen at an instant."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

from reconciler.emulator.timeutil import Duration


class Clock:
    def __init__(self, now: datetime | None = None) -> None:
        self._lock = threading.Lock()
        self._frozen: datetime | None = now.astimezone(UTC) if now else None
        self._offset = timedelta(0)

    def now(self) -> datetime:
        with self._lock:
            if self._frozen is not None:
                return self._frozen
            return datetime.now(UTC) + self._offset

    @property
    def frozen(self) -> bool:
        return self._frozen is not None

    def set(self, now: datetime) -> None:
        """Freeze the clock at ``now``."""
        with self._lock:
            self._frozen = now.astimezone(UTC)

    def advance(self, by: Duration) -> None:
        """Move the clock forward (calendar-aware for months); keeps frozen/running mode."""
        with self._lock:
            if self._frozen is not None:
                self._frozen = by.add_to(self._frozen)
            else:
                base = datetime.now(UTC) + self._offset
                self._offset += by.add_to(base) - base

    def real(self) -> None:
        with self._lock:
            self._frozen = None
            self._offset = timedelta(0)
