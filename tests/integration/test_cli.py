"""The command line as a user runs it: plan, run (with SIGTERM), demo."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.request

import yaml

from syncer.cli import main
from syncer.demo import run_demo
from syncer.snapshot import load as load_snapshot

from .conftest import STATIC, eventually, upstreams_yaml


def write_config(env, **extra) -> str:
    cfg = {
        "sources": [{"type": "file", "path": str(env.file), "poll_interval": "20ms"}],
        "proxies": {
            "static": [
                {"url": s.url, "name": f"p{i}", "read_msg_timeout": "50ms"}
                for i, s in enumerate(env.sims)
            ]
        },
        "snapshot_path": str(env.snapshot),
        "debounce": 0,
        "probe_interval": "100ms",
        "listen": "127.0.0.1:0",
        "log": {"format": "json"},
    }
    cfg.update(extra)
    path = env.tmp / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


def test_plan_exit_codes(make_env, capsys):
    env = make_env(2, static=STATIC)
    env.write({"web": ["10.0.0.1:80"], "static_be": ["10.0.0.9:80"]})
    cfg = write_config(env)
    assert main(["plan", "-c", cfg]) == 1
    out = capsys.readouterr().out
    assert "upsert web (missing): server 10.0.0.1:80;" in out
    assert "conflict static_be" in out
    assert all(s.stats.posts == 0 for s in env.sims)  # a dry run writes nothing
    env.write({"web": ["10.0.0.1:80"]})
    app = env.start()
    assert env.wait_converged()
    app.shutdown()
    assert main(["plan", "-c", cfg]) == 0
    assert "no changes" in capsys.readouterr().out
    env.sims[1].go_down()
    assert main(["plan", "-c", cfg]) == 2
    assert "cannot read the proxy" in capsys.readouterr().out


def test_run_stops_cleanly_on_sigterm(make_env):
    env = make_env(1)
    env.write({"web": ["10.0.0.1:80", "10.0.0.2:80"]})
    cfg = write_config(env)
    proc = subprocess.Popen(
        [sys.executable, "-m", "syncer.cli", "run", "-c", cfg],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "DYUPS_SYNCER_LOG__LEVEL": "info"},
    )
    try:
        assert env.wait_converged()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
    finally:
        proc.kill()
    events = [
        json.loads(line)
        for line in proc.stdout.read().splitlines() + proc.stderr.read().splitlines()
        if line.startswith("{")
    ]
    names = [e["event"] for e in events]
    assert "started" in names and names[-1] == "stopped"
    applied = [e for e in events if e["event"] == "upstream_updated"]
    assert applied and {"proxy", "upstream", "outcome", "duration_ms"}.issubset(applied[0])
    snap = load_snapshot(env.snapshot)
    assert snap.proxies["p0"]["owned"] == ["web"]


def test_run_freezes_its_startup_heap_once_every_proxy_is_reconciled(make_env, tmp_path):
    env = make_env(1)
    env.write({"web": ["10.0.0.1:80"]})
    log = tmp_path / "syncer.log"

    def events() -> list[dict]:
        lines = log.read_text(errors="replace").splitlines()
        return [json.loads(line) for line in lines if line.startswith("{")]

    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "syncer.cli", "run", "-c", write_config(env)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "DYUPS_SYNCER_LOG__LEVEL": "info", "PYTHONUNBUFFERED": "1"},
        )
    try:
        frozen = lambda: [e for e in events() if e["event"] == "startup_heap_frozen"]  # noqa: E731
        assert eventually(frozen), log.read_text()
        names = [e["event"] for e in events()]
        assert names.index("upstream_updated") < names.index("startup_heap_frozen")
        assert names.index("malloc_mmap_threshold_fixed") < names.index("started")
        assert frozen()[0]["objects"] > 10_000  # at least the modules' objects
        env.write({"web": ["10.0.0.2:80"]})  # and it goes on syncing
        assert env.wait_converged()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
    finally:
        proc.kill()
    assert len(frozen()) == 1


def test_run_lifts_the_soft_limit_on_open_files_to_the_hard_one(make_env, tmp_path):
    import resource
    from pathlib import Path

    env = make_env(1)
    env.write({"web": ["10.0.0.1:80"]})
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    expected = str(1 << 20) if hard == resource.RLIM_INFINITY else str(hard)
    log = tmp_path / "syncer.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [
                "sh",
                "-c",
                'ulimit -Sn 256 && exec "$0" -m syncer.cli run -c "$1"',
                sys.executable,
                write_config(env),
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "DYUPS_SYNCER_LOG__LEVEL": "info", "PYTHONUNBUFFERED": "1"},
        )
    try:
        assert env.wait_converged(), log.read_text()
        limits = Path(f"/proc/{proc.pid}/limits").read_text().splitlines()
        files = next(line for line in limits if line.startswith("Max open files"))
        assert files.split()[3] == expected, files
        raised = [
            json.loads(line)
            for line in log.read_text().splitlines()
            if line.startswith("{") and '"descriptor_limit_raised"' in line
        ]
        assert raised and raised[0]["soft"] == 256, log.read_text()
    finally:
        proc.kill()


def test_check_config_on_the_bundled_example():
    from importlib import resources

    path = resources.files("syncer").joinpath("examples/config.yaml")
    assert main(["check-config", "-c", str(path)]) == 0


def test_demo_runs_end_to_end(capsys):
    assert run_demo(listen="127.0.0.1:0") == 0
    out = capsys.readouterr().out
    assert out.count(": done on every worker") == 6, out
    assert "NOT converged" not in out
    assert "0 POSTs" in out
    _ = (eventually, upstreams_yaml, urllib)
