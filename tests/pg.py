"""PostgreSQL for tests: the local server (127.0.0.1:5432, trust auth), one fresh database per
test, dropped afterwards; nothing else on the shared server is touched.

Locally a missing server skips the PostgreSQL tests; in CI (``CI`` set) it fails them, because
CI always has PostgreSQL and must exercise it.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
import pytest
from psycopg import sql

PG_ADMIN_DSN = os.environ.get(
    "RECONCILER_TEST_PG_DSN", "host=127.0.0.1 port=5432 user=postgres dbname=postgres"
)
PG_URL_BASE = os.environ.get("RECONCILER_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432")
IN_CI = bool(os.environ.get("CI"))


_reachable = False


def _unavailable() -> str | None:
    """Why PostgreSQL cannot be used, or None. Success is remembered; a failure is not, so one
    transient refusal (e.g. too many clients for a moment) does not fail every later test."""
    global _reachable
    if _reachable:
        return None
    try:
        with psycopg.connect(PG_ADMIN_DSN, connect_timeout=3) as conn:
            conn.execute("SELECT 1")
    except psycopg.Error as e:
        return str(e)
    _reachable = True
    return None


def require_pg() -> None:
    err = _unavailable()
    if err is not None:
        if IN_CI:
            pytest.fail(f"PostgreSQL is required in CI but unreachable: {err}")
        pytest.skip(f"PostgreSQL unreachable: {err}")


@contextmanager
def fresh_database(prefix: str) -> Iterator[str]:
    """Create ``<prefix>_<random>``, yield its SQLAlchemy URL, drop it (even if still in use)."""
    require_pg()
    name = f"{prefix}_{uuid.uuid4().hex[:16]}"
    with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield f"{PG_URL_BASE}/{name}"
    finally:
        with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


class Statements:
    """The statements sent to PostgreSQL while installed, whichever way they went: through
    SQLAlchemy or on psycopg's own connection (``reconciler.store.pgdirect``), since both end in
    psycopg's cursor ``execute`` / ``executemany``, patched here for the test.

    ``seen``: (statement, whether its connection was in autocommit). ``lose_answers`` and
    ``lose_matching``: that many statements containing the text run on the server, then fail
    as if the connection had dropped before their answer arrived.
    """

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.seen: list[tuple[str, bool]] = []
        self.lose_answers = 0
        self.lose_matching = ""
        for name in ("execute", "executemany"):
            monkeypatch.setattr(psycopg.AsyncCursor, name, self._observed(name))

    def _observed(self, name: str) -> Any:
        original = getattr(psycopg.AsyncCursor, name)

        async def observed(cur: psycopg.AsyncCursor[Any], query: Any, *a: Any, **kw: Any) -> Any:
            self._record(cur, query)
            result = await original(cur, query, *a, **kw)
            self._after(query)
            return result

        return observed

    @property
    def statements(self) -> list[str]:
        return [s for s, _ in self.seen]

    def verbs(self) -> list[str]:
        """Each statement's first word, upper-cased."""
        return [s.split()[0].upper() for s, _ in self.seen]

    def _record(self, cur: psycopg.AsyncCursor[Any], query: Any) -> None:
        self.seen.append((str(query), bool(cur.connection.autocommit)))

    def _after(self, query: Any) -> None:
        if self.lose_answers and self.lose_matching in str(query):
            self.lose_answers -= 1
            raise psycopg.OperationalError("server closed the connection unexpectedly")
