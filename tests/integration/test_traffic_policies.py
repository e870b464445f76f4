"""Traffic policies end to end: store → per-proxy policy → plan → simulated proxies."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator

import pytest

from syncer import log
from syncer.metrics import Metrics
from syncer.model import EmptyPolicy, Server, TrafficPolicy, Upstream
from syncer.proxy.dyups import ClientSettings, DyupsClient
from syncer.proxy.worker import ProxyWorker, WorkerSettings
from syncer.state import Store
from syncer.testing.dyups import DyupsSimulator

from .conftest import WAIT

ZONE_AWARE = TrafficPolicy(zone_aware=True, min_local=2)


def zoned(host: str, zone: str, **kw) -> Server:
    return Server(host, 80, zone=zone, **kw)


class Fleet:
    """Simulated proxies, one per zone, each driven by its own worker thread."""

    def __init__(self, store: Store, zones: list[str]) -> None:
        self.store = store
        self.zones = zones
        self.sims: dict[str, DyupsSimulator] = {}
        self.workers: dict[str, ProxyWorker] = {}
        self.stop = threading.Event()
        self.metrics = Metrics()

    def roles(self, zone: str, name: str) -> dict[str, str]:
        """Each server's role on the proxy of `zone`: primary, backup or down."""
        servers = self.sims[zone].upstreams().get(name, [])
        return {s.addr: "down" if s.down else "backup" if s.backup else "primary" for s in servers}

    def weights(self, zone: str, name: str) -> dict[str, int]:
        return {s.addr: s.weight for s in self.sims[zone].upstreams().get(name, [])}

    def wait(self, zone: str, predicate) -> bool:
        return self.sims[zone].wait_until(lambda _: predicate(), WAIT)


@pytest.fixture
def fleet_of() -> Iterator:
    stack = contextlib.ExitStack()

    def make(store: Store, zones: list[str], wall=time.time) -> Fleet:
        fleet = Fleet(store, zones)
        for zone in zones:
            sim = stack.enter_context(DyupsSimulator(workers=1))
            client = DyupsClient(ClientSettings(url=sim.url))
            worker = ProxyWorker(
                label=f"proxy-{zone}",
                client=client,
                store=store,
                settings=WorkerSettings(debounce=0.0, kick_gets=0, zone=zone),
                metrics=fleet.metrics,
                log=log.get("test"),
                stop=fleet.stop,
                wall=wall,
            )
            fleet.sims[zone], fleet.workers[zone] = sim, worker
            worker.start()

        def shutdown() -> None:
            fleet.stop.set()
            store.wake()
            for worker in fleet.workers.values():
                worker.join(5)

        stack.callback(shutdown)
        return fleet

    with stack:
        yield make


def test_each_zone_gets_its_own_primaries_and_a_zone_outage_flips_all_primary(fleet_of):
    servers = (
        zoned("10.0.1.1", "a"),
        zoned("10.0.1.2", "a"),
        zoned("10.0.2.1", "b"),
        zoned("10.0.2.2", "b"),
    )
    store = Store(["src"])
    store.publish("src", {"web": Upstream("web", servers, traffic=ZONE_AWARE)})
    fleet = fleet_of(store, ["a", "b"])
    local_a = {"10.0.1.1:80": "primary", "10.0.1.2:80": "primary"}
    local_b = {"10.0.2.1:80": "primary", "10.0.2.2:80": "primary"}
    backup_a = {k: "backup" for k in local_a}
    backup_b = {k: "backup" for k in local_b}
    assert fleet.wait("a", lambda: fleet.roles("a", "web") == {**local_a, **backup_b})
    assert fleet.wait("b", lambda: fleet.roles("b", "web") == {**backup_a, **local_b})
    explained = fleet.workers["a"].status()["traffic"]["web"]["servers"]
    assert explained["10.0.2.1:80"]["role"] == "backup"

    # Zone a loses one of its two endpoints: fewer than min_local, so proxy a keeps
    # every server primary; proxy b still has its two local ones.
    store.publish("src", {"web": Upstream("web", servers[1:], traffic=ZONE_AWARE)})
    everything_primary = {"10.0.1.2:80": "primary", **local_b}
    assert fleet.wait("a", lambda: fleet.roles("a", "web") == everything_primary)
    assert fleet.wait("b", lambda: fleet.roles("b", "web") == {"10.0.1.2:80": "backup", **local_b})


