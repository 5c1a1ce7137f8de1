"""Fault drills: the emulator and ``reconciler run`` as real processes (``benchmarks.harness``).

The emulator process is shared by a module and reset by each test; every reconciler process a
test starts is stopped (or SIGKILLed) by that test. PostgreSQL drills create their own database
and drop it; locally a missing server skips them, in CI it fails them.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from benchmarks.harness import EmulatorProc, pg_available, pg_database

IN_CI = bool(os.environ.get("CI"))


@pytest.fixture(scope="module")
def emu_proc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmulatorProc]:
    em = EmulatorProc(tmp_path_factory.mktemp("emulator"))
    try:
        yield em
    finally:
        em.stop()


@pytest.fixture
def emulator(emu_proc: EmulatorProc) -> EmulatorProc:
    if not emu_proc.alive():
        pytest.fail(f"the emulator process died:\n{emu_proc.tail()}")
    # real time first: plans are published at the emulator's "now" when the catalog loads
    emu_proc.api.http.post("/_emulator/clock/real").raise_for_status()
    emu_proc.api.reset()
    return emu_proc


@pytest.fixture
def pg_url() -> Iterator[str]:
    if not pg_available():
        if IN_CI:
            pytest.fail("PostgreSQL is required in CI but unreachable at 127.0.0.1:5432")
        pytest.skip("PostgreSQL unreachable at 127.0.0.1:5432")
    with pg_database("faults") as url:
        yield url
