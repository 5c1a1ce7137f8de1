"""Log lines stay whole when two threads log at once (one ``write`` per line); fields named like
secrets are redacted, whether passed to the call or bound to the context."""

from __future__ import annotations

import json
import logging
import sys
import threading
from collections.abc import Iterator

import pytest

from reconciler.logs import bound, configure_logging, get_logger


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


def _json_lines_to_recorder(monkeypatch: pytest.MonkeyPatch) -> Recorder:
    """JSON logging to a ``Recorder`` as stderr. Called in the test, not a fixture: pytest's
    capture swaps ``sys.stderr`` back between phases."""
    stderr = Recorder()
    monkeypatch.setattr(sys, "stderr", stderr)
    configure_logging("INFO", "json", force=True)
    return stderr


def test_each_line_is_one_write_from_structlog_and_from_the_stdlib(
    configured: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    stderr = _json_lines_to_recorder(monkeypatch)

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


def test_fields_named_like_secrets_are_redacted_wherever_they_come_from(
    configured: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    stderr = _json_lines_to_recorder(monkeypatch)
    log = get_logger("reconciler.test")
    for _ in range(2):  # the second time from the remembered decisions
        with bound(customer="acme", webhook_signature="v1,abc"):
            log.info(
                "call",
                Authorization="Bearer t0k",
                api_token="t0k",
                DATABASE_URL="postgresql://u:pw@db/x",
                admin_password="pw",
                plan="starter",
                tokens_used=3,
            )
    lines = [json.loads(text) for text in stderr.writes]
    assert len(lines) == 2
    for line in lines:
        assert {k: line[k] for k in line if k not in ("timestamp", "level", "event")} == {
            "customer": "acme",
            "webhook_signature": "***",
            "Authorization": "***",
            "api_token": "***",
            "DATABASE_URL": "***",
            "admin_password": "***",
            "plan": "starter",
            "tokens_used": "***",  # named like a token: redacted too, by design
        }
