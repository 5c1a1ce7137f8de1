"""The declarative change policy: decisions, rule order, guards, errors with lines, explain."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from reconciler.domain.model import Direction, Timing
from reconciler.domain.policy import Decision, Policy, PolicyError, UnrankedPlanError

EXAMPLE = Path(__file__).parents[2] / "config" / "policy.example.yaml"

D = Direction
T = Timing

BASE = """\
ladder: [free, starter, pro]
defaults:
  upgrade: immediate
  downgrade: next_billing_cycle
  lateral: next_billing_cycle
"""


def policy(text: str) -> Policy:
    return Policy.from_yaml(text, source="test.yaml")


def test_example_file_loads_and_validates_against_the_demo_plans() -> None:
    p = Policy.from_yaml(EXAMPLE.read_text(), source=str(EXAMPLE))
    warnings = p.validate_plans({"free", "starter", "pro"})
    assert len(warnings) == 1 and "legacy_*" in warnings[0]
    assert p.ladder == (("free",), ("starter",), ("pro",))


@pytest.mark.parametrize(
    ("src", "dst", "direction", "timing", "rule"),
    [
        ("free", "starter", D.UPGRADE, T.IMMEDIATE, "defaults.upgrade"),
        ("free", "pro", D.UPGRADE, T.IMMEDIATE, "defaults.upgrade"),
        ("starter", "pro", D.UPGRADE, T.IMMEDIATE, "defaults.upgrade"),
        ("starter", "free", D.DOWNGRADE, T.NEXT_BILLING_CYCLE, "rules[2] (downgrades at the"),
        ("pro", "starter", D.DOWNGRADE, T.NEXT_BILLING_CYCLE, "rules[0] (leaving pro"),
        ("pro", "free", D.DOWNGRADE, T.NEXT_BILLING_CYCLE, "rules[0] (leaving pro"),
        ("free", "legacy_basic", D.LATERAL, T.ILLEGAL, "rules[1] (legacy plans"),
        ("pro", "pro", D.NOOP, T.IMMEDIATE, "same plan"),
    ],
)
def test_example_policy_decisions(
    src: str, dst: str, direction: Direction, timing: Timing, rule: str
) -> None:
    p = Policy.from_yaml(EXAMPLE.read_text())
    d = p.decide(src, dst)
    assert (d.direction, d.timing) == (direction, timing)
    assert d.rule.startswith(rule)
    assert d.guard is None


def test_defaults_only_and_reason_text() -> None:
    p = policy(BASE)
    d = p.decide("free", "pro")
    assert d == Decision(D.UPGRADE, T.IMMEDIATE, "defaults.upgrade", d.reason)
    assert d.reason == "free -> pro is an upgrade (rank 0 -> 2)"
    assert p.decide("pro", "free").rule == "defaults.downgrade"


def test_omitted_defaults_use_builtin_timings() -> None:
    p = policy("ladder: [a, b]\n")
    assert p.decide("a", "b").timing is T.IMMEDIATE
    assert p.decide("b", "a").timing is T.NEXT_BILLING_CYCLE
    p2 = policy("ladder: [a, b]\ndefaults:\n  downgrade: immediate\n")
    assert p2.decide("b", "a").timing is T.IMMEDIATE
    assert p2.decide("a", "b").timing is T.IMMEDIATE


def test_first_match_wins() -> None:
    p = policy(
        BASE
        + """\
rules:
  - from: starter
    to: free
    timing: illegal
  - direction: downgrade
    timing: immediate
"""
    )
    assert p.decide("starter", "free").timing is T.ILLEGAL
    assert p.decide("starter", "free").rule == "rules[0] (from starter to free)"
    assert p.decide("pro", "free").timing is T.IMMEDIATE
    assert p.decide("pro", "free").rule == "rules[1] (direction downgrade)"
    # reordering changes the outcome
    p2 = policy(
        BASE
        + """\
rules:
  - direction: downgrade
    timing: immediate
  - from: starter
    to: free
    timing: illegal
