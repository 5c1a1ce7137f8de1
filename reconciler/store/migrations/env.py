"""Alembic environment for the reconciler store.

``Store.migrate()`` passes its own connection in ``config.attributes["connection"]`` (SQLite: a
sync connection on the store's database thread; PostgreSQL: ``AsyncConnection.run_sync``). Run
by hand, the URL comes from ``sqlalchemy.url`` or ``RECONCILER_DATABASE_URL`` and an engine of
the same kind is created here.
"""

from __future__ import annotations

import asyncio
import os

from alembic import context
from sqlalchemy import create_engine
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine

from reconciler.store.schema import metadata
from reconciler.store.urls import is_sqlite, normalize_url

config = context.config


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


async def _run_standalone(url: str) -> None:
    u = normalize_url(url)
    if is_sqlite(u):
        sync_engine = create_engine(u)
        try:
            with sync_engine.connect() as sync_conn:
                _run(sync_conn)
                sync_conn.commit()
        finally:
            sync_engine.dispose()
        return
    engine = create_async_engine(u)
    try:
        async with engine.connect() as conn:
            await conn.run_sync(_run)
            await conn.commit()
    finally:
        await engine.dispose()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    url = config.get_main_option("sqlalchemy.url") or os.environ.get("RECONCILER_DATABASE_URL")
    if not url:
        raise RuntimeError("no database URL: set sqlalchemy.url or RECONCILER_DATABASE_URL")
    asyncio.run(_run_standalone(url))


if context.is_offline_mode():
    raise RuntimeError("offline (--sql) migrations are not supported; run them online")
run_migrations_online()
