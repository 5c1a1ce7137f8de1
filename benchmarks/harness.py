"""Processes and helpers shared by the benchmarks (``benchmarks/``) and the fault drills
(``tests/faults/``): the emulator and ``reconciler run`` as real subprocesses on loopback ports,
signed webhooks, the emulator's request log, peak RSS from ``/proc``.

Everything binds 127.0.0.1 only; every wait is bounded; every process started here is stopped
(SIGTERM, then SIGKILL) by its owner.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import httpx

from reconciler.service.webhooks import sign

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable
CATALOG = ROOT / "config" / "catalog.demo.yaml"
POLICY = ROOT / "config" / "policy.example.yaml"
FEATURE = "api_credits"

SECRET_RAW = b"bench-portal-signing-key-0123456"
SECRET = "whsec_" + base64.b64encode(SECRET_RAW).decode()
ADMIN_TOKEN = "bench-admin-token-0123456789"
PG_ADMIN_DSN = os.environ.get(
    "RECONCILER_TEST_PG_DSN", "host=127.0.0.1 port=5432 user=postgres dbname=postgres"
)
PG_URL_BASE = os.environ.get("RECONCILER_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432")

T = TypeVar("T")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(
    predicate: Callable[[], T], timeout: float, interval: float = 0.05, what: str = "condition"
) -> T:
    """Poll ``predicate`` until truthy (exceptions count as "not yet"); bounded by ``timeout``."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            last = predicate()
            if last:
                return last
        except Exception as exc:  # not there yet
            last = exc
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not met within {timeout} s (last: {last!r})")
        time.sleep(interval)


