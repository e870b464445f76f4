"""`dyups-syncer demo`: the daemon against two simulated proxies and the bundled example.

No cluster, Consul or nginx needed. Prints what happened at each step.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Callable
from importlib import resources
from pathlib import Path

from syncer.app import App
from syncer.config import Config, FileSourceConfig, ProxiesConfig, ProxyConfig
from syncer.model import Upstream
from syncer.testing.dyups import DyupsSimulator

STEP_TIMEOUT = 15.0


def _holds(sim: DyupsSimulator, desired: dict[str, Upstream], workers: int) -> bool:
    """Every nginx worker of `sim` holds exactly the desired servers and parameters."""
    want = {
        name: sorted(
            (s.address, s.weight, s.max_fails, s.fail_timeout, s.backup, s.down) for s in u.servers
        )
        for name, u in desired.items()
    }
    for worker in range(workers):
        held = {
            name: sorted(
                (s.addr, s.weight, s.max_fails, s.fail_timeout, s.backup, s.down) for s in servers
            )
            for name, servers in sim.upstreams(worker).items()
            if name != "static_be"
        }
        if held != want:
            return False
    return True


def _metric(app: App, name: str, labels: dict[str, str] | None = None) -> float:
    return app.metrics.registry.get_sample_value(name, labels or {}) or 0.0


def run_demo(*, listen: str = "127.0.0.1:9105", keep_running: bool = False) -> int:
    workdir = Path(tempfile.mkdtemp(prefix="dyups-syncer-demo-"))
    source = workdir / "upstreams.yaml"
    example = resources.files("syncer").joinpath("examples/upstreams.yaml").read_text()
    source.write_text(example)
    workers = 2
    sims = [
        DyupsSimulator(
            workers=workers, static={"static_be": "server 127.0.0.1:18091;"}, read_msg_timeout=1.0
        ).start()
        for _ in range(2)
    ]
    config = Config(
        sources=[FileSourceConfig(type="file", path=source, poll_interval=0.1)],
        proxies=ProxiesConfig(
            static=[ProxyConfig(url=s.url, name=f"proxy-{i + 1}") for i, s in enumerate(sims)]
        ),
        snapshot_path=workdir / "snapshot.json",
        debounce=0.05,
        probe_interval=0.5,
        listen=listen,
    )
    app = App(config)
    try:
        app.start()
        assert app.http is not None
        host, port = app.http.address
        status_url = f"http://{host}:{port}"
        print(f"dyups-syncer demo: 2 simulated proxies ({', '.join(s.url for s in sims)}),")
        print(f"  file source {source}, metrics on {status_url}/metrics")

        def step(title: str, change: Callable[[], None]) -> None:
            started = time.monotonic()
            change()
            want = dict(app.store.current().upstreams)
            ok = all(
                sim.wait_until(lambda s: _holds(s, want, workers), STEP_TIMEOUT) for sim in sims
            )
            took = (time.monotonic() - started) * 1000
            verdict = "done" if ok else "NOT converged"
            print(f"- {title}: {verdict} on every worker of both proxies in {took:.0f} ms")

        def edit(old: str, new: str) -> Callable[[], None]:
            def apply() -> None:
                before = app.store.current().version
                source.write_text(source.read_text().replace(old, new))
                app.store.wait_newer(before, STEP_TIMEOUT)

            return apply

        def wait_ready() -> None:
            app.store.wait_newer(0, STEP_TIMEOUT)

        step("initial sync of web and api", wait_ready)
        step(
            "add a server to api",
            edit("      - 10.0.1.11:9000\n", "      - 10.0.1.11:9000\n      - 10.0.1.12:9000\n"),
        )
        step("change web's weights", edit("weight: 3", "weight: 5"))
        step(
            "add upstream 'search'",
            edit("upstreams:\n", "upstreams:\n  search:\n    servers: [10.0.2.5:7700]\n"),
        )
        step("remove upstream 'search'", edit("  search:\n    servers: [10.0.2.5:7700]\n", ""))
        step("proxy-1 reloads nginx and loses every dynamic upstream", sims[0].reload)
        repairs = _metric(
            app, "dyups_syncer_drift_repairs_total", {"proxy": "proxy-1", "reason": "lost"}
        )
        print(f"  drift repairs counted for proxy-1: {repairs:.0f}")
        before = {i: sims[i].stats.posts for i in range(2)}
        idle = 2.0
        time.sleep(idle)  # demonstrating the steady state: nothing changes for a while
        posts = sum(sims[i].stats.posts - before[i] for i in range(2))
        print(f"- steady state for {idle:.0f} s: {posts} POSTs (a POST resets balancer state)")
        lag_count = sum(
            _metric(app, "dyups_syncer_sync_lag_seconds_count", {"proxy": w.label})
            for w in app.workers
        )
        lag_sum = sum(
            _metric(app, "dyups_syncer_sync_lag_seconds_sum", {"proxy": w.label})
            for w in app.workers
        )
        if lag_count:
            print(
                f"- sync lag: {lag_count:.0f} changes accepted, mean {1000 * lag_sum / lag_count:.1f} ms"
            )
        print(f"- state: curl {status_url}/state ; ready: {app.ready()[0]}")
        if keep_running:
            print("running; Ctrl-C to stop")
            while True:
                time.sleep(3600)
        return 0
    except KeyboardInterrupt:
        return 0
    finally:
        app.shutdown()
        for sim in sims:
            sim.stop()
        shutil.rmtree(workdir, ignore_errors=True)
