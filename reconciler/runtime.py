"""Process wiring shared by the CLI and the service: settings -> client, store, policy, and the
engine's collaborators (built once), the engine, its read side and its quoter.

One ``Runtime`` per process: one OpenMeter client (one connection pool), one store (one engine
pool), the policy loaded and validated once at start-up.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

from reconciler.domain.policy import Policy, PolicyError
from reconciler.engine import (
    Collaborators,
    Engine,
    Hooks,
    HttpClock,
    Queries,
    Quoter,
    SystemClock,
)
from reconciler.engine.audit import AuditWriter, fan_out
from reconciler.engine.clock import Clock
from reconciler.engine.pacing import Pacer
from reconciler.logs import get_logger
from reconciler.openmeter.client import Observer as CallObserver
from reconciler.openmeter.client import OpenMeterClient
from reconciler.settings import Settings
from reconciler.store import Store, StoreError, StoreLockedError

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


async def require_migrated(store: Store) -> None:
    """A store opened read-only cannot migrate: it must already be at this version's schema."""
    if not await store.is_migrated():
        raise StoreError(
            "the database is not at this version's schema revision: run `reconciler migrate` "
            "(or start the service, which migrates)"
        )


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
    collaborators: Collaborators
    engine: Engine
    queries: Queries
    quoter: Quoter


@asynccontextmanager
async def open_runtime(
    settings: Settings,
    *,
    hooks: Hooks | None = None,
    call_observer: CallObserver | None = None,
    migrate: bool = True,
    validate_policy: bool = False,
    read_only_if_locked: bool = False,
) -> AsyncIterator[Runtime]:
    """``read_only_if_locked`` (the CLI's read-only commands): when another process (the
    service) holds the SQLite database, open it read-only instead of failing — no migration,
    no audit rows of the calls made (``Store.open(read_only=True)``)."""
    policy = load_policy(settings.policy_path)
    url = settings.database_url.get_secret_value()
    # On PostgreSQL a reconcile holds its claim's connection and needs a second one for its
    # writes: fewer than two per reconcile in flight deadlocks the pool under load.
    pool = max(10, 2 * settings.concurrency + 4)
    try:
        store = await Store.open(url, instance_id=settings.instance_id, pool_size=pool)
    except StoreLockedError:
        if not read_only_if_locked:
            raise
        store = await Store.open(
            url, instance_id=settings.instance_id, pool_size=pool, read_only=True
        )
    clock: Clock = HttpClock(settings.clock_url) if settings.clock_url else SystemClock()
    try:
        if store.read_only:
            await require_migrated(store)
        elif migrate:
            await store.migrate()
        # Every OpenMeter call reaches the audit log through the client's observer, so no call
        # path can forget it; the engine binds customer and change ids in contextvars.
        audit = AuditWriter(store, clock) if not store.read_only else None
        observers: list[CallObserver] = [audit] if audit is not None else []
        if call_observer is not None:
            observers.append(call_observer)
        client = OpenMeterClient.from_settings(settings, observer=fan_out(observers))
        try:
            if validate_policy and settings.policy_path is not None:
                for warning in await check_policy(policy, client):
                    log.warning("policy_warning", warning=warning)
            pacer = Pacer(settings.intake_priority_ms / 1000)
            collab = Collaborators.build(client, store, policy, clock, pacer=pacer)
            engine = Engine(collab, hooks=hooks, call_audit=audit)
            quoter = Quoter(collab)
            yield Runtime(
                settings,
                client,
                store,
                policy,
                clock,
                collab,
                engine,
                Queries(collab, quoter),
                quoter,
            )
        finally:
            await client.aclose()
    finally:
        if isinstance(clock, HttpClock):
            await clock.aclose()
        await store.close()
