"""The usage proof's comparison (pure)."""

from __future__ import annotations

from reconciler.engine.proofs import usage_lost


def test_only_a_usage_that_went_down_or_vanished_is_lost() -> None:
    before = {
        "api_credits": {"usage": 3, "balance": 49_997},
        "seats": {"usage": "2.5"},
        "storage": {"usage": None},  # nothing measured before: nothing to lose
        "exports": None,
    }
    after = {
        "api_credits": {"usage": 3, "balance": 549_997},  # kept, balance grew
        "seats": {"usage": "2.4"},
        "storage": {"usage": 0},
        "exports": {"usage": 0},
    }
    assert usage_lost(before, after) == ["seats: usage 2.5 -> 2.4"]
    assert usage_lost({"api_credits": {"usage": 3}}, {"api_credits": {"usage": None}}) == [
        "api_credits: usage 3 -> None"
    ]
    assert usage_lost({"api_credits": {"usage": 3}}, {"api_credits": {"usage": 4}}) == []