def peak_rss_mb(pid: int) -> float:
    """Peak resident set size (VmHWM) of a live process, in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


# ---------------------------------------------------------------------------------------------
# processes


class Proc:
    """A subprocess with its output in a log file; ``stop()`` is SIGTERM then SIGKILL."""

    def __init__(
        self, name: str, cmd: list[str], env: Mapping[str, str] | None, log_dir: Path
    ) -> None:
        self.name = name
        self.cmd = cmd
        self.log_path = log_dir / f"{name}-{uuid.uuid4().hex[:6]}.log"
        self._log = self.log_path.open("wb")
        full_env = {**os.environ, **(env or {})}
        full_env.setdefault("PYTHONUNBUFFERED", "1")
        self.popen = subprocess.Popen(
            cmd, cwd=ROOT, env=full_env, stdout=self._log, stderr=subprocess.STDOUT
        )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.alive():
            os.kill(self.pid, sig)
            self.popen.wait(timeout=30)

    def stop(self, timeout: float = 30) -> int | None:
        if self.alive():
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(timeout=10)
        self._log.close()
        return self.popen.returncode

    def output(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def tail(self, n: int = 40) -> str:
        return "\n".join(self.output().splitlines()[-n:])


class EmulatorProc(Proc):
    def __init__(self, log_dir: Path, catalog: Path | None = CATALOG, port: int = 0) -> None:
        self.port = port or free_port()
        cmd = [PY, "-m", "benchmarks.emulator_main", "--port", str(self.port)]
        if catalog is not None:
            cmd += ["--catalog", str(catalog)]
        super().__init__("emulator", cmd, None, log_dir)
        self.url = f"http://127.0.0.1:{self.port}"
        self.api = EmuClient(self.url)
        wait_until(
            lambda: self.alive() and self.api.http.get("/_emulator/health").status_code == 200,
            timeout=30,
            what="emulator start",
        )

    def stop(self, timeout: float = 30) -> int | None:
        self.api.close()
        return super().stop(timeout)


def service_env(
    openmeter_url: str,
    database_url: str,
    port: int,
    *,
    clock: bool = False,
    **extra: Any,
) -> dict[str, str]:
    env = {
        "RECONCILER_OPENMETER_URL": openmeter_url,
        "RECONCILER_DATABASE_URL": database_url,
        "RECONCILER_POLICY_PATH": str(POLICY),
        "RECONCILER_HTTP_HOST": "127.0.0.1",
        "RECONCILER_HTTP_PORT": str(port),
        "RECONCILER_WEBHOOK_SECRETS": SECRET,
        "RECONCILER_ADMIN_TOKEN": ADMIN_TOKEN,
        "RECONCILER_LOG_FORMAT": "json",
        "RECONCILER_LOG_LEVEL": "INFO",
        "RECONCILER_SECRETS_DIR": "/nonexistent-reconciler-secrets",
        "RECONCILER_SWEEP_INTERVAL_SECONDS": "3600",
        "RECONCILER_DUE_POLL_SECONDS": "0.5",
        "RECONCILER_DRAIN_SECONDS": "5",
    }
    if clock:
        env["RECONCILER_CLOCK_URL"] = f"{openmeter_url}/_emulator/clock"
    for k, v in extra.items():
        env[f"RECONCILER_{k.upper()}"] = str(v)
    return env


class ServiceProc(Proc):
    """``reconciler run`` in its own process."""

    def __init__(
        self,
        log_dir: Path,
        openmeter_url: str,
        database_url: str,
        *,
        name: str = "reconciler",
        port: int = 0,
        clock: bool = False,
        wait: bool = True,
        **extra: Any,
    ) -> None:
        self.port = port or free_port()
        env = service_env(openmeter_url, database_url, self.port, clock=clock, **extra)
        cmd = [PY, "-c", "from reconciler.cli import main; main()", "run"]
        super().__init__(name, cmd, env, log_dir)
        self.url = f"http://127.0.0.1:{self.port}"
        self.http = httpx.Client(base_url=self.url, timeout=30)
        if wait:
            self.wait_healthy()

    def wait_healthy(self, timeout: float = 60) -> None:
        def up() -> bool:
            if not self.alive():
                raise RuntimeError(f"{self.name} exited:\n{self.tail()}")
            return self.http.get("/healthz").status_code == 200

        deadline = time.monotonic() + timeout
        while True:
            try:
                if up():
                    return
            except RuntimeError:
                raise
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.name} not healthy in {timeout} s:\n{self.tail()}")
            time.sleep(0.05)

    def ready(self) -> bool:
        return self.http.get("/readyz").status_code == 200

    def admin(self, method: str, path: str, **kw: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {ADMIN_TOKEN}", **kw.pop("headers", {})}
        return self.http.request(method, path, headers=headers, **kw)

    def webhook(self, customer: str, plan: str, **kw: Any) -> httpx.Response:
        body, headers = signed_webhook(customer, plan, **kw)
        return self.http.post("/v1/webhooks/portal", content=body, headers=headers)

    def changes(self, customer: str) -> list[dict[str, Any]]:
        r = self.admin("GET", "/v1/changes", params={"customer": customer, "limit": 200})
        r.raise_for_status()
        items: list[dict[str, Any]] = r.json()["items"]
        return items

    def kill(self, sig: int = signal.SIGKILL) -> None:
        super().kill(sig)
        self._log.close()

    def stop(self, timeout: float = 30) -> int | None:
        self.http.close()
        return super().stop(timeout)


# ---------------------------------------------------------------------------------------------
# webhooks


def iso(dt: datetime) -> str:
    return dt.astimezone(UTC).isoformat().replace("+00:00", "Z")


def webhook_body(customer: str, plan: str, requested_at: datetime | None = None) -> bytes:
    doc = {
        "type": "plan_change.requested",
        "data": {
            "customer": customer,
            "plan": plan,
            "plan_version": None,
            "requested_at": iso(requested_at or datetime.now(UTC)),
        },
    }
    return json.dumps(doc, separators=(",", ":")).encode()


def signed_headers(
    body: bytes,
    *,
    msg_id: str | None = None,
    timestamp: int | None = None,
    secret: bytes = SECRET_RAW,
) -> dict[str, str]:
    msg_id = msg_id or f"msg_{uuid.uuid4().hex}"
    ts = int(time.time()) if timestamp is None else timestamp
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(ts),
        "webhook-signature": sign(secret, msg_id, ts, body),
        "content-type": "application/json",
    }


def signed_webhook(
    customer: str,
    plan: str,
    *,
    requested_at: datetime | None = None,
    msg_id: str | None = None,
    timestamp: int | None = None,
    secret: bytes = SECRET_RAW,
) -> tuple[bytes, dict[str, str]]:
    body = webhook_body(customer, plan, requested_at)
    return body, signed_headers(body, msg_id=msg_id, timestamp=timestamp, secret=secret)


# ---------------------------------------------------------------------------------------------
# the emulator's API and control endpoints


MUTATING = ("POST", "PUT", "PATCH", "DELETE")


def op_of(row: Mapping[str, Any]) -> str:
    """``PATCH sub``, ``POST change``, ``DELETE sub``, ``POST unschedule-cancelation``, …"""
    parts = row["path"].split("/")
    if parts[:4] == ["", "api", "v1", "subscriptions"]:
        tail = parts[5] if len(parts) > 5 else ("sub" if len(parts) > 4 else "create")
        return f"{row['method']} {tail}"
    return f"{row['method']} {row['path']}"


@dataclass
class EmuClient:
    url: str
    http: httpx.Client = field(init=False)

    def __post_init__(self) -> None:
        self.http = httpx.Client(base_url=self.url, timeout=60)

    def close(self) -> None:
        self.http.close()

    def reset(self, catalog: Path = CATALOG) -> None:
        import yaml

        doc = yaml.safe_load(catalog.read_text())
        self.http.post("/_emulator/reset", json={"catalog": doc}).raise_for_status()

    def now(self) -> datetime:
        r = self.http.get("/_emulator/clock")
        r.raise_for_status()
        return datetime.fromisoformat(r.json()["now"].replace("Z", "+00:00"))

    def set_clock(self, at: datetime) -> None:
        self.http.post("/_emulator/clock", json={"now": at.isoformat()}).raise_for_status()

    def advance(self, seconds: float) -> None:
        self.http.post("/_emulator/clock", json={"advanceSeconds": seconds}).raise_for_status()

    def customer(self, key: str, plan: str = "free", anchor: datetime | None = None) -> str:
        r = self.http.post(
            "/api/v1/customers",
            json={"key": key, "name": key.upper(), "usageAttribution": {"subjectKeys": [key]}},
        )
        assert r.status_code == 201, r.text
        body: dict[str, Any] = {"customerKey": key, "plan": {"key": plan}}
        if anchor is not None:
            body["billingAnchor"] = anchor.isoformat()
        s = self.http.post("/api/v1/subscriptions", json=body)
        assert s.status_code == 201, s.text
        return str(r.json()["id"])

    def bulk(self, n: int, plan: str = "free", prefix: str = "cust-", start: int = 0) -> Any:
        r = self.http.post(
            "/_emulator/bulk",
            json={"customers": n, "plan": plan, "keyPrefix": prefix, "startIndex": start},
            timeout=600,
        )
        r.raise_for_status()
        return r.json()

    def use(self, key: str, credits: int, at: datetime) -> None:
        r = self.http.post(
            "/api/v1/events",
            json={
                "specversion": "1.0",
                "id": f"use-{key}-{uuid.uuid4().hex}",
                "source": "bench",
                "type": "api_call",
                "subject": key,
                "time": at.isoformat(),
                "data": {"credits": credits},
            },
        )
        assert r.status_code in (200, 202, 204), r.text

    def value(self, key: str) -> dict[str, Any]:
        r = self.http.get(f"/api/v1/customers/{key}/entitlements/{FEATURE}/value")
        r.raise_for_status()
        out: dict[str, Any] = r.json()
        return out

    def requests(self, method: str | None = None, prefix: str | None = None) -> list[Any]:
        params = {k: v for k, v in (("method", method), ("pathPrefix", prefix)) if v}
        r = self.http.get("/_emulator/requests", params=params)
        r.raise_for_status()
        rows: list[Any] = r.json()["requests"]
        return rows

    def clear_requests(self) -> None:
        self.http.delete("/_emulator/requests").raise_for_status()

    def applied_mutations(self) -> list[dict[str, Any]]:
        return [
            r
            for r in self.requests(prefix="/api/v1/subscriptions")
            if r["method"] in MUTATING and r["applied"]
        ]

    def fault(self, **rule: Any) -> int:
        r = self.http.post("/_emulator/faults", json=rule)
        r.raise_for_status()
        return int(r.json()["id"])

    def clear_faults(self) -> None:
        self.http.delete("/_emulator/faults").raise_for_status()

    def subscriptions(self, customer: str) -> list[dict[str, Any]]:
        r = self.http.get(f"/api/v1/customers/{customer}/subscriptions")
        r.raise_for_status()
        items: list[dict[str, Any]] = r.json()["items"]
        return items

    def plans_of(self, customer: str) -> dict[str, list[str]]:
        """status -> plan keys of the customer's subscriptions."""
        out: dict[str, list[str]] = {}
        for s in self.subscriptions(customer):
            out.setdefault(s["status"], []).append((s.get("plan") or {}).get("key"))
        return out

    def allowance(self, key: str) -> int:
        """The customer's current allowance of api_credits (usage + balance): which plan's
        items it has now (free 50,000, starter 550,000, pro 5,000,000)."""
        v = self.value(key)
        return int(v.get("usage") or 0) + int(v.get("balance") or 0)


