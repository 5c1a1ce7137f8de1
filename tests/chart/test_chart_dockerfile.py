"""The Dockerfile (Docker cannot run here): parsed instruction by instruction and checked for the
properties the chart relies on."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

import yaml

from .chartlib import CHART, REPO

DOCKERFILE = (REPO / "Dockerfile").read_text()


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, op: str) -> list[str]:
        return [arg for o, arg in self.instructions if o == op]


def parse(text: str) -> list[Stage]:
    logical: list[str] = []
    buf = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not buf and (not line or line.startswith("#")):
            continue
        if buf and line.startswith("#"):
            continue
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        logical.append(buf + line)
        buf = ""
    assert not buf, "dangling line continuation"
    stages: list[Stage] = []
    for line in logical:
        op, _, arg = line.partition(" ")
        op = op.upper()
        if op == "FROM":
            m = re.fullmatch(r"(\S+)(?:\s+AS\s+(\S+))?", arg.strip(), re.IGNORECASE)
            assert m, line
            stages.append(Stage(m.group(1), m.group(2)))
        else:
            assert stages, f"{op} before FROM"
            stages[-1].instructions.append((op, arg.strip()))
    return stages


STAGES = parse(DOCKERFILE)
BUILDER, RUNTIME = STAGES[0], STAGES[-1]


def test_two_stages_on_python_311_slim() -> None:
    assert len(STAGES) == 2
    assert (BUILDER.base, BUILDER.name) == ("python:3.11-slim", "builder")
    assert RUNTIME.base == "python:3.11-slim"


def test_builder_builds_wheels() -> None:
    runs = " ".join(BUILDER.all("RUN"))
    assert "pip wheel" in runs and "--wheel-dir /wheels" in runs


def test_runtime_installs_only_the_wheels_without_build_tools() -> None:
    runs = " ".join(RUNTIME.all("RUN"))
    assert "pip install --no-index --find-links=/wheels openmeter-reconciler" in runs
    assert "from=builder,source=/wheels" in runs  # bind mount: no wheel stays in a layer
    for tool in ("apt-get", "gcc", "build-essential", "make ", "git "):
        assert tool not in runs, tool
    copies = RUNTIME.all("COPY")
    assert copies == ["--from=builder --chown=0:0 /src/config /app/config"]


def test_runtime_runs_as_the_charts_non_root_user() -> None:
    users = RUNTIME.all("USER")
    assert users, "runtime stage has no USER"
    uid = users[-1].split(":")[0]
    assert uid == "10001"
    assert users[-1] not in {"root", "0", "0:0"}
    # The last USER comes after every RUN (nothing later runs as root).
    ops = [op for op, _ in RUNTIME.instructions]
    assert max(i for i, op in enumerate(ops) if op == "RUN") < ops.index("USER")
    assert "--uid 10001" in " ".join(RUNTIME.all("RUN"))
    template = (CHART / "templates" / "deployment.yaml").read_text()
    assert template.count("runAsUser: 10001") == 2


def test_entrypoint_cmd_and_port() -> None:
    assert json.loads(RUNTIME.all("ENTRYPOINT")[-1]) == ["reconciler"]
    assert json.loads(RUNTIME.all("CMD")[-1]) == ["run"]
    assert RUNTIME.all("EXPOSE") == ["8080"]
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert values["config"]["httpPort"] == 8080


def test_dockerignore_keeps_the_build_inputs() -> None:
    ignored = {
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    for path in (".git", ".venv", ".tools", "tests", "**/__pycache__", "*.db"):
        assert path in ignored, path
    for needed in ("reconciler", "pyproject.toml", "config", "README.md"):
        assert needed not in ignored, needed
