"""Fixtures for the Helm chart tests (helpers in chartlib.py).

helm is looked up in ``.tools/helm/helm`` (installed by ``./dev helm``) and then on PATH. Without
it the tests that need it are skipped locally and FAIL in CI (``CI`` set), so CI can never pass
with the chart untested.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import pytest
import yaml

from .chartlib import (
    CHART,
    NAMESPACE,
    RELEASE,
    FailFn,
    Rendered,
    RenderFn,
    find_helm,
    helm_args,
    run_helm,
)


@pytest.fixture(scope="session")
def helm() -> str:
    path = find_helm()
    if path is None:
        reason = "helm not found in .tools/helm/helm or on PATH (install it with ./dev helm)"
        if os.environ.get("CI"):
            pytest.fail(f"{reason}; CI must run the chart tests", pytrace=False)
        pytest.skip(reason)
    return path


@pytest.fixture(scope="session")
def render(helm: str) -> RenderFn:
    """``render("defaults.yaml", sets=[...], set_json=[...])`` -> Rendered; fails on helm errors."""
    cache: dict[str, Rendered] = {}

    def _render(
        *values_files: Path | str,
        sets: Sequence[str] = (),
        set_json: Sequence[str] = (),
        release: str = RELEASE,
        namespace: str = NAMESPACE,
        chart: Path = CHART,
        extra: Sequence[str] = (),
    ) -> Rendered:
        args = [
            "template",
            release,
            str(chart),
            "--namespace",
            namespace,
            *helm_args(values_files, sets, set_json),
            *extra,
        ]
        key = json.dumps(args)
        if key not in cache:
            proc = run_helm(helm, *args)
            assert proc.returncode == 0, f"helm {' '.join(args)} failed:\n{proc.stderr}"
            docs = [d for d in yaml.safe_load_all(proc.stdout) if d]
            cache[key] = Rendered(docs)
        return cache[key]

    return _render


@pytest.fixture(scope="session")
def render_fails(helm: str) -> FailFn:
    """Render expecting helm to refuse; returns its error output."""

    def _fails(
        *values_files: Path | str, sets: Sequence[str] = (), set_json: Sequence[str] = ()
    ) -> str:
        args = ["template", RELEASE, str(CHART), *helm_args(values_files, sets, set_json)]
        proc = run_helm(helm, *args)
        assert proc.returncode != 0, f"helm accepted {args}; output:\n{proc.stdout[:2000]}"
        return proc.stderr

    return _fails