# ---------------------------------------------------------------------------------------------
# PostgreSQL databases of our own


@contextlib.contextmanager
def pg_database(prefix: str = "bench") -> Iterator[str]:
    """Create a fresh database and yield its SQLAlchemy URL; drop it afterwards."""
    import psycopg
    from psycopg import sql

    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(PG_ADMIN_DSN, autocommit=True, connect_timeout=5) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield f"{PG_URL_BASE}/{name}"
    finally:
        with psycopg.connect(PG_ADMIN_DSN, autocommit=True, connect_timeout=5) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


def pg_available() -> bool:
    try:
        import psycopg

        with psycopg.connect(PG_ADMIN_DSN, connect_timeout=3) as conn:
            conn.execute("SELECT 1")
        return True
    except Exception:
        return False


def pg_terminate(db_url: str) -> int:
    """Terminate every other backend connected to the database of ``db_url``; returns how many."""
    import psycopg

    name = db_url.rsplit("/", 1)[-1]
    with psycopg.connect(PG_ADMIN_DSN, autocommit=True, connect_timeout=5) as conn:
        rows = conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = %s AND pid <> pg_backend_pid()",
            (name,),
        ).fetchall()
    return len(rows)


def pg_rows(db_url: str, query: str, *args: Any) -> list[tuple[Any, ...]]:
    import psycopg

    with psycopg.connect(db_url, connect_timeout=5) as conn:
        return list(conn.execute(query, args).fetchall())  # type: ignore[arg-type]


@contextlib.contextmanager
def workdir(prefix: str = "bench-") -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix=prefix) as d:
        yield Path(d)


def machine() -> dict[str, Any]:
    import platform

    return {
        "nproc": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
    }
