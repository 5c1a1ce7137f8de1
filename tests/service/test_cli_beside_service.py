"""The command line beside ``reconciler run`` on SQLite (issue 17): the service holds the
database's lock; read-only commands read it anyway (WAL: concurrent readers), commands that
write go through the service's admin API, and whatever cannot is explained in one line naming
the admin route — never a traceback."""

from __future__ import annotations

import fcntl
import json
import sqlite3
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest

from .conftest import ADMIN_TOKEN, Emu, plan_change, wait_for
from .test_process import RECONCILER, Proc, send, service_env

pytestmark = pytest.mark.slow


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """A second process, with the service's settings (its log lines kept off stderr)."""
    return subprocess.run(
        [*RECONCILER, *args],
        env={**env, "RECONCILER_LOG_LEVEL": "WARNING"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def admin(url: str, method: str, path: str) -> httpx.Response:
    return httpx.request(
        method, url + path, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=10
    )


def one_line_error(res: subprocess.CompletedProcess[str]) -> str:
    assert "Traceback" not in res.stderr, res.stderr
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, res.stderr
    return lines[0]


def test_cli_reads_and_acts_beside_the_running_service(emu: Emu, tmp_path: Path) -> None:
    emu.customer("acme")
    emu.advance(86400)
    emu.use("acme", 5)
    db = tmp_path / "svc.db"
    env = service_env(emu, db)
    svc = Proc(env, tmp_path / "svc.log")
    try:
        svc.wait_ready()
        assert send(svc.url, plan_change("acme", "starter"), "msg_cli_1").status_code == 202

        def settled() -> bool:
            items = admin(svc.url, "GET", "/v1/changes?customer=acme").json()["items"]
            return bool(items) and items[0]["status"] == "applied"

        wait_for(settled, timeout=20)
        # the lock is really held: a second writer is refused
        with Path(str(db) + ".lock").open("rb") as fh, pytest.raises(BlockingIOError):
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)

        # status --json: read-only, the same document as GET /v1/customers/acme
        res = cli(env, "status", "acme", "--json")
        assert res.returncode == 0, res.stderr
        mine = json.loads(res.stdout)
        theirs = admin(svc.url, "GET", "/v1/customers/acme").json()
        for doc in (mine, theirs):
            doc.pop("observed_at")
        assert mine == theirs
        assert mine["desired"]["plan"] == "starter" and mine["desired"]["status"] == "applied"
        assert mine["entitlements"]["api_credits"]["balance"] == 550_000 - 5

        # events list: the same rows as GET /v1/events
        res = cli(env, "events", "list", "--json")
        assert res.returncode == 0, res.stderr
        listed = json.loads(res.stdout)
        assert listed == admin(svc.url, "GET", "/v1/events").json()
        assert [e["type"] for e in listed["items"]] == ["plan_change.applied"]
        event_id = listed["items"][0]["id"]
        res = cli({**env, "COLUMNS": "250"}, "events", "list")
        assert res.returncode == 0 and event_id in res.stdout

        # events redeliver: through the admin API (the event went dead meanwhile)
        with sqlite3.connect(db, timeout=10) as conn:
            conn.execute(
                "UPDATE outbox_events SET status = 'dead', attempts = 9, next_attempt_at = NULL "
                "WHERE id = ?",
                (event_id,),
            )
        res = cli(env, "events", "redeliver", event_id)
        assert res.returncode == 0, res.stderr
        assert f"POST /v1/events/{event_id}/redeliver" in res.stdout
        after = admin(svc.url, "GET", "/v1/events").json()["items"][0]
        assert (after["id"], after["status"], after["attempts"]) == (event_id, "pending", 0)
        listed = json.loads(cli(env, "events", "list", "--json").stdout)
        assert listed["items"][0] == after
        # the route itself, and its refusals
        r = admin(svc.url, "POST", "/v1/events/evt_nope/redeliver")
        assert r.status_code == 404 and "evt_nope" in r.json()["detail"]
        res = cli(env, "events", "redeliver", "evt_nope")
        assert res.returncode == 2
        assert "POST /v1/events/evt_nope/redeliver: 404" in one_line_error(res)
        with sqlite3.connect(db, timeout=10) as conn:
            conn.execute("UPDATE outbox_events SET status = 'delivered' WHERE id = ?", (event_id,))
        r = admin(svc.url, "POST", f"/v1/events/{event_id}/redeliver")
        assert r.status_code == 409
        res = cli(env, "events", "redeliver", event_id)
        assert res.returncode == 2 and ": 409" in one_line_error(res)

        # without the admin token: one line naming the route
        no_token = {k: v for k, v in env.items() if k != "RECONCILER_ADMIN_TOKEN"}
        res = cli(no_token, "events", "redeliver", event_id)
        assert res.returncode == 1
        line = one_line_error(res)
        assert f"POST /v1/events/{event_id}/redeliver" in line and "ADMIN_TOKEN" in line

        # change: stored by the service through its admin API, which reconciles it
        res = cli(env, "change", "acme", "pro")
        assert res.returncode == 0, res.stderr
        assert "POST /v1/customers/acme/plan-change" in res.stdout

        def on_pro() -> bool:
            items = admin(svc.url, "GET", "/v1/changes?customer=acme").json()["items"]
            return items[0]["plan"] == "pro" and items[0]["status"] in ("applied", "scheduled")

        wait_for(on_pro, timeout=20)
        changes = admin(svc.url, "GET", "/v1/changes?customer=acme").json()["items"]
        assert [(c["plan"], c["source"]) for c in changes] == [
            ("pro", "admin"),
            ("starter", "webhook"),
        ]
        # a dry run reads only
        res = cli(env, "change", "acme", "free", "--dry-run", "--json")
        assert res.returncode == 0, res.stderr
        assert json.loads(res.stdout)["target"]["key"] == "free"

        # what cannot go through the service is one line with the route to use
        res = cli(env, "reconcile", "--customer", "acme")
        assert res.returncode == 1 and "POST /v1/sweeps" in one_line_error(res)
        res = cli(env, "migrate")
        assert res.returncode == 1 and "database in use" in one_line_error(res)
        res = cli(env, "status", "nobody")
        assert res.returncode == 2 and "not found" in one_line_error(res)
        res = cli(env, "events", "list", "--status", "lost")
        assert res.returncode == 2 and "--status" in one_line_error(res)
    finally:
        assert svc.terminate() == 0

    # the service is gone: the same commands work on the file directly, as before
    res = cli(env, "events", "redeliver", event_id)
    assert res.returncode == 2 and "delivered" in one_line_error(res)
    res = cli(env, "status", "acme", "--json")
    assert res.returncode == 0, res.stderr
    doc: dict[str, Any] = json.loads(res.stdout)
    assert doc["desired"]["plan"] == "pro"