"""
    )
    assert p2.decide("starter", "free").timing is T.IMMEDIATE


def test_wildcards_globs_and_lists() -> None:
    p = policy(
        """\
ladder: [free, [starter, starter_annual], pro, pro_plus]
rules:
  - from: [pro, pro_plus]
    to: "*"
    direction: [downgrade, lateral]
    timing: illegal
  - from: "starter*"
    to: "pro*"
    timing: next_billing_cycle
  - from: "*"
    to: "*"
    timing: immediate
"""
    )
    assert p.decide("pro_plus", "free").timing is T.ILLEGAL
    assert p.decide("pro", "pro_plus").timing is T.IMMEDIATE  # upgrade: rule 0 skipped
    assert p.decide("starter_annual", "pro_plus").rule == "rules[1] (from starter* to pro*)"
    assert p.decide("free", "starter").rule == "rules[2] (from * to *)"


def test_shared_rung_is_lateral() -> None:
    p = policy("ladder: [free, [starter, starter_annual], pro]\n")
    d = p.decide("starter", "starter_annual")
    assert (d.direction, d.timing, d.rule) == (D.LATERAL, T.NEXT_BILLING_CYCLE, "defaults.lateral")
    assert p.decide("starter_annual", "pro").direction is D.UPGRADE
    assert p.rank("starter_annual") == p.rank("starter") == 1


def test_same_key_versions() -> None:
    p = policy(BASE + "  unranked: error\n")
    assert p.decide("pro", "pro", from_version=2, to_version=2).direction is D.NOOP
    assert p.decide("pro", "pro", from_version=None, to_version=3).direction is D.NOOP
    d = p.decide("pro", "pro", from_version=2, to_version=3)
    assert (d.direction, d.timing, d.rule) == (D.LATERAL, T.NEXT_BILLING_CYCLE, "defaults.lateral")
    # a new version of a plan outside the ladder is lateral too: no rank needed
    d = p.decide("custom", "custom", from_version=1, to_version=2)
    assert (d.direction, d.timing) == (D.LATERAL, T.NEXT_BILLING_CYCLE)
    # and a lateral rule can catch version moves
    p2 = policy(BASE + "rules:\n  - direction: lateral\n    timing: immediate\n")
    assert p2.decide("pro", "pro", from_version=1, to_version=2).timing is T.IMMEDIATE


def test_unranked_plan_is_an_error_unless_named_or_defaulted() -> None:
    p = policy(BASE + "rules:\n  - direction: downgrade\n    timing: immediate\n")
    with pytest.raises(UnrankedPlanError, match="'enterprise' not in the ladder") as ei:
        p.decide("pro", "enterprise")
    assert str(ei.value).startswith("test.yaml: ")
    # '*' covers ladder plans only
    p_star = policy(BASE + "rules:\n  - from: pro\n    to: '*'\n    timing: illegal\n")
    with pytest.raises(UnrankedPlanError):
        p_star.decide("pro", "enterprise")
    # a rule naming it (literal or glob) decides
    p_named = policy(BASE + "rules:\n  - to: [enterprise, 'ent_*']\n    timing: immediate\n")
    d = p_named.decide("pro", "enterprise")
    assert (d.direction, d.timing) == (D.LATERAL, T.IMMEDIATE)
    assert p_named.decide("free", "ent_x").timing is T.IMMEDIATE
    # both sides must match: 'from' omitted is '*', which does not cover an unranked source
    with pytest.raises(UnrankedPlanError, match="'custom' and 'enterprise'"):
        p_named.decide("custom", "enterprise")
    # defaults.unranked decides what no rule names
    p_def = policy(BASE + "  unranked: next_billing_cycle\n")
    d = p_def.decide("enterprise", "free")
    assert (d.direction, d.timing, d.rule) == (
        D.LATERAL,
        T.NEXT_BILLING_CYCLE,
        "defaults.unranked",
    )


def test_default_policy() -> None:
    p = Policy.default()
    assert p.ladder == ()
    d = p.decide("free", "pro")
    assert (d.direction, d.timing, d.rule) == (
        D.LATERAL,
        T.NEXT_BILLING_CYCLE,
        "defaults.unranked",
    )
    assert p.decide("pro", "pro", from_version=1, to_version=2).timing is T.NEXT_BILLING_CYCLE
    assert p.decide("pro", "pro").direction is D.NOOP


# --- guards ---------------------------------------------------------------------------------

USAGE = {"api_calls": Decimal(1200), "seats": Decimal(3)}
ALLOW = {"api_calls": Decimal(1000), "seats": Decimal(5)}


def guarded(mode: str, rules: str = "") -> Policy:
    return policy(
        "ladder: [free, starter, pro]\ndefaults:\n  downgrade: immediate\n"
        + rules
        + f"guards:\n  downgrade_below_usage: {mode}\n"
    )


def test_guard_refuse_names_feature_usage_and_allowance() -> None:
    d = guarded("refuse").decide(
        "pro", "starter", usage_by_feature=USAGE, target_allowance_by_feature=ALLOW
    )
    assert d.direction is D.DOWNGRADE
    assert d.timing is T.ILLEGAL
    assert "api_calls" in d.reason and "1200" in d.reason and "1000" in d.reason
    assert "seats" not in d.reason
    assert d.guard is not None and d.guard.startswith("downgrade_below_usage=refuse")
    assert d.rule == "defaults.downgrade"


def test_guard_defer_turns_immediate_into_next_billing_cycle() -> None:
    d = guarded("defer").decide(
        "pro", "starter", usage_by_feature=USAGE, target_allowance_by_feature=ALLOW
    )
    assert d.timing is T.NEXT_BILLING_CYCLE
    assert d.guard is not None and "api_calls: used 1200 this period, target allowance 1000" in (
        d.guard
    )


def test_guard_allow_leaves_timing_but_reports() -> None:
    d = guarded("allow").decide(
        "pro", "starter", usage_by_feature=USAGE, target_allowance_by_feature=ALLOW
    )
    assert d.timing is T.IMMEDIATE
    assert d.guard is not None and d.guard.startswith("downgrade_below_usage=allow")


def test_guard_default_is_defer() -> None:
    p = policy("ladder: [free, pro]\ndefaults:\n  downgrade: immediate\n")
    d = p.decide("pro", "free", usage_by_feature=USAGE, target_allowance_by_feature=ALLOW)
    assert d.timing is T.NEXT_BILLING_CYCLE


@pytest.mark.parametrize(
    ("usage", "allowance"),
    [
        ({"api_calls": Decimal(1000)}, {"api_calls": Decimal(1000)}),  # equal is not below
        ({"api_calls": Decimal(5000)}, {"other": Decimal(1)}),  # not in the target: not checked
        ({"api_calls": Decimal(5000)}, None),
        (None, {"api_calls": Decimal(1)}),
    ],
)
def test_guard_does_not_fire(
    usage: dict[str, Decimal] | None, allowance: dict[str, Decimal] | None
) -> None:
    d = guarded("refuse").decide(
        "pro", "starter", usage_by_feature=usage, target_allowance_by_feature=allowance
    )
    assert (d.timing, d.guard) == (T.IMMEDIATE, None)


def test_guard_only_concerns_immediate_changes_of_any_direction() -> None:
    # a change at the next billing cycle starts with fresh usage: the guard does not apply
    p = policy(BASE + "guards:\n  downgrade_below_usage: refuse\n")
    d = p.decide("pro", "free", usage_by_feature=USAGE, target_allowance_by_feature=ALLOW)
    assert (d.timing, d.guard) == (T.NEXT_BILLING_CYCLE, None)
    # an immediate rank upgrade that shrinks one feature's allowance is caught
    d = p.decide("free", "pro", usage_by_feature=USAGE, target_allowance_by_feature=ALLOW)
    assert d.timing is T.ILLEGAL
    # immediate by rule is guarded too
    p2 = guarded("defer", "rules:\n  - from: pro\n    timing: immediate\n")
    d = p2.decide("pro", "free", usage_by_feature=USAGE, target_allowance_by_feature=ALLOW)
    assert (d.timing, d.rule) == (T.NEXT_BILLING_CYCLE, "rules[0] (from pro to *)")


# --- errors with line numbers ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [
        ("ladder: [free, pro\n", 2, "invalid YAML"),
        ("ladder: [a]\ndefaults:\n  upgrade: immediate\n   downgrade: x\n", 4, "invalid YAML"),
        ("ladder: [a, b]\nrulez: []\n", 2, "unknown key 'rulez'.*did you mean 'rules'"),
        ("ladder: [a, b]\ndefaults:\n  upgrade: now\n", 3, "'now' is not one of immediate"),
        ("ladder: [a]\ndefaults:\n  upgrade: immediat\n", 3, "did you mean 'immediate'"),
        ("ladder: [a]\ndefaults:\n  sideways: immediate\n", 3, "unknown key 'sideways'"),
        ("ladder:\n  - free\n  - pro\n  - free\n", 4, "'free' appears twice.*line 2.*cycle"),
        ("ladder: [a, [b, a]]\n", 1, "'a' appears twice"),
        ("ladder: free\n", 1, "ladder must be a list"),
        ("ladder: [a, 'b*']\n", 1, "must be a plan key, not a glob"),
        ("ladder: [a, null]\n", 1, "must be a string, got nothing"),
        ("ladder: [a, []]\n", 1, "must not be an empty list"),
        ("ladder: [a]\nladder: [b]\n", 2, "duplicate key 'ladder'.*line 1"),
        ("ladder: [a]\nrules:\n  - from: a\n    to: b\n", 3, "rules\\[0\\] has no 'timing'"),
        (
            "ladder: [a]\nrules:\n  - timing: immediate\n  - to: b\n    timing: soon\n",
            5,
            "rules\\[1\\].timing: 'soon'",
        ),
        ("ladder: [a]\nrules:\n  - form: a\n    timing: illegal\n", 3, "did you mean 'from'"),
        ("ladder: [a]\nrules:\n  - direction: noop\n    timing: illegal\n", 3, "not one of"),
        ("ladder: [a]\nrules:\n  - direction: up\n    timing: illegal\n", 3, "upgrade"),
        ("ladder: [a]\nrules: {from: a}\n", 2, "rules must be a list"),
        ("ladder: [a]\nrules:\n  - a\n", 3, "rules\\[0\\] must be a mapping"),
        ("ladder: [a]\nguards:\n  downgrade_below_usage: warn\n", 3, "refuse, defer, allow"),
        ("ladder: [a]\nguards:\n  upgrade_above: allow\n", 3, "unknown key 'upgrade_above'"),
        ("version: 2\nladder: [a]\n", 1, "only version 1"),
        ("- a\n- b\n", 1, "the policy must be a mapping"),
        ("ladder: [a]\n---\nladder: [b]\n", 2, "invalid YAML"),
        ("ladder: [a]\ndefaults: {upgrade: [immediate]}\n", 2, "must be a string, got a list"),
    ],
)
def test_errors_name_file_and_line(text: str, line: int, message: str) -> None:
    with pytest.raises(PolicyError, match=message) as ei:
        Policy.from_yaml(text, source="conf/policy.yaml")
    assert ei.value.line == line
    assert ei.value.source == "conf/policy.yaml"
    assert str(ei.value).startswith(f"conf/policy.yaml:{line}: ")


def test_empty_policy_is_an_error() -> None:
    with pytest.raises(PolicyError, match="empty") as ei:
        Policy.from_yaml("# nothing\n", source="p.yaml")
    assert str(ei.value).startswith("p.yaml: ")


def test_rules_may_be_empty() -> None:
    assert policy("ladder: [a]\nrules:\n").rules == ()
    assert policy("ladder: [a]\nrules: []\n").rules == ()


def test_validate_plans_names_the_line() -> None:
    text = """\
