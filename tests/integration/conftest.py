"""Fixtures: simulated proxies, a file source and a daemon wired to them (fast timers)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from syncer.app import App
from syncer.config import Config
from syncer.model import Upstream
from syncer.sources.file import parse_document
from syncer.testing.dyups import DyupsSimulator

STATIC = {"static_be": "server 127.0.0.1:18091;"}
WAIT = 20.0  # generous upper bound for a condition; tests wait on conditions, never sleep


def upstreams_yaml(spec: dict[str, list[str]]) -> str:
    return yaml.safe_dump({"upstreams": {n: {"servers": s} for n, s in spec.items()}})


def sim_view(sim: DyupsSimulator, worker: int) -> dict[str, tuple]:
    return {
        name: tuple(
            sorted(
                (s.addr, s.weight, s.max_fails, s.fail_timeout, s.backup, s.down) for s in servers
            )
        )
        for name, servers in sim.upstreams(worker).items()
    }


def want_view(
    desired: dict[str, Upstream], static: dict[str, tuple] | None = None
) -> dict[str, tuple]:
    out = dict(static or {})
    for name, u in desired.items():
        out[name] = tuple(
            sorted(
                (s.address, s.weight, s.max_fails, s.fail_timeout, s.backup, s.down)
                for s in u.servers
            )
        )
    return out


STATIC_VIEW = {"static_be": (("127.0.0.1:18091", 1, 1, 10, False, False),)}


class Env:
    def __init__(self, tmp_path: Path, sims: list[DyupsSimulator]) -> None:
        self.tmp = tmp_path
        self.sims = sims
        self.file = tmp_path / "upstreams.yaml"
        self.snapshot = tmp_path / "snapshot.json"
        self.apps: list[App] = []

    def write(self, spec: dict[str, list[str]] | str) -> None:
        text = spec if isinstance(spec, str) else upstreams_yaml(spec)
        tmp = self.file.with_suffix(".tmp")
        tmp.write_text(text)
        tmp.replace(self.file)  # atomic, like a ConfigMap update

    def config(self, **overrides) -> Config:
        proxies = [
            {
                "url": s.url,
                "name": f"p{i}",
                "read_msg_timeout": 0.05,
                "read_timeout": 1.0,
                "connect_timeout": 0.5,
                "shm_zone_size": s.shm_zone_size,
            }
            for i, s in enumerate(self.sims)
        ]
        data = {
            "sources": [{"type": "file", "path": str(self.file), "poll_interval": 0.02}],
            "proxies": {"static": proxies},
            "snapshot_path": str(self.snapshot),
            "debounce": 0,
            "probe_interval": 0.1,
            "resync_interval": 1.0,
            "listen": "127.0.0.1:0",
        }
        data.update(overrides)
        return Config.model_validate(data)

    def start(self, **overrides) -> App:
        app = App(self.config(**overrides))
        app.start(serve_http=False)
        self.apps.append(app)
        return app

    def desired(self) -> dict[str, Upstream]:
        return parse_document(self.file.read_text(), origin="test")

    def converged(self, sim: DyupsSimulator, desired: dict[str, Upstream] | None = None) -> bool:
        want = want_view(
            self.desired() if desired is None else desired,
            STATIC_VIEW if sim.flavour == "classic" else None,
        )
        return all(sim_view(sim, w) == want for w in range(sim.workers))

    def wait_converged(self, sims: list[DyupsSimulator] | None = None, desired=None) -> bool:
        # Parse the file once: the predicate runs on every simulator change.
        desired = self.desired() if desired is None else desired
        return all(
            s.wait_until(lambda x: self.converged(x, desired), WAIT) for s in (sims or self.sims)
        )


@pytest.fixture
def make_env(tmp_path) -> Iterator:
    envs: list[Env] = []
    sims_all: list[DyupsSimulator] = []

    def factory(n: int = 3, **sim_kwargs) -> Env:
        kwargs = {"workers": 2, "static": STATIC, "read_msg_timeout": 0.05, "seed": 7}
        kwargs.update(sim_kwargs)
        sims = [DyupsSimulator(**kwargs).start() for _ in range(n)]
        sims_all.extend(sims)
        env = Env(tmp_path, sims)
        envs.append(env)
        return env

    yield factory
    for env in envs:
        for app in env.apps:
            with contextlib.suppress(Exception):
                app.shutdown()
    for sim in sims_all:
        sim.stop()


def eventually(predicate, timeout: float = WAIT, interval: float = 0.005) -> bool:
    """Wait for a condition of the daemon (not of a simulator, whose own wait_until is
    woken by its state changes): re-check it often until it holds or time runs out."""
    import time

    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(interval)
    return True


def metric(app: App, name: str, **labels: str) -> float:
    return app.metrics.registry.get_sample_value(name, labels) or 0.0


def zoned_proxies(env, zones):
    """`proxies.static` for env's simulators, the i-th one in zone `zones[i]`."""
    return {
        "static": [
            {
                "url": sim.url,
                "name": f"p{i}",
                "zone": zone,
                "read_msg_timeout": 0.05,
                "read_timeout": 1.0,
                "connect_timeout": 0.5,
                "shm_zone_size": sim.shm_zone_size,
            }
            for i, (sim, zone) in enumerate(zip(env.sims, zones, strict=True))
        ]
    }


def roles(sim, name):
    """Each server's role on every worker of `sim` (they must agree)."""
    views = [
        {s.addr: "down" if s.down else "backup" if s.backup else "primary" for s in servers}
        for servers in (sim.upstreams(w).get(name, []) for w in range(sim.workers))
    ]
    return views[0] if all(v == views[0] for v in views) else None
