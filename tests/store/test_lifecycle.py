from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from reconciler.store import (
    Store,
    StoreError,
    StoreLockedError,
    StoreReadOnlyError,
    StoreUnavailable,
    normalize_url,
)

from .conftest import T0, Clock


def test_url_normalisation() -> None:
    assert str(normalize_url("sqlite:///x.db")) == "sqlite+pysqlite:///x.db"
    assert normalize_url("postgresql://u@h/db").drivername == "postgresql+psycopg"
    assert normalize_url("postgres://u@h/db").drivername == "postgresql+psycopg"
    # the form earlier versions documented keeps working
    assert normalize_url("sqlite+aiosqlite:///x.db").drivername == "sqlite+pysqlite"
    with pytest.raises(ValueError, match="unsupported"):
        normalize_url("mysql://u@h/db")


async def test_migrate_is_idempotent_and_is_migrated(db_url: str, clock: Clock) -> None:
    s = await Store.open(db_url, instance_id="m", clock=clock)
    try:
        assert await s.is_migrated() is False
        with pytest.raises(StoreError, match="database error"):
            await s.get_change("x")  # not migrated: a store error, not a driver exception
        await s.migrate()
        assert await s.is_migrated() is True
        await s.migrate()  # second run: nothing to do, no error, still at head
        assert await s.is_migrated() is True

        async def read(conn: Any) -> tuple[set[str], list[Any]]:
            names = await conn.run_sync(lambda c: set(sa.inspect(c).get_table_names()))
            version = (await conn.execute(sa.text("SELECT version_num FROM alembic_version"))).all()
            return names, version

        names, version = await s.db.tx(read, write=False)
        assert {"change_requests", "customers", "audit_log", "outbox_events"} <= names
        assert [tuple(r) for r in version] == [("0004",)]
        assert await s.ping() is True
    finally:
        await s.close()


@pytest.mark.postgres
async def test_concurrent_migrations_do_not_race(pg_database: str, clock: Clock) -> None:
    import asyncio

    stores = [await Store.open(pg_database, instance_id=f"r{i}", clock=clock) for i in range(4)]
    try:
        await asyncio.gather(*(s.migrate() for s in stores))
        assert all([await s.is_migrated() for s in stores])
    finally:
        for s in stores:
            await s.close()


async def test_memory_database(clock: Clock) -> None:
    s = await Store.open("sqlite:///:memory:", instance_id="mem", clock=clock)
    try:
        await s.migrate()
        r = await s.submit_change("c", "pro", 1, T0, "cli", None, T0)
        assert (await s.get_change(r.change.id)) == r.change
    finally:
        await s.close()


async def test_second_sqlite_instance_is_refused(tmp_path: Path, clock: Clock) -> None:
    db = tmp_path / "one.db"
    first = await Store.open(f"sqlite:///{db}", instance_id="first-instance", clock=clock)
    try:
        with pytest.raises(StoreLockedError) as info:
            await Store.open(f"sqlite:///{db}", instance_id="second", clock=clock)
        msg = str(info.value)
        assert str(db.resolve()) in msg
        assert "first-instance" in msg  # names the holder
        assert "already in use" in msg
    finally:
        await first.close()
    again = await Store.open(f"sqlite:///{db}", instance_id="third", clock=clock)
    await again.close()


