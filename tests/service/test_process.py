"""``reconciler run`` as a process: SIGTERM mid-change, restart, logs, start-up refusals."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from .conftest import (
    ADMIN_TOKEN,
    POLICY,
    SECRET,
    SECRET_RAW,
    Emu,
    free_port,
    plan_change,
    signed_headers,
    wait_for,
)

pytestmark = pytest.mark.slow

RECONCILER = [sys.executable, "-m", "reconciler.cli"]


class Proc:
    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.env = env
        self.log = log
        self.port = int(env["RECONCILER_HTTP_PORT"])
        self.url = f"http://127.0.0.1:{self.port}"
        self._fh = log.open("ab")
        self.p = subprocess.Popen(
            [*RECONCILER, "run"], env=env, stdout=self._fh, stderr=subprocess.STDOUT
        )

    def wait_ready(self, timeout: float = 30) -> None:
        def ready() -> bool:
            if self.p.poll() is not None:
                raise AssertionError(f"exited {self.p.returncode}: {self.log.read_text()[-2000:]}")
            try:
                return httpx.get(self.url + "/readyz", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(ready, timeout=timeout, interval=0.1)

    def terminate(self, timeout: float = 30) -> int:
        self.p.send_signal(signal.SIGTERM)
        code = self.p.wait(timeout=timeout)
        self._fh.close()
        return code

    def kill(self) -> None:
        if self.p.poll() is None:
            self.p.kill()
            self.p.wait()
        self._fh.close()


def service_env(emu: Emu, db: Path, **extra: Any) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RECONCILER_")} | {
        "RECONCILER_SECRETS_DIR": str(db.parent / "no-secrets"),
        "RECONCILER_OPENMETER_URL": emu.url,
        "RECONCILER_DATABASE_URL": f"sqlite:///{db}",
        "RECONCILER_POLICY_PATH": str(POLICY),
        "RECONCILER_CLOCK_URL": f"{emu.url}/_emulator/clock",
        "RECONCILER_HTTP_HOST": "127.0.0.1",
        "RECONCILER_HTTP_PORT": str(free_port()),
        "RECONCILER_WEBHOOK_SECRETS": SECRET,
        "RECONCILER_ADMIN_TOKEN": ADMIN_TOKEN,
        "RECONCILER_DUE_POLL_SECONDS": "0.3",
        "RECONCILER_LOG_FORMAT": "json",
        "RECONCILER_LOG_LEVEL": "INFO",
        "RECONCILER_OPENMETER_READ_RETRIES": "1",
    }
    env.update({k: str(v) for k, v in extra.items()})
    return env


@pytest.fixture
def procs() -> Iterator[list[Proc]]:
    started: list[Proc] = []
    yield started
    for p in started:
        p.kill()


def send(url: str, payload: dict[str, Any], msg_id: str) -> httpx.Response:
    body = json.dumps(payload).encode()
    return httpx.post(
        url + "/v1/webhooks/portal", content=body, headers=signed_headers(body, msg_id=msg_id)
    )


def admin(url: str, path: str) -> Any:
    r = httpx.get(url + path, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=10)
    r.raise_for_status()
    return r.json()


def json_lines(log: Path) -> list[dict[str, Any]]:
    out = []
    for raw in log.read_text().splitlines():
        if not raw.strip():
            continue
        try:
            out.append(json.loads(raw))
        except ValueError:
            raise AssertionError(f"log line is not JSON: {raw!r}") from None
    return out


def test_sigterm_mid_change_then_restart_converges_once(
    emu: Emu, tmp_path: Path, procs: list[Proc]
) -> None:
    emu.customer("term")
    emu.advance(86400)
    emu.use("term", 500)
    db = tmp_path / "run.db"
    log = tmp_path / "run.log"
    # The PATCH takes 4 s at OpenMeter; the drain allows 0.5 s: the change is released mid-call.
    emu.fault(method="PATCH", path="/api/v1/subscriptions/*", delaySeconds=4, count=1)
    env = service_env(emu, db, RECONCILER_DRAIN_SECONDS=0.5)
    first = Proc(env, log)
    procs.append(first)
    first.wait_ready()
    payload = plan_change("term", "starter")
    r = send(first.url, payload, "msg-term-1")
    assert r.status_code == 202, r.text
    change_id = r.json()["change_id"]
    # the emulator logs a request when it answers: wait until the PATCH has surely been sent
    time.sleep(1.5)
    assert not emu.requests("PATCH")  # still in flight
    started = time.monotonic()
    assert first.terminate() == 0
    assert time.monotonic() - started < 5  # drained within drain_seconds (+ HTTP shutdown)

    # OpenMeter finishes the PATCH after we left; the restart must not PATCH again
    wait_for(lambda: [x for x in emu.requests("PATCH") if x["applied"]], timeout=6)
    second = Proc(service_env(emu, db, RECONCILER_HTTP_PORT=env["RECONCILER_HTTP_PORT"]), log)
    procs.append(second)
    second.wait_ready()
    wait_for(
        lambda: admin(second.url, "/v1/changes?customer=term")["items"][0]["status"] == "applied",
        timeout=10,
    )
    # the webhook retried by the portal after the restart is a duplicate
    again = send(second.url, payload, "msg-term-1")
    assert again.status_code == 200 and again.json()["change_id"] == change_id
    time.sleep(1)
    cid = emu.customer_id("term")
    kinds = sorted(m["method"] + " " + m["path"].rsplit("/", 1)[-1] for m in emu.mutations(cid))
    assert [k.split(" ")[0] for k in kinds].count("PATCH") == 1, kinds
    assert [k for k in kinds if k.endswith("change")] == ["POST change"], kinds
    value = emu.value("term")
    assert (value["usage"], value["balance"]) == (500, 550_000 - 500)
    status = admin(second.url, "/v1/customers/term")
    assert status["desired"]["change_id"] == change_id
    assert second.terminate() == 0

    # -- logs: JSON only, ids on every line about the change, no secret anywhere ------------
    text = log.read_text()
    for secret in (SECRET, SECRET_RAW.decode(), ADMIN_TOKEN):
        assert secret not in text
    lines = json_lines(log)
    events = [ln["event"] for ln in lines]
    for expected in (
        "service_started",
        "change_request_stored",
        "shutdown_requested",
        "drain_timeout_cancelling",
        "reconcile_cancelled",
        "worker_stopped",
        "reconciled",
        "service_stopped",
    ):
        assert expected in events, expected
    about_change = [
        ln
        for ln in lines
        if ln.get("change")
        or ln["event"]
        in ("change_request_stored", "reconciled", "reconcile_done", "change_failed", "retry_later")
    ]
    assert about_change
    for ln in about_change:
        assert ln.get("customer") == "term", ln
        assert ln.get("change") == change_id, ln
    cancelled = [ln for ln in lines if ln["event"] == "reconcile_cancelled"]
    assert cancelled[0]["customer"] == "term"


def test_sigterm_waits_for_the_change_in_flight(
    emu: Emu, tmp_path: Path, procs: list[Proc]
) -> None:
    emu.customer("wait")
    db = tmp_path / "w.db"
    log = tmp_path / "w.log"
    emu.fault(method="PATCH", path="/api/v1/subscriptions/*", delaySeconds=2, count=1)
    p = Proc(service_env(emu, db, RECONCILER_DRAIN_SECONDS=10), log)
    procs.append(p)
    p.wait_ready()
    assert send(p.url, plan_change("wait", "starter"), "msg-wait").status_code == 202
    time.sleep(1)
    assert not emu.requests("PATCH")  # in flight
    assert p.terminate() == 0
    # it finished the change before leaving: applied, PATCH and successor both done
    kinds = sorted(m["method"] for m in emu.mutations(emu.customer_id("wait")))
    assert kinds == ["PATCH", "POST"]
    events = [ln["event"] for ln in json_lines(log)]
    assert "drain_timeout_cancelling" not in events
    assert events.index("reconciled") < events.index("worker_stopped")


def test_second_process_on_the_same_sqlite_file_exits_2(
    emu: Emu, tmp_path: Path, procs: list[Proc]
) -> None:
    db = tmp_path / "one.db"
    first = Proc(service_env(emu, db), tmp_path / "1.log")
    procs.append(first)
    first.wait_ready()
    second = subprocess.run(
        [*RECONCILER, "run"], env=service_env(emu, db), capture_output=True, timeout=60
    )
    assert second.returncode == 2
    err = second.stderr.decode()
    assert "is already in use by another reconciler process" in err
    assert "use PostgreSQL for replicas" in err
    assert first.terminate() == 0


def test_unusable_webhook_secret_exits_2(emu: Emu, tmp_path: Path) -> None:
    env = service_env(emu, tmp_path / "x.db", RECONCILER_WEBHOOK_SECRETS="whsec_%%%")
    out = subprocess.run([*RECONCILER, "run"], env=env, capture_output=True, timeout=60)
    assert out.returncode == 2
    assert "webhook secret #1 starts with whsec_ but is not valid base64" in out.stderr.decode()
    assert "%%%" not in out.stderr.decode()
