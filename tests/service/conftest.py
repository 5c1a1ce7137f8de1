"""Service test helpers: the emulator, the service on a real loopback port, signed webhooks.

PostgreSQL tests each create their own database (``svc_<random>``) and drop it afterwards.
Locally a missing PostgreSQL skips them; in CI (``CI`` set) it fails them.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
import uvicorn
from starlette.applications import Starlette

from reconciler.emulator.server import EmulatorServer
from reconciler.service.app import Service, create_app
from reconciler.service.webhooks import sign
from reconciler.settings import Settings
from tests.pg import fresh_database

ROOT = Path(__file__).resolve().parents[2]
CATALOG = ROOT / "config" / "catalog.demo.yaml"
POLICY = ROOT / "config" / "policy.example.yaml"
FEATURE = "api_credits"

SECRET_RAW = b"portal-signing-key-0123456789abc"

SECRET = "whsec_" + base64.b64encode(SECRET_RAW).decode()
OLD_SECRET_RAW = b"the-previous-portal-key-98765432"
OLD_SECRET = "whsec_" + base64.b64encode(OLD_SECRET_RAW).decode()
ADMIN_TOKEN = "admin-token-s3cr3t-ZYXWVUTSRQ"

IN_CI = bool(os.environ.get("CI"))


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ---------------------------------------------------------------------------------------------
# PostgreSQL


@pytest.fixture
def pg_url() -> Iterator[str]:
    with fresh_database("svc") as url:
        yield url


def pg_query(url: str, query: str, *args: Any) -> list[tuple[Any, ...]]:
    dsn = url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(dsn) as conn:
        return list(conn.execute(query, args).fetchall())  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------
# emulator


@pytest.fixture
def emulator() -> Iterator[EmulatorServer]:
    with EmulatorServer(catalog=CATALOG) as em:
        yield em


class Emu:
    """Synchronous helpers over the emulator's API and control endpoints."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.http = httpx.Client(base_url=url, timeout=10)
        self._seq = 0

    def now(self) -> datetime:
        r = self.http.get("/_emulator/clock")
        r.raise_for_status()
        return datetime.fromisoformat(r.json()["now"].replace("Z", "+00:00"))

    def advance(self, seconds: float) -> None:
        self.http.post("/_emulator/clock", json={"advanceSeconds": seconds}).raise_for_status()

    def customer(self, key: str, plan: str = "free") -> None:
        r = self.http.post(
            "/api/v1/customers",
            json={"key": key, "name": key.upper(), "usageAttribution": {"subjectKeys": [key]}},
        )
        assert r.status_code == 201, r.text
        r = self.http.post(
            "/api/v1/subscriptions", json={"customerKey": key, "plan": {"key": plan}}
        )
        assert r.status_code == 201, r.text

    def use(self, key: str, credits: int) -> None:
        self._seq += 1
        at = self.now() - timedelta(seconds=30)
        r = self.http.post(
            "/api/v1/events",
            json={
                "specversion": "1.0",
                "id": f"use-{key}-{self._seq}-{uuid.uuid4().hex[:6]}",
                "source": "tests",
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
        data: dict[str, Any] = r.json()
        return data

    def requests(self, method: str | None = None) -> list[dict[str, Any]]:
        params = {"method": method} if method else {}
        r = self.http.get("/_emulator/requests", params=params)
        r.raise_for_status()
        rows: list[dict[str, Any]] = r.json()["requests"]
        return rows

    def mutations(self, customer_id: str | None = None) -> list[dict[str, Any]]:
        """Applied mutations on subscriptions (optionally of one customer's subscriptions)."""
        rows = [
            r
            for r in self.requests()
            if r["method"] != "GET"
            and r["path"].startswith("/api/v1/subscriptions")
            and r["applied"]
        ]
        if customer_id is None:
            return rows
        subs = {s["id"] for s in self.subscriptions(customer_id)}
        return [r for r in rows if r["path"].count("/") >= 4 and r["path"].split("/")[4] in subs]

    def subscriptions(self, customer: str) -> list[dict[str, Any]]:
        r = self.http.get(f"/api/v1/customers/{customer}/subscriptions")
        r.raise_for_status()
        items: list[dict[str, Any]] = r.json()["items"]
        return items

    def customer_id(self, key: str) -> str:
        r = self.http.get(f"/api/v1/customers/{key}")
        r.raise_for_status()
        return str(r.json()["id"])

    def fault(self, **rule: Any) -> None:
        self.http.post("/_emulator/faults", json=rule).raise_for_status()

    def close(self) -> None:
        self.http.close()


@pytest.fixture
def emu(emulator: EmulatorServer) -> Iterator[Emu]:
    e = Emu(emulator.url)
    # Plans are published at the emulator's start; move a day on so usage has a past to live in.
    try:
        yield e
    finally:
        e.close()


# ---------------------------------------------------------------------------------------------
# the service


def make_settings(emulator_url: str, database_url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "openmeter_url": emulator_url,
        "database_url": database_url,
        "policy_path": POLICY,
        "clock_url": f"{emulator_url}/_emulator/clock",
        "http_host": "127.0.0.1",
        "http_port": free_port(),
        "webhook_secrets": f"{SECRET} {OLD_SECRET}",
        "admin_token": ADMIN_TOKEN,
        "due_poll_seconds": 0.5,
        "sweep_interval_seconds": 3600,
        "drain_seconds": 5,
        "openmeter_read_retries": 1,
        "log_level": "INFO",
    }
    values.update(overrides)
    return Settings(**values)


class ServiceServer:
    """The service app under uvicorn on a loopback port, in a background thread."""

    def __init__(self, settings: Settings, **app_kwargs: Any) -> None:
        self.settings = settings
        app_kwargs.setdefault("refresh_seconds", 0.3)
        self.app: Starlette = create_app(settings, **app_kwargs)
        self.service: Service = self.app.state.service
        config = uvicorn.Config(
            self.app,
            host="127.0.0.1",
            port=settings.http_port,
            lifespan="on",
            log_config=None,
            access_log=False,
        )
        self.server = uvicorn.Server(config)
        self._thread: threading.Thread | None = None
        self.http = httpx.Client(base_url=self.url, timeout=15)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.settings.http_port}"

    def start(self) -> ServiceServer:
        self._thread = threading.Thread(target=self.server.run, name="service", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if not self._thread.is_alive():
                raise RuntimeError(f"service failed to start: {self.service.startup_error!r}")
            if time.monotonic() > deadline:
                raise RuntimeError("service did not start in 20 s")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=30)
            assert not self._thread.is_alive(), "service did not stop"
        self.http.close()

    def __enter__(self) -> ServiceServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- calls -------------------------------------------------------------------------------

    def admin(self, method: str, path: str, **kw: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {ADMIN_TOKEN}", **kw.pop("headers", {})}
        return self.http.request(method, path, headers=headers, **kw)

    def webhook(
        self,
        payload: Any,
        *,
        msg_id: str | None = None,
        secret: bytes = SECRET_RAW,
        timestamp: int | None = None,
        headers: dict[str, str] | None = None,
        prefix: str = "webhook-",
    ) -> httpx.Response:
        body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        return self.http.post(
            "/v1/webhooks/portal",
            content=body,
            headers=signed_headers(
                body, msg_id=msg_id, secret=secret, timestamp=timestamp, prefix=prefix
            )
            | (headers or {}),
        )

    def metric(self, name: str, /, **labels: str) -> float:
        return metric_value(self.http.get("/metrics").text, name, **labels)


def signed_headers(
    body: bytes,
    *,
    msg_id: str | None = None,
    secret: bytes = SECRET_RAW,
    timestamp: int | None = None,
    prefix: str = "webhook-",
) -> dict[str, str]:
    msg_id = msg_id or f"msg_{uuid.uuid4().hex}"
    ts = int(time.time()) if timestamp is None else timestamp
    return {
        f"{prefix}id": msg_id,
        f"{prefix}timestamp": str(ts),
        f"{prefix}signature": sign(secret, msg_id, ts, body),
        "content-type": "application/json",
    }


def plan_change(
    customer: str, plan: str, *, at: datetime | None = None, version: int | None = None
) -> dict[str, Any]:
    at = at or datetime.now(UTC)
    return {
        "type": "plan_change.requested",
        "data": {
            "customer": customer,
            "plan": plan,
            "plan_version": version,
            "requested_at": at.isoformat().replace("+00:00", "Z"),
        },
    }


def metric_value(text: str, name: str, /, **labels: str) -> float:
    """Sum of the samples of ``name`` whose labels include ``labels``."""
    total = 0.0
    found = False
    for line in text.splitlines():
        if line.startswith("#") or not line.startswith(name):
            continue
        head, _, value = line.rpartition(" ")
        metric, _, rest = head.partition("{")
        if metric != name:
            continue
        got: dict[str, str] = {}
        if rest:
            for part in rest.rstrip("}").split('",'):
                if not part:
                    continue
                k, _, v = part.partition("=")
                got[k.strip(",")] = v.strip('"')
        if all(got.get(k) == v for k, v in labels.items()):
            total += float(value)
            found = True
    if not found:
        raise KeyError(f"no sample {name}{labels}")
    return total


def wait_for(predicate: Any, timeout: float = 10.0, interval: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = predicate()
        except (KeyError, IndexError, httpx.HTTPError) as exc:  # not there yet
            last = exc
            time.sleep(interval)
            continue
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout} s (last: {last!r})")
