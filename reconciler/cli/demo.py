"""``reconciler demo``: the plan-change story on the emulator, every step checked.

Starts the OpenMeter emulator with the demo catalog on a free loopback port, points a
reconciler (temporary SQLite store, example policy) at it, and walks one customer through an
upgrade, a billing boundary, a downgrade and an up→down→up inside one period. Each step checks
what OpenMeter shows (entitlement values, plan on record, scheduled successor, the number of
mutating calls the emulator served) and the demo exits non-zero if any check fails.
"""

from __future__ import annotations

import asyncio
import tempfile
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.table import Table

from reconciler.domain.convergence import Convergence
from reconciler.engine import ChangeRequest, submit
from reconciler.engine.views import stored_convergence
from reconciler.runtime import Runtime, open_runtime
from reconciler.settings import Settings
from reconciler.store.types import ChangeSource

START = datetime(2026, 1, 15, 10, 0, tzinfo=UTC)
CUSTOMER = "acme"
FEATURE = "api_credits"


def _find(name: str, explicit: Path | None) -> Path:
    if explicit is not None:
        return explicit
    candidates = [
        Path.cwd() / "config" / name,
        Path(__file__).resolve().parents[1] / "config" / name,
    ]
    for c in candidates:
        if c.exists():
            return c
    raise FileNotFoundError(f"{name} not found in {', '.join(str(c) for c in candidates)}")


@dataclass
class Step:
    title: str
    checks: list[tuple[str, bool, str]] = field(default_factory=list)

    def check(self, what: str, ok: bool, seen: Any) -> None:
        self.checks.append((what, bool(ok), str(seen)))

    @property
    def ok(self) -> bool:
        return all(c[1] for c in self.checks)


class Story:
    """Drives one customer through changes against the emulator (also used by the e2e tests)."""

    def __init__(self, rt: Runtime, control: httpx.AsyncClient, customer: str = CUSTOMER) -> None:
        self.rt = rt
        self.control = control
        self.customer = customer
        self.steps: list[Step] = []
        self._seq = 0

    async def onboard(self, plan: str, anchor: datetime) -> None:
        """Create the customer (subject = its key) with a subscription on ``plan``."""
        await self.rt.client.create_customer(
            {
                "key": self.customer,
                "name": self.customer.upper(),
                "usageAttribution": {"subjectKeys": [self.customer]},
            }
        )
        await self.rt.client.create_subscription(
            {
                "customerKey": self.customer,
                "plan": {"key": plan},
                "billingAnchor": anchor.isoformat(),
            }
        )

    async def now(self) -> datetime:
        return await self.rt.clock.now()

    async def set_clock(self, at: datetime) -> None:
        r = await self.control.post("/_emulator/clock", json={"now": at.isoformat()})
        r.raise_for_status()

    async def use(self, credits: int) -> None:
        now = await self.now()
        self._seq += 1
        await self.rt.client.ingest_events(
            [
                {
                    "specversion": "1.0",
                    "id": f"demo-{self.customer}-{self._seq}",
                    "source": "demo",
                    "type": "api_call",
                    "subject": self.customer,
                    "time": (now - timedelta(seconds=30)).isoformat(),
                    "data": {"credits": credits},
                }
            ]
        )

    async def value(self) -> tuple[int, int]:
        v = await self.rt.client.get_entitlement_value(self.customer, FEATURE)
        return int(v.usage or 0), int(v.balance or 0)

    async def subs(self) -> tuple[Any, Any]:
        from reconciler.engine.observe import pick

        return pick(await self.rt.client.list_customer_subscriptions(self.customer))

    async def mutations(self) -> dict[str, int]:
        r = await self.control.get("/_emulator/requests")
        r.raise_for_status()
        rows = r.json()["requests"]
        counts: dict[str, int] = {}
        for row in rows:
            path = str(row["path"])
            if row["method"] == "GET" or not path.startswith("/api/v1/subscriptions"):
                continue
            kind = row["method"] + (" " + path.rsplit("/", 1)[-1] if path.count("/") > 4 else "")
            counts[kind] = counts.get(kind, 0) + 1
        return counts

    async def request(self, plan: str) -> Any:
        """Store a change request (as a webhook would) without working on it."""
        self._seq += 1
        return await submit(
            self.rt.store,
            self.rt.clock,
            ChangeRequest(self.customer, plan),
            ChangeSource.CLI,
            f"demo-{self.customer}-{self._seq}",
        )

    async def change(self, plan: str) -> Any:
        await self.request(plan)
        return await self.rt.engine.reconcile(self.customer)

    async def reconcile(self) -> Any:
        return await self.rt.engine.reconcile(self.customer)

    async def convergence(self) -> Convergence | None:
        """How the desired change's plan record converges, as stored with it."""
        return stored_convergence(await self.rt.store.desired_for(self.customer))

    def step(self, title: str) -> Step:
        s = Step(title)
        self.steps.append(s)
        return s


