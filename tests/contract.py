"""Validate HTTP traffic against OpenMeter's own OpenAPI contract (beta.227).

The spec is reference data at ``../shared/openmeter/openapi.yaml`` (never copied into the
project). ``assert_request`` checks what our client sends; ``assert_response`` checks what the
emulator answers. Both take httpx objects so they work with respx mocks and real transports.

openapi-core is stricter than the validator OpenMeter itself runs (kin-openapi, beta.227
``openmeter/server/server.go`` ``OapiRequestValidatorWithOptions``) in three places, so the spec
is loaded with exactly these adjustments made in memory:

1. ``nullable: true`` beside an ``allOf`` (e.g. ``RateCardUsageBased.price``): kin-openapi
   accepts ``null`` as soon as the outer schema permits it (getkin/kin-openapi
   ``openapi3/schema.go`` ``visitJSON``: ``case nil: if schema.PermitsNull() { return }``);
   openapi-core applies the ``allOf`` to ``null`` too. A free usage-based rate card carries
   ``"price": null``.
2. Non-exploded ``deepObject`` query parameters (``listPlans`` ``keyVersion``, ``queryMeter``
   ``filterGroupBy``): openapi-core refuses every request of such an operation.
3. ``+json`` media types (``application/problem+json`` errors, CloudEvents single and batch
   bodies): this openapi-core has no deserializer for them; they are plain JSON.
"""

from __future__ import annotations

import json
import os
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
import yaml
from openapi_core import Config, OpenAPI
from openapi_core.datatypes import RequestParameters
from werkzeug.datastructures import Headers, ImmutableMultiDict


def _default_spec() -> Path:
    """``shared/openmeter/openapi.yaml`` beside the checkout or beside one of its parents (a
    git worktree under ``/work/wt/NAME`` finds ``/work/shared`` as the main checkout does)."""
    repo = Path(__file__).resolve().parents[1]
    candidates = [d / "shared" / "openmeter" / "openapi.yaml" for d in repo.parents]
    return next((c for c in candidates if c.exists()), candidates[0])


SPEC_PATH = Path(os.environ.get("OPENMETER_OPENAPI", _default_spec()))


_NULL = {"type": "object", "nullable": True, "enum": [None]}
_ANNOTATIONS = frozenset({"title", "description", "example", "deprecated", "readOnly", "writeOnly"})


def _relax(node: Any) -> Any:
    if isinstance(node, list):
        return [_relax(x) for x in node]
    if not isinstance(node, dict):
        return node
    out = {k: _relax(v) for k, v in node.items()}
    if out.get("nullable") is True and "allOf" in out:
        del out["nullable"]
        constraints = {k: out.pop(k) for k in list(out) if k not in _ANNOTATIONS}
        out["anyOf"] = [constraints, _NULL]
    if out.get("style") == "deepObject" and out.get("in") == "query":
        out["explode"] = True
    return out


@cache
def spec() -> OpenAPI:
    if not SPEC_PATH.exists():
        if os.environ.get("CI"):
            raise RuntimeError(f"OpenMeter OpenAPI spec missing at {SPEC_PATH}")
        pytest.skip(f"OpenMeter OpenAPI spec not found at {SPEC_PATH}")
    with SPEC_PATH.open() as f:
        data = yaml.safe_load(f)
    plain_json = {
        media: json.loads
        for media in (
            "application/problem+json",
            "application/cloudevents+json",
            "application/cloudevents-batch+json",
        )
    }
    config = Config(extra_media_type_deserializers=plain_json)
    return OpenAPI.from_dict(_relax(data), config=config)


class _Req:
    def __init__(self, request: httpx.Request) -> None:
        url = urlsplit(str(request.url))
        # The spec declares one server, https://127.0.0.1; match paths regardless of test host.
        self.host_url = "https://127.0.0.1"
        self.path = url.path
        self.method = request.method.lower()
        self.parameters = RequestParameters(
            query=ImmutableMultiDict([(k, v) for k, vs in parse_qs(url.query).items() for v in vs]),
            header=Headers(dict(request.headers)),
            cookie=ImmutableMultiDict({}),
        )
        content = request.content if hasattr(request, "_content") else request.read()
        self.body: bytes | None = content or None
        self.content_type = request.headers.get("content-type", "application/json")


class _Resp:
    def __init__(self, response: httpx.Response) -> None:
        self.status_code = response.status_code
        self.data = response.content
        self.headers = Headers(dict(response.headers))
        self.content_type = response.headers.get("content-type", "application/json")


def assert_request(request: httpx.Request) -> None:
    """Raise if ``request`` does not satisfy OpenMeter's OpenAPI contract."""
    spec().validate_request(_Req(request))  # type: ignore[arg-type]


def assert_response(request: httpx.Request, response: httpx.Response) -> None:
    """Raise if ``response`` (to ``request``) does not satisfy the contract."""
    spec().validate_response(_Req(request), _Resp(response))  # type: ignore[arg-type]


def assert_exchange(response: httpx.Response) -> None:
    assert_request(response.request)
    assert_response(response.request, response)


def json_of(response: httpx.Response) -> Any:
    return response.json()
