"""End-to-end fixtures: the emulator on a loopback port and a reconciler runtime pointed at it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
import yaml

from reconciler.cli.demo import Story
from reconciler.emulator.server import EmulatorServer
from reconciler.runtime import Runtime, open_runtime
from reconciler.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
CATALOG = ROOT / "config" / "catalog.demo.yaml"
POLICY = ROOT / "config" / "policy.example.yaml"  # plan_record: billing_safe (the default)
POLICY_NEXT_BOUNDARY = Path(__file__).with_name("policy_next_boundary.yaml")
START = datetime(2026, 1, 15, 10, 0, tzinfo=UTC)
DEMO = yaml.safe_load(CATALOG.read_text())


@pytest.fixture(scope="module")
def emulator() -> Iterator[EmulatorServer]:
    with EmulatorServer(catalog=CATALOG) as em:
        yield em


def make_settings(em: EmulatorServer, db: Path, **extra: object) -> Settings:
    values: dict[str, object] = {
        "openmeter_url": em.url,
        "database_url": f"sqlite:///{db}",
        "policy_path": POLICY,
        "clock_url": f"{em.url}/_emulator/clock",
        "openmeter_read_retries": 1,
    }
    values.update(extra)
    return Settings(**values)  # type: ignore[arg-type]


@pytest.fixture
async def control(emulator: EmulatorServer) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=emulator.url) as c:
        (await c.post("/_emulator/clock", json={"now": START.isoformat()})).raise_for_status()
        # Reset with the demo catalog explicitly (a test may have loaded another one), and
        # billing off (a test may have switched it on; the profile survives a reset).
        (await c.post("/_emulator/billing", json={"enabled": False})).raise_for_status()
        (await c.post("/_emulator/reset", json={"catalog": DEMO})).raise_for_status()
        yield c


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "reconciler.db"


@pytest.fixture
def policy_path() -> Path:
    """The policy the runtime loads; a module about the next-boundary path overrides it."""
    return POLICY


@pytest.fixture
async def rt(
    emulator: EmulatorServer, control: httpx.AsyncClient, db_path: Path, policy_path: Path
) -> AsyncIterator[Runtime]:
    async with open_runtime(make_settings(emulator, db_path, policy_path=policy_path)) as runtime:
        yield runtime


@pytest.fixture
def story(rt: Runtime, control: httpx.AsyncClient) -> Story:
    return Story(rt, control)
