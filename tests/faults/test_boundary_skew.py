"""A billing boundary passes between the reconciler's clock read and OpenMeter's observation.

The emulator holds the engine's first customer read for a second, and its clock jumps past the
boundary meanwhile: OpenMeter then shows the successor as the current subscription while the
engine's "now" is still before it. Found by the full-size webhook storm (two changes failed with
"subscription … has no phase active at …"); the change must converge instead of failing."""

from __future__ import annotations

import threading
import time
from datetime import timedelta
from pathlib import Path

import pytest

from benchmarks.drills import latest_status, ops, wait_status
from benchmarks.harness import EmulatorProc, ServiceProc, wait_until


@pytest.mark.slow
def test_boundary_between_clock_read_and_observation(
    emulator: EmulatorProc, tmp_path: Path
) -> None:
    api = emulator.api
    api.customer("skew", "free")
    api.advance(86400)
    api.use("skew", 3, api.now() - timedelta(seconds=30))
    svc = ServiceProc(tmp_path, emulator.url, f"sqlite:///{tmp_path}/r.db", clock=True)
    try:
        assert svc.webhook("skew", "starter").status_code == 202
        wait_status(svc, "skew", "applied")
        api.clear_requests()
        # the engine's first read (the customer's listing: by key, the customer is not read)
        path = "/api/v1/customers/skew/subscriptions"
        api.fault(method="GET", path=path, delaySeconds=1.0, count=1)

        def jump_when_held() -> None:  # the engine has read its clock and is waiting on us
            wait_until(
                lambda: api.http.get("/_emulator/faults").json()["faults"][0]["count"] == 0,
                30,
                0.01,
            )
            time.sleep(0.2)
            api.advance(32 * 86400)

        jumper = threading.Thread(target=jump_when_held, daemon=True)
        jumper.start()
        assert svc.webhook("skew", "starter").status_code == 202  # asks again: a reconcile
        jumper.join(timeout=30)
        wait_status(svc, "skew", ("converged", "failed"), timeout=60)
        assert latest_status(svc, "skew") == "converged", svc.changes("skew")[0]
        assert api.plans_of("skew").get("active") == ["starter"]
        assert ops(api) == []
    finally:
        svc.stop()