def test_a_proxy_without_zone_or_a_policy_off_gets_the_upstream_as_is(fleet_of):
    servers = (zoned("10.0.1.1", "a"), zoned("10.0.1.2", "a"), zoned("10.0.2.1", "b"))
    store = Store(["src"])
    store.publish(
        "src",
        {
            "zoned": Upstream("zoned", servers, traffic=ZONE_AWARE),
            "plain": Upstream("plain", servers),
        },
    )
    fleet = fleet_of(store, ["", "a"])
    as_is = {s.address: "primary" for s in servers}
    assert fleet.wait("", lambda: fleet.roles("", "zoned") == as_is)
    assert fleet.wait("a", lambda: fleet.roles("a", "plain") == as_is)
    assert fleet.wait("a", lambda: fleet.roles("a", "zoned").get("10.0.2.1:80") == "backup")


def test_slow_start_ramps_a_new_endpoint_in_steps(fleet_of):
    now = [1000.0]  # the policies' clock, moved by the test
    ramp = TrafficPolicy(slow_start=0.4, slow_start_steps=3)
    old = Server("10.0.0.1", 80, weight=9)
    new = Server("10.0.0.2", 80, weight=9)
    store = Store(["src"], clock=lambda: now[0])
    store.publish("src", {"web": Upstream("web", (old,), traffic=ramp)})
    fleet = fleet_of(store, ["a"], wall=lambda: now[0])
    assert fleet.wait("a", lambda: fleet.weights("a", "web") == {"10.0.0.1:80": 9})
    store.publish("src", {"web": Upstream("web", (old, new), traffic=ramp)})
    # Enters at 9/3, 6 halfway, 9 at slow_start; the endpoint that was there stays at 9.
    for step, weight in [(0.0, 3), (0.2, 6), (0.2, 9)]:
        now[0] += step
        want = {"10.0.0.1:80": 9, "10.0.0.2:80": weight}
        assert fleet.wait("a", lambda want=want: fleet.weights("a", "web") == want)
    posted = [e.body for e in fleet.sims["a"].applied if e.name == "web" and e.body]
    assert len(posted) == 4  # the first body, then one POST per step


def test_an_empty_service_gets_its_fallback_and_keeps_its_upstream(fleet_of):
    maintenance = Server("127.0.0.1", 8081)
    policy = TrafficPolicy(empty=EmptyPolicy.FALLBACK, fallback=(maintenance,))
    store = Store(["src"])
    web = Upstream("web", (Server("10.0.0.1", 80),), traffic=policy)
    store.publish("src", {"web": web})
    fleet = fleet_of(store, ["a"])
    assert fleet.wait("a", lambda: fleet.roles("a", "web") == {"10.0.0.1:80": "primary"})
    # The source keeps the last known upstream and flags it held empty.
    store.publish("src", {"web": web}, held_empty={"web"})
    assert fleet.wait("a", lambda: fleet.roles("a", "web") == {"127.0.0.1:8081": "primary"})
    store.publish("src", {"web": web})  # endpoints are back
    assert fleet.wait("a", lambda: fleet.roles("a", "web") == {"10.0.0.1:80": "primary"})


def test_a_draining_endpoint_stays_as_backup_only_for_drain_seconds(fleet_of):
    # The policies' clock is ours: the drain ends when the test says, not when a
    # loaded machine happens to get there.
    now = [1000.0]
    policy = TrafficPolicy(drain_as_backup=True, drain_seconds=0.2)
    ready = Server("10.0.0.1", 80)
    store = Store(["src"], clock=lambda: now[0])
    store.publish("src", {"web": Upstream("web", (ready, Server("10.0.0.2", 80)), traffic=policy)})
    fleet = fleet_of(store, ["a"], wall=lambda: now[0])
    both = {"10.0.0.1:80": "primary", "10.0.0.2:80": "primary"}
    assert fleet.wait("a", lambda: fleet.roles("a", "web") == both)
    draining = Server("10.0.0.2", 80, draining=True)
    store.publish("src", {"web": Upstream("web", (ready, draining), traffic=policy)})
    # It leaves primary rotation at once, as a backup...
    as_backup = {"10.0.0.1:80": "primary", "10.0.0.2:80": "backup"}
    assert fleet.wait("a", lambda: fleet.roles("a", "web") == as_backup)
    # ...until drain_seconds have passed (the worker re-plans at the drain's end).
    now[0] += 0.2
    assert fleet.wait("a", lambda: fleet.roles("a", "web") == {"10.0.0.1:80": "primary"})
