"""The OpenMeter URL the chart derives from ``openmeter.releaseName`` is the Service that
OpenMeter's own chart creates, and the NetworkPolicy selects that Service's pods.

The oracle is ``fixtures/openmeter-chart``: a chart of our own that renders only OpenMeter's API
Service, by the naming rule of OpenMeter's chart (openmeterio/openmeter v1.0.0-beta.227,
``deploy/charts/openmeter/templates/_helpers.tpl`` and ``templates/service.yaml``; its
Chart.yaml says which definitions). helm renders it with the same release name and overrides as
our chart; the names are not re-derived in Python. ``test_oracle_names`` pins the oracle itself
to names worked out by hand from that rule.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from .chartlib import RenderFn, run_helm

pytestmark = pytest.mark.helm

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "openmeter-chart"

CASES = [
    # (OpenMeter release, its nameOverride, its fullnameOverride, its service.port)
    ("openmeter", "", "", 80),  # release contains the chart name: used alone
    ("billing", "", "", 80),  # "<release>-openmeter"
    ("my-openmeter-prod", "", "", 80),  # contains: used alone
    ("metering", "om", "", 8080),  # nameOverride
    ("my-om-stack", "om", "", 80),  # release contains the nameOverride
    ("whatever", "", "meter", 80),  # fullnameOverride
    ("whatever", "om", "meter", 80),  # fullnameOverride wins over nameOverride
    ("a" * 53, "", "", 80),  # longest release name helm allows: truncated to 59 + "-api"
    ("b" * 45, "", "", 80),  # "<45>-openmeter" is 55 chars, not truncated
    ("e" * 44 + "openmeter", "", "", 80),  # contains the chart name at 53 chars
    ("c", "", "x" * 58 + "-yyyy", 80),  # truncation leaves a trailing "-", trimmed
    ("c", "", "f" * 63, 80),  # fullnameOverride at the 63-character limit
    ("d", "n" * 63, "", 80),  # nameOverride at the 63-character limit
]


def oracle_service(helm: str, release: str, name: str, full: str, port: int) -> dict[str, Any]:
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


@pytest.mark.parametrize(
    ("release", "name", "full", "service"),
    [
        ("openmeter", "", "", "openmeter-api"),
        ("billing", "", "", "billing-openmeter-api"),
        ("my-openmeter-prod", "", "", "my-openmeter-prod-api"),
        ("metering", "om", "", "metering-om-api"),
        ("my-om-stack", "om", "", "my-om-stack-api"),
        ("whatever", "om", "meter", "meter-api"),
        ("a" * 53, "", "", "a" * 53 + "-openm-api"),  # the first 59 of "<53>-openmeter"
        ("c", "", "x" * 58 + "-yyyy", "x" * 58 + "-api"),  # 59th character "-" trimmed
    ],
)
def test_oracle_names(helm: str, release: str, name: str, full: str, service: str) -> None:
    svc = oracle_service(helm, release, name, full, 80)
    assert svc["metadata"]["name"] == service
    assert svc["spec"]["selector"] == {
        "app.kubernetes.io/name": name or "openmeter",
        "app.kubernetes.io/instance": release,
        "app.kubernetes.io/component": "api",
    }


@pytest.mark.parametrize(("release", "name", "full", "port"), CASES)
def test_derived_url_matches_openmeter_chart(
    helm: str, render: RenderFn, release: str, name: str, full: str, port: int
) -> None:
    svc = oracle_service(helm, release, name, full, port)
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
