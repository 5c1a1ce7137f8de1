"""Every rendered object validates against the Kubernetes OpenAPI schemas (strict: no unknown
fields) of the oldest and newest Kubernetes versions that kubernetes-validate bundles inside the
chart's ``kubeVersion`` range."""

from __future__ import annotations

import re
from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from kubernetes_validate.utils import all_versions
from packaging.version import Version

from .chartlib import CHART, VALUES_FILES, RenderFn

pytestmark = pytest.mark.helm

# CRD kinds have no schema in kubernetes-validate (it bundles only the built-in API). The
# ServiceMonitor's fields are asserted one by one in test_chart_render.py instead.
CRD_KINDS = {("monitoring.coreos.com/v1", "ServiceMonitor")}


def supported_versions() -> list[str]:
    """Oldest and newest bundled schema versions satisfying Chart.yaml's kubeVersion."""
    kube_version = yaml.safe_load((CHART / "Chart.yaml").read_text())["kubeVersion"]
    match = re.fullmatch(r">=\s*(\d+\.\d+)(?:\.\d+)?(?:-0)?", kube_version)
    assert match, f"test understands only '>=X.Y[.Z][-0]' constraints, got {kube_version!r}"
    floor = Version(match.group(1))
    bundled = [v for v in all_versions() if Version(v) >= floor]
    assert bundled, f"kubernetes-validate bundles nothing at or above {floor}"
    assert Version(bundled[0]).release[:2] == floor.release[:2], "floor version not bundled"
    return sorted({bundled[0], bundled[-1]}, key=Version)


VERSIONS = supported_versions()


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("values", VALUES_FILES, ids=lambda p: p.stem)
def test_manifests_validate(render: RenderFn, values: Path, version: str) -> None:
    rendered = render(values)
    checked = 0
    for obj in rendered:
        if (obj["apiVersion"], obj["kind"]) in CRD_KINDS:
            continue
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as e:
            path = "/".join(str(p) for p in e.path)
            pytest.fail(f"{obj['kind']}/{obj['metadata']['name']} at {path}: {e.message}")
        checked += 1
    assert checked >= 5  # ServiceAccount, ConfigMap, Service, Deployment and more


def test_versions_span_the_supported_range() -> None:
    assert VERSIONS[0].startswith("1.27")
    assert Version(VERSIONS[-1]) >= Version("1.30")


def test_strict_validation_catches_unknown_fields(render: RenderFn) -> None:
    """The validator really is strict: an unknown container field is an error."""
    deployment = render(VALUES_FILES[0]).deployment
    broken = yaml.safe_load(yaml.safe_dump(deployment))
    broken["spec"]["template"]["spec"]["containers"][0]["livenessProbes"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, VERSIONS[0], strict=True)
