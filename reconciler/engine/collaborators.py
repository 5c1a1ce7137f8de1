"""What the engine's write loop and read side work with, built once per process.

``reconciler.runtime`` builds one :class:`Collaborators` from the settings and hands it to the
``Engine`` (the loop), ``Queries`` (status, preview), ``Quoter`` and adoption, so all of them
share one OpenMeter client (one connection pool), one plan catalog (one cache), one observer and
one pacer, and none reaches through another to find them.
"""

from __future__ import annotations

from dataclasses import dataclass

from reconciler.domain.planner import ChangePolicy
from reconciler.engine.catalog import Catalog
from reconciler.engine.clock import Clock
from reconciler.engine.observe import Observer
from reconciler.engine.pacing import Pacer
from reconciler.openmeter.client import OpenMeterClient
from reconciler.store import Store


@dataclass(frozen=True, slots=True)
class Collaborators:
    client: OpenMeterClient
    store: Store
    policy: ChangePolicy
    clock: Clock
    catalog: Catalog
    observer: Observer
    pacer: Pacer

    @classmethod
    def build(
        cls,
        client: OpenMeterClient,
        store: Store,
        policy: ChangePolicy,
        clock: Clock,
        *,
        pacer: Pacer | None = None,
    ) -> Collaborators:
        pacer = pacer or Pacer(0)
        return cls(client, store, policy, clock, Catalog(client), Observer(client, pacer), pacer)
