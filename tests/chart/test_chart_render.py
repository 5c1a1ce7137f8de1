"""What the chart renders for each values file in tests/chart/values/, object by object."""

from __future__ import annotations

import base64
import hashlib
import math
from pathlib import Path

import pytest
import yaml

from reconciler.settings import Settings

from .chartlib import CHART, NAMESPACE, RELEASE, VALUES_FILES, FailFn, RenderFn, run_helm

pytestmark = pytest.mark.helm

FULLNAME = f"{RELEASE}-openmeter-reconciler"
SECRETS_DIR = "/run/secrets/reconciler"
SELECTOR = {
    "app.kubernetes.io/name": "openmeter-reconciler",
    "app.kubernetes.io/instance": RELEASE,
    "app.kubernetes.io/component": "reconciler",
}


def secret_files(rendered) -> dict[str, tuple[str, str]]:  # type: ignore[no-untyped-def]
    """File name in the secrets volume -> (Secret name, key), from the projected volume."""
    volumes = {v["name"]: v for v in rendered.pod["volumes"]}
    if "secrets" not in volumes:
        return {}
    out: dict[str, tuple[str, str]] = {}
    for source in volumes["secrets"]["projected"]["sources"]:
        for item in source["secret"]["items"]:
            assert item["path"] not in out, f"two sources project {item['path']}"
            out[item["path"]] = (source["secret"]["name"], item["key"])
    return out


def mounts(rendered) -> dict[str, dict]:  # type: ignore[no-untyped-def,type-arg]
    return {m["mountPath"]: m for m in rendered.container["volumeMounts"]}


# ---------------------------------------------------------------- lint and every values file


@pytest.mark.parametrize("values", VALUES_FILES, ids=lambda p: p.stem)
def test_helm_lint_strict(helm: str, values: Path) -> None:
    proc = run_helm(helm, "lint", "--strict", str(CHART), "-f", str(values))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "1 chart(s) linted, 0 chart(s) failed" in proc.stdout


