"""What the two baseline programs share: arguments, reading the file, the interval loop
and one keep-alive HTTP connection per proxy."""

from __future__ import annotations

import argparse
import http.client
import sys
import time
import urllib.parse
from collections.abc import Callable, Sequence
from pathlib import Path

from syncer.model import Upstream
from syncer.sources.file import SourceDataError, parse_document

TIMEOUT = 10.0  # seconds, per request
# A reused keep-alive connection the proxy closed meanwhile: send once more on a new one.
_STALE = (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError)


def arguments(prog: str, description: str, argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog=prog, description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--file", type=Path, required=True, help="YAML file of upstreams (the file source's format)"
    )
    p.add_argument(
        "--proxy",
        action="append",
        required=True,
        metavar="URL",
        help="a dyups interface, e.g. http://127.0.0.1:8081; once per proxy",
    )
    p.add_argument("--interval", type=float, default=10.0, metavar="SECONDS", help="default: 10 s")
    args = p.parse_args(argv)
    if args.interval <= 0:
        p.error("--interval must be positive")
    return args


def warn(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def read_upstreams(path: Path) -> dict[str, Upstream] | None:
    """The file's upstreams, or None (said on stderr) if it cannot be read."""
    try:
        return parse_document(path.read_text(encoding="utf-8"), origin=str(path))
    except (OSError, SourceDataError, UnicodeDecodeError) as e:
        warn(f"cannot read {path}: {e}")
        return None


def every(interval: float, step: Callable[[], None]) -> None:
    """Run `step` now, then every `interval` seconds from the start of the previous run
    (at once if it took longer). Until the process is killed."""
    due = time.monotonic()
    while True:
        step()
        due = max(due + interval, time.monotonic())
        time.sleep(max(0.0, due - time.monotonic()))


class Proxy:
    """One dyups interface over one keep-alive connection."""

    def __init__(self, url: str) -> None:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme != "http" or not parts.hostname:
            raise SystemExit(f"not an http:// URL: {url}")
        self.url = url
        self._conn = http.client.HTTPConnection(parts.hostname, parts.port or 80, timeout=TIMEOUT)

    def request(self, method: str, path: str, body: str | None = None) -> tuple[int, str]:
        """(status, body). Raises OSError or http.client.HTTPException."""
        data = None if body is None else body.encode()
        for attempt in (1, 2):
            reused = self._conn.sock is not None
            try:
                self._conn.request(method, path, body=data)
                response = self._conn.getresponse()
                return response.status, response.read().decode(errors="replace")
            except (OSError, http.client.HTTPException) as e:
                self._conn.close()
                if attempt == 2 or not reused or not isinstance(e, _STALE):
                    raise
        raise AssertionError("unreachable")
