"""Webhook intake goes first: background work waits at its yield points while a foreground
request is in flight (and briefly after it, for a sender posting back to back), never longer
than ``max_hold`` per yield point; work not marked background is never held."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import pytest

from reconciler.cli.demo import Story
from reconciler.engine import Collaborators, Engine
from reconciler.engine.pacing import Pacer, background
from reconciler.runtime import Runtime

from .conftest import POLICY_NEXT_BOUNDARY, START
from .helpers import mutations, onboard


@pytest.fixture
def policy_path() -> Path:
    """This module is about the edit + scheduled-change path: ``plan_record: next_boundary``
    (the default ``billing_safe`` path is in test_billing_safe.py)."""
    return POLICY_NEXT_BOUNDARY


async def test_background_waits_for_the_foreground_then_goes() -> None:
    pacer = Pacer(max_hold=5.0, linger=0.01)
    order: list[str] = []

    async def worker() -> None:
        with background():
            await pacer.yield_point()
            order.append("background step")

    with pacer.foreground():
        task = asyncio.create_task(worker())
        await asyncio.sleep(0.05)  # the worker is held the whole time the request is in flight
        assert order == [] and pacer.busy
        order.append("webhook answered")
    await asyncio.wait_for(task, 1.0)
    assert order == ["webhook answered", "background step"]
    assert pacer.held == 1


async def test_the_hold_is_bounded() -> None:
    pacer = Pacer(max_hold=0.05, linger=0.0)
    loop = asyncio.get_running_loop()
    with pacer.foreground(), background():
        started = loop.time()
        await pacer.yield_point()
        waited = loop.time() - started
    assert 0.04 <= waited < 1.0  # held, then let through although the foreground is still busy


async def test_linger_covers_a_back_to_back_sender() -> None:
    pacer = Pacer(max_hold=5.0, linger=0.05)
    with pacer.foreground():
        pass
    assert pacer.busy  # the next request of a sequential sender is about to arrive
    went = asyncio.Event()

    async def worker() -> None:
        with background():
            await pacer.yield_point()
            went.set()

    task = asyncio.create_task(worker())
    await asyncio.sleep(0.01)
    assert not went.is_set()
    with pacer.foreground():  # it did: still held
        await asyncio.sleep(0.01)
        assert not went.is_set()
    await asyncio.wait_for(task, 1.0)  # idle for the linger: released
    assert not pacer.busy


async def test_foreground_and_unmarked_work_are_never_held() -> None:
    pacer = Pacer(max_hold=5.0)
    loop = asyncio.get_running_loop()
    with pacer.foreground():
        started = loop.time()
        await pacer.yield_point()  # not background (an admin request, a test, the CLI)
        assert loop.time() - started < 0.5
        assert pacer.held == 0


async def test_zero_turns_the_priority_off() -> None:
    pacer = Pacer(max_hold=0)
    with pacer.foreground(), background():
        await pacer.yield_point()
    assert pacer.held == 0


async def test_a_reconcile_makes_way_for_a_webhook_in_flight(
    story: Story, rt: Runtime, control: httpx.AsyncClient
) -> None:
    """End to end: the worker's reconcile (background) sends nothing to OpenMeter and writes
    nothing while a webhook is being handled, then does the whole upgrade."""
    await onboard(story, "free", START, used=3)
    await story.request("starter")
    engine = Engine(
        Collaborators.build(rt.client, rt.store, rt.policy, rt.clock, pacer=Pacer(max_hold=5.0))
    )

    async def work() -> Any:
        with background():
            return await engine.reconcile("acme")

    with engine.pacer.foreground():
        task = asyncio.create_task(work())
        await asyncio.sleep(0.2)
        assert (await control.get("/_emulator/requests")).json()["requests"] == []
        assert (await rt.store.desired_for("acme")).status.value == "pending"  # type: ignore[union-attr]
    out = await asyncio.wait_for(task, 10)
    assert out.status == "applied"
    assert await mutations(control) == [("PATCH", ""), ("POST", "change")]
    assert await story.value() == (3, 549_997)


async def test_a_pass_the_foreground_waits_on_is_never_held() -> None:
    """Priority inheritance: on PostgreSQL a webhook for a customer whose pass is under way waits
    for that pass's row lock; holding the pass would make each wait for the other."""
    pacer = Pacer(max_hold=5.0, linger=0.0)
    went: list[str] = []

    async def pass_of(customer: str) -> None:
        with background(customer):
            await pacer.yield_point()
            went.append(customer)

    with pacer.foreground():
        a = asyncio.create_task(pass_of("acme"))
        b = asyncio.create_task(pass_of("globex"))
        await asyncio.sleep(0.05)
        assert went == []  # both held
        with pacer.boost("acme"):  # the webhook now waits on acme's pass
            await asyncio.wait_for(a, 1.0)
            assert went == ["acme"]
            await asyncio.sleep(0.05)
            assert went == ["acme"]  # globex's pass is still held
    await asyncio.wait_for(b, 1.0)
    assert went == ["acme", "globex"]
