"""Network faults towards one proxy of three: connection refused, a proxy that
accepts and never answers, one that answers slowly (under and over the read
timeout), a connection reset in the middle of an answer, and a host name that
does not resolve.

Each scenario injects and heals its fault CYCLES times ($DYUPS_FAULT_TRIALS when
set). In every cycle: the healthy proxies converge on a change while the bad one
is bad (no proxy waits for another: one worker thread each); the bad one
converges once healed; nothing is deleted; no thread is started per attempt and
the syncer's sockets towards the bad proxy stay bounded while it is bad. After
shutdown every thread and socket of the syncer is gone. Times are recorded.

Everything stays on loopback: the host names end in `.invalid` and are resolved by
a stand-in for `socket.getaddrinfo` (the OS boundary), which fails for them as a
resolver answering NXDOMAIN does, or maps a healed one to 127.0.0.1.
"""

from __future__ import annotations

import socket
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from tests.faults.conftest import (
    WAIT,
    client_sockets,
    differences,
    eventually,
    expected,
    lost,
    record,
    syncer_threads,
    trials,
)

BASE = {"web": ["10.0.0.1:80", "10.0.0.2:80"], "api": ["10.0.1.1:9000"], "img": ["10.0.3.1:80"]}
CHANGED = {**BASE, "web": ["10.0.0.1:80", "10.0.0.3:80"], "new": ["10.0.9.1:80"]}
# What the syncer holds open towards one proxy once no kick is due: its idle
# keep-alive pool (4), the worker's request in flight and a kick's GET. (During a
# stream of writes the kick also keeps its connections, kick_gets of them.)
MAX_SOCKETS = 6
CYCLES = trials(2)  # fault → heal cycles per scenario


def change(cycle: int) -> dict[str, list[str]]:
    """The change of cycle `cycle`: `web` gets a new server, `new` appears (once)."""
    return {**CHANGED, "web": ["10.0.0.1:80", f"10.0.0.3:{8000 + cycle}"]}


def proxy(url: str, name: str) -> dict[str, Any]:
    return {
        "url": url,
        "name": name,
        "read_msg_timeout": 0.05,
        "read_timeout": 1.0,
        "connect_timeout": 0.5,
    }


@dataclass
class Resolver:
    """Stands in for getaddrinfo for `*.invalid` names: those in `broken` fail."""

    broken: set[str] = field(default_factory=set)
    queries: Counter[str] = field(default_factory=Counter)


