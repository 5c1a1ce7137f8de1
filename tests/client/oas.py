"""Request validation against OpenMeter's OpenAPI contract, for the client's tests.

``tests/contract.py`` ``assert_request`` validates with openapi-core, which is stricter than the
validator OpenMeter itself runs (kin-openapi, ``openmeter/server/server.go``
``OapiRequestValidatorWithOptions``) in three places where the client must send what OpenMeter
accepts:

1. ``nullable: true`` next to an ``allOf`` (e.g. ``RateCardUsageBased.price``, ``featureKey``,
   ``entitlementTemplate``): kin-openapi accepts ``null`` as soon as the outer schema permits it
   (getkin/kin-openapi ``openapi3/schema.go`` ``visitJSON``: ``case nil: if
   schema.PermitsNull() { return }``); openapi-core also applies the ``allOf`` to ``null`` and
   fails. Rate cards copied from a plan carry such nulls (a free usage-based card has
   ``"price": null``), so they must validate.
2. Non-exploded ``deepObject`` parameters (``listPlans`` ``keyVersion``, ``queryMeter``
   ``filterGroupBy``): openapi-core refuses to deserialize them at all, for every request of the
   operation, even when the parameter is absent.
3. ``application/cloudevents-batch+json``: openapi-core has no deserializer for the media type.

:func:`assert_valid` first tries ``assert_request`` and only when it fails falls back to a
validator built from the *same* spec file with exactly those three adjustments made in memory,
so anything else the checker rejects still fails the test.
"""

from __future__ import annotations

import json
from functools import cache
from typing import Any

import httpx
import yaml
from contract import SPEC_PATH, _Req, assert_request
from openapi_core import Config, OpenAPI

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
def relaxed_spec() -> OpenAPI:
    with SPEC_PATH.open() as f:
        data = yaml.safe_load(f)
    config = Config(
        extra_media_type_deserializers={
            "application/cloudevents-batch+json": lambda b: json.loads(b),
        }
    )
    return OpenAPI.from_dict(_relax(data), config=config)


def assert_valid(request: httpx.Request) -> None:
    """Raise unless ``request`` satisfies OpenMeter's contract as OpenMeter validates it."""
    try:
        assert_request(request)
    except Exception:
        relaxed_spec().validate_request(_Req(request))  # type: ignore[arg-type]
