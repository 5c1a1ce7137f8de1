"""Log lines stay whole when two threads log at once (one ``write`` per line)."""

from __future__ import annotations

import json
import logging
import sys
import threading
from collections.abc import Iterator

import pytest

from reconciler.logs import configure_logging, get_logger


class Recorder:
    """A stream that keeps each ``write`` call apart."""

    def __init__(self) -> None:
        self.writes: list[str] = []
        self._lock = threading.Lock()

    def write(self, text: str) -> int:
        with self._lock:
            self.writes.append(text)
        return len(text)

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return False


@pytest.fixture
def configured() -> Iterator[None]:
    yield
    configure_logging("INFO", "auto", force=True)


def test_each_line_is_one_write_from_structlog_and_from_the_stdlib(
    configured: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    # set here, not in a fixture: pytest's capture swaps sys.stderr back between phases
    stderr = Recorder()
    monkeypatch.setattr(sys, "stderr", stderr)
    configure_logging("INFO", "json", force=True)

    def other_thread() -> None:
        for i in range(200):
            logging.getLogger("alembic.runtime.migration").info("Context impl %d", i)

    t = threading.Thread(target=other_thread)
    t.start()
    log = get_logger("reconciler.test")
    for i in range(200):
        log.info("sweep_finished", n=i)
    t.join()
    assert len(stderr.writes) == 400
    for text in stderr.writes:
        assert text.endswith("\n") and text.count("\n") == 1
        json.loads(text)
    events = [json.loads(text)["event"] for text in stderr.writes]
    assert events.count("sweep_finished") == 200
