"""Each benchmark at smoke size (see tests/bench/conftest.py)."""

from __future__ import annotations

import pytest

from benchmarks import calls, emulator_speed, intake, latency, submit, sweep, upgrade


@pytest.mark.slow
def test_calls_per_change_mutations_equal_the_minimum() -> None:
    out = calls.run(list(calls.SCENARIOS))
    for s in out["scenarios"]:
        assert s["mutations"] == calls.MINIMUM[s["scenario"]], s
        assert s["reads_total"] > 0


@pytest.mark.slow
def test_sweep_smoke() -> None:
    out = sweep.run(1_200, rounds=1, db="sqlite")
    assert out["sweep_counts"] == {"no_desired_state": 1_200}
    assert out["requests_per_sweep"] == 3
    assert out["ratio_bare_over_sweep"] > 0


@pytest.mark.slow
@pytest.mark.postgres
def test_sweep_managed_smoke_on_postgresql() -> None:
    """Every customer managed and in sync (the store seeded first), on PostgreSQL."""
    out = sweep.run(1_200, rounds=1, db="postgres", managed=True)
    assert out["sweep_counts"] == {"in_sync": 1_200}
    assert out["store_seed_s"] is not None and out["ratio_bare_over_sweep"] > 0


@pytest.mark.slow
def test_intake_smoke() -> None:
    out = intake.run([1, 4], 40, ["sqlite"], customers=20, log_level="WARNING")
    for row in out["sqlite"]:
        assert row["service"]["statuses"] == {"202": 40}, row
        assert row["bare"]["statuses"] == {"202": 40}, row


@pytest.mark.slow
def test_latency_smoke() -> None:
    out = latency.run(12, "sqlite", 8)
    assert out["customers"] == 12
    assert 0 < out["p50_s"] <= out["p99_s"] <= out["max_s"]


@pytest.mark.slow
def test_emulator_speed_smoke() -> None:
    out = emulator_speed.run(600, 60)
    assert [g["requests"] for g in out["get_subscription"]] == [60, 60, 60]
    assert out["list_customers_page_500"]["requests"] == 1


@pytest.mark.slow
def test_upgrade_vs_bare_smoke() -> None:
    """Benchmarks 6–8 at smoke size: both contenders upgrade every customer with exactly one
    PATCH and one POST change; the bare script needs 2 round trips before its PATCH, and both
    need 4 up to the POST change (the reconciler's change goes out on the PATCH's answer)."""
    # 3 idle rounds: the first one finds the service's plan cache cold (two more levels)
    out = upgrade.run([20], rounds=3, burst=6, dbs=["sqlite"], concurrency=4)
    (row,) = out["runs"]
    idle = row["idle"]
    assert idle["rounds"] == 3
    assert idle["round_trips_before_patch"]["bare"] == 2
    assert idle["requests_before_patch"]["bare"] == 3
    assert idle["round_trips_before_patch"]["reconciler"] >= 1
    assert idle["round_trips_to_change"] == {"reconciler": 4, "bare": 4}, idle
    for side in ("reconciler", "bare"):
        (r,) = row["burst"][side]
        assert r["mutations"] == 12 and r["kinds"] == ["PATCH", "POST change"], r
        assert r["cpu_s"] > 0


@pytest.mark.slow
@pytest.mark.postgres
def test_submit_smoke() -> None:
    """The store's submit and the bare psycopg call each stored every request they made."""
    out = submit.run(requests=20, rounds=1)
    assert out["stored"] == out["expected_stored"] == 140
    assert out["store"]["cpu_ms"] > 0 and out["psycopg"]["cpu_ms"] > 0
