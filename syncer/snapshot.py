"""The snapshot file: desired state, ownership and last-applied bodies, on disk.

Written atomically (temp file in the same directory, fsync, rename, fsync of the
directory), so a crash at any point leaves either the old or the new snapshot,
never a torn one. A snapshot that cannot be read is reported and ignored: the
syncer then starts from its sources, and deletes nothing it does not know it owns.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

FORMAT = 2  # 2: upstreams kept as their canonical bodies


class SnapshotError(Exception):
    """The snapshot exists but cannot be used; the message says why."""


@dataclass
class SnapshotData:
    """Plain JSON-able content. `sources`: source name → upstream name → POST body;
    `proxies`: proxy url → {"owned": [names], "applied": {name: body hash}}."""

    sources: dict[str, dict[str, Any]] = field(default_factory=dict)
    proxies: dict[str, dict[str, Any]] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(
            {"format": FORMAT, "sources": self.sources, "proxies": self.proxies},
            separators=(",", ":"),
        )


def load(path: Path) -> SnapshotData | None:
    """Read a snapshot; None if there is none yet; SnapshotError if unusable."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as e:
        raise SnapshotError(f"cannot read {path}: {e}") from e
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as e:
        raise SnapshotError(f"{path} is not valid JSON ({e}); truncated or corrupt") from e
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        raise SnapshotError(f"{path} has an unknown format (want format {FORMAT})")
    sources, proxies = raw.get("sources"), raw.get("proxies")
    if not isinstance(sources, dict) or not isinstance(proxies, dict):
        raise SnapshotError(f"{path}: 'sources' and 'proxies' must be mappings")
    if not all(isinstance(v, dict) for v in [*sources.values(), *proxies.values()]):
        raise SnapshotError(f"{path}: every source and proxy entry must be a mapping")
    return SnapshotData(sources=sources, proxies=proxies)


def remove_stale_temp(path: Path) -> int:
    """Remove temp files a killed writer left beside `path` (a crash-looping process
    would otherwise fill the volume); returns how many."""
    removed = 0
    for stale in path.parent.glob(f".{path.name}.*.tmp"):
        with contextlib.suppress(OSError):
            stale.unlink()
            removed += 1
    return removed


def write_atomic(path: Path, text: str) -> None:
    """Replace `path` with `text` so that readers see the old or the new file, whole."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


class SnapshotWriter:
    """Writes the snapshot when asked: durably now (`write_now`, for ownership claims
    that must be on disk before a POST; concurrent callers share one write) or
    coalesced (`mark_dirty`: a background thread writes at most once per `delay`, so a
    cold sync of thousands of upstreams costs a handful of writes, not thousands)."""

    def __init__(
        self,
        path: Path,
        produce: Callable[[], SnapshotData],
        *,
        delay: float = 1.0,
        on_error: Callable[[Exception], None] = lambda e: None,
    ) -> None:
        self.path = path
        self._produce = produce
        self._delay = delay
        self._on_error = on_error
        self._lock = threading.Lock()  # one writer at a time
        self._cond = threading.Condition()
        self._started_gen = 0  # writes begun
        self._done_gen = 0  # writes finished (successfully or not)
        self._ok = True
        self._dirty = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.writes = 0

    def start(self) -> None:
        remove_stale_temp(self.path)
        self._thread = threading.Thread(target=self._run, name="snapshot-writer", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._dirty.set()
        if self._thread:
            self._thread.join(timeout=5)
        self.write_now()

    def mark_dirty(self) -> None:
        self._dirty.set()

    def write_now(self) -> bool:
        """Return once a write that began after this call has finished (group commit:
        callers arriving while a write runs share the next one); False if it failed."""
        with self._cond:
            wanted = self._started_gen + 1
        with self._lock:
            with self._cond:
                if self._done_gen >= wanted:
                    return self._ok
                self._started_gen += 1
                gen = self._started_gen
            self._dirty.clear()
            ok = self._write()
            with self._cond:
                self._done_gen, self._ok = gen, ok
                self._cond.notify_all()
            return ok

    def _write(self) -> bool:
        try:
            write_atomic(self.path, self._produce().to_json())
        except OSError as e:
            self._dirty.set()  # try again on the next round
            self._on_error(e)
            return False
        self.writes += 1
        return True

    def _run(self) -> None:
        while not self._stop.is_set():
            self._dirty.wait()
            if self._stop.is_set():
                return
            # Coalesce: let a burst settle, then write once.
            self._stop.wait(self._delay)
            if self._dirty.is_set() and not self.write_now():
                self._stop.wait(self._delay)
