"""The chart and reconciler.settings cannot drift apart.

Renders the Deployment, builds the container's environment from its ``env`` entries and the
secrets directory from its projected volume (files written the way the kubelet writes them:
a timestamped directory, a ``..data`` symlink and one symlink per file), then loads everything
through ``reconciler.settings.load_settings`` and checks every value arrives.
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import pytest
import yaml

from reconciler.settings import load_settings

from .chartlib import Rendered, RenderFn

pytestmark = pytest.mark.helm

POD_NAME = "rel-openmeter-reconciler-7d9c5b-x2x4z"

# Secrets the user created before installing (postgresql-replicas.yaml refers to them).
EXISTING_SECRETS = {
    "reconciler-secrets": {
        "portal-signing": "whsec_one whsec_two",
        "admin": "adm1n-t0ken",
        "events-url": "https://events.example.com/in",
        "events-secret": "ev-secret",
    },
    "reconciler-db": {"url": "postgresql+psycopg://u:p@pg:5432/reconciler"},
    "openmeter-api": {"api-token": "om-token"},
}


def container_env(rendered: Rendered) -> dict[str, str]:
    env: dict[str, str] = {}
    for entry in rendered.container["env"]:
        if "value" in entry:
            env[entry["name"]] = entry["value"]
        else:
            assert entry["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}, entry
            env[entry["name"]] = POD_NAME
    return env


def write_secret_volume(rendered: Rendered, target: Path) -> dict[str, str]:
    """Materialise the projected ``secrets`` volume like the kubelet's atomic writer."""
    chart_secrets = {
        s["metadata"]["name"]: {k: base64.b64decode(v).decode() for k, v in s["data"].items()}
        for s in rendered.all("Secret")
    }
    known = {**EXISTING_SECRETS, **chart_secrets}
    volume = next(v for v in rendered.pod["volumes"] if v["name"] == "secrets")
    payload: dict[str, str] = {}
    for source in volume["projected"]["sources"]:
        data = known[source["secret"]["name"]]
        for item in source["secret"]["items"]:
            payload[item["path"]] = data[item["key"]]
    stamp = target / "..2026_01_01_00_00_00.000000001"
    stamp.mkdir(parents=True)
    for path, value in payload.items():
        (stamp / path).write_text(value)
    (target / "..data").symlink_to(stamp.name)
    for path in payload:
        (target / path).symlink_to(f"..data/{path}")
    return payload


