"""Storage faults: the snapshot truncated, corrupt, unreadable, or the disk full.

The syncer must start anyway (saying so: `snapshot_unusable` on read,
`snapshot_write_failed` on write), rebuild the proxies from its sources, keep
running (a crash at start is a crash loop under any supervisor), and never
delete because of a bad snapshot: without a usable snapshot it does not know what
it owns, so what it finds on a proxy is left alone.

Each case: a first syncer (in-process) syncs `web` and `api` to two proxies and
writes its snapshot; the snapshot is then damaged, the source drops `api` and
adds `new`, and proxy 1 restarts (it lost everything). A second syncer, the real
command as a subprocess, must post `new` to both and `web` to proxy 1, delete
nothing (so `api` stays on proxy 0: no longer known to be ours), and keep running.

Tests run as root, for whom `chmod 000` changes nothing: a directory in the
snapshot's place makes it unreadable and unwritable instead. A full disk is a
64 KiB tmpfs filled up, when this process may mount one; otherwise (and also, in
every run) `os.fdopen` is replaced, for the snapshot's directory only, by a file
whose writes fail with ENOSPC, in an in-process syncer.

Each case runs once (not repeated with $DYUPS_FAULT_TRIALS): the same damage is
met the same way at every start.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog

from syncer.app import App
from syncer.snapshot import SnapshotData
from syncer.snapshot import load as load_snapshot
from tests.faults.conftest import (
    REPAIR_BOUND,
    WAIT,
    differences,
    eventually,
    expected,
    metric,
    record,
    sim_view,
    write_daemon_config,
)

BASE = {"web": ["10.0.0.1:80", "10.0.0.2:80"], "api": ["10.0.1.1:9000"]}
AFTER = {"web": ["10.0.0.1:80", "10.0.0.2:80"], "new": ["10.0.9.1:80"]}


def first_run(env) -> dict[str, Any]:
    """Sync BASE with an in-process syncer, stop it (the snapshot is flushed), then
    change the source and restart proxy 1. Returns proxy 0's view of `api`."""
    env.write(BASE)
    app = env.start()
    assert env.wait_converged()
    app.shutdown()
    assert isinstance(load_snapshot(env.snapshot), SnapshotData)
    api = sim_view(env.sims[0], 0)["api"]
    env.write(AFTER)
    env.sims[1].restart()
    return {"api": api}


def rebuilt(env, orphan: dict[str, Any]) -> bool:
    desired = env.desired()
    want0 = expected(desired, env.sims[0], foreign=orphan)
    want1 = expected(desired, env.sims[1])
    return not differences(env.sims[0], want0) and not differences(env.sims[1], want1)


def corrupt(path: Path, how: str) -> None:
    text = path.read_bytes()
    if how == "truncated":
        path.write_bytes(text[: len(text) // 2])
    elif how == "empty":
        path.write_bytes(b"")
    elif how == "unknown format":
        path.write_text(json.dumps({"format": 99, "sources": {}, "proxies": {}}))
    elif how == "random bytes":
        path.write_bytes(b"\x8b\xff\x00\x13" + bytes(range(255, -1, -1)) * 8)
    elif how == "wrong shape":
        raw = json.loads(text)
        raw["sources"] = {name: sorted(ups) for name, ups in raw["sources"].items()}
        raw["proxies"] = {name: sorted(rec["owned"]) for name, rec in raw["proxies"].items()}
        path.write_text(json.dumps(raw))
    elif how == "directory":
        path.unlink()
        path.mkdir()
    else:
        raise AssertionError(how)


def wait_rebuilt_or_exit(env, daemon, orphan) -> bool:
    return eventually(lambda: rebuilt(env, orphan) or not daemon.running, WAIT)


@pytest.mark.parametrize(
    "how", ["truncated", "empty", "unknown format", "random bytes", "wrong shape", "directory"]
)
def test_a_bad_snapshot_is_reported_and_the_proxies_rebuilt(make_env, daemons, how):
    env = make_env(2)
    orphan = first_run(env)
    corrupt(env.snapshot, how)
    daemon = daemons(write_daemon_config(env), env.tmp / "syncer.log")
    started = time.monotonic()
    daemon.spawn()
    wait_rebuilt_or_exit(env, daemon, orphan)
    assert daemon.running, f"the syncer exited ({daemon.proc.returncode}):\n{daemon.tail()}"
    assert rebuilt(env, orphan), [differences(s, expected(env.desired(), s)) for s in env.sims]
    took = time.monotonic() - started
    assert all(s.stats.deletes == 0 for s in env.sims)  # api stays: not known to be ours
    unusable = [e for e in daemon.events() if e["event"] == "snapshot_unusable"]
    assert unusable and unusable[0]["level"] == "warning" and unusable[0]["error"]
    if how == "directory":
        assert eventually(lambda: "snapshot_write_failed" in [e["event"] for e in daemon.events()])
    assert daemon.terminate() == 0, daemon.tail()
    if how != "directory":  # the next start has a good snapshot again
        assert isinstance(load_snapshot(env.snapshot), SnapshotData)
    record(
        f"snapshot {how}",
        trials=1,
        converged=1,
        lost=0,  # rebuilt: every desired upstream on both proxies
        deletes=0,
        running=True,
        samples={"rebuilt_s_from_spawn": [took]},
    )


# --------------------------------------------------------------------------- disk full


@pytest.fixture
def tiny_disk(tmp_path) -> Iterator[Path | None]:
    """A 64 KiB tmpfs, or None when this process may not mount one."""
    target = tmp_path / "disk"
    target.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(target)],
        capture_output=True,
        check=False,
    )
    if mounted.returncode != 0:
        yield None
        return
    try:
        yield target
    finally:
        subprocess.run(["umount", "-l", str(target)], check=False)


