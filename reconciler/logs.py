"""structlog configured once per process: JSON in production, a readable console on a TTY.

Context (customer, subscription, change and request ids) travels in contextvars, so every line
logged while a change is worked on carries them without being passed around.
"""

from __future__ import annotations

import functools
import logging
import sys
from collections.abc import Iterator, MutableMapping
from contextlib import contextmanager
from typing import Any

import structlog

_SECRET_KEYS = ("token", "secret", "password", "authorization", "signature", "database_url")
_configured = False


@functools.lru_cache(maxsize=4096)
def _secret(key: str) -> bool:
    """Whether a log field of this name is redacted (remembered: a line's few names recur)."""
    lowered = key.lower()
    return any(s in lowered for s in _SECRET_KEYS)


def _redact(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    for key in event:  # values replaced, no key added or removed: iterating is safe
        if _secret(key):
            event[key] = "***"
    return event


def configure_logging(level: str = "INFO", fmt: str = "auto", *, force: bool = False) -> None:
    """Configure structlog and the stdlib root logger. Idempotent unless ``force``."""
    global _configured
    if _configured and not force:
        return
    use_json = fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if use_json
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _redact,
    ]
    structlog.configure(
        processors=[*shared, structlog.processors.format_exc_info, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level)),
        # Resolve sys.stderr when a logger is made, not once: it may be replaced (tests, CLIs).
        # One write() per line: print() writes the line and its newline separately, and a line
        # logged meanwhile by another thread through the stdlib handler (the SQLite database
        # thread: Alembic) landed between the two, two JSON objects on one line.
        logger_factory=lambda *_: structlog.WriteLogger(sys.stderr),
        cache_logger_on_first_use=False,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in ("httpx", "httpcore", "uvicorn.access", "apscheduler"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLevelName(level)))
    _configured = True


@contextmanager
def bound(**ids: str | None) -> Iterator[None]:
    """Bind ids (customer, subscription, change, request) to every log line inside the block."""
    clean = {k: v for k, v in ids.items() if v is not None}
    with structlog.contextvars.bound_contextvars(**clean):
        yield


def get_logger(name: str) -> Any:
    return structlog.get_logger(name)
