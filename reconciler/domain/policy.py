"""The declarative change policy: is a plan change an upgrade, and when does it take effect?

A policy is a YAML document (format in ``docs/POLICY.md``; example in
``config/policy.example.yaml``) with four parts:

* ``ladder`` — plan keys, lowest rank first. An entry may be a list of keys that share a rank.
* ``defaults`` — timing per direction (``upgrade``, ``downgrade``, ``lateral``) and for pairs
  involving a plan outside the ladder (``unranked``; ``error`` by default).
* ``rules`` — ordered; the first rule that matches decides the timing (Kill Bill's
  ``changePolicy`` cases, first match wins, plus rank-aware ``direction`` matching; see
  ``/work/shared/reference/plan-change-anchors.md`` §2.3 and §4 item 3).
* ``guards`` — ``downgrade_below_usage``: what happens to an *immediate* change whose target
  allowance for a metered feature is below the usage already consumed this period.

Timings are OpenMeter's two change timings (``openmeter/subscription/timing.go``
``TimingImmediate``, ``TimingNextBillingCycle``) plus Kill Bill's ``ILLEGAL``.

Pure code: the caller reads the file and passes its text; nothing here does I/O.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from enum import StrEnum
from fnmatch import fnmatchcase

import yaml

from reconciler.domain.addons import AddonMode
from reconciler.domain.convergence import PlanRecordMode
from reconciler.domain.model import Direction, Timing

__all__ = [
    "Decision",
    "GuardMode",
    "PlanRecordMode",
    "Policy",
    "PolicyError",
    "Rule",
    "UnrankedPlanError",
]

WILDCARD = "*"
_GLOB_CHARS = frozenset("*?[")
_TIMINGS = tuple(t.value for t in Timing)
_RULE_DIRECTIONS = (Direction.UPGRADE, Direction.DOWNGRADE, Direction.LATERAL)


class PolicyError(ValueError):
    """A policy that cannot be loaded or applied. ``str()`` is ``source:line: message``."""

    def __init__(self, message: str, *, source: str | None = None, line: int | None = None):
        self.message = message
        self.source = source
        self.line = line
        where = ""
        if source is not None:
            where = f"{source}:{line}: " if line is not None else f"{source}: "
        super().__init__(f"{where}{message}")


class UnrankedPlanError(PolicyError):
    """A change involving a plan outside the ladder that no rule names, with no
    ``defaults.unranked``."""


class GuardMode(StrEnum):
    REFUSE = "refuse"
    DEFER = "defer"
    ALLOW = "allow"


@dataclass(frozen=True, slots=True)
class Decision:
    """What the policy says about one change.

    ``rule`` identifies what decided the timing (``"rules[0] (from pro to *)"``,
    ``"defaults.upgrade"``, ``"same plan"``); ``guard`` describes the guard that fired
    (``...=defer``/``=refuse`` changed the timing, ``...=allow`` left it unchanged), ``None``
    when none did.
    """

    direction: Direction
    timing: Timing
    rule: str
    reason: str
    guard: str | None = None
    plan_record: PlanRecordMode = PlanRecordMode.BILLING_SAFE

    @property
    def allowed(self) -> bool:
        return self.timing is not Timing.ILLEGAL


def _is_glob(pattern: str) -> bool:
    return any(c in _GLOB_CHARS for c in pattern)


@dataclass(frozen=True, slots=True)
class Rule:
    """One entry of ``rules``. ``None`` for a matcher means "not constrained"."""

    index: int
    line: int
    timing: Timing
    from_patterns: tuple[str, ...] | None = None
    to_patterns: tuple[str, ...] | None = None
    directions: tuple[Direction, ...] | None = None
    name: str | None = None
    reason: str | None = None
    plan_record: PlanRecordMode | None = None  # None: defaults.plan_record

    @property
    def id(self) -> str:
        if self.name:
            return f"rules[{self.index}] ({self.name})"
        parts: list[str] = []
        if self.from_patterns is not None or self.to_patterns is not None:
            parts.append(
                f"from {'|'.join(self.from_patterns or (WILDCARD,))} "
                f"to {'|'.join(self.to_patterns or (WILDCARD,))}"
            )
        if self.directions is not None:
            parts.append(f"direction {'|'.join(d.value for d in self.directions)}")
        return f"rules[{self.index}] ({', '.join(parts) or 'any change'})"

    @staticmethod
    def _side(
        label: str, patterns: tuple[str, ...] | None, key: str, ranked: bool
    ) -> tuple[bool, str]:
        if patterns is None:
            patterns = (WILDCARD,)
        for p in patterns:
            if p == WILDCARD:
                if ranked:
                    return True, f"{label} '{key}' matches '*'"
                continue
            if fnmatchcase(key, p):
                return True, f"{label} '{key}' matches '{p}'"
        shown = "|".join(patterns)
        if not ranked and WILDCARD in patterns:
            return False, f"{label} '{key}' is not in the ladder and '*' covers ladder plans only"
        return False, f"{label} '{key}' does not match '{shown}'"

    def match(
        self,
        from_key: str,
        to_key: str,
        direction: Direction | None,
        from_ranked: bool,
        to_ranked: bool,
    ) -> tuple[bool, str]:
        """Whether this rule applies, and why (or why not).

        ``direction`` is ``None`` when a plan is outside the ladder: then ``direction``
        rules never match and a bare ``*`` does not cover that plan; a literal key or a glob
        such as ``legacy_*`` does.
        """
        why: list[str] = []
        for label, patterns, key, ranked in (
            ("from", self.from_patterns, from_key, from_ranked),
            ("to", self.to_patterns, to_key, to_ranked),
        ):
            ok, text = self._side(label, patterns, key, ranked)
            if not ok:
                return False, text
            if patterns is not None:
                why.append(text)
        if self.directions is not None:
            allowed = "|".join(d.value for d in self.directions)
            if direction is None:
                return (
                    False,
                    f"direction unknown (a plan is outside the ladder), rule wants {allowed}",
                )
            if direction not in self.directions:
                return False, f"direction {direction.value} is not {allowed}"
            why.append(f"direction {direction.value} is {allowed}")
        return True, "; ".join(why) or "matches any change"


# --- YAML loading with line numbers ---------------------------------------------------------


def _line(node: yaml.Node) -> int:
    return int(node.start_mark.line) + 1


class _Loader:
    """Walks PyYAML's node graph so every error can name its line."""

    def __init__(self, source: str) -> None:
        self.source = source

    def error(self, node: yaml.Node | None, message: str) -> PolicyError:
        return PolicyError(message, source=self.source, line=_line(node) if node else None)

    def mapping(
        self, node: yaml.Node, what: str, allowed: Sequence[str]
    ) -> dict[str, tuple[yaml.Node, yaml.Node]]:
        if not isinstance(node, yaml.MappingNode):
            raise self.error(node, f"{what} must be a mapping, got {_kind(node)}")
        out: dict[str, tuple[yaml.Node, yaml.Node]] = {}
        for k, v in node.value:
            key = self.string(k, f"a key in {what}")
            if key in out:
                raise self.error(
                    k, f"duplicate key '{key}' in {what} (first at line {_line(out[key][0])})"
                )
            if key not in allowed:
                hint = difflib.get_close_matches(key, allowed, n=1)
                did = f"; did you mean '{hint[0]}'?" if hint else ""
                raise self.error(
                    k, f"unknown key '{key}' in {what} (allowed: {', '.join(allowed)}){did}"
                )
            out[key] = (k, v)
        return out

    def string(self, node: yaml.Node, what: str) -> str:
        if not isinstance(node, yaml.ScalarNode) or node.tag not in (
            "tag:yaml.org,2002:str",
            "tag:yaml.org,2002:int",
        ):
            raise self.error(node, f"{what} must be a string, got {_kind(node)}")
        value = str(node.value)
        if not value.strip():
            raise self.error(node, f"{what} must not be empty")
        return value

    def strings(self, node: yaml.Node, what: str) -> list[tuple[str, yaml.Node]]:
        """A string or a non-empty list of strings."""
        if isinstance(node, yaml.SequenceNode):
            if not node.value:
                raise self.error(node, f"{what} must not be an empty list")
            return [(self.string(n, what), n) for n in node.value]
        return [(self.string(node, what), node)]

    def choice(self, node: yaml.Node, what: str, allowed: Sequence[str]) -> str:
        value = self.string(node, what)
        if value not in allowed:
            hint = difflib.get_close_matches(value, allowed, n=1)
            did = f"; did you mean '{hint[0]}'?" if hint else ""
            raise self.error(node, f"{what}: '{value}' is not one of {', '.join(allowed)}{did}")
        return value