async def test_read_only_store_reads_beside_the_lock_holder(tmp_path: Path, clock: Clock) -> None:
    """The CLI's read-only commands beside ``reconciler run``: no lock taken, the holder's
    committed rows seen (WAL), every write refused before it reaches SQLite."""
    db = tmp_path / "ro.db"
    url = f"sqlite:///{db}"
    with pytest.raises(StoreError, match="no SQLite database"):
        await Store.open(url, instance_id="reader", clock=clock, read_only=True)
    assert not db.exists()  # a read-only open never creates the file
    holder = await Store.open(url, instance_id="service", clock=clock)
    try:
        await holder.migrate()
        first = await holder.submit_change("acme", "starter", None, T0, "webhook", "w1", T0)
        reader = await Store.open(url, instance_id="reader", clock=clock, read_only=True)
        try:
            assert reader.read_only and await reader.is_migrated()
            assert await reader.get_change(first.change.id) == first.change
            # a commit by the holder while the reader is open is seen by its next read
            second = await holder.submit_change("acme", "pro", None, T0, "webhook", "w2", T0)
            assert (await reader.desired_for("acme")) == second.change
            with pytest.raises(StoreReadOnlyError):
                await reader.submit_change("acme", "free", None, T0, "webhook", "w3", T0)
            with pytest.raises(StoreReadOnlyError):
                await reader.migrate()
            with pytest.raises(StoreReadOnlyError):
                await reader.redeliver("evt_x", T0)
            changes, _ = await holder.list_changes(customer="acme")
            assert len(changes) == 2  # nothing the reader tried was written
        finally:
            await reader.close()
        # the holder's lock is untouched by the reader
        with pytest.raises(StoreLockedError):
            await Store.open(url, instance_id="other", clock=clock)
    finally:
        await holder.close()


async def test_sqlite_wal_full_sync_and_foreign_keys(tmp_path: Path, clock: Clock) -> None:
    db = tmp_path / "w.db"
    s = await Store.open(f"sqlite:///{db}", instance_id="w", clock=clock)
    try:
        await s.migrate()

        async def pragmas(conn: Any) -> tuple[Any, Any, Any, Any]:
            mode = (await conn.execute(sa.text("PRAGMA journal_mode"))).scalar()
            fks = (await conn.execute(sa.text("PRAGMA foreign_keys"))).scalar()
            busy = (await conn.execute(sa.text("PRAGMA busy_timeout"))).scalar()
            sync = (await conn.execute(sa.text("PRAGMA synchronous"))).scalar()
            return mode, fks, busy, sync

        mode, fks, busy, sync = await s.db.tx(pragmas, write=False)
        assert (mode, fks) == ("wal", 1)
        assert sync == 2  # FULL: every commit is synced (durable across a power loss)
        assert busy == 5000
    finally:
        await s.close()


async def test_sqlite_locked_database_surfaces_store_unavailable(
    tmp_path: Path, clock: Clock
) -> None:
    db = tmp_path / "busy.db"
    s = await Store.open(f"sqlite:///{db}", instance_id="b", clock=clock, busy_timeout_ms=50)
    try:
        await s.migrate()
        other = sqlite3.connect(db, isolation_level=None)  # e.g. a backup tool holding a lock
        other.execute("BEGIN EXCLUSIVE")
        try:
            with pytest.raises(StoreUnavailable):
                await s.schedule_customer("c1", T0)
        finally:
            other.execute("ROLLBACK")
            other.close()
        await s.schedule_customer("c1", T0)  # works again once the lock is gone
        assert await s.due_customers(T0, 10) == ["c1"]
    finally:
        await s.close()


async def test_unreachable_postgres_surfaces_store_unavailable(clock: Clock) -> None:
    s = await Store.open(
        "postgresql://postgres@127.0.0.1:1/nothing", instance_id="x", clock=clock, retries=1
    )
    try:
        assert await s.ping() is False
        with pytest.raises(StoreUnavailable):
            await s.get_change("nope")
    finally:
        await s.close()


@pytest.mark.postgres
async def test_postgres_restart_like_disconnect_recovers(pg_database: str, clock: Clock) -> None:
    """Server-side termination of pooled connections: the retry hides it from callers."""
    import psycopg

    from tests.pg import PG_ADMIN_DSN

    s = await Store.open(pg_database, instance_id="d", clock=clock)
    try:
        await s.migrate()
        await s.schedule_customer("c1", T0)
        dbname = pg_database.rsplit("/", 1)[1]
        with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as admin:
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = %s AND pid <> pg_backend_pid()",
                (dbname,),
            )
        assert await s.due_customers(T0, 10) == ["c1"]
    finally:
        await s.close()