def load(rendered: Rendered, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    import os

    for name in list(os.environ):
        if name.startswith("RECONCILER_"):
            monkeypatch.delenv(name)
    secrets_dir = tmp_path / "run-secrets-reconciler"
    write_secret_volume(rendered, secrets_dir)
    for name, value in container_env(rendered).items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("RECONCILER_SECRETS_DIR", str(secrets_dir))
    # The chart mounts the secrets at the settings class's default directory.
    mount = next(m for m in rendered.container["volumeMounts"] if m["name"] == "secrets")
    from reconciler.settings import DEFAULT_SECRETS_DIR

    assert mount["mountPath"] == DEFAULT_SECRETS_DIR
    return load_settings()


def test_inline_secrets_and_sqlite(
    render: RenderFn, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    r = render("exposed.yaml")
    s = load(r, tmp_path, monkeypatch)
    assert s.openmeter_url == "http://openmeter-api.billing.svc:80"
    assert s.openmeter_token is None
    assert s.database_url.get_secret_value() == "sqlite:////data/reconciler.db"
    assert s.webhook_secret_list() == [
        "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD",
    ]
    assert s.admin_token.get_secret_value() == "admin-token-value"
    assert s.events_url.get_secret_value() == "https://hooks.example.com/reconciler"
    assert s.events_secret.get_secret_value() == "events-signing-secret"
    assert s.policy_path == Path("/etc/reconciler/policy.yaml")
    assert (s.log_level, s.log_format) == ("INFO", "json")
    assert s.http_port == 8080
    assert s.webhook_tolerance_seconds == 300
    assert s.sweep_interval_seconds == 300.0
    assert s.concurrency == 8
    assert s.intake_priority_ms == 250
    assert s.drain_seconds == 20.0
    assert s.instance_id == POD_NAME
    # The data volume holds the database file.
    assert any(m["mountPath"] == "/data" for m in r.container["volumeMounts"])


def test_existing_secrets_and_postgresql(
    render: RenderFn, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    r = render("postgresql-replicas.yaml")
    s = load(r, tmp_path, monkeypatch)
    assert s.openmeter_url == "https://openmeter.billing.example.com"
    assert s.openmeter_token.get_secret_value() == "om-token"
    assert s.database_url.get_secret_value() == "postgresql+psycopg://u:p@pg:5432/reconciler"
    assert s.webhook_secret_list() == ["whsec_one", "whsec_two"]
    assert s.admin_token.get_secret_value() == "adm1n-t0ken"
    assert s.events_url.get_secret_value() == "https://events.example.com/in"
    assert s.events_secret.get_secret_value() == "ev-secret"
    assert s.drain_seconds == 42.5
    assert s.concurrency == 16
    assert s.log_level == "DEBUG"


def test_inline_postgresql_url(
    render: RenderFn, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    r = render("openmeter-release.yaml")
    s = load(r, tmp_path, monkeypatch)
    assert s.openmeter_url == "http://metering-om-api.billing.svc:8080"
    url = "postgresql+psycopg://reconciler:s3cret@pg.billing.svc:5432/reconciler"
    assert s.database_url.get_secret_value() == url
    assert s.webhook_secrets is None and s.admin_token is None


def test_every_settable_value_changes_the_settings(
    render: RenderFn, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Non-default values in, the same values out (guards against a value the chart ignores)."""
    r = render(
        "exposed.yaml",
        sets=[
            "config.logLevel=WARNING",
            "config.logFormat=console",
            "config.httpPort=9090",
            "config.webhookToleranceSeconds=60",
            "config.concurrency=3",
            "config.intakePriorityMs=0",
        ],
        set_json=[
            "config.sweepIntervalSeconds=42.5",
            "config.drainSeconds=5",
            'config.extraEnv=[{"name":"RECONCILER_OPENMETER_READ_TIMEOUT","value":"9.5"}]',
        ],
    )
    assert r.container["ports"][0]["containerPort"] == 9090
    s = load(r, tmp_path, monkeypatch)
    assert (s.log_level, s.log_format, s.http_port) == ("WARNING", "console", 9090)
    assert (s.webhook_tolerance_seconds, s.concurrency) == (60, 3)
    assert s.intake_priority_ms == 0
    assert (s.sweep_interval_seconds, s.drain_seconds) == (42.5, 5.0)
    assert s.openmeter_read_timeout == 9.5
    policy = yaml.safe_load(r.one("ConfigMap")["data"]["policy.yaml"])
    assert policy["ladder"] == ["free", "starter", "pro"]


def test_default_policy_loads_as_the_demo_ladder(render: RenderFn) -> None:
    """The chart's default policy is a valid policy file for reconciler.domain.policy."""
    from reconciler.domain.model import Direction, Timing
    from reconciler.domain.policy import Policy

    text = render("defaults.yaml").one("ConfigMap")["data"]["policy.yaml"]
    policy = Policy.from_yaml(text, source="/etc/reconciler/policy.yaml")
    up = policy.decide("free", "pro")
    assert (up.direction, up.timing) == (Direction.UPGRADE, Timing.IMMEDIATE)
    up = policy.decide("free", "starter")
    assert (up.direction, up.timing) == (Direction.UPGRADE, Timing.IMMEDIATE)
    down = policy.decide("pro", "starter")
    assert (down.direction, down.timing) == (Direction.DOWNGRADE, Timing.NEXT_BILLING_CYCLE)