async def _story(s: Story) -> None:
    await s.set_clock(START)
    # Publish the catalog at the story's start time (plans are active from their publication).
    (await s.control.post("/_emulator/reset", json={})).raise_for_status()
    await s.onboard("free", START)
    await s.set_clock(START + timedelta(days=9))
    await s.use(3)
    # From here on the emulator's request log holds only what the reconciler does.
    (await s.control.delete("/_emulator/requests")).raise_for_status()

    st = s.step("1. ACME on free uses 3 credits")
    usage, balance = await s.value()
    st.check("usage 3 of 50,000", (usage, balance) == (3, 49_997), f"{usage} used, {balance} left")

    st = s.step("2. Upgrade to starter: immediate, usage kept, billed pro rata")
    out = await s.change("starter")
    usage, balance = await s.value()
    cur, succ = await s.subs()
    st.check("change applied", out.status == "applied", out.status)
    st.check(
        "549,997 of 550,000 left", (usage, balance) == (3, 549_997), f"{usage} used, {balance} left"
    )
    st.check("plan on record still free", cur.plan.key == "free", cur.plan.key)
    conv = await s.convergence()
    st.check(
        "record change deferred a period (scheduling now would bill starter's fee in full)",
        succ is None and conv is not None and conv.deferred and conv.at == START + _month(2),
        conv.reason if conv else None,
    )
    m = await s.mutations()
    st.check("one PATCH, nothing else", m == {"PATCH": 1}, m)

    st = s.step("3. The billing boundary passes: the record change is scheduled")
    await s.set_clock(START + _month(1) + timedelta(minutes=1))
    out = await s.reconcile()
    usage, balance = await s.value()
    cur, succ = await s.subs()
    st.check("still applied", out.status == "applied", out.status)
    st.check(
        "starter scheduled at the following boundary",
        succ is not None and succ.plan.key == "starter" and succ.active_from == START + _month(2),
        succ.active_from if succ else None,
    )
    st.check(
        "fresh period 0 of 550,000",
        (usage, balance) == (0, 550_000),
        f"{usage} used, {balance} left",
    )

    st = s.step("4. Ten days later, downgrade to free: takes effect next cycle")
    await s.set_clock(START + _month(1) + timedelta(days=10))
    await s.use(1000)
    out = await s.change("free")
    usage, balance = await s.value()
    cur, succ = await s.subs()
    st.check("change scheduled", out.status == "scheduled", out.status)
    st.check(
        "starter allowance kept until then", balance == 549_000, f"{usage} used, {balance} left"
    )
    st.check(
        "free scheduled at the next boundary",
        succ is not None and succ.plan.key == "free" and succ.active_from == START + _month(2),
        succ.active_from if succ else None,
    )

    st = s.step("5. Up to pro, down to starter, up to pro — one period")
    out = await s.change("pro")
    usage, balance = await s.value()
    st.check(
        "pro now, usage kept",
        (usage, balance) == (1000, 4_999_000),
        f"{usage} used, {balance} left",
    )
    out = await s.change("starter")
    usage, balance = await s.value()
    cur, succ = await s.subs()
    st.check(
        "starter scheduled, pro kept",
        succ is not None and succ.plan.key == "starter" and balance == 4_999_000,
        f"{succ.plan.key if succ else None}, {balance} left",
    )
    out = await s.change("pro")
    cur, succ = await s.subs()
    conv = await s.convergence()
    st.check(
        "pro kept, its record change deferred (pro's fee stays pro rata)",
        succ is None and conv is not None and conv.at == START + _month(3),
        conv.reason if conv else None,
    )
    m = await s.mutations()
    st.check("two PATCHes in total (items never taken away)", m.get("PATCH") == 2, m)

    st = s.step("6. The next boundary passes: the record change to pro is scheduled")
    await s.set_clock(START + _month(2) + timedelta(minutes=1))
    out = await s.reconcile()
    cur, succ = await s.subs()
    st.check(
        "pro scheduled at the following boundary",
        succ is not None and succ.plan.key == "pro" and succ.active_from == START + _month(3),
        succ.active_from if succ else None,
    )

    st = s.step("7. The boundary after passes")
    await s.set_clock(START + _month(3) + timedelta(minutes=1))
    out = await s.reconcile()
    usage, balance = await s.value()
    cur, succ = await s.subs()
    st.check(
        "converged on pro",
        out.status == "converged" and cur.plan.key == "pro",
        f"{out.status}, {cur.plan.key}",
    )
    st.check(
        "fresh period 0 of 5,000,000",
        (usage, balance) == (0, 5_000_000),
        f"{usage} used, {balance} left",
    )


