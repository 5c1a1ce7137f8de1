"""Plans by key and version, cached.

A published plan version never changes in OpenMeter, so ``key@version`` is cached for the life
of the process; "the active version of key" is cached briefly because publishing a new version
moves it.
"""

from __future__ import annotations

import time

from reconciler.domain.model import Plan
from reconciler.openmeter import mapping
from reconciler.openmeter.client import OpenMeterClient
from reconciler.openmeter.errors import NotFound


class UnknownPlan(LookupError):
    pass


class Catalog:
    def __init__(self, client: OpenMeterClient, *, active_ttl: float = 30.0) -> None:
        self.client = client
        self.active_ttl = active_ttl
        self._versions: dict[tuple[str, int], Plan] = {}
        self._active: dict[str, tuple[float, Plan]] = {}

    def cached(self, key: str, version: int | None = None) -> Plan | None:
        """The plan ``get`` would answer without reading OpenMeter (None: it would read)."""
        if version is not None:
            return self._versions.get((key, version))
        hit = self._active.get(key)
        if hit is not None and time.monotonic() - hit[0] < self.active_ttl:
            return hit[1]
        return None

    async def get(self, key: str, version: int | None = None) -> Plan:
        if version is not None:
            cached = self._versions.get((key, version))
            if cached is not None:
                return cached
            try:
                model = await self.client.get_plan_version(key, version)
            except NotFound as exc:
                raise UnknownPlan(f"plan {key}@v{version} does not exist in OpenMeter") from exc
            plan = mapping.to_plan(model)
            self._versions[(key, version)] = plan
            return plan
        hit = self._active.get(key)
        if hit is not None and time.monotonic() - hit[0] < self.active_ttl:
            return hit[1]
        try:
            model = await self.client.get_plan(key)
        except NotFound as exc:
            raise UnknownPlan(f"plan '{key}' has no active version in OpenMeter") from exc
        plan = mapping.to_plan(model)
        self._active[key] = (time.monotonic(), plan)
        self._versions[(plan.key, plan.version)] = plan
        return plan
