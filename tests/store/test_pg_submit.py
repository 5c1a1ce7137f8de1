"""PostgreSQL's submit: one call of ``reconciler_submit_change`` (Alembic revision 0003).

The rules themselves are tested on both databases in ``test_changes.py``; here, what is
particular to PostgreSQL: the round trips, the answer lost after the function committed, and
the revision's downgrade.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from alembic import command

from reconciler.store import ChangeStatus, NewEvent, Store
from reconciler.store.schema import change_requests
from tests.pg import Statements

from .conftest import T0

pytestmark = pytest.mark.postgres

H = timedelta(hours=1)
CALL = "FROM reconciler_submit_change("


@pytest.fixture
def db_url(pg_database: str) -> str:
    """This module's ``store`` (conftest) is on PostgreSQL only."""
    return pg_database


@pytest.fixture
def log(monkeypatch: pytest.MonkeyPatch) -> Statements:
    """The statements sent to PostgreSQL (``tests.pg.Statements``); answers lost are the
    submit function's."""
    seen = Statements(monkeypatch)
    seen.lose_matching = CALL
    return seen


async def _rows(store: Store, source_id: str) -> list[Any]:
    async def op(conn: Any) -> list[Any]:
        q = sa.select(change_requests).where(change_requests.c.source_id == source_id)
        return list((await conn.execute(q)).all())

    return await store.db.tx(op, write=False)


async def test_a_webhook_submit_is_one_statement_in_autocommit(
    store: Store, log: Statements
) -> None:
    first = await store.submit_change("acme", "pro", None, T0, "webhook", "wh_1", T0)
    second = await store.submit_change("acme", "max", None, T0 + H, "webhook", "wh_2", T0 + H)
    again = await store.submit_change("acme", "max", None, T0 + H, "webhook", "wh_2", T0 + H)
    assert [(CALL in s, auto) for s, auto in log.seen] == [(True, True)] * 3
    assert first.created and second.created and not again.created
    assert second.superseded_ids == (first.change.id,)
    assert again.change == second.change
    desired = await store.desired_for("acme")
    assert desired == second.change


async def test_events_or_no_source_id_keep_a_transaction(store: Store, log: Statements) -> None:
    ev = NewEvent(type="change.received", payload={})
    await store.submit_change("acme", "pro", None, T0, "webhook", "wh_1", T0, events=[ev])
    await store.submit_change("acme", "max", None, T0 + H, "cli", None, T0 + H)
    calls = [(CALL in s, auto) for s, auto in log.seen]
    # the function and the event's insert in one transaction; a request without a source id
    # cannot be retried safely after an unknown outcome, so it is not sent in autocommit
    assert calls == [(True, False), (False, False), (True, False)]
    events, _ = await store.list_events()
    assert [e.type for e in events] == ["change.received"]


async def test_autocommit_ends_with_the_submit(store: Store, log: Statements) -> None:
    """The submit's connection goes back to the pool out of autocommit: the next transaction
    on it (the same connection, one caller) is one again."""
    ev = NewEvent(type="change.received", payload={})
    await store.submit_change("acme", "pro", None, T0, "webhook", "wh_1", T0)
    await store.submit_change("acme", "max", None, T0 + H, "webhook", "wh_2", T0 + H, events=[ev])
    calls = [(CALL in s, auto) for s, auto in log.seen]
    assert calls == [(True, True), (True, False), (False, False)]
    changes, _ = await store.list_changes(customer="acme")
    assert len(changes) == 2


async def test_an_answer_lost_after_the_commit_is_retried_into_the_same_row(
    store: Store, log: Statements
) -> None:
    log.lose_answers = 1
    result = await store.submit_change("acme", "pro", None, T0, "webhook", "wh_1", T0)
    # the first call committed and its answer was lost; the retry finds that row by its
    # webhook id, under the id this submit gave it: stored once, and reported as created by
    # this call (so the webhook still answers 202 and the worker is woken)
    assert [CALL in s for s, _ in log.seen] == [True, True]
    assert result.created is True
    rows = await _rows(store, "wh_1")
    assert len(rows) == 1 and rows[0].id == result.change.id
    assert result.change.status is ChangeStatus.PENDING
    customer = await store.get_customer("acme")
    assert customer is not None
    assert customer.desired_change_id == result.change.id and customer.next_check_at == T0


async def test_a_fault_before_commit_without_a_source_id_is_retried_once_stored(
    store: Store, log: Statements
) -> None:
    log.lose_answers = 1
    result = await store.submit_change("acme", "pro", None, T0, "cli", None, T0)
    # in a transaction the fault came before COMMIT: that attempt was rolled back, and the
    # retry stored the request once
    assert [CALL in s for s, _ in log.seen] == [True, True]
    assert result.created is True
    changes, _ = await store.list_changes(customer="acme")
    assert [c.id for c in changes] == [result.change.id]


async def test_downgrading_revision_0003_drops_the_function(store: Store) -> None:
    async def count(conn: Any) -> int:
        q = sa.text("SELECT count(*) FROM pg_proc WHERE proname = 'reconciler_submit_change'")
        return int((await conn.execute(q)).scalar_one())

    assert await store.db.tx(count, write=False) == 1
    cfg = store.db.alembic_config()

    def down(sync_conn: Any) -> None:
        cfg.attributes["connection"] = sync_conn
        command.downgrade(cfg, "0002")

    async with store.db.pg.connect() as conn:
        await conn.run_sync(down)
        await conn.commit()
    assert await store.db.tx(count, write=False) == 0
    assert await store.is_migrated() is False
    await store.migrate()
    assert await store.db.tx(count, write=False) == 1
    result = await store.submit_change("acme", "pro", None, T0, "webhook", "wh_1", T0)
    assert result.created is True
