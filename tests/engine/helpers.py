from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import httpx

from reconciler.cli.demo import Story
from reconciler.engine import Engine


async def mutations(control: httpx.AsyncClient) -> list[tuple[str, str]]:
    """(method, last path segment or "") for every mutating subscription call served."""
    rows = (await control.get("/_emulator/requests")).json()["requests"]
    out = []
    for r in rows:
        if r["method"] == "GET" or not r["path"].startswith("/api/v1/subscriptions"):
            continue
        tail = r["path"].rsplit("/", 1)[-1] if r["path"].count("/") > 4 else ""
        out.append((r["method"], tail))
    return out


async def onboard(story: Story, plan: str, start: datetime, used: int = 0) -> None:
    await story.onboard(plan, start)
    await story.set_clock(start + timedelta(days=9))
    if used:
        await story.use(used)
    (await story.control.delete("/_emulator/requests")).raise_for_status()


def plan_key(sub: Any) -> str | None:
    return sub.plan.key if sub is not None and sub.plan is not None else None


def on_edit(engine: Engine, before_edit: Any = None, after_edit: Any = None) -> None:
    """Run ``before_edit`` right before the engine's PATCH is sent (a fault for the calls that
    follow it), ``after_edit`` once it was answered (someone else acting in between)."""
    real = engine.client.edit_subscription

    async def edit(*args: Any, **kwargs: Any) -> Any:
        if before_edit is not None:
            await before_edit()
        got = await real(*args, **kwargs)
        if after_edit is not None:
            await after_edit()
        return got

    engine.client.edit_subscription = edit  # type: ignore[method-assign]
