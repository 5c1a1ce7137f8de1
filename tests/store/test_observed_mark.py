"""Revision 0004: ``change_requests.observed_mark`` (what OpenMeter showed when a change
converged), read by the sweep's page lookup and refreshed only while still the same."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import sqlalchemy as sa
from alembic import command

from reconciler.store import ChangeStatus, Store

from .conftest import T0, Clock


async def _alembic(store: Store, fn: Callable[[Any, Any], None]) -> None:
    """Run an Alembic command on ``store``'s database (either backend)."""
    cfg = store.db.alembic_config()
    if store.db.sync_engine is not None:
        engine = store.db.sync_engine

        def run() -> None:
            with engine.connect() as conn:
                cfg.attributes["connection"] = conn
                fn(cfg, conn)
                conn.commit()

        await store.db.in_db_thread(run)
        return
    async with store.db.pg.connect() as conn:

        def go(sync_conn: Any) -> None:
            cfg.attributes["connection"] = sync_conn
            fn(cfg, sync_conn)

        await conn.run_sync(go)
        await conn.commit()


async def _columns(store: Store) -> set[str]:
    async def op(conn: Any) -> set[str]:
        cols = await conn.run_sync(lambda c: sa.inspect(c).get_columns("change_requests"))
        return {c["name"] for c in cols}

    return await store.db.tx(op, write=False)


async def test_upgrade_from_0003_keeps_rows_and_adds_the_mark(db_url: str, clock: Clock) -> None:
    s = await Store.open(db_url, instance_id="mark", clock=clock)
    try:
        await _alembic(s, lambda cfg, _c: command.upgrade(cfg, "0003"))
        assert "observed_mark" not in await _columns(s)

        async def insert(conn: Any) -> None:
            # a change converged before the revision (raw SQL: the 0003 layout)
            await conn.execute(
                sa.text(
                    "INSERT INTO customers (customer, desired_change_id, version, updated_at) "
                    "VALUES ('old', 'chg-old', 0, :t)"
                ),
                {"t": T0.replace(tzinfo=None)},
            )
            await conn.execute(
                sa.text(
                    "INSERT INTO change_requests (id, customer, plan_key, requested_at, "
                    "received_at, source, status, attempts, updated_at, details) VALUES "
                    "('chg-old', 'old', 'starter', :t, :t, 'admin', 'converged', 0, :t, '{}')"
                ),
                {"t": T0.replace(tzinfo=None)},
            )

        await s.db.tx(insert, write=True)
        await s.migrate()
        assert "observed_mark" in await _columns(s)
        old = await s.get_change("chg-old")
        assert old is not None and old.status is ChangeStatus.CONVERGED
        assert old.observed_mark is None
        summaries = await s.desired_summaries([("old", None)])
        assert summaries["old"].observed_mark is None

        # the sweep's refresh: only from the value it read, only while converged
        assert await s.refresh_observed_mark("chg-old", None, "sub@t1 d1") is True
        assert await s.refresh_observed_mark("chg-old", None, "sub@t2 d2") is False
        assert await s.refresh_observed_mark("chg-old", "sub@t1 d1", "sub@t2 d1") is True
        assert (await s.desired_summaries([("old", None)]))["old"].observed_mark == "sub@t2 d1"
        await s.update_change("chg-old", status=ChangeStatus.SCHEDULED)
        assert await s.refresh_observed_mark("chg-old", "sub@t2 d1", "sub@t3 d1") is False
        rec = await s.get_change("chg-old")
        assert rec is not None and rec.observed_mark == "sub@t2 d1"

        # the engine writes it with the change's other fields
        await s.update_change("chg-old", status=ChangeStatus.CONVERGED, observed_mark="x@y z")
        rec = await s.get_change("chg-old")
        assert rec is not None and rec.observed_mark == "x@y z"

        # and the revision goes down and up again, rows kept
        await _alembic(s, lambda cfg, _c: command.downgrade(cfg, "0003"))
        assert "observed_mark" not in await _columns(s)
        await s.migrate()
        rec = await s.get_change("chg-old")
        assert rec is not None and rec.plan_key == "starter" and rec.observed_mark is None
        # a submit on PostgreSQL goes through the 0003 function: it still returns full rows
        r = await s.submit_change("new", "pro", None, T0, "webhook", "wh_m", T0)
        assert r.created is True and r.change.observed_mark is None
    finally:
        await s.close()
