"""The engine's outbox rows, delivered: a real upgrade and a scheduled downgrade on the emulator
reach the portal as signed events with the documented payloads."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx

from reconciler.emulator.server import EmulatorServer
from reconciler.events import EventDeliverer
from reconciler.runtime import open_runtime
from reconciler.settings import Settings
from reconciler.store.types import ChangeSource
from tests.portal import SECRET, Receiver

ROOT = Path(__file__).resolve().parents[2]
START = datetime(2026, 1, 15, 10, 0, tzinfo=UTC)


async def test_upgrade_and_downgrade_events_reach_the_portal(
    tmp_path: Path, receiver: Receiver
) -> None:
    async with EmulatorServer(catalog=ROOT / "config" / "catalog.demo.yaml") as emu:
        settings = Settings(
            openmeter_url=emu.url,
            database_url=f"sqlite:///{tmp_path / 'r.db'}",
            policy_path=ROOT / "config" / "policy.example.yaml",
            clock_url=f"{emu.url}/_emulator/clock",
        )
        async with (
            httpx.AsyncClient(base_url=emu.url) as ctl,
            open_runtime(settings) as rt,
            EventDeliverer(rt.store, receiver.url, SECRET, rt.clock) as deliverer,
        ):

            async def post(path: str, body: Any) -> None:
                (await ctl.post(path, json=body)).raise_for_status()

            await post("/_emulator/clock", {"now": START.isoformat()})
            await post("/_emulator/reset", {})  # reload the catalog: plans published at START
            await post(
                "/api/v1/customers",
                {"key": "acme", "name": "ACME", "usageAttribution": {"subjectKeys": ["acme"]}},
            )
            await post("/api/v1/subscriptions", {"customerKey": "acme", "plan": {"key": "free"}})
            await post(
                "/api/v1/events",
                {
                    "specversion": "1.0",
                    "id": "u1",
                    "source": "t",
                    "type": "api_call",
                    "subject": "acme",
                    "time": (START + timedelta(hours=1)).isoformat(),
                    "data": {"credits": 1200},
                },
            )
            now = START + timedelta(days=3)
            await post("/_emulator/clock", {"now": now.isoformat()})

            up = await rt.store.submit_change(
                "acme", "starter", None, now, ChangeSource.CLI, "u", now
            )
            assert (await rt.engine.reconcile("acme")).status == "applied"
            stats = await deliverer.run_once(await deliverer.now())
            assert stats.delivered == 1
            applied = receiver.processed[f"evt_{up.change.id}_1_applied"]
            assert applied["type"] == "plan_change.applied"
            data = applied["data"]
            assert data["plan"] == {"key": "starter", "version": 1}
            assert (data["direction"], data["timing"]) == ("upgrade", "immediate")
            ents = data["entitlements"]
            assert ents["before"]["api_credits"]["usage"] == 1200
            assert ents["before"]["api_credits"]["total_available_grant_amount"] == 50000
            assert ents["after"]["api_credits"] == {
                "has_access": True,
                "usage": 1200,
                "balance": 548800,
                "total_available_grant_amount": 550000,
            }

            later = now + timedelta(days=1)
            await post("/_emulator/clock", {"now": later.isoformat()})
            down = await rt.store.submit_change(
                "acme", "free", None, later, ChangeSource.CLI, "d", later
            )
            assert (await rt.engine.reconcile("acme")).status == "scheduled"
            assert (await deliverer.run_once(await deliverer.now())).delivered == 1
            scheduled = receiver.processed[f"evt_{down.change.id}_1_scheduled"]["data"]
            assert scheduled["timing"] == "next_billing_cycle"
            assert scheduled["effective_at"] == "2026-02-15T10:00:00+00:00"

            boundary = datetime(2026, 2, 15, 10, 0, 5, tzinfo=UTC)
            await post("/_emulator/clock", {"now": boundary.isoformat()})
            assert (await rt.engine.reconcile("acme")).status == "converged"
            assert (await deliverer.run_once(await deliverer.now())).delivered == 1
            assert receiver.processed[f"evt_{down.change.id}_2_converged"]["type"] == (
                "plan_change.converged"
            )
            assert receiver.duplicates == [] and receiver.invalid == 0
