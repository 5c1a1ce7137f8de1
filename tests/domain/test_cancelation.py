"""``ended_at``: a subscription's view once its end is set (``reconciler/domain/cancelation.py``).
The engine-level check against the emulator's own view is tests/engine/test_change_answer.py."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

from reconciler.domain.cancelation import ended_at

from .omodel import PRO, STARTER, T0, add_months, subscription

END = add_months(T0, 1)


def test_every_cadence_is_cut_at_the_end() -> None:
    sub = subscription(STARTER, now=T0 + timedelta(days=9))
    assert sub.current_period is not None and sub.current_period[1] == END
    cut = ended_at(sub, END)
    assert cut is not None
    assert cut.active_to == END and cut.current_period == sub.current_period
    (phase,) = cut.phases
    assert phase.active_to == END
    assert [i.active_to for i in phase.items] == [END] * len(phase.items)
    assert all(i.entitlement.active_to == END for i in phase.items if i.entitlement is not None)
    assert [v.active_to for vs in phase.timelines.values() for v in vs] == [END] * len(phase.items)
    # what the cut does not touch stays as it was
    assert [i.key for i in phase.items] == [i.key for i in sub.phases[0].items]
    assert cut.plan == sub.plan and cut.status == sub.status and cut.id == sub.id


def test_an_earlier_end_of_an_item_stays_and_a_period_past_the_end_is_cut() -> None:
    sub = subscription(PRO, now=T0 + timedelta(days=40))  # second period: [T0+1m, T0+2m)
    phase = sub.phases[0]
    ended = T0 + timedelta(days=3)
    first = replace(phase.items[0], active_to=ended)
    sub = replace(
        sub,
        phases=(replace(phase, items=(first, *phase.items[1:]), timelines={first.key: (first,)}),),
    )
    end = T0 + timedelta(days=45)
    cut = ended_at(sub, end)
    assert cut is not None
    assert cut.phases[0].items[0].active_to == ended  # ended before: unchanged
    assert cut.phases[0].items[1].active_to == end
    assert sub.current_period is not None and cut.current_period == (sub.current_period[0], end)


def test_what_is_not_predicted_is_refused() -> None:
    sub = subscription(STARTER)
    # an end at or before the start, or after an end already set (only ever moved earlier)
    assert ended_at(sub, sub.active_from) is None
    assert ended_at(replace(sub, active_to=END), END + timedelta(days=1)) is None
    # a phase, or an item version, that starts at or after the end
    later = replace(sub.phases[0], key="later", active_from=END)
    assert ended_at(replace(sub, phases=(*sub.phases, later)), END) is None
    phase = sub.phases[0]
    late = replace(phase.items[0], active_from=END)
    sub_late = replace(sub, phases=(replace(phase, items=(late, *phase.items[1:])),))
    assert ended_at(sub_late, END) is None
