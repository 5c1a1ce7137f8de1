"""Alembic environment for the reconciler store.

``Store.migrate()`` passes its own (sync-facing) connection in ``config.attributes["connection"]``
via ``AsyncConnection.run_sync``, so migrations run on the async engine. Run by hand, the URL
comes from ``sqlalchemy.url`` or ``RECONCILER_DATABASE_URL`` and an async engine is created here.
"""

from __future__ import annotations

import asyncio
import os

from alembic import context
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine

from reconciler.store.schema import metadata
from reconciler.store.urls import normalize_url

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
    engine = create_async_engine(normalize_url(url))
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
