"""Helpers for the Helm chart tests: locate helm and the chart, run helm, parse its output."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "helm" / "openmeter-reconciler"
VALUES_DIR = Path(__file__).resolve().parent / "values"
VALUES_FILES = sorted(VALUES_DIR.glob("*.yaml"))
RELEASE = "rel"
NAMESPACE = "billing"
HELM_TIMEOUT = 60


def find_helm() -> str | None:
    local = REPO / ".tools" / "helm" / "helm"
    if local.is_file() and os.access(local, os.X_OK):
        return str(local)
    return shutil.which("helm")


@dataclass(frozen=True)
class Rendered:
    """The objects of one ``helm template`` run."""

    docs: list[dict[str, Any]]

    def all(self, kind: str) -> list[dict[str, Any]]:
        return [d for d in self.docs if d["kind"] == kind]

    def one(self, kind: str) -> dict[str, Any]:
        found = self.all(kind)
        assert len(found) == 1, f"expected one {kind}, got {len(found)}: {self.kinds()}"
        return found[0]

    def kinds(self) -> list[str]:
        return sorted(d["kind"] for d in self.docs)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return iter(self.docs)

    # Shortcuts into the one Deployment.
    @property
    def deployment(self) -> dict[str, Any]:
        return self.one("Deployment")

    @property
    def pod(self) -> dict[str, Any]:
        spec: dict[str, Any] = self.deployment["spec"]["template"]["spec"]
        return spec

    @property
    def container(self) -> dict[str, Any]:
        containers = self.pod["containers"]
        assert len(containers) == 1
        container: dict[str, Any] = containers[0]
        return container

    def env(self) -> dict[str, Any]:
        """Env entries by name: the plain value, or the whole entry when it uses valueFrom."""
        return {e["name"]: e.get("value", e) for e in self.container.get("env", [])}


def helm_args(
    values_files: Sequence[Path | str] = (),
    sets: Sequence[str] = (),
    set_json: Sequence[str] = (),
) -> list[str]:
    args: list[str] = []
    for f in values_files:
        path = Path(f)
        args += ["-f", str(path if path.is_absolute() else VALUES_DIR / path)]
    for s in sets:
        args += ["--set", s]
    for s in set_json:
        args += ["--set-json", s]
    return args


def run_helm(helm: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [helm, *args], capture_output=True, text=True, timeout=HELM_TIMEOUT, check=False
    )


RenderFn = Callable[..., Rendered]
FailFn = Callable[..., str]
