"""Chart files checked without helm: metadata, documentation of every value, the schema."""

from __future__ import annotations

import json
import re
import tomllib
from collections.abc import Iterator
from typing import Any

import jsonschema
import pytest
import yaml

from .chartlib import CHART, REPO, VALUES_FILES

CHART_YAML = yaml.safe_load((CHART / "Chart.yaml").read_text())
VALUES_TEXT = (CHART / "values.yaml").read_text()
VALUES = yaml.safe_load(VALUES_TEXT)
SCHEMA = json.loads((CHART / "values.schema.json").read_text())


def leaf_keys(values: dict[str, Any], schema: dict[str, Any], prefix: str = "") -> Iterator[str]:
    """Dotted paths of the chart's options: descend only into objects the schema closes
    (``additionalProperties: false``); free-form objects (policy, selectors) are one option."""
    for key, value in values.items():
        sub = schema.get("properties", {}).get(key, {})
        path = f"{prefix}{key}"
        if isinstance(value, dict) and value and sub.get("additionalProperties") is False:
            yield from leaf_keys(value, sub, f"{path}.")
        else:
            yield path


def test_chart_metadata_matches_the_package() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert CHART_YAML["apiVersion"] == "v2"
    assert CHART_YAML["name"] == "openmeter-reconciler"
    assert CHART_YAML["version"] == "0.1.0"
    assert CHART_YAML["appVersion"] == project["version"]
    assert CHART_YAML["kubeVersion"] == ">=1.27.0-0"
    assert VALUES["image"]["repository"] == "ghcr.io/openmeter-reconciler/openmeter-reconciler"
    assert VALUES["image"]["tag"] == ""  # defaults to appVersion


def test_readme_lists_every_value() -> None:
    readme = (CHART / "README.md").read_text()
    keys = list(leaf_keys(VALUES, SCHEMA))
    assert len(keys) > 80
    missing = [k for k in keys if f"`{k}`" not in readme]
    assert not missing, f"values missing from helm/openmeter-reconciler/README.md: {missing}"


def test_every_values_key_has_a_comment() -> None:
    lines = VALUES_TEXT.splitlines()
    key_line = re.compile(r"^\s*[A-Za-z][\w./-]*:")
    undocumented = [
        f"{n + 1}: {line.strip()}"
        for n, line in enumerate(lines)
        if key_line.match(line) and not lines[n - 1].lstrip().startswith("#")
    ]
    assert not undocumented, f"keys without a comment line above them: {undocumented}"


def test_schema_is_valid_and_accepts_the_defaults() -> None:
    jsonschema.Draft7Validator.check_schema(SCHEMA)
    jsonschema.Draft7Validator(SCHEMA).validate(VALUES)
    assert SCHEMA["additionalProperties"] is False
    # Every value the chart defines is described by the schema (no open doors by accident).
    assert set(VALUES) == set(SCHEMA["properties"])


def _merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


@pytest.mark.parametrize("values", VALUES_FILES, ids=lambda p: p.stem)
def test_test_values_files_fit_the_schema(values: Any) -> None:
    merged = _merge(VALUES, yaml.safe_load(values.read_text()))
    jsonschema.Draft7Validator(SCHEMA).validate(merged)


@pytest.mark.parametrize(
    ("path", "bad"),
    [
        (("replicaCount",), "two"),
        (("database", "mode"), "mysql"),
        (("unexpected",), True),
        (("config", "logFormat"), "xml"),
        (("config", "drainSeconds"), -1),
        (("config", "httpPort"), 80),
        (("secrets", "webhookSecrets"), ["has space"]),
        (("database", "postgresql", "url"), "mysql://x"),
        (("ingress", "hosts"), []),
    ],
)
def test_schema_rejects(path: tuple[str, ...], bad: Any) -> None:
    values = json.loads(json.dumps(VALUES))
    node = values
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = bad
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft7Validator(SCHEMA).validate(values)
