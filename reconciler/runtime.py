"""Process wiring shared by the CLI and the service: settings -> client, store, policy, engine.

One ``Runtime`` per process: one OpenMeter client (one connection pool), one store (one engine
pool), the policy loaded and validated once at start-up.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

from reconciler.domain.policy import Policy, PolicyError
from reconciler.engine import Engine, Hooks, HttpClock, Queries, SystemClock
from reconciler.engine.audit import AuditWriter, fan_out
from reconciler.engine.clock import Clock
from reconciler.engine.pacing import Pacer
from reconciler.logs import get_logger
from reconciler.openmeter.client import Observer as CallObserver
from reconciler.openmeter.client import OpenMeterClient
from reconciler.settings import Settings
from reconciler.store import Store

log = get_logger("reconciler.runtime")


def load_policy(path: Path | None) -> Policy:
    """Read and parse the policy file; a bad file is a start-up error naming the line."""
    if path is None:
        return Policy.default()
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise PolicyError(f"cannot read policy file: {exc.strerror}", source=str(path)) from exc
    return Policy.from_yaml(text, source=str(path))


async def check_policy(policy: Policy, client: OpenMeterClient) -> list[str]:
    """Validate the policy against the plans OpenMeter has: an unknown plan named in the ladder or
    a rule is a start-up error naming its line; returns warnings (globs matching nothing)."""
    keys = {p.key for p in await client.list_plans()}
    return policy.validate_plans(keys)


@dataclass
class Runtime:
    settings: Settings
    client: OpenMeterClient
    store: Store
    policy: Policy
    clock: Clock
    engine: Engine
    queries: Queries


@asynccontextmanager
async def open_runtime(
    settings: Settings,
    *,
    hooks: Hooks | None = None,
    call_observer: CallObserver | None = None,
    migrate: bool = True,
    validate_policy: bool = False,
) -> AsyncIterator[Runtime]:
    policy = load_policy(settings.policy_path)
    store = await Store.open(
        settings.database_url.get_secret_value(),
        instance_id=settings.instance_id,
        # On PostgreSQL a reconcile holds its claim's connection and needs a second one for its
        # writes: fewer than two per reconcile in flight deadlocks the pool under load.
        pool_size=max(10, 2 * settings.concurrency + 4),
    )
    clock: Clock = HttpClock(settings.clock_url) if settings.clock_url else SystemClock()
    try:
        if migrate:
            await store.migrate()
        # Every OpenMeter call reaches the audit log through the client's observer, so no call
        # path can forget it; the engine binds customer and change ids in contextvars.
        audit = AuditWriter(store, clock)
        observers: list[CallObserver] = [audit]
        if call_observer is not None:
            observers.append(call_observer)
        client = OpenMeterClient.from_settings(settings, observer=fan_out(observers))
        try:
            if validate_policy and settings.policy_path is not None:
                for warning in await check_policy(policy, client):
                    log.warning("policy_warning", warning=warning)
            pacer = Pacer(settings.intake_priority_ms / 1000)
            engine = Engine(
                client, store, policy, clock, hooks=hooks, call_audit=audit, pacer=pacer
            )
            yield Runtime(settings, client, store, policy, clock, engine, Queries(engine))
        finally:
            await client.aclose()
    finally:
        if isinstance(clock, HttpClock):
            await clock.aclose()
        await store.close()