@pytest.mark.parametrize("values", VALUES_FILES, ids=lambda p: p.stem)
def test_common_invariants(render: RenderFn, values: Path) -> None:
    r = render(values)
    for obj in r:
        labels = obj["metadata"]["labels"]
        assert labels["app.kubernetes.io/component"] == "reconciler", obj["kind"]
        assert labels["app.kubernetes.io/instance"] == RELEASE
        assert labels["app.kubernetes.io/managed-by"] == "Helm"
        assert obj["metadata"]["name"].startswith(FULLNAME)
    dep = r.deployment
    assert dep["spec"]["selector"]["matchLabels"] == SELECTOR
    pod_labels = dep["spec"]["template"]["metadata"]["labels"]
    assert SELECTOR.items() <= pod_labels.items()
    assert r.one("Service")["spec"]["selector"] == SELECTOR

    c = r.container
    assert c["command"] == ["reconciler"] and c["args"] == ["run"]
    assert c["image"] == "ghcr.io/openmeter-reconciler/openmeter-reconciler:0.1.0"
    assert c["ports"] == [{"name": "http", "containerPort": 8080, "protocol": "TCP"}]

    # Probes: paths, named port, a startup probe guarding liveness.
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert c["startupProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    startup = c["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 60

    # Security: pod and container.
    pod = r.pod
    assert pod["automountServiceAccountToken"] is False
    assert pod["serviceAccountName"] == FULLNAME
    assert pod["securityContext"] == {
        "runAsNonRoot": True,
        "runAsUser": 10001,
        "runAsGroup": 10001,
        "fsGroup": 10001,
        "fsGroupChangePolicy": "OnRootMismatch",
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    sc = c["securityContext"]
    assert sc["runAsNonRoot"] is True and sc["runAsUser"] == 10001
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["privileged"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert c["resources"]["requests"]["memory"] and c["resources"]["limits"]["memory"]

    sa = r.one("ServiceAccount")
    assert sa["metadata"]["name"] == FULLNAME and sa["automountServiceAccountToken"] is False

    # Writable paths: /tmp always, nothing else but /data (checked per mode below).
    m = mounts(r)
    assert "/tmp" in m and not m["/tmp"].get("readOnly")
    assert m["/etc/reconciler"]["readOnly"] is True
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert "emptyDir" in volumes[m["/tmp"]["name"]]
    writable = {path for path, mount in m.items() if not mount.get("readOnly")}
    assert writable <= {"/tmp", "/data"}

    # Policy ConfigMap mounted where RECONCILER_POLICY_PATH points.
    env = r.env()
    assert env["RECONCILER_POLICY_PATH"] == "/etc/reconciler/policy.yaml"
    cm = r.one("ConfigMap")
    assert volumes[m["/etc/reconciler"]["name"]]["configMap"] == {
        "name": cm["metadata"]["name"],
        "items": [{"key": "policy.yaml", "path": "policy.yaml"}],
    }
    assert isinstance(yaml.safe_load(cm["data"]["policy.yaml"]), dict)

    # Every env name is a Settings field; no env var carries a secret.
    fields = set(Settings.model_fields)
    secret_fields = {
        name
        for name, f in Settings.model_fields.items()
        if "SecretStr" in str(f.annotation) and name != "database_url"
    }
    assert secret_fields == {
        "openmeter_token",
        "webhook_secrets",
        "admin_token",
        "events_url",
        "events_secret",
    }
    for name in env:
        assert name.startswith("RECONCILER_"), name
        field = name.removeprefix("RECONCILER_").lower()
        assert field in fields, f"{name} is not a field of reconciler.settings.Settings"
        assert field not in secret_fields, f"{name} is a secret and must come from a file"
    if "RECONCILER_DATABASE_URL" in env:  # only the credential-free SQLite URL may be an env var
        assert env["RECONCILER_DATABASE_URL"].startswith("sqlite:///")

    # Secret files: named the way the settings class reads them, mounted read-only.
    files = secret_files(r)
    if files:
        assert m[SECRETS_DIR]["readOnly"] is True
        assert volumes[m[SECRETS_DIR]["name"]]["projected"]["defaultMode"] == 0o440
    for file in files:
        assert file.startswith("reconciler_") and file.removeprefix("reconciler_") in fields

    # Drain: the kubelet waits longer than the process drains.
    grace = pod["terminationGracePeriodSeconds"]
    assert isinstance(grace, int) and grace > float(env["RECONCILER_DRAIN_SECONDS"])


def test_env_values_and_policy_defaults(render: RenderFn) -> None:
    r = render("defaults.yaml")
    env = r.env()
    assert env == {
        "RECONCILER_OPENMETER_URL": "http://openmeter.example.internal:8888",
        "RECONCILER_DATABASE_URL": "sqlite:////data/reconciler.db",
        "RECONCILER_POLICY_PATH": "/etc/reconciler/policy.yaml",
        "RECONCILER_LOG_LEVEL": "INFO",
        "RECONCILER_LOG_FORMAT": "json",
        "RECONCILER_HTTP_PORT": "8080",
        "RECONCILER_WEBHOOK_TOLERANCE_SECONDS": "300",
        "RECONCILER_SWEEP_INTERVAL_SECONDS": "300",
        "RECONCILER_CONCURRENCY": "8",
        "RECONCILER_INTAKE_PRIORITY_MS": "250",
        "RECONCILER_DRAIN_SECONDS": "20",
        "RECONCILER_INSTANCE_ID": {
            "name": "RECONCILER_INSTANCE_ID",
            "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}},
        },
    }
    policy = yaml.safe_load(r.one("ConfigMap")["data"]["policy.yaml"])
    assert policy == {
        "version": 1,
        "ladder": ["free", "starter", "pro"],
        "defaults": {"upgrade": "immediate", "downgrade": "next_billing_cycle"},
    }
    assert r.pod["terminationGracePeriodSeconds"] == 30  # ceil(20) + 10


# ---------------------------------------------------------------- storage modes


def test_sqlite_defaults(render: RenderFn) -> None:
    r = render("defaults.yaml")
    assert r.kinds() == [
        "ConfigMap",
        "Deployment",
        "PersistentVolumeClaim",
        "Service",
        "ServiceAccount",
    ]
    dep = r.deployment
    assert dep["spec"]["replicas"] == 1
    assert dep["spec"]["strategy"] == {"type": "Recreate"}
    pvc = r.one("PersistentVolumeClaim")
    assert pvc["metadata"]["name"] == f"{FULLNAME}-data"
    assert pvc["metadata"]["annotations"] == {"helm.sh/resource-policy": "keep"}
    assert pvc["spec"]["resources"]["requests"]["storage"] == "1Gi"
    assert pvc["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert "storageClassName" not in pvc["spec"]
    volumes = {v["name"]: v for v in r.pod["volumes"]}
    m = mounts(r)
    assert volumes[m["/data"]["name"]]["persistentVolumeClaim"] == {"claimName": f"{FULLNAME}-data"}
    assert not m["/data"].get("readOnly")
    # No secrets configured: no Secret object, no secrets volume.
    assert SECRETS_DIR not in m and secret_files(r) == {}


@pytest.mark.parametrize("replicas", [2, 5])
def test_sqlite_forces_one_replica(render: RenderFn, replicas: int) -> None:
    r = render("defaults.yaml", sets=[f"replicaCount={replicas}"])
    assert r.deployment["spec"]["replicas"] == 1
    assert r.deployment["spec"]["strategy"]["type"] == "Recreate"
    assert r.all("PodDisruptionBudget") == []


def test_sqlite_storage_options(render: RenderFn) -> None:
    r = render("defaults.yaml", sets=["database.sqlite.persistence.storageClass=-"])
    assert r.one("PersistentVolumeClaim")["spec"]["storageClassName"] == ""
    r = render("defaults.yaml", sets=["database.sqlite.persistence.storageClass=fast-ssd"])
    assert r.one("PersistentVolumeClaim")["spec"]["storageClassName"] == "fast-ssd"
    r = render("defaults.yaml", sets=["database.sqlite.persistence.existingClaim=my-data"])
    assert r.all("PersistentVolumeClaim") == []
    volumes = {v["name"]: v for v in r.pod["volumes"]}
    assert volumes["data"]["persistentVolumeClaim"] == {"claimName": "my-data"}


def test_postgresql_existing_secrets(render: RenderFn) -> None:
    r = render("postgresql-replicas.yaml")
    assert "PersistentVolumeClaim" not in r.kinds() and "Secret" not in r.kinds()
    dep = r.deployment
    assert dep["spec"]["replicas"] == 3
    assert dep["spec"]["strategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
    }
    pdb = r.one("PodDisruptionBudget")
    assert pdb["spec"] == {"maxUnavailable": 1, "selector": {"matchLabels": SELECTOR}}
    m = mounts(r)
    assert "/data" not in m
    assert set(m) == {"/tmp", "/etc/reconciler", SECRETS_DIR}
    assert "RECONCILER_DATABASE_URL" not in r.env()
    assert secret_files(r) == {
        "reconciler_webhook_secrets": ("reconciler-secrets", "portal-signing"),
        "reconciler_admin_token": ("reconciler-secrets", "admin"),
        "reconciler_events_url": ("reconciler-secrets", "events-url"),
        "reconciler_events_secret": ("reconciler-secrets", "events-secret"),
        "reconciler_database_url": ("reconciler-db", "url"),
        "reconciler_openmeter_token": ("openmeter-api", "api-token"),
    }
    env = r.env()
    assert env["RECONCILER_DRAIN_SECONDS"] == "42.5"
    assert env["RECONCILER_CONCURRENCY"] == "16"
    assert env["RECONCILER_LOG_LEVEL"] == "DEBUG"
    assert r.pod["terminationGracePeriodSeconds"] == 60


def test_pdb_only_with_more_than_one_replica(render: RenderFn) -> None:
    one = render("postgresql-replicas.yaml", sets=["replicaCount=1"])
    assert one.deployment["spec"]["replicas"] == 1
    assert one.all("PodDisruptionBudget") == []
    assert one.deployment["spec"]["strategy"]["type"] == "RollingUpdate"
    off = render("postgresql-replicas.yaml", sets=["podDisruptionBudget.enabled=false"])
    assert off.all("PodDisruptionBudget") == []
    pct = render("postgresql-replicas.yaml", sets=["podDisruptionBudget.maxUnavailable=50%"])
    assert pct.one("PodDisruptionBudget")["spec"]["maxUnavailable"] == "50%"


def test_postgresql_inline_url_goes_to_managed_secret(render: RenderFn) -> None:
    r = render("openmeter-release.yaml")
    secret = r.one("Secret")
    data = {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}
    assert data == {
        "reconciler_database_url": "postgresql+psycopg://reconciler:s3cret@pg.billing.svc:5432/reconciler"
    }
    assert secret_files(r) == {
        "reconciler_database_url": (secret["metadata"]["name"], "reconciler_database_url")
    }
    assert r.deployment["spec"]["replicas"] == 2
    assert r.one("PodDisruptionBudget")
    assert "s3cret" not in yaml.safe_dump(r.deployment)


def test_postgresql_without_url_fails(render_fails: FailFn) -> None:
    err = render_fails("defaults.yaml", sets=["database.mode=postgresql"])
    assert "database.mode=postgresql needs the database URL" in err
    err = render_fails(
        "defaults.yaml",
        sets=[
            "database.mode=postgresql",
            "database.postgresql.url=postgresql://a@b/c",
            "database.postgresql.existingSecret=db",
        ],
    )
    assert "either url or existingSecret" in err


# ---------------------------------------------------------------- secrets


def test_inline_secrets_managed_secret_and_files(render: RenderFn) -> None:
    r = render("exposed.yaml")
    secret = r.one("Secret")
    assert secret["metadata"]["name"] == FULLNAME and secret["type"] == "Opaque"
    data = {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}
    assert data == {
        "reconciler_webhook_secrets": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw "
        "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD",
        "reconciler_admin_token": "admin-token-value",
        "reconciler_events_url": "https://hooks.example.com/reconciler",
        "reconciler_events_secret": "events-signing-secret",
    }
    assert secret_files(r) == {f: (FULLNAME, f) for f in data}
    # No secret value anywhere in the Deployment (env, annotations, args).
    dumped = yaml.safe_dump(r.deployment)
    for value in ("admin-token-value", "events-signing-secret", "whsec_", "hooks.example.com"):
        assert value not in dumped


def test_existing_secret_keys_can_be_left_out(render: RenderFn) -> None:
    r = render(
        "defaults.yaml",
        sets=["secrets.existingSecret=mine", "secrets.existingSecretKeys.adminToken="],
    )
    assert secret_files(r) == {"reconciler_webhook_secrets": ("mine", "webhook-secrets")}
    assert r.all("Secret") == []


def test_existing_and_inline_secrets_conflict(render_fails: FailFn) -> None:
    err = render_fails("defaults.yaml", sets=["secrets.existingSecret=x", "secrets.adminToken=y"])
    assert "either secrets.existingSecret or the inline values" in err


# ---------------------------------------------------------------- rollout triggers


def _annotations(r) -> dict[str, str]:  # type: ignore[no-untyped-def]
    annotations: dict[str, str] = r.deployment["spec"]["template"]["metadata"]["annotations"]
    return annotations


def test_checksum_annotations_track_config_and_secret(render: RenderFn) -> None:
    base = _annotations(render("exposed.yaml"))
    assert set(base) == {"checksum/config", "checksum/secret"}
    for value in base.values():
        assert len(value) == 64 and int(value, 16) >= 0
    policy = _annotations(render("exposed.yaml", set_json=['policy={"ladder":["a","b"]}']))
    assert policy["checksum/config"] != base["checksum/config"]
    assert policy["checksum/secret"] == base["checksum/secret"]
    rotated = _annotations(
        render("exposed.yaml", set_json=['secrets.webhookSecrets=["whsec_new"]'])
    )
    assert rotated["checksum/secret"] != base["checksum/secret"]
    assert rotated["checksum/config"] == base["checksum/config"]
    # Without a managed Secret the annotation hashes an empty template: no value leaks into it.
    empty = _annotations(render("defaults.yaml"))
    assert empty["checksum/secret"] in {hashlib.sha256(b).hexdigest() for b in (b"", b"\n")}
    extra = _annotations(render("defaults.yaml", sets=["podAnnotations.team=billing"]))
    assert extra["team"] == "billing"


# ---------------------------------------------------------------- termination grace


@pytest.mark.parametrize("drain", [0, 7.2, 20, 300])
def test_grace_period_follows_drain(render: RenderFn, drain: float) -> None:
    r = render("defaults.yaml", set_json=[f"config.drainSeconds={drain}"])
    assert r.pod["terminationGracePeriodSeconds"] == math.ceil(drain) + 10
    assert r.env()["RECONCILER_DRAIN_SECONDS"] == str(drain)


def test_grace_period_shorter_than_drain_fails(render_fails: FailFn) -> None:
    err = render_fails("defaults.yaml", sets=["terminationGracePeriodSeconds=20"])
    assert "terminationGracePeriodSeconds (20) must be longer than config.drainSeconds (20)" in err


# ---------------------------------------------------------------- OpenMeter location


def test_openmeter_location_required(render_fails: FailFn) -> None:
    err = render_fails()
    assert "set openmeter.url" in err and "openmeter.releaseName" in err


def test_openmeter_url_from_release_name(render: RenderFn) -> None:
    r = render("openmeter-release.yaml")
    # release "metering", nameOverride "om", namespace "billing", service.port 8080
    assert r.env()["RECONCILER_OPENMETER_URL"] == "http://metering-om-api.billing.svc:8080"
    r = render("exposed.yaml")  # release "openmeter" contains the chart name: used alone
    assert r.env()["RECONCILER_OPENMETER_URL"] == f"http://openmeter-api.{NAMESPACE}.svc:80"


def test_explicit_openmeter_url_wins(render: RenderFn) -> None:
    r = render("exposed.yaml", sets=["openmeter.url=https://om.example.com/api/"])
    assert r.env()["RECONCILER_OPENMETER_URL"] == "https://om.example.com/api"


# ---------------------------------------------------------------- Service, Ingress, monitoring


def test_service(render: RenderFn) -> None:
    svc = render("defaults.yaml").one("Service")
    assert svc["spec"]["type"] == "ClusterIP"
    assert svc["spec"]["ports"] == [
        {"name": "http", "port": 8080, "targetPort": "http", "protocol": "TCP"}
    ]


def test_ingress_exposes_only_the_webhook(render: RenderFn) -> None:
    ing = render("exposed.yaml").one("Ingress")
    spec = ing["spec"]
    assert spec["ingressClassName"] == "nginx"
    assert spec["tls"] == [
        {"secretName": "billing-hooks-tls", "hosts": ["billing-hooks.example.com"]}
    ]
    assert ing["metadata"]["annotations"] == {"cert-manager.io/cluster-issuer": "letsencrypt"}
    (rule,) = spec["rules"]
    assert rule["host"] == "billing-hooks.example.com"
    assert rule["http"]["paths"] == [
        {
            "path": "/v1/webhooks/portal",
            "pathType": "Exact",
            "backend": {"service": {"name": FULLNAME, "port": {"name": "http"}}},
        }
    ]
    assert render("defaults.yaml").all("Ingress") == []


def test_service_monitor(render: RenderFn) -> None:
    sm = render("exposed.yaml").one("ServiceMonitor")
    assert sm["apiVersion"] == "monitoring.coreos.com/v1"
    assert sm["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert sm["spec"]["selector"] == {"matchLabels": SELECTOR}
    assert sm["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    assert sm["spec"]["endpoints"] == [
        {"port": "http", "path": "/metrics", "interval": "30s", "scrapeTimeout": "10s"}
    ]
    assert render("defaults.yaml").all("ServiceMonitor") == []


# ---------------------------------------------------------------- NetworkPolicy

DNS_RULE = {
    "to": [
        {
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}},
            "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}},
        }
    ],
    "ports": [{"port": 53, "protocol": "UDP"}, {"port": 53, "protocol": "TCP"}],
}


def test_network_policy_sqlite_with_openmeter_release(render: RenderFn) -> None:
    np = render("exposed.yaml").one("NetworkPolicy")
    spec = np["spec"]
    assert spec["podSelector"] == {"matchLabels": SELECTOR}
    assert spec["policyTypes"] == ["Ingress", "Egress"]
    (ingress,) = spec["ingress"]
    assert ingress["ports"] == [{"port": "http", "protocol": "TCP"}]
    assert [peer["namespaceSelector"]["matchLabels"] for peer in ingress["from"]] == [
        {"kubernetes.io/metadata.name": "ingress-nginx"},
        {"kubernetes.io/metadata.name": "monitoring"},
    ]
    dns, openmeter, events = spec["egress"]  # SQLite: no database rule
    assert dns == DNS_RULE
    assert openmeter == {
        "to": [
            {
                "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": NAMESPACE}},
                "podSelector": {
                    "matchLabels": {
                        "app.kubernetes.io/name": "openmeter",
                        "app.kubernetes.io/instance": "openmeter",
                        "app.kubernetes.io/component": "api",
                    }
                },
            }
        ],
        "ports": [{"port": 80, "protocol": "TCP"}],
    }
    assert events["ports"] == [{"port": 443, "protocol": "TCP"}]


def test_network_policy_postgresql(render: RenderFn) -> None:
    spec = render("openmeter-release.yaml").one("NetworkPolicy")["spec"]
    assert spec["ingress"] == [{"ports": [{"port": "http", "protocol": "TCP"}]}]
    dns, openmeter, database = spec["egress"]
    assert dns == DNS_RULE
    assert openmeter["to"][0]["namespaceSelector"] == {
        "matchLabels": {"kubernetes.io/metadata.name": "billing"}
    }
    assert openmeter["to"][0]["podSelector"]["matchLabels"] == {
        "app.kubernetes.io/name": "om",
        "app.kubernetes.io/instance": "metering",
        "app.kubernetes.io/component": "api",
    }
    assert database == {
        "ports": [{"port": 5432, "protocol": "TCP"}],
        "to": [
            {
                "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "billing"}},
                "podSelector": {"matchLabels": {"app.kubernetes.io/name": "postgresql"}},
            }
        ],
    }


def test_network_policy_cidrs(render: RenderFn, render_fails: FailFn) -> None:
    err = render_fails("postgresql-replicas.yaml", sets=["networkPolicy.enabled=true"])
    assert "set networkPolicy.openmeter.cidr" in err
    spec = render(
        "postgresql-replicas.yaml",
        sets=[
            "networkPolicy.enabled=true",
            "networkPolicy.openmeter.cidr=10.20.0.0/16",
            "networkPolicy.openmeter.port=443",
            "networkPolicy.database.cidr=10.30.0.5/32",
        ],
    ).one("NetworkPolicy")["spec"]
    _, openmeter, database = spec["egress"]
    assert openmeter == {
        "to": [{"ipBlock": {"cidr": "10.20.0.0/16"}}],
        "ports": [{"port": 443, "protocol": "TCP"}],
    }
    assert database == {
        "ports": [{"port": 5432, "protocol": "TCP"}],
        "to": [{"ipBlock": {"cidr": "10.30.0.5/32"}}],
    }


# ---------------------------------------------------------------- schema


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        (["replicaCount=two"], "replicaCount: Invalid type. Expected: integer, given: string"),
        (["replicaCount=0"], "replicaCount: Must be greater than or equal to 1"),
        (
            ["database.mode=mysql"],
            'database.mode must be one of the following: "sqlite", "postgresql"',
        ),
        (["unknownKey=1"], "Additional property unknownKey is not allowed"),
        (["config.logLevel=TRACE"], "config.logLevel must be one of the following"),
        (["ingress.enabled=yes"], "ingress.enabled: Invalid type. Expected: boolean"),
        (["service.port=70000"], "service.port: Must be less than or equal to 65535"),
        (["openmeter.url=ftp://x"], "openmeter.url: Does not match pattern"),
        (["networkPolicy.bogus=1"], "Additional property bogus is not allowed"),
    ],
)
def test_schema_rejects(render_fails: FailFn, sets: list[str], message: str) -> None:
    err = render_fails("defaults.yaml", sets=sets)
    assert "values don't meet the specifications of the schema" in err
    assert message in err


