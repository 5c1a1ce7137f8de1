"""Webhook storm at CI size (``benchmarks.storm``; the full size is a command, see
docs/RELIABILITY.md): shuffled plan changes with 30 % duplicates and stale or forged ones, sent
while the worker is SIGKILLed and restarted; every customer ends on the plan of its latest valid
request, in OpenMeter and in the store, and nothing refused or duplicated left a row."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks import storm


@pytest.mark.slow
def test_storm_sqlite_one_worker_restarted(tmp_path: Path) -> None:
    out = storm.run(1_000, 100, db="sqlite", workers=1, log_dir=tmp_path)
    assert out["ok"], out["problems"]
    assert out["rows"] == out["valid_webhooks"] == 600
    assert out["customers_checked_in_openmeter"] == 100
    assert out["responses"]["stale:401"] == 50 and out["responses"]["forged:401"] == 50


@pytest.mark.slow
@pytest.mark.postgres
def test_storm_postgres_two_workers_one_restarted(tmp_path: Path, pg_url: str) -> None:
    del pg_url  # the fixture only checks that PostgreSQL is there; storm makes its own database
    out = storm.run(1_000, 100, db="postgres", workers=2, log_dir=tmp_path)
    assert out["ok"], out["problems"]
    assert out["rows"] == out["valid_webhooks"] == 600