@pytest.fixture
def resolver(monkeypatch) -> Resolver:
    state = Resolver()
    real = socket.getaddrinfo

    def getaddrinfo(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(host, str) and host.endswith(".invalid"):
            state.queries[host] += 1
            if host in state.broken:
                raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
            return real("127.0.0.1", port, *args, **kwargs)
        return real(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return state


@dataclass
class Fault:
    inject: Callable[[], None]
    heal: Callable[[], None]
    port: int  # where the syncer connects to reach the bad proxy
    # Nothing can reach the bad proxy while it is bad (else writes may land late).
    stale_while_bad: bool
    felt: Callable[[], bool]  # the syncer has met the fault since the last inject()
    # A slow proxy that still answers within the read timeout is synced while slow.
    converges_while_bad: bool = False
    from_start: bool = False  # bad before the syncer starts (the first cycle)
    extra_proxies: list[dict[str, Any]] = field(default_factory=list)
    bad_url: str | None = None


def make_fault(kind: str, env, forwarder, resolver: Resolver, worker: Callable[[], Any]) -> Fault:
    """`worker()`: the syncer's worker for the bad proxy (once the syncer runs).
    Counters that tell the fault was felt are taken relative to the last inject()."""
    bad = env.sims[2]
    at_inject: dict[str, int] = {}

    def down() -> bool:
        return worker().up is False

    def since(key: str, now: int) -> int:
        return now - at_inject.get(key, 0)

    if kind == "refused":
        return Fault(bad.go_down, bad.come_up, bad.port, stale_while_bad=True, felt=down)
    if kind == "hang":

        def hang() -> None:
            at_inject["hung"] = bad.stats.hung
            bad.hang(True)

        return Fault(
            hang,
            lambda: bad.hang(False),
            bad.port,
            stale_while_bad=True,
            felt=lambda: since("hung", bad.stats.hung) >= 1 and down(),
        )
    if kind == "slow":

        def slow() -> None:
            at_inject["gets"] = bad.stats.gets
            bad.set_delay(0.3)

        return Fault(
            slow,
            lambda: bad.set_delay(0),
            bad.port,
            stale_while_bad=False,
            felt=lambda: since("gets", bad.stats.gets) >= 1,  # answered, slowly
            converges_while_bad=True,
        )
    if kind == "slower than read_timeout":
        return Fault(
            lambda: bad.set_delay(2.0), lambda: bad.set_delay(0), bad.port, False, felt=down
        )
    if kind in ("reset mid-response", "closed mid-response"):
        fwd = forwarder(bad.port)

        def half() -> None:
            at_inject["cut"] = fwd.cut
            fwd.mode = "half-rst" if kind.startswith("reset") else "half-fin"

        def whole() -> None:
            fwd.mode = "pass"

        return Fault(
            half,
            whole,
            fwd.port,
            stale_while_bad=False,
            felt=lambda: since("cut", fwd.cut) >= 1 and down(),
            bad_url=fwd.url,
        )
    if kind == "dns":
        name = "flaky-dns.invalid"

        def unresolvable() -> None:
            at_inject["queries"] = resolver.queries[name]
            resolver.broken.update({name, "nonexistent.invalid"})
            # Connections opened while the name resolved would outlive the fault:
            # cut them (as when the name moved away), so that the next one must
            # resolve the name.
            bad.go_down()
            bad.come_up()

        return Fault(
            unresolvable,
            lambda: resolver.broken.discard(name),
            bad.port,
            stale_while_bad=True,
            felt=lambda: since("queries", resolver.queries[name]) >= 1 and down(),
            from_start=True,
            # and one that never resolves, for the whole test
            extra_proxies=[proxy("http://nonexistent.invalid:8081", "p3")],
            bad_url=f"http://{name}:{bad.port}",
        )
    raise AssertionError(kind)


@pytest.mark.parametrize(
    "kind",
    [
        "refused",
        "hang",
        "slow",
        "slower than read_timeout",
        "reset mid-response",
        "closed mid-response",
        "dns",
    ],
)
def test_a_bad_proxy_delays_no_other_and_leaks_nothing(make_env, forwarder, resolver, kind):
    env = make_env(3)
    env.write(BASE)
    apps = []
    fault = make_fault(kind, env, forwarder, resolver, lambda: apps[0].workers[2])
    bad, healthy = env.sims[2], env.sims[:2]
    urls = [s.url for s in healthy] + [fault.bad_url or bad.url]
    proxies = [proxy(u, f"p{i}") for i, u in enumerate(urls)] + fault.extra_proxies
    threads_before = syncer_threads()
    if fault.from_start:
        fault.inject()
    app = env.start(proxies={"static": proxies})
    apps.append(app)
    threads_running = syncer_threads()
    worker = app.workers[2]
    if fault.from_start:
        assert env.wait_converged(healthy)
    else:
        assert env.wait_converged()
    samples: dict[str, list[float | None]] = {
        "healthy_converged_s": [],
        "bad_converged_s_while_bad": [],
        "bad_repaired_s_after_heal": [],
    }
    sockets: list[int] = []
    for cycle in range(CYCLES):
        if cycle or not fault.from_start:
            fault.inject()
        assert eventually(fault.felt), (cycle, worker.status())

        env.write(change(cycle))
        started = time.monotonic()
        assert env.wait_converged(healthy), cycle
        samples["healthy_converged_s"].append(time.monotonic() - started)
        if fault.stale_while_bad:
            assert not env.converged(bad), cycle
        if fault.converges_while_bad:
            assert env.wait_converged([bad]), cycle
            samples["bad_converged_s_while_bad"].append(time.monotonic() - started)
        # Let the bad proxy stay bad for a while (about a resync interval of the others).
        gets = healthy[0].stats.gets
        assert healthy[0].wait_until(lambda s, n=gets: s.stats.gets >= n + 15, WAIT)
        # The kick's connections stay open for KICK_KEEP_CONNECTIONS after the last
        # kick; a leak would never go back down.
        assert eventually(lambda: client_sockets(fault.port) <= MAX_SOCKETS), (
            cycle,
            client_sockets(fault.port),
        )
        sockets.append(client_sockets(fault.port))
        assert not syncer_threads() - threads_running, cycle  # no thread per attempt
        assert app.healthy()[0], app.healthy()[1]

        fault.heal()
        started = time.monotonic()
        assert env.wait_converged(), (cycle, worker.status())
        samples["bad_repaired_s_after_heal"].append(time.monotonic() - started)
        assert eventually(lambda: worker.up is True), (cycle, worker.status())
        assert all(s.stats.deletes == 0 for s in env.sims), cycle
    left = [d for s in env.sims for d in differences(s, expected(env.desired(), s))]
    assert not left  # lost: 0

    app.shutdown()
    assert eventually(lambda: not syncer_threads() - threads_before), syncer_threads()
    ports = [s.port for s in env.sims] + [fault.port]
    assert eventually(lambda: all(client_sockets(p) == 0 for p in ports)), [
        client_sockets(p) for p in ports
    ]
    assert eventually(lambda: all(s.connections() == 0 for s in env.sims))
    record(
        f"network {kind}",
        trials=CYCLES,
        converged=len(samples["bad_repaired_s_after_heal"]),
        lost=lost(left),
        syncer_sockets_to_bad_while_bad_max=max(sockets),
        hung_requests=bad.stats.hung,
        dns_queries=sum(resolver.queries.values()),
        samples={k: v for k, v in samples.items() if v},
    )
