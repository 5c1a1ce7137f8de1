"""The audit log: append-only rows of what the reconciler called and decided. The store offers
no update or delete of them. See docs/STORE.md, "Audit"."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from reconciler.store import pgdirect
from reconciler.store.database import Database
from reconciler.store.rows import Mapper, aware, read_all
from reconciler.store.schema import audit_log
from reconciler.store.types import AuditEntry, AuditKind

_AUDIT = Mapper(AuditEntry, {"kind": AuditKind})
#: Built once: a statement object keeps its cache key, so each insert skips rebuilding it.
_INSERT_AUDIT = audit_log.insert()
#: PostgreSQL (``pgdirect``): the same insert, every column but the id.
_PG_AUDIT = pgdirect.Columns(audit_log, [c.name for c in audit_log.c if c.name != "id"])
_PG_INSERT_AUDIT = _PG_AUDIT.insert()


def audit_rows(entries: Iterable[AuditEntry]) -> list[dict[str, Any]]:
    """``entries`` as rows to insert (``insert_audit``); a naive ``at`` is refused."""
    return [
        {
            "at": aware(e.at, "at"),
            "customer": e.customer,
            "change_id": e.change_id,
            "kind": AuditKind(e.kind).value,
            "operation": e.operation,
            "method": e.method,
            "path": e.path,
            "request_body": e.request_body,
            "status": e.status,
            "detail": e.detail,
            "data": dict(e.data) if e.data is not None else None,
        }
        for e in entries
    ]


async def insert_audit(conn: AsyncConnection, rows: list[dict[str, Any]]) -> None:
    """Insert rows of ``audit_rows`` in the caller's transaction."""
    await conn.execute(_INSERT_AUDIT, rows)


async def insert_audit_pg(pg: pgdirect.PgConn, rows: list[dict[str, Any]]) -> None:
    """PostgreSQL: ``insert_audit`` on psycopg's connection (``Database.pg_tx``)."""
    await pgdirect.insert_many(pg, _PG_AUDIT, _PG_INSERT_AUDIT, rows)


class Audit:
    """The ``audit_log`` table."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def append_audit(self, entries: Iterable[AuditEntry]) -> int:
        """Append entries (one transaction). Returns how many were written."""
        rows = audit_rows(entries)
        if not rows:
            return 0

        if self._db.sqlite:

            async def op(conn: AsyncConnection) -> None:
                await insert_audit(conn, rows)

            await self._db.tx(op, write=True)
            return len(rows)

        async def pg_op(pg: pgdirect.PgConn) -> None:
            await insert_audit_pg(pg, rows)

        await self._db.pg_tx(pg_op, write=True)
        return len(rows)

    async def list_audit(
        self,
        customer: str | None = None,
        change_id: str | None = None,
        limit: int = 50,
        before_id: int | None = None,
    ) -> list[AuditEntry]:
        """Newest first. ``before_id`` pages further back."""
        q = sa.select(audit_log)
        if customer is not None:
            q = q.where(audit_log.c.customer == customer)
        if change_id is not None:
            q = q.where(audit_log.c.change_id == change_id)
        if before_id is not None:
            q = q.where(audit_log.c.id < before_id)
        return await read_all(self._db, q.order_by(audit_log.c.id.desc()).limit(limit), _AUDIT)
