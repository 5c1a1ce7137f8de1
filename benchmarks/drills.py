"""Fault-drill building blocks shared by ``tests/faults/`` and the full-size commands.

:class:`KillOnMutation` is the "kill hook" the emulator does not have: a thread that watches the
emulator's request log and SIGKILLs the reconciler process the moment the N-th applied mutation
is logged (the emulator logs a request after applying it, before the response is written).
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable
from typing import Any

import httpx

from benchmarks.harness import MUTATING, EmuClient, ServiceProc, wait_until

SETTLED = ("applied", "scheduled", "converged")


class KillOnMutation(threading.Thread):
    """SIGKILL ``pid`` once ``nth`` applied subscription mutations are in the request log (or,
    with ``predicate``, once the predicate holds for the log). Bounded by ``timeout``."""

    def __init__(
        self,
        emulator_url: str,
        pid: int,
        nth: int,
        *,
        timeout: float = 90.0,
        predicate: Callable[[list[Any]], bool] | None = None,
    ) -> None:
        super().__init__(name="kill-on-mutation", daemon=True)
        self.url = emulator_url
        self.pid = pid
        self.nth = nth
        self.timeout = timeout
        self.predicate = predicate
        self.killed_at_count: int | None = None
        self.error: BaseException | None = None

    def run(self) -> None:
        deadline = time.monotonic() + self.timeout
        try:
            with httpx.Client(base_url=self.url, timeout=10) as http:
                while time.monotonic() < deadline:
                    rows = http.get("/_emulator/requests").json()["requests"]
                    muts = [
                        r
                        for r in rows
                        if r["method"] in MUTATING
                        and r["applied"]
                        and r["path"].startswith("/api/v1/subscriptions")
                    ]
                    if self.predicate is not None:
                        hit = self.predicate(rows)
                    else:
                        hit = len(muts) >= self.nth
                    if hit:
                        os.kill(self.pid, signal.SIGKILL)
                        self.killed_at_count = len(muts)
                        return
                    time.sleep(0.002)
        except BaseException as exc:
            self.error = exc


def latest_status(svc: ServiceProc, customer: str) -> str | None:
    items = svc.changes(customer)
    return str(items[0]["status"]) if items else None


def wait_status(
    svc: ServiceProc, customer: str, wanted: tuple[str, ...] | str, timeout: float = 60
) -> str:
    want = (wanted,) if isinstance(wanted, str) else wanted
    return wait_until(
        lambda: (s := latest_status(svc, customer)) in want and s,
        timeout=timeout,
        interval=0.1,
        what=f"{customer} status in {want}",
    )


def ops(api: EmuClient) -> list[str]:
    from benchmarks.harness import op_of

    return [op_of(r) for r in api.applied_mutations()]
