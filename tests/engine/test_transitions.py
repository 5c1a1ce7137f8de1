"""The status a pass leaves a change in, and when it is looked at next (pure)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from reconciler.domain.model import Direction, Timing
from reconciler.domain.planner import PlanResult, State
from reconciler.engine.transitions import AFTER_BOUNDARY, RETRY_MAX, backoff, status_after
from reconciler.store.types import ChangeRecord, ChangeSource, ChangeStatus

NOW = datetime(2026, 12, 7, 3, 0, tzinfo=UTC)
BOUNDARY = datetime(2027, 1, 1, tzinfo=UTC)


def change(timing: Timing | None, attempts: int = 0) -> ChangeRecord:
    return ChangeRecord(
        "chg", "acme", None, "starter", None, NOW, NOW, ChangeSource.WEBHOOK, None,
        ChangeStatus.PENDING, None, timing, None, None, None, None, attempts, None, NOW,
    )  # fmt: skip


def result(
    state: State,
    timing: Timing | None,
    converges_at: datetime | None = None,
    next_check_at: datetime | None = None,
) -> PlanResult:
    return PlanResult(
        state, (), Direction.UPGRADE, timing, None, "", None, converges_at, None,
        next_check_at=next_check_at,
    )  # fmt: skip


def test_backoff_doubles_from_five_seconds_to_half_an_hour() -> None:
    assert [backoff(n).total_seconds() for n in range(0, 5)] == [5, 5, 10, 20, 40]
    assert backoff(12) == RETRY_MAX and backoff(10_000) == RETRY_MAX


def test_converged_is_looked_at_again_only_when_something_changes() -> None:
    assert status_after(result(State.CONVERGED, None), change(None), NOW) == (
        ChangeStatus.CONVERGED,
        None,
    )


@pytest.mark.parametrize(
    ("timing", "status"),
    [(Timing.IMMEDIATE, ChangeStatus.APPLIED), (Timing.NEXT_BILLING_CYCLE, ChangeStatus.SCHEDULED)],
)
def test_waiting_is_looked_at_just_after_it_converges(timing: Timing, status: ChangeStatus) -> None:
    got = status_after(result(State.WAITING, timing, converges_at=BOUNDARY), change(None), NOW)
    assert got == (status, BOUNDARY + AFTER_BOUNDARY)
    # the change's own timing when the result names none; an earlier check wins
    early = NOW + timedelta(days=3)
    got = status_after(
        result(State.WAITING, None, converges_at=BOUNDARY, next_check_at=early), change(timing), NOW
    )
    assert got == (status, early + AFTER_BOUNDARY)
    # a time already past is looked at now
    past = NOW - timedelta(days=1)
    assert status_after(result(State.WAITING, timing, converges_at=past), change(None), NOW)[1] == (
        NOW + AFTER_BOUNDARY
    )


def test_still_acting_after_the_steps_comes_back_after_a_backoff() -> None:
    got = status_after(result(State.ACTING, None), change(None, attempts=2), NOW)
    assert got == (ChangeStatus.PENDING, NOW + timedelta(seconds=20))