def _kind(node: yaml.Node) -> str:
    if isinstance(node, yaml.MappingNode):
        return "a mapping"
    if isinstance(node, yaml.SequenceNode):
        return "a list"
    tag = str(node.tag).rsplit(":", 1)[-1]
    if tag == "null":
        return "nothing (null)"
    return f"{tag} {node.value!r}"


_TOP_KEYS = ("version", "ladder", "defaults", "rules", "guards", "addons")
_DEFAULT_KEYS = ("upgrade", "downgrade", "lateral", "unranked", "plan_record")
_RULE_KEYS = ("name", "from", "to", "direction", "timing", "reason", "plan_record")
_PLAN_RECORD_CHOICES = tuple(m.value for m in PlanRecordMode)
_GUARD_KEYS = ("downgrade_below_usage",)
_UNRANKED_CHOICES = (*_TIMINGS, "error")

_BUILTIN_DEFAULTS: Mapping[Direction, Timing] = {
    Direction.UPGRADE: Timing.IMMEDIATE,
    Direction.DOWNGRADE: Timing.NEXT_BILLING_CYCLE,
    Direction.LATERAL: Timing.NEXT_BILLING_CYCLE,
}


def addons_line(mode: AddonMode) -> str:
    """The ``explain`` line of the ``addons`` setting."""
    if mode is AddonMode.REFUSE:
        return (
            "addons: refuse (an immediate change of a subscription with add-ons is refused: "
            "OpenMeter does not edit such subscriptions, and a plan change would reset usage)"
        )
    return (
        "addons: change_resets_usage (an immediate change of a subscription with add-ons is "
        "made by a plan change now: usage restarts from 0, the add-ons are not carried over)"
    )


