"""The command line against the emulator: outputs, exit codes, rows stored."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from reconciler.cli import app
from reconciler.emulator.server import EmulatorServer

from .conftest import DEMO, POLICY, POLICY_NEXT_BOUNDARY, START


@pytest.fixture
def cli_env(emulator: EmulatorServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    db = tmp_path / "cli.db"
    monkeypatch.setenv("RECONCILER_OPENMETER_URL", emulator.url)
    monkeypatch.setenv("RECONCILER_DATABASE_URL", f"sqlite:///{db}")
    # The CLI is shown on the edit + scheduled-change path (plan_record: next_boundary).
    monkeypatch.setenv("RECONCILER_POLICY_PATH", str(POLICY_NEXT_BOUNDARY))
    monkeypatch.setenv("RECONCILER_CLOCK_URL", f"{emulator.url}/_emulator/clock")
    monkeypatch.setenv("RECONCILER_LOG_LEVEL", "WARNING")
    monkeypatch.setenv("RECONCILER_SECRETS_DIR", str(tmp_path / "no-secrets"))
    with httpx.Client(base_url=emulator.url) as c:
        c.post("/_emulator/clock", json={"now": START.isoformat()}).raise_for_status()
        c.post("/_emulator/reset", json={"catalog": DEMO}).raise_for_status()
        c.post(
            "/api/v1/customers",
            json={
                "key": "acme",
                "name": "ACME",
                "usageAttribution": {"subjectKeys": ["acme"]},
            },
        ).raise_for_status()
        c.post(
            "/api/v1/subscriptions",
            json={
                "customerKey": "acme",
                "plan": {"key": "free"},
                "billingAnchor": START.isoformat(),
            },
        ).raise_for_status()
        c.post("/_emulator/clock", json={"now": (START + timedelta(days=9)).isoformat()})
        c.post(
            "/api/v1/events",
            json={
                "specversion": "1.0",
                "id": "e1",
                "source": "t",
                "type": "api_call",
                "subject": "acme",
                "time": (START + timedelta(days=8)).isoformat(),
                "data": {"credits": 3},
            },
        ).raise_for_status()
        c.delete("/_emulator/requests")
    return db


def _mutations(em: EmulatorServer) -> list[str]:
    rows = httpx.get(f"{em.url}/_emulator/requests").json()["requests"]
    return [f"{r['method']} {r['path']}" for r in rows if r["method"] != "GET"]


def test_change_dry_run_json_is_the_preview(cli_env: Path, emulator: EmulatorServer) -> None:
    res = CliRunner().invoke(app, ["change", "acme", "starter", "--dry-run", "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["direction"] == "upgrade" and doc["timing"] == "immediate"
    assert doc["rule"] == "defaults.upgrade"
    assert doc["effective_at"] == (START + timedelta(days=9)).isoformat().replace("+00:00", "Z")
    assert doc["converges_at"] == "2026-02-15T10:00:00Z"
    assert [(a["method"], a["path"].rsplit("/", 1)[-1]) for a in doc["actions"]] == [
        ("PATCH", doc["actions"][0]["path"].rsplit("/", 1)[-1]),
        ("POST", "change"),
    ]
    assert doc["entitlements"]["api_credits"]["before"] == {
        "usage": 3,
        "balance": 49_997,
        "total_available_grant_amount": 50_000,
        "has_access": True,
    }
    assert doc["entitlements"]["api_credits"]["after"] == {
        "usage": 3,
        "balance": 549_997,
        "total_available_grant_amount": 550_000,
        "has_access": True,
    }
    assert doc["warnings"] == []
    assert _mutations(emulator) == []  # a dry run changes nothing


def test_change_applies_and_status_reports(cli_env: Path, emulator: EmulatorServer) -> None:
    res = CliRunner().invoke(app, ["change", "acme", "starter", "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["status"] == "applied"
    assert [a["action"] for a in doc["applied"]] == ["edit_items", "schedule_change"]
    assert doc["entitlements"]["api_credits"]["after"]["balance"] == 549_997
    assert doc["proof"]["usage_preserved"] is True
    assert [m.split(" ")[0] for m in _mutations(emulator)] == ["PATCH", "POST"]

    res = CliRunner().invoke(app, ["status", "acme", "--json"])
    assert res.exit_code == 0, res.output
    st = json.loads(res.stdout)
    assert st["plan_on_record"] == "free@v1"
    assert st["subscription"]["effective_plan"] == "starter@v1"
    assert st["scheduled_successor"]["plan"] == "starter@v1"
    assert st["desired"]["status"] == "applied" and st["convergence"] == "waiting"
    assert st["entitlements"]["api_credits"]["balance"] == 549_997
    assert {a["method"] for a in st["recent_audit"] if a["kind"] == "call"} >= {"PATCH", "POST"}

    res = CliRunner().invoke(app, ["status", "acme"])
    assert res.exit_code == 0 and "plan on record: free@v1" in res.stdout


def test_reconcile_pass_converges_after_boundary(cli_env: Path, emulator: EmulatorServer) -> None:
    assert CliRunner().invoke(app, ["change", "acme", "starter"]).exit_code == 0
    httpx.post(f"{emulator.url}/_emulator/clock", json={"now": "2026-02-15T10:05:00Z"})
    res = CliRunner().invoke(app, ["reconcile"])
    assert res.exit_code == 0, res.output
    assert "1 customer(s) reconciled — converged: 1" in res.stdout


def test_unknown_plan_and_customer_are_clear_errors(cli_env: Path) -> None:
    res = CliRunner().invoke(app, ["change", "acme", "gold", "--dry-run"])
    assert res.exit_code == 2
    assert "plan 'gold' has no active version in OpenMeter" in res.output
    res = CliRunner().invoke(app, ["change", "nobody", "starter", "--dry-run"])
    assert res.exit_code == 2 and "not found" in res.output


def test_bad_policy_names_the_line(cli_env: Path, tmp_path: Path) -> None:
    bad = tmp_path / "policy.yaml"
    bad.write_text("ladder: [free, starter]\ndefaults:\n  upgrade: sometimes\n")
    res = CliRunner().invoke(app, ["policy", "check", str(bad)])
    assert res.exit_code == 2
    assert f"{bad}:3:" in res.output and "sometimes" in res.output
    res = CliRunner().invoke(app, ["policy", "explain", "pro", "free", "--policy", str(POLICY)])
    assert res.exit_code == 0
    assert "decision: downgrade, next_billing_cycle" in res.stdout


def test_policy_naming_unknown_plan_is_a_startup_error(
    cli_env: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pol = tmp_path / "policy.yaml"
    pol.write_text("version: 1\nladder: [free, starter, enterprise]\n")
    monkeypatch.setenv("RECONCILER_POLICY_PATH", str(pol))
    res = CliRunner().invoke(app, ["change", "acme", "starter", "--dry-run"])
    assert res.exit_code == 2
    assert f"{pol}:2:" in res.output and "enterprise" in res.output


def test_events_redeliver_unknown_id(cli_env: Path) -> None:
    res = CliRunner().invoke(app, ["events", "redeliver", "evt_nope"])
    assert res.exit_code == 2 and "evt_nope" in res.output


def test_quote_json_and_errors(cli_env: Path) -> None:
    res = CliRunner().invoke(app, ["quote", "acme", "--plan", "starter", "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["currency"] == "USD"
    assert doc["period"] == {"from": "2026-01-15T10:00:00Z", "to": "2026-02-15T10:00:00Z"}
    assert doc["with_change"] is not None and doc["difference"] is not None
    res = CliRunner().invoke(app, ["quote", "acme", "--plan", "gold"])
    assert res.exit_code == 2 and "gold" in res.output
    res = CliRunner().invoke(app, ["quote", "nobody"])
    assert res.exit_code == 2 and "not found" in res.output
    res = CliRunner().invoke(app, ["quote", "acme", "--at", "yesterday"])
    assert res.exit_code == 2


def test_billing_safe_change_and_status_say_when_and_why(
    cli_env: Path, emulator: EmulatorServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the example policy (``plan_record: billing_safe``) the upgrade edits only; the JSON
    and the human output both say when the plan record converges and why."""
    monkeypatch.setenv("RECONCILER_POLICY_PATH", str(POLICY))
    res = CliRunner().invoke(app, ["change", "acme", "starter", "--dry-run", "--json"])
    assert res.exit_code == 0, res.output
    dry = json.loads(res.stdout)
    assert [a["method"] for a in dry["actions"]] == ["PATCH"]
    assert dry["converges_at"] == "2026-03-15T10:00:00Z"
    assert dry["convergence"]["reason"].startswith(
        "deferred: scheduling at 2026-02-15T10:00:00Z would stop OpenMeter prorating platform_fee"
    )
    assert _mutations(emulator) == []

    res = CliRunner().invoke(app, ["change", "acme", "starter", "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert [a["action"] for a in doc["applied"]] == ["edit_items"]
    assert doc["convergence"]["deferred"] is True
    assert doc["converges_at"] == "2026-03-15T10:00:00Z"
    assert [m.split(" ")[0] for m in _mutations(emulator)] == ["PATCH"]

    res = CliRunner().invoke(app, ["status", "acme", "--json"])
    st = json.loads(res.stdout)
    assert st["desired"]["converges_at"] == "2026-03-15T10:00:00+00:00"
    assert st["desired"]["convergence"]["schedule_at"] == "2026-02-15T10:00:00Z"
    res = CliRunner().invoke(app, ["status", "acme"])
    assert res.exit_code == 0
    assert "plan record: deferred: scheduling at 2026-02-15T10:00:00Z" in " ".join(
        res.stdout.split()
    )

    res = CliRunner().invoke(app, ["policy", "explain", "free", "starter", "--policy", str(POLICY)])
    assert res.exit_code == 0 and "plan record: billing_safe (defaults.plan_record)" in res.stdout


def test_expected_conditions_are_one_line_not_a_traceback(
    cli_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bad database URL or an unreachable OpenMeter is one line and an exit code."""
    monkeypatch.setenv("RECONCILER_DATABASE_URL", "mysql://u@h/db")
    res = CliRunner().invoke(app, ["events", "list"])
    assert res.exit_code == 1 and isinstance(res.exception, SystemExit)
    assert res.output.strip().splitlines() == [
        "database error: unsupported database URL scheme 'mysql': use sqlite:///PATH or "
        "postgresql://USER@HOST/DB"
    ]
    monkeypatch.setenv("RECONCILER_DATABASE_URL", f"sqlite:///{cli_env}")
    monkeypatch.setenv("RECONCILER_OPENMETER_URL", "http://127.0.0.1:9")
    monkeypatch.delenv("RECONCILER_CLOCK_URL")
    monkeypatch.setenv("RECONCILER_OPENMETER_READ_RETRIES", "0")
    res = CliRunner().invoke(app, ["status", "acme"])
    assert res.exit_code == 1 and isinstance(res.exception, SystemExit)
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("OpenMeter error:"), res.output