def test_kube_version_constraint(helm: str) -> None:
    proc = run_helm(
        helm,
        "template",
        RELEASE,
        str(CHART),
        "-f",
        str(VALUES_FILES[0]),
        "--kube-version",
        "1.26.9",
    )
    assert proc.returncode != 0
    assert "kubeVersion" in proc.stderr or ">=1.27.0-0" in proc.stderr


# ---------------------------------------------------------------- NOTES.txt


def test_notes(helm: str, tmp_path: Path) -> None:
    """NOTES.txt rendered through tpl in a copy of the chart (helm template skips NOTES)."""
    import shutil

    chart = tmp_path / "chart"
    shutil.copytree(CHART, chart)
    (chart / "notes.txt").write_text((chart / "templates" / "NOTES.txt").read_text())
    (chart / "templates" / "zz-notes.yaml").write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: notes\n"
        'data:\n  notes: {{ tpl (.Files.Get "notes.txt") . | toJson }}\n'
    )

    def notes(*args: str) -> str:
        proc = run_helm(
            helm, "template", RELEASE, str(chart), "-n", NAMESPACE,
            "--show-only", "templates/zz-notes.yaml", *args,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        text: str = yaml.safe_load(proc.stdout)["data"]["notes"]
        return text

    text = notes("-f", str(VALUES_FILES[0].parent / "exposed.yaml"), "--set", "replicaCount=3")
    assert f"OpenMeter API:   http://openmeter-api.{NAMESPACE}.svc:80" in text
    assert "replicaCount=3 was ignored: SQLite runs exactly one pod" in text
    assert "POST https://billing-hooks.example.com/v1/webhooks/portal" in text
    assert "no webhook signing secret" not in text
    text = notes("-f", str(VALUES_FILES[0].parent / "defaults.yaml"))
    assert "no webhook signing secret is configured" in text
    assert "admin API under /v1/ is off" in text
