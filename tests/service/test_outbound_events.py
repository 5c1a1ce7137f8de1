"""The running service delivers outbound events: a signed webhook in, signed events out."""

from __future__ import annotations

from pathlib import Path

from tests.portal import SECRET as PORTAL_SECRET
from tests.portal import running_receiver

from .conftest import Emu, ServiceServer, make_settings, plan_change, wait_for


def test_service_delivers_signed_events_for_an_upgrade(emu: Emu, tmp_path: Path) -> None:
    emu.customer("evco")
    emu.advance(86400)
    emu.use("evco", 1200)
    with running_receiver() as portal:
        settings = make_settings(
            emu.url,
            f"sqlite:///{tmp_path / 'ev.db'}",
            events_url=portal.url,
            events_secret=PORTAL_SECRET,
        )
        with ServiceServer(settings) as svc:
            resp = svc.webhook(plan_change("evco", "starter"), msg_id="msg_evco_1")
            assert resp.status_code == 202, resp.text
            wait_for(lambda: portal.processed, timeout=15)
            (event,) = portal.processed.values()
            assert event["type"] == "plan_change.applied"
            assert event["data"]["plan"] == {"key": "starter", "version": 1}
            ent = event["data"]["entitlements"]["after"]["api_credits"]
            assert (ent["usage"], ent["balance"]) == (1200, 548_800)
            assert portal.invalid == 0 and portal.duplicates == []
            wait_for(
                lambda: (
                    svc.metric(
                        "reconciler_outbound_event_attempts_total",
                        type="plan_change.applied",
                        outcome="delivered",
                    )
                    == 1
                ),
                timeout=5,
            )