def _month(n: int) -> timedelta:
    # The demo's anchor is the 15th: months from Jan 15 are 31, 28 and 31 days (2026).
    return [timedelta(0), timedelta(days=31), timedelta(days=31 + 28), timedelta(days=90)][n]


async def _main(console: Console, catalog: Path, policy: Path) -> bool:
    from reconciler.emulator.server import EmulatorServer

    with (
        tempfile.TemporaryDirectory(prefix="reconciler-demo-") as tmp,
        EmulatorServer(catalog=catalog) as em,
    ):
        settings = Settings(
            openmeter_url=em.url,
            database_url=f"sqlite:///{tmp}/demo.db",
            policy_path=policy,
            clock_url=f"{em.url}/_emulator/clock",
            log_level="WARNING",
        )
        async with open_runtime(settings) as rt, httpx.AsyncClient(base_url=em.url) as control:
            story = Story(rt, control)
            try:
                await _story(story)
            except Exception as exc:  # report where the story broke, then fail
                story.step("story interrupted").check(type(exc).__name__, False, exc)
    _render(console, story.steps, em_url=em.url)
    return all(step.ok for step in story.steps)


def _render(console: Console, steps: list[Step], *, em_url: str) -> None:
    table = Table(title="openmeter-reconciler demo (OpenMeter emulator)", show_lines=True)
    table.add_column("step")
    table.add_column("check")
    table.add_column("observed")
    table.add_column("ok", justify="center")
    for step in steps:
        for i, (what, ok, seen) in enumerate(step.checks):
            table.add_row(
                step.title if i == 0 else "", what, seen, "[green]✓[/]" if ok else "[red]✗[/]"
            )
    console.print(table)
    failed = sum(1 for s in steps for c in s.checks if not c[1])
    total = sum(len(s.checks) for s in steps)
    if failed:
        console.print(f"[red]{failed} of {total} checks failed[/red]")
    else:
        console.print(f"[green]all {total} checks passed[/green]")


def run_demo(console: Console, *, catalog: Path | None = None, policy: Path | None = None) -> bool:
    cat = _find("catalog.demo.yaml", catalog)
    pol = _find("policy.example.yaml", policy)
    return asyncio.run(_main(console, cat, pol))