# --- the policy -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Policy:
    """A loaded change policy. Build with :meth:`from_yaml` or :meth:`default`."""

    ladder: tuple[tuple[str, ...], ...] = ()
    defaults: Mapping[Direction, Timing] = field(default_factory=lambda: dict(_BUILTIN_DEFAULTS))
    unranked: Timing | None = None  # None: a change involving an unranked plan is an error
    rules: tuple[Rule, ...] = ()
    downgrade_below_usage: GuardMode = GuardMode.DEFER
    plan_record: PlanRecordMode = PlanRecordMode.BILLING_SAFE
    # a change that would edit a subscription with add-ons (``reconciler/domain/addons.py``)
    addons: AddonMode = AddonMode.REFUSE
    source: str = "<default>"
    ladder_lines: Mapping[str, int] = field(default_factory=dict)

    # -- construction ------------------------------------------------------------------------

    @classmethod
    def default(cls) -> Policy:
        """The policy used when none is configured.

        No ladder, so no plan has a rank: every change between two different plan keys is
        ``unranked`` and takes effect at the next billing cycle (the reconciler cannot tell an
        upgrade from a downgrade, so it never takes allowance away mid-period). Moving to
        another version of the same plan is lateral (next billing cycle). The usage guard
        defers. Configure a ladder to get immediate upgrades.
        """
        return cls(unranked=Timing.NEXT_BILLING_CYCLE, source="<default policy>")

    @classmethod
    def from_yaml(cls, text: str, source: str = "policy.yaml") -> Policy:
        """Parse and validate a policy document. Raises :class:`PolicyError` with the line."""
        ld = _Loader(source)
        try:
            root = yaml.compose(text, Loader=yaml.SafeLoader)
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark or exc.context_mark
            line = int(mark.line) + 1 if mark is not None else None
            problem = exc.problem or exc.context or "invalid YAML"
            raise PolicyError(f"invalid YAML: {problem}", source=source, line=line) from exc
        except yaml.YAMLError as exc:
            raise PolicyError(f"invalid YAML: {exc}", source=source) from exc
        if root is None:
            raise PolicyError(
                "the policy is empty (expected a mapping with 'ladder')", source=source
            )
        top = ld.mapping(root, "the policy", _TOP_KEYS)

        if "version" in top:
            vnode = top["version"][1]
            if not (isinstance(vnode, yaml.ScalarNode) and vnode.value == "1"):
                raise ld.error(vnode, "version: only version 1 is supported")

        ladder: list[tuple[str, ...]] = []
        ladder_lines: dict[str, int] = {}
        if "ladder" in top:
            lnode = top["ladder"][1]
            if not isinstance(lnode, yaml.SequenceNode):
                raise ld.error(lnode, f"ladder must be a list of plan keys, got {_kind(lnode)}")
            for entry in lnode.value:
                group: list[str] = []
                for key, knode in ld.strings(entry, "a ladder entry"):
                    if _is_glob(key):
                        raise ld.error(
                            knode, f"ladder entry '{key}' must be a plan key, not a glob"
                        )
                    if key in ladder_lines:
                        raise ld.error(
                            knode,
                            f"plan '{key}' appears twice in the ladder (first at line "
                            f"{ladder_lines[key]}): a plan would rank both above and below "
                            "another, a cycle; list each plan once (share a rank with [a, b])",
                        )
                    ladder_lines[key] = _line(knode)
                    group.append(key)
                ladder.append(tuple(group))

        defaults = dict(_BUILTIN_DEFAULTS)
        unranked: Timing | None = None
        plan_record = PlanRecordMode.BILLING_SAFE
        if "defaults" in top:
            dmap = ld.mapping(top["defaults"][1], "defaults", _DEFAULT_KEYS)
            for key, (_, vnode) in dmap.items():
                if key == "plan_record":
                    plan_record = PlanRecordMode(
                        ld.choice(vnode, "defaults.plan_record", _PLAN_RECORD_CHOICES)
                    )
                elif key == "unranked":
                    value = ld.choice(vnode, "defaults.unranked", _UNRANKED_CHOICES)
                    unranked = None if value == "error" else Timing(value)
                else:
                    defaults[Direction(key)] = Timing(ld.choice(vnode, f"defaults.{key}", _TIMINGS))

        rules: list[Rule] = []
        if "rules" in top:
            rnode = top["rules"][1]
            is_null = isinstance(rnode, yaml.ScalarNode) and rnode.tag.endswith(":null")
            if not is_null:
                if not isinstance(rnode, yaml.SequenceNode):
                    raise ld.error(rnode, f"rules must be a list, got {_kind(rnode)}")
                for i, item in enumerate(rnode.value):
                    rules.append(_load_rule(ld, i, item))

        guard = GuardMode.DEFER
        if "guards" in top:
            gmap = ld.mapping(top["guards"][1], "guards", _GUARD_KEYS)
            if "downgrade_below_usage" in gmap:
                guard = GuardMode(
                    ld.choice(
                        gmap["downgrade_below_usage"][1],
                        "guards.downgrade_below_usage",
                        tuple(g.value for g in GuardMode),
                    )
                )

        addons = AddonMode.REFUSE
        if "addons" in top:
            addons = AddonMode(
                ld.choice(top["addons"][1], "addons", tuple(m.value for m in AddonMode))
            )

        return cls(
            ladder=tuple(ladder),
            defaults=defaults,
            unranked=unranked,
            rules=tuple(rules),
            downgrade_below_usage=guard,
            plan_record=plan_record,
            addons=addons,
            source=source,
            ladder_lines=ladder_lines,
        )

    def validate_plans(self, known_keys: Iterable[str]) -> list[str]:
        """Start-up check against the plan keys that exist in OpenMeter.

        Raises :class:`PolicyError` (naming the line) for a ladder key or a literal rule key
        that is not a known plan. Returns warnings for globs that match no known plan.
        """
        known = set(known_keys)
        for key, line in self.ladder_lines.items():
            if key not in known:
                raise PolicyError(
                    f"ladder names plan '{key}', which is not a known plan{_hint(key, known)}",
                    source=self.source,
                    line=line,
                )
        warnings: list[str] = []
        for rule in self.rules:
            for side, patterns in (("from", rule.from_patterns), ("to", rule.to_patterns)):
                for p in patterns or ():
                    if p == WILDCARD:
                        continue
                    if not _is_glob(p) and p not in known:
                        raise PolicyError(
                            f"{rule.id}: '{side}: {p}' is not a known plan{_hint(p, known)}",
                            source=self.source,
                            line=rule.line,
                        )
                    if _is_glob(p) and not any(fnmatchcase(k, p) for k in known):
                        warnings.append(
                            f"{self.source}:{rule.line}: {rule.id}: '{side}: {p}' matches no "
                            "known plan"
                        )
        return warnings

    # -- decisions ---------------------------------------------------------------------------

    def rank(self, key: str) -> int | None:
        """0 for the lowest rung of the ladder; ``None`` for a plan outside it."""
        for i, group in enumerate(self.ladder):
            if key in group:
                return i
        return None

    def decide(
        self,
        from_key: str,
        to_key: str,
        *,
        from_version: int | None = None,
        to_version: int | None = None,
        usage_by_feature: Mapping[str, Decimal] | None = None,
        target_allowance_by_feature: Mapping[str, Decimal] | None = None,
    ) -> Decision:
        """Direction and timing of the change ``from_key`` → ``to_key``.

        Raises :class:`UnrankedPlanError` when a plan is outside the ladder, no rule names it
        and ``defaults.unranked`` is ``error``.
        """
        decision, _ = self._evaluate(
            from_key,
            to_key,
            from_version,
            to_version,
            usage_by_feature,
            target_allowance_by_feature,
        )
        if isinstance(decision, PolicyError):
            raise decision
        return decision

    def explain(
        self,
        from_key: str,
        to_key: str,
        *,
        from_version: int | None = None,
        to_version: int | None = None,
        usage_by_feature: Mapping[str, Decimal] | None = None,
        target_allowance_by_feature: Mapping[str, Decimal] | None = None,
    ) -> list[str]:
        """Every step of :meth:`decide` in order, ending with the decision (or the error)."""
        decision, trace = self._evaluate(
            from_key,
            to_key,
            from_version,
            to_version,
            usage_by_feature,
            target_allowance_by_feature,
        )
        trace.append(addons_line(self.addons))
        if isinstance(decision, PolicyError):
            trace.append(f"decision: error: {decision.message}")
        else:
            guard = f" [guard: {decision.guard}]" if decision.guard else ""
            trace.append(
                f"decision: {decision.direction.value}, {decision.timing.value} "
                f"by {decision.rule}: {decision.reason}{guard}"
            )
        return trace

    def _evaluate(
        self,
        from_key: str,
        to_key: str,
        from_version: int | None,
        to_version: int | None,
        usage: Mapping[str, Decimal] | None,
        allowance: Mapping[str, Decimal] | None,
    ) -> tuple[Decision | PolicyError, list[str]]:
        src = _ref(from_key, from_version)
        dst = _ref(to_key, to_version)
        trace: list[str] = [f"change {src} -> {dst} (policy {self.source})"]

        if from_key == to_key:
            if from_version is None or to_version is None or from_version == to_version:
                trace.append("same plan key and version: nothing to change, rules not consulted")
                trace.append(f"plan record: {self.plan_record.value} (defaults.plan_record)")
                return (
                    Decision(
                        Direction.NOOP,
                        Timing.IMMEDIATE,
                        "same plan",
                        f"already on {dst}",
                        plan_record=self.plan_record,
                    ),
                    trace,
                )
            direction: Direction | None = Direction.LATERAL
            rf = rt = self.rank(from_key)
            from_ranked = to_ranked = rf is not None
            trace.append(
                f"same plan key, version {from_version} -> {to_version}: lateral (same rank)"
            )
        else:
            rf, rt = self.rank(from_key), self.rank(to_key)
            from_ranked, to_ranked = rf is not None, rt is not None
            if rf is None or rt is None:
                direction = None
                outside = [k for k, r in ((from_key, rf), (to_key, rt)) if r is None]
                trace.append(
                    f"{' and '.join(repr(k) for k in outside)} not in the ladder: direction unknown"
                )
            else:
                direction = (
                    Direction.UPGRADE
                    if rt > rf
                    else Direction.DOWNGRADE
                    if rt < rf
                    else Direction.LATERAL
                )
                trace.append(f"rank {from_key}={rf} -> {to_key}={rt}: {direction.value}")

        reported = direction or Direction.LATERAL
        chosen: tuple[Timing, str, str] | None = None
        record = (self.plan_record, "defaults.plan_record")
        for rule in self.rules:
            ok, why = rule.match(from_key, to_key, direction, from_ranked, to_ranked)
            if chosen is None:
                verdict = f"matched ({why}) -> {rule.timing.value}" if ok else f"no match: {why}"
            else:
                verdict = f"not used, {chosen[1]} already decided" + (
                    " (would match)" if ok else f" (no match: {why})"
                )
            trace.append(f"{rule.id} at line {rule.line}: {verdict}")
            if ok and chosen is None:
                reason = rule.reason or f"{src} -> {dst}: {why}"
                chosen = (rule.timing, rule.id, reason)
                if rule.plan_record is not None:
                    record = (rule.plan_record, rule.id)

        if chosen is None:
            if direction is None:
                if self.unranked is None:
                    outside = [k for k in (from_key, to_key) if self.rank(k) is None]
                    err = UnrankedPlanError(
                        f"plan {' and '.join(repr(k) for k in outside)} not in the ladder and no "
                        "rule names it: add it to the ladder, add a rule naming it, or set "
                        "defaults.unranked",
                        source=self.source,
                    )
                    return err, trace
                chosen = (
                    self.unranked,
                    "defaults.unranked",
                    f"{src} -> {dst}: a plan is outside the ladder",
                )
            else:
                timing = self.defaults[direction]
                why = "same rank" if direction is Direction.LATERAL else f"rank {rf} -> {rt}"
                chosen = (
                    timing,
                    f"defaults.{direction.value}",
                    f"{src} -> {dst} is {'an' if direction is Direction.UPGRADE else 'a'} "
                    f"{direction.value} ({why})",
                )
            trace.append(f"no rule matched: {chosen[1]} = {chosen[0].value}")

        timing, rule_id, reason = chosen
        guard: str | None = None
        if timing is Timing.IMMEDIATE:
            short = _shortfalls(usage, allowance)
            mode = self.downgrade_below_usage
            if not short:
                if usage and allowance:
                    trace.append("guard downgrade_below_usage: usage within target allowance")
            else:
                detail = "; ".join(
                    f"{f}: used {_num(u)} this period, target allowance {_num(a)}"
                    for f, u, a in short
                )
                if mode is GuardMode.REFUSE:
                    guard = f"downgrade_below_usage=refuse: {detail}"
                    timing = Timing.ILLEGAL
                    reason = f"refused: target allowance below usage already consumed ({detail})"
                elif mode is GuardMode.DEFER:
                    guard = f"downgrade_below_usage=defer: {detail}"
                    timing = Timing.NEXT_BILLING_CYCLE
                    reason = f"{reason}; deferred to the next billing cycle by the usage guard"
                else:
                    guard = f"downgrade_below_usage=allow: {detail}"
                trace.append(
                    f"guard downgrade_below_usage={mode.value}: {detail} -> {timing.value}"
                )
        trace.append(f"plan record: {record[0].value} ({record[1]})")
        return Decision(reported, timing, rule_id, reason, guard, record[0]), trace


