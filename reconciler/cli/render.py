"""Rich tables of the engine's typed results, for people (``--json`` prints the views instead).

Reads the results' fields, never their JSON: what a table shows is checked by mypy against
what the engine returns.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from decimal import Decimal

from rich.console import Console
from rich.table import Table

from reconciler.domain.convergence import Convergence
from reconciler.domain.effects import EntitlementEffect, entitlement_effects
from reconciler.domain.invoices import InvoicesState
from reconciler.domain.model import EntitlementValue
from reconciler.domain.planner import effective_plan
from reconciler.domain.pricing import Quote
from reconciler.domain.timefmt import iso_offset, iso_z
from reconciler.engine.results import (
    ChangeReport,
    Credits,
    Preview,
    QuoteReport,
    StatusReport,
)
from reconciler.engine.views import money, stored_convergence, stored_credits

__all__ = ["fmt", "print_change", "print_quote", "print_status"]


def fmt(v: object) -> str:
    """``-`` for nothing, thousands separators for whole numbers."""
    if v is None:
        return "-"
    if isinstance(v, Decimal) and v == v.to_integral_value():
        v = int(v)
    if isinstance(v, int) and not isinstance(v, bool):
        return f"{v:,}"
    return str(v)


def _short(dt: datetime | None) -> str:
    """``2026-04-10 08:30:45`` for tables (JSON keeps RFC 3339)."""
    return "-" if dt is None else iso_z(dt).replace("T", " ").removesuffix("Z")[:19]


def _usage_balance(v: EntitlementValue | None) -> str:
    return f"{fmt(v.usage if v else None)} / {fmt(v.balance if v else None)}"


def _entitlement_table(
    effects: Mapping[str, EntitlementEffect], now_values: Mapping[str, EntitlementValue] | None
) -> Table:
    t = Table(title="Entitlements")
    for col in ("feature", "before usage/balance", "after usage/balance", "at boundary"):
        t.add_column(col)
    features = sorted(set(effects) | set(now_values or {}))
    for feature in features:
        e = effects.get(feature)
        if now_values is not None and feature in now_values:
            after: EntitlementValue | None = now_values[feature]
        else:
            after = e.after if e else None
        boundary = e.at_boundary if e is not None else None
        t.add_row(
            feature,
            _usage_balance(e.before if e else None),
            _usage_balance(after),
            _usage_balance(boundary) if boundary is not None else "-",
        )
    return t


def _print_credit(out: Console, due: Credits | None) -> None:
    """``credit due: 75.00 USD`` per issued fee an edit shortened, or why nothing is known."""
    if due is None:
        return
    if due.state is not InvoicesState.READ:
        out.print(f"credit due: unknown ({due.state.value})")
        return
    for c in due.credits:
        out.print(
            f"[yellow]credit due:[/yellow] {money(c.amount, c.currency)} {c.currency} for "
            f"{c.item} {iso_z(c.period[0])} → {iso_z(c.period[1])} (invoiced "
            f"{money(c.invoiced, c.currency)}, due {money(c.due, c.currency)}; "
            f"invoice {c.invoice_id})"
        )


def _print_convergence(out: Console, conv: Convergence | None) -> None:
    if conv is not None:
        out.print(f"plan record: {conv.reason}")


def print_change(out: Console, r: Preview | ChangeReport) -> None:
    """A dry run (``Preview``) or a change made now (``ChangeReport``)."""
    report = r if isinstance(r, ChangeReport) else None
    p = r.preview if isinstance(r, ChangeReport) else r
    result = p.result
    out.print(
        f"[bold]{p.customer}[/bold]: {result.from_plan or 'no plan'} -> "
        f"{p.target.key}@v{p.target.version}  "
        f"[cyan]{result.direction.value}[/cyan], timing "
        f"{result.timing.value if result.timing else None} (rule: {result.rule})"
    )
    # What the engine decided when it acted (the preview may predate the edit).
    stored = stored_convergence(report.change) if report is not None else None
    conv = stored or result.convergence
    converges_at = stored.at if stored is not None else result.converges_at
    out.print(f"effective at {iso_z(result.effective_at)}, converges at {iso_z(converges_at)}")
    _print_convergence(out, conv)
    _print_credit(out, stored_credits(report.change) if report is not None else None)
    if result.refusal:
        out.print(f"[red]refused:[/red] {result.refusal}")
    applied = {(a.method, a.path) for a in (report.outcome.applied if report else ())}
    for action in result.actions:
        call = action.request()
        mark = "[green]applied[/green]" if (call.method, call.path) in applied else "planned"
        out.print(f"  {mark} {call.method} {call.path}")
    effects = entitlement_effects(p.observed, result, p.target, p.now)
    out.print(_entitlement_table(effects, report.values_now if report is not None else None))
    for w in result.warnings:
        out.print(f"[yellow]warning:[/yellow] {w}")
    if report is not None:
        if report.outcome.status:
            out.print(f"status: [bold]{report.outcome.status}[/bold]")
        if report.outcome.error:
            out.print(f"[red]error:[/red] {report.outcome.error}")


def print_status(out: Console, s: StatusReport) -> None:
    cur = s.observed.current
    succ = s.observed.successor
    phase = cur.phase_at(s.now) if cur else None
    effective = effective_plan(cur, phase) if cur and phase else (cur.plan if cur else None)
    out.print(f"[bold]{s.customer}[/bold] ({s.observed.customer_id})")
    out.print(f"plan on record: {cur.plan if cur and cur.plan else None}; effective: {effective}")
    if succ is not None:
        out.print(f"scheduled successor: {succ.plan} from {iso_z(succ.active_from)}")
    d = s.desired
    if d is not None:
        c = d.change
        out.print(
            f"desired: {c.plan_key}@v{c.plan_version} ({c.status.value}), "
            f"convergence: {s.convergence}"
        )
        if c.converges_at:
            out.print(f"plan record converges at {iso_offset(c.converges_at)}")
        conv = d.result.convergence if d.result is not None else None
        _print_convergence(out, conv or stored_convergence(c))
        _print_credit(out, stored_credits(c))
    t = Table(title="Entitlements")
    for col in ("feature", "usage", "balance", "total"):
        t.add_column(col)
    for f, v in sorted(s.observed.values.items()):
        t.add_row(
            f,
            fmt(v.usage if v else None),
            fmt(v.balance if v else None),
            fmt(v.total_available_grant_amount if v else None),
        )
    out.print(t)
    if s.audit:
        a = Table(title="Recent audit")
        for col in ("at", "kind", "operation", "call", "status", "detail"):
            a.add_column(col)
        for r in s.audit:
            a.add_row(
                iso_offset(r.at),
                r.kind.value,
                r.operation,
                f"{r.method} {r.path}" if r.method else "",
                fmt(r.status),
                (r.detail or "")[:60],
            )
        out.print(a)


def _pct(ratio: Decimal | None) -> str:
    return "-" if ratio is None else f"{ratio * 100:.2f} %"


def _amount(d: Decimal | None) -> str:
    return "-" if d is None else format(d, "f")


def _lines_table(title: str, q: Quote, currency: str) -> Table:
    t = Table(title=title)
    for col in ("item", "v", "service period", "price", "quantity", "proration", "amount"):
        t.add_column(col, justify="right" if col in ("quantity", "amount") else "left")
    for ln in q.lines:
        price = ln.price_type + (f" ({ln.mode})" if ln.mode else "")
        if ln.payment_term == "in_advance":
            price += ", in advance"
        t.add_row(
            ln.key,
            "-" if ln.version is None else str(ln.version),
            f"{_short(ln.period_from)} → {_short(ln.period_to)}",
            price,
            _amount(ln.quantity),
            _pct(ln.proration),
            _amount(ln.amount),
        )
    t.add_row(
        "[bold]total[/bold]", "", "", "", "", "", f"[bold]{_amount(q.total)} {currency}[/bold]"
    )
    return t


def print_quote(out: Console, q: QuoteReport) -> None:
    """A quote (``Quoter.quote``) as rich tables."""
    ch = q.charges
    cur = ch.currency
    plan = q.subscription.plan
    out.print(
        f"[bold]{q.customer}[/bold] on {plan or 'no plan'}: billing period "
        f"{iso_z(ch.period[0])} → {iso_z(ch.period[1])} ({cur})"
    )
    out.print(_lines_table("Current charges", ch.current, cur))
    for s in ch.current.skipped:
        out.print(f"  [dim]not billed: {s}[/dim]")
    if q.target is not None and q.result is not None:
        r = q.result
        out.print(
            f"change to {q.target.key}@v{q.target.version}: "
            f"[cyan]{r.direction.value}[/cyan], timing {r.timing.value if r.timing else None}, "
            f"effective {iso_z(r.effective_at)}"
        )
    if ch.with_change is not None:
        out.print(_lines_table("With the change", ch.with_change, cur))
    diff = ch.difference
    if diff is not None:
        t = Table(title="Difference")
        for col in ("item", "service period", "before", "after", "delta"):
            t.add_column(col, justify="left" if col in ("item", "service period") else "right")
        for ln in diff.lines:
            t.add_row(
                ln.key,
                f"{_short(ln.period_from)} → {_short(ln.period_to)}",
                _amount(ln.before.amount) if ln.before else "-",
                _amount(ln.after.amount) if ln.after else "-",
                _amount(ln.delta),
            )
        t.add_row("[bold]total[/bold]", "", "", "", f"[bold]{_amount(diff.total)} {cur}[/bold]")
        out.print(t)
    due = q.credit_due
    if due.state is not InvoicesState.READ:
        out.print(f"invoices: {due.state.value}")
    for c in due.credits:
        out.print(
            f"[yellow]credit due:[/yellow] {money(c.amount, c.currency)} {c.currency} for "
            f"{c.item} {_short(c.period[0])} → {_short(c.period[1])}: invoiced "
            f"{money(c.invoiced, c.currency)} on an issued invoice, "
            f"{money(c.due, c.currency)} due after the change"
        )
    for n in ch.notes:
        out.print(f"[yellow]note:[/yellow] {n}")