ladder:
  - free
  - starter
  - pro
rules:
  - from: pro
    to: enterprize
    timing: illegal
  - to: ent_*
    timing: illegal
"""
    p = policy(text)
    with pytest.raises(PolicyError, match="'starter', which is not a known plan") as ei:
        p.validate_plans({"free", "pro", "enterprise"})
    assert ei.value.line == 3
    with pytest.raises(PolicyError, match=r"'to: enterprize'.*did you mean 'enterprise'") as ei:
        p.validate_plans({"free", "starter", "pro", "enterprise"})
    assert ei.value.line == 6
    ok = policy(text.replace("enterprize", "enterprise"))
    warnings = ok.validate_plans({"free", "starter", "pro", "enterprise"})
    assert warnings == [
        "test.yaml:9: rules[1] (from * to ent_*): 'to: ent_*' matches no known plan"
    ]


# --- explain --------------------------------------------------------------------------------


def test_explain_lists_every_rule_and_the_decision() -> None:
    p = Policy.from_yaml(EXAMPLE.read_text(), source="policy.yaml")
    lines = p.explain("pro", "free")
    assert lines[0] == "change pro -> free (policy policy.yaml)"
    assert lines[1] == "rank pro=2 -> free=0: downgrade"
    assert lines[2].startswith(
        "rules[0] (leaving pro waits for the period end) at line 22: matched"
    )
    assert "not used" in lines[3] and "no match" in lines[3]
    assert "not used" in lines[4] and "(would match)" in lines[4]
    assert lines[-1].startswith(
        "decision: downgrade, next_billing_cycle by rules[0] (leaving pro waits"
    )
    assert lines[-3] == "plan record: billing_safe (defaults.plan_record)"
    assert lines[-2].startswith("addons: refuse (")
    assert len(lines) == 8


def test_explain_defaults_guard_and_errors() -> None:
    p = guarded("defer", "rules:\n  - from: free\n    timing: illegal\n")
    lines = p.explain("pro", "free", usage_by_feature=USAGE, target_allowance_by_feature=ALLOW)
    assert (
        lines[2]
        == "rules[0] (from free to *) at line 5: no match: from 'pro' does not match 'free'"
    )
    assert lines[3] == "no rule matched: defaults.downgrade = immediate"
    assert lines[4].startswith("guard downgrade_below_usage=defer: api_calls: used 1200")
    assert lines[4].endswith("-> next_billing_cycle")
    assert lines[5] == "plan record: billing_safe (defaults.plan_record)"
    assert lines[6].startswith("addons: refuse")
    assert lines[7].startswith("decision: downgrade, next_billing_cycle by defaults.downgrade")
    err = p.explain("pro", "enterprise")
    assert err[-1].startswith("decision: error: plan 'enterprise' not in the ladder")
    noop = p.explain("pro", "pro", from_version=1, to_version=1)
    assert noop[-1] == "decision: noop, immediate by same plan: already on pro@v1"


def test_explain_and_decide_agree() -> None:
    p = Policy.from_yaml(EXAMPLE.read_text())
    for a in ("free", "starter", "pro"):
        for b in ("free", "starter", "pro"):
            d = p.decide(a, b)
            assert p.explain(a, b)[-1].startswith(
                f"decision: {d.direction.value}, {d.timing.value} by {d.rule}"
            )


# --- properties -----------------------------------------------------------------------------

keys = st.text("abcdefgh", min_size=1, max_size=4)


@given(ladder=st.lists(keys, min_size=2, max_size=8, unique=True), data=st.data())
def test_direction_follows_rank_and_is_antisymmetric(
    ladder: list[str], data: st.DataObject
) -> None:
    p = policy("ladder: [" + ", ".join(ladder) + "]\n")
    a = data.draw(st.sampled_from(ladder))
    b = data.draw(st.sampled_from(ladder))
    d1, d2 = p.decide(a, b), p.decide(b, a)
    ia, ib = ladder.index(a), ladder.index(b)
    if ia == ib:
        assert d1.direction is d2.direction is D.NOOP
    elif ia < ib:
        assert (d1.direction, d2.direction) == (D.UPGRADE, D.DOWNGRADE)
        assert (d1.timing, d2.timing) == (T.IMMEDIATE, T.NEXT_BILLING_CYCLE)
    else:
        assert (d1.direction, d2.direction) == (D.DOWNGRADE, D.UPGRADE)


@given(
    usage=st.dictionaries(st.sampled_from("xyz"), st.integers(0, 100).map(Decimal)),
    allowance=st.dictionaries(st.sampled_from("xyz"), st.integers(0, 100).map(Decimal)),
)
def test_refuse_guard_fires_exactly_when_some_allowance_is_below_usage(
    usage: dict[str, Decimal], allowance: dict[str, Decimal]
) -> None:
    d = guarded("refuse").decide(
        "pro", "free", usage_by_feature=usage, target_allowance_by_feature=allowance
    )
    short = any(f in allowance and allowance[f] < u for f, u in usage.items())
    assert (d.timing is T.ILLEGAL) == short
    assert (d.guard is not None) == short


def test_plan_record_default_per_rule_and_errors() -> None:
    from reconciler.domain.policy import PlanRecordMode

    assert Policy.default().decide("a", "b").plan_record is PlanRecordMode.BILLING_SAFE
    text = (
        "ladder: [free, starter, pro]\n"
        "defaults:\n  plan_record: next_boundary\n"
        "rules:\n"
        "  - name: pro is billed safely\n    to: pro\n    timing: immediate\n"
        "    plan_record: billing_safe\n"
    )
    p = Policy.from_yaml(text)
    assert p.decide("free", "starter").plan_record is PlanRecordMode.NEXT_BOUNDARY
    assert p.decide("free", "pro").plan_record is PlanRecordMode.BILLING_SAFE
    assert p.decide("pro", "pro").plan_record is PlanRecordMode.NEXT_BOUNDARY  # same plan
    assert (
        p.explain("free", "pro")[-3]
        == "plan record: billing_safe (rules[0] (pro is billed safely))"
    )
    assert p.explain("free", "starter")[-3] == "plan record: next_boundary (defaults.plan_record)"
    with pytest.raises(PolicyError) as e:
        Policy.from_yaml("ladder: [a]\ndefaults:\n  plan_record: billing_saf\n", source="p.yaml")
    assert str(e.value) == (
        "p.yaml:3: defaults.plan_record: 'billing_saf' is not one of billing_safe, "
        "next_boundary; did you mean 'billing_safe'?"
    )
    with pytest.raises(PolicyError, match=r"rules\[0\]\.plan_record"):
        Policy.from_yaml("ladder: [a]\nrules:\n  - timing: immediate\n    plan_record: later\n")


# --- addons ---------------------------------------------------------------------------------


def test_addons_setting_parsed_validated_and_explained() -> None:
    from reconciler.domain.addons import AddonMode

    assert Policy.default().addons is AddonMode.REFUSE
    assert Policy.from_yaml("ladder: [free, pro]\n").addons is AddonMode.REFUSE
    p = Policy.from_yaml("ladder: [free, pro]\naddons: change_resets_usage\n")
    assert p.addons is AddonMode.CHANGE_RESETS_USAGE
    lines = p.explain("free", "pro")
    assert lines[-2].startswith("addons: change_resets_usage (")
    assert "usage restarts from 0" in lines[-2]
    with pytest.raises(PolicyError) as err:
        Policy.from_yaml("ladder: [free, pro]\naddons: detach\n")
    assert err.value.line == 2 and "addons" in str(err.value)
    with pytest.raises(PolicyError) as err:
        Policy.from_yaml("ladder: [free, pro]\naddon: refuse\n")
    assert "addons" in str(err.value)  # did-you-mean hint