def _load_rule(ld: _Loader, index: int, node: yaml.Node) -> Rule:
    what = f"rules[{index}]"
    m = ld.mapping(node, what, _RULE_KEYS)
    if "timing" not in m:
        raise ld.error(node, f"{what} has no 'timing' (one of {', '.join(_TIMINGS)})")
    timing = Timing(ld.choice(m["timing"][1], f"{what}.timing", _TIMINGS))

    def patterns(key: str) -> tuple[str, ...] | None:
        if key not in m:
            return None
        out = tuple(p for p, _ in ld.strings(m[key][1], f"{what}.{key}"))
        return out

    directions: tuple[Direction, ...] | None = None
    if "direction" in m:
        allowed = tuple(d.value for d in _RULE_DIRECTIONS)
        values = ld.strings(m["direction"][1], f"{what}.direction")
        directions = tuple(Direction(ld.choice(n, f"{what}.direction", allowed)) for _, n in values)
    name = ld.string(m["name"][1], f"{what}.name") if "name" in m else None
    reason = ld.string(m["reason"][1], f"{what}.reason") if "reason" in m else None
    plan_record = (
        PlanRecordMode(ld.choice(m["plan_record"][1], f"{what}.plan_record", _PLAN_RECORD_CHOICES))
        if "plan_record" in m
        else None
    )
    return Rule(
        index=index,
        line=_line(node),
        timing=timing,
        from_patterns=patterns("from"),
        to_patterns=patterns("to"),
        directions=directions,
        name=name,
        reason=reason,
        plan_record=plan_record,
    )


def _shortfalls(
    usage: Mapping[str, Decimal] | None, allowance: Mapping[str, Decimal] | None
) -> list[tuple[str, Decimal, Decimal]]:
    """Features whose target allowance is strictly below the usage consumed this period.

    Only features present in both maps are compared (a ``None`` allowance means unlimited).
    """
    if not usage or not allowance:
        return []
    out: list[tuple[str, Decimal, Decimal]] = []
    for feature in sorted(usage):
        a = allowance.get(feature)
        if a is None:
            continue
        u = Decimal(str(usage[feature]))
        a = Decimal(str(a))
        if a < u:
            out.append((feature, u, a))
    return out


def _num(d: Decimal) -> str:
    return format(d.normalize(), "f") if d == d.to_integral_value() else str(d)


def _ref(key: str, version: int | None) -> str:
    return key if version is None else f"{key}@v{version}"


def _hint(key: str, known: Iterable[str]) -> str:
    close = difflib.get_close_matches(key, sorted(known), n=1)
    return f"; did you mean '{close[0]}'?" if close else ""
