"""The OpenMeter URL the chart derives from ``openmeter.releaseName`` is the Service that
OpenMeter's own chart creates, and the NetworkPolicy selects that Service's pods.

The oracle is OpenMeter's real naming templates (fixtures/openmeter-chart, copied verbatim from
openmeterio/openmeter v1.0.0-beta.227), rendered by helm with the same release name and
overrides; nothing is re-implemented in Python.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from .chartlib import RenderFn, run_helm

pytestmark = pytest.mark.helm

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "openmeter-chart"
UPSTREAM_REPO = Path("/work/.mirror/openmeterio+openmeter/repo")
UPSTREAM_TAG = "v1.0.0-beta.227"

CASES = [
    # (OpenMeter release, its nameOverride, its fullnameOverride, its service.port)
    ("openmeter", "", "", 80),  # release contains the chart name: used alone
    ("billing", "", "", 80),  # "<release>-openmeter"
    ("my-openmeter-prod", "", "", 80),  # contains: used alone
    ("metering", "om", "", 8080),  # nameOverride
    ("my-om-stack", "om", "", 80),  # release contains the nameOverride
    ("whatever", "", "meter", 80),  # fullnameOverride
    ("a" * 53, "", "", 80),  # longest release name helm allows: truncated to 59 + "-api"
    ("b" * 45, "", "", 80),  # "<45>-openmeter" is 55 chars, not truncated
    ("c", "", "x" * 58 + "-yyyy", 80),  # truncation leaves a trailing "-", trimmed
    ("d", "n" * 63, "", 80),  # nameOverride at the 63-character limit
]


def upstream_service(helm: str, release: str, name: str, full: str, port: int) -> dict[str, Any]:
    args = ["template", release, str(FIXTURE), "--namespace", "ns-om"]
    args += ["--set", f"service.port={port}"]
    if name:
        args += ["--set", f"nameOverride={name}"]
    if full:
        args += ["--set", f"fullnameOverride={full}"]
    proc = run_helm(helm, *args)
    assert proc.returncode == 0, proc.stderr
    (svc,) = [d for d in yaml.safe_load_all(proc.stdout) if d]
    assert isinstance(svc, dict)
    assert svc["kind"] == "Service"
    return svc


@pytest.mark.parametrize(("release", "name", "full", "port"), CASES)
def test_derived_url_matches_openmeter_chart(
    helm: str, render: RenderFn, release: str, name: str, full: str, port: int
) -> None:
    svc = upstream_service(helm, release, name, full, port)
    sets = [
        f"openmeter.releaseName={release}",
        "openmeter.namespace=ns-om",
        f"openmeter.servicePort={port}",
        "networkPolicy.enabled=true",
    ]
    if name:
        sets.append(f"openmeter.nameOverride={name}")
    if full:
        sets.append(f"openmeter.fullnameOverride={full}")
    ours = render(sets=sets)
    svc_name = svc["metadata"]["name"]
    assert len(svc_name) <= 63
    (svc_port,) = svc["spec"]["ports"]
    assert svc_port["port"] == port and svc_port["name"] == "http"
    expected = f"http://{svc_name}.ns-om.svc:{port}"
    assert ours.env()["RECONCILER_OPENMETER_URL"] == expected
    # NetworkPolicy egress selects exactly the pods behind that Service.
    egress = ours.one("NetworkPolicy")["spec"]["egress"]
    (peer,) = egress[1]["to"]
    assert peer["podSelector"]["matchLabels"] == svc["spec"]["selector"]
    assert peer["namespaceSelector"]["matchLabels"] == {"kubernetes.io/metadata.name": "ns-om"}


def test_default_namespace_is_the_release_namespace(render: RenderFn) -> None:
    env = render(sets=["openmeter.releaseName=openmeter"], namespace="payments").env()
    assert env["RECONCILER_OPENMETER_URL"] == "http://openmeter-api.payments.svc:80"


@pytest.mark.skipif(not UPSTREAM_REPO.is_dir(), reason="OpenMeter mirror not on this machine")
@pytest.mark.parametrize("name", ["_helpers.tpl", "service.yaml"])
def test_fixture_is_verbatim_upstream(name: str) -> None:
    upstream = subprocess.run(
        [
            "git",
            "-C",
            str(UPSTREAM_REPO),
            "show",
            f"{UPSTREAM_TAG}:deploy/charts/openmeter/templates/{name}",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert (FIXTURE / "templates" / name).read_text() == upstream