def fill(directory: Path) -> Path:
    """Fill the file system of `directory`; returns the filler file."""
    filler = directory / "filler"
    with open(filler, "wb", buffering=0) as f, contextlib.suppress(OSError):
        while True:
            f.write(b"\0" * 4096)
    return filler


class NoSpace:
    """Writes to files opened with os.fdopen in `directory` fail with ENOSPC."""

    def __init__(self, directory: Path, monkeypatch: Any) -> None:
        self.directory = str(directory)
        self.full = True
        self.refused = 0
        real = os.fdopen

        def fdopen(fd: int, *args: Any, **kwargs: Any) -> Any:
            opened = real(fd, *args, **kwargs)
            path = os.readlink(f"/proc/self/fd/{fd}")
            if self.full and path.startswith(self.directory + os.sep):
                return _Full(opened, self)
            return opened

        monkeypatch.setattr(os, "fdopen", fdopen)


class _Full:
    def __init__(self, file: Any, disk: NoSpace) -> None:
        self.file = file
        self.disk = disk

    def __enter__(self) -> _Full:
        return self

    def __exit__(self, *exc: object) -> None:
        self.file.close()

    def write(self, text: str) -> int:
        self.disk.refused += 1
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def flush(self) -> None:
        self.file.flush()

    def fileno(self) -> int:
        return int(self.file.fileno())


def deletions_of_prior_state(sims, before: list[int]) -> list[tuple[int, str]]:
    """(proxy, name) of each DELETE since `before` of an upstream this run had not POSTed.

    The restarted proxy may first get the snapshot's copy of the desired state (that is
    what the snapshot is for: the source may be down) and then lose `api` when the file
    source's first read arrives; that DELETE removes only what this run put there.
    """
    found = []
    for i, sim in enumerate(sims):
        posted: set[str] = set()
        for event in sim.applied[before[i] :]:
            if event.op == "delete" and event.name not in posted:
                found.append((i, event.name))
            elif event.op != "delete":
                posted.add(event.name)
    return found


@pytest.mark.parametrize("method", ["tmpfs", "patched"])
def test_disk_full_while_writing_the_snapshot(make_env, daemons, tiny_disk, monkeypatch, method):
    env = make_env(2)
    first_run(env)  # the snapshot stays good: `api` is known to be ours, and goes
    good = load_snapshot(env.snapshot)
    before = [len(s.applied) for s in env.sims]
    if method == "tmpfs" and tiny_disk is None:
        method = "patched (tmpfs could not be mounted)"
    if method == "tmpfs":
        assert tiny_disk is not None
        shutil.copy(env.snapshot, tiny_disk / "snapshot.json")
        env.snapshot = tiny_disk / "snapshot.json"
        filler = fill(tiny_disk)
        daemon = daemons(write_daemon_config(env), env.tmp / "syncer.log")
        daemon.spawn()
        assert wait_rebuilt_or_exit(env, daemon, {})
        assert daemon.running, daemon.tail()
        failed = lambda: [  # noqa: E731
            e["error"] for e in daemon.events() if e["event"] == "snapshot_write_failed"
        ]
        assert eventually(failed, REPAIR_BOUND), daemon.tail()
        assert "No space left on device" in failed()[0]
        assert not list(tiny_disk.glob(".snapshot.json.*.tmp"))
        assert load_snapshot(env.snapshot) == good  # the old snapshot, whole
        filler.unlink()  # space again: the pending write goes through
        assert eventually(lambda: load_snapshot(env.snapshot) != good, REPAIR_BOUND)
        assert daemon.terminate() == 0, daemon.tail()
    else:
        disk = NoSpace(env.snapshot.parent, monkeypatch)
        with structlog.testing.capture_logs() as logs:
            app = App(env.config())
            env.apps.append(app)
            app.start(serve_http=False)
            assert eventually(lambda: rebuilt(env, {}))
            assert eventually(lambda: disk.refused > 0)
            assert app.workers[0].alive and app.workers[1].alive
            assert metric(app, "dyups_syncer_snapshot_errors_total", op="write") >= 1
            assert load_snapshot(env.snapshot) == good  # the old snapshot, whole
            disk.full = False
            assert eventually(lambda: load_snapshot(env.snapshot) != good, REPAIR_BOUND)
            app.shutdown()
        assert "snapshot_write_failed" in [e["event"] for e in logs]
        assert not list(env.snapshot.parent.glob(".snapshot.json.*.tmp"))
    deleted = deletions_of_prior_state(env.sims, before)
    assert set(deleted) <= {(0, "api")}  # only `api`, and only where it was live before
    after = load_snapshot(env.snapshot)
    assert after is not None and "new" in after.proxies["p1"]["owned"]
    record(
        f"disk full ({method})",
        trials=1,
        converged=1,
        lost=0,  # rebuilt (asserted above)
        deleted=sorted(set(deleted)),
        old_snapshot_kept_whole=True,
    )
