"""Structured logging: JSON lines, or a console renderer when attached to a TTY."""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Mapping, MutableMapping
from typing import Any, Literal

import structlog

Format = Literal["auto", "json", "console"]


class _Stderr:
    """Writes to whatever `sys.stderr` is at the time of writing (so a redirected or
    replaced stderr, as under test runners, never leaves loggers on a closed file)."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()

    def isatty(self) -> bool:
        return sys.stderr.isatty()


_SECRET_KEYS = re.compile(r"pass(word)?|token|secret|authorization|credential|api_?key", re.I)
REDACTED = "[redacted]"


def redact(_: Any, __: str, event: MutableMapping[str, Any]) -> Mapping[str, Any]:
    """Never log a secret, whatever passes one in: values of secret-looking keys,
    at any depth, are replaced."""
    return {k: _redact_value(k, v) for k, v in event.items()}


def _redact_value(key: str, value: Any) -> Any:
    if isinstance(key, str) and _SECRET_KEYS.search(key):
        return REDACTED
    if isinstance(value, dict):
        return {k: _redact_value(k, v) for k, v in value.items()}
    return value


def configure(*, level: str = "info", fmt: Format = "auto", stream: Any = None) -> None:
    stream = stream or _Stderr()
    use_console = fmt == "console" or (fmt == "auto" and stream.isatty())
    renderer: Any = (
        structlog.dev.ConsoleRenderer(colors=stream.isatty())
        if use_console
        else structlog.processors.JSONRenderer()
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            redact,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]
        ),
        logger_factory=structlog.PrintLoggerFactory(file=stream),
        cache_logger_on_first_use=False,
    )


def get(name: str) -> Any:
    return structlog.get_logger(name)
