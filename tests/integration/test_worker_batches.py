"""How one worker's batch of writes meets a newer desired state (driven step by step)."""

from __future__ import annotations

import threading

from syncer import log
from syncer.metrics import Metrics
from syncer.model import Server, Upstream
from syncer.plan import Mode
from syncer.proxy.dyups import ClientSettings, DyupsClient, Outcome, WriteResult
from syncer.proxy.pacing import FairSlots
from syncer.proxy.worker import ProxyWorker, WorkerSettings
from syncer.state import Store
from syncer.testing.dyups import DyupsSimulator

from .conftest import eventually


def upstream(name: str, port: int) -> Upstream:
    return Upstream(name, (Server("10.0.0.1", port),))


def two_upstreams() -> Store:
    store = Store(["file"])
    store.publish("file", {"u0": upstream("u0", 8000), "u1": upstream("u1", 8001)})
    return store


def quick_retries(attempts: int, retry_max: float, **extra) -> WorkerSettings:
    """Writes retried `attempts` times, fast; no debounce, no kick."""
    return WorkerSettings(
        debounce=0.0,
        kick_gets=0,
        retry_attempts=attempts,
        retry_initial=0.01,
        retry_max=retry_max,
        **extra,
    )


def worker_for(
    client: DyupsClient,
    store: Store,
    settings: WorkerSettings,
    *,
    label: str = "p0",
    metrics: Metrics | None = None,
    stop: threading.Event | None = None,
    **extra,
) -> ProxyWorker:
    """A worker driven step by step by the test (its thread is never started)."""
    return ProxyWorker(
        label=label,
        client=client,
        store=store,
        settings=settings,
        metrics=metrics or Metrics(),
        log=log.get("test"),
        stop=stop or threading.Event(),
        **extra,
    )


class ChangeOnFirstPost(DyupsClient):
    """A client that, right after its first POST, lets the source change two upstreams:
    the one just written and the last one of the batch."""

    def __init__(self, settings: ClientSettings, change: threading.Event, on_change) -> None:
        super().__init__(settings)
        self._change, self._on_change = change, on_change

    def upsert(self, upstream: Upstream) -> WriteResult:
        result = super().upsert(upstream)
        if not self._change.is_set():
            self._change.set()
            self._on_change()
        return result


def test_a_change_mid_batch_skips_only_the_superseded_write():
    first = {f"u{i}": upstream(f"u{i}", 8000 + i) for i in range(10)}
    second = {**first, "u0": upstream("u0", 9000), "u9": upstream("u9", 9009)}
    store = Store(["file"])
    store.publish("file", first)
    changed = threading.Event()
    metrics = Metrics()
    with DyupsSimulator(workers=1) as sim:
        client = ChangeOnFirstPost(
            ClientSettings(url=sim.url, verify_after_write=False),
            changed,
            lambda: store.publish("file", second),
        )
        worker = worker_for(
            client,
            store,
            WorkerSettings(debounce=0.0, kick_gets=0),
            metrics=metrics,
        )
        try:
            worker.step()  # plans the first version; the second arrives after u0's POST
            held = {name: [s.addr for s in servers] for name, servers in sim.upstreams().items()}
            # The rest of the batch went out; only u9's outdated body was skipped.
            assert held == {f"u{i}": [f"10.0.0.1:{8000 + i}"] for i in range(9)}
            skipped = metrics.registry.get_sample_value(
                "dyups_syncer_changes_superseded_total", {"proxy": "p0"}
            )
            assert skipped == 1
            # Behind the source after that round: its kick may be spaced (a stream).
            assert not worker._kick_now.is_set()
            worker.step()  # plans the second version at once
            held = {name: [s.addr for s in servers] for name, servers in sim.upstreams().items()}
            assert held == {name: [u.servers[0].address] for name, u in second.items()}
            assert sim.stats.posts == 11  # u0..u8, then u0 and u9 again: nothing else
            assert worker._kick_now.is_set()  # caught up: the last kick goes at once
            worker._kick_now.clear()
            worker.reconcile(store.current())  # nothing to write: no kick to hurry
            assert not worker._kick_now.is_set()
        finally:
            client.close()


def test_first_published_after_tells_when_a_burst_began():
    store = Store(["file"])
    assert store.first_published_after(0) is None
    store.publish("file", {"a": upstream("a", 1)})
    v1 = store.current().version
    store.publish("file", {"a": upstream("a", 2)})
    store.publish("file", {"a": upstream("a", 3)})
    after_v1 = store.first_published_after(v1)
    latest = store.first_published_after(v1 + 1)
    assert after_v1 is not None and latest is not None and after_v1 <= latest
    assert store.first_published_after(store.current().version) is None


def test_a_reload_clears_names_no_longer_desired_from_what_the_worker_believes():
    """Owned names waiting for their DELETE that a reload already dropped must not stay
    in the worker's view of the proxy (the breaker would count them as deletes)."""
    store = Store(["file"])
    store.publish("file", {f"u{i}": upstream(f"u{i}", 8000 + i) for i in range(4)})
    metrics = Metrics()
    with DyupsSimulator(workers=1) as sim:
        client = DyupsClient(ClientSettings(url=sim.url))
        worker = worker_for(
            client,
            store,
            WorkerSettings(debounce=0.0, kick_gets=0, mode=Mode.UPSERT_ONLY),
            metrics=metrics,
        )
        try:
            worker.step()
            store.publish("file", {"u0": upstream("u0", 8000)})  # u1..u3 stay (upsert-only)
            worker.step()
            assert set(worker.status()["last_plan"]["deletes"]) == set()
            sim.reload()  # every dynamic upstream is gone
            worker._probe()
            assert worker.status()["held"] == 0  # u0 is re-posted; u1..u3 are forgotten
        finally:
            client.close()


def test_a_delete_refused_on_every_attempt_is_retried_not_forgotten():
    """A DELETE that keeps meeting a busy lock must stay a pending delete: the name is
    still ours and still on the proxy (found by the 100-trial conflict storm)."""
    store = two_upstreams()
    settings = quick_retries(
        2,
        0.05,
        resync_interval=3600.0,  # the repair must not wait for a full re-read
        probe_interval=0.05,  # each step returns within this
    )
    with DyupsSimulator(workers=1, trylock=True) as sim:
        client = DyupsClient(ClientSettings(url=sim.url))
        worker = worker_for(
            client,
            store,
            settings,
        )
        try:
            worker.step()
            assert set(sim.upstreams()) == {"u0", "u1"}
            sim.set_conflict_rate(1.0)
            store.publish("file", {"u0": upstream("u0", 8000)})
            worker.step()  # every attempt of DELETE u1 finds the lock busy
            assert sim.stats.conflicts >= 2 and "u1" in sim.upstreams()
            sim.set_conflict_rate(0.0)
            for _ in range(100):  # each step waits at most the retry backoff
                if "u1" not in sim.upstreams():
                    break
                worker.step()
            assert set(sim.upstreams()) == {"u0"}
        finally:
            client.close()


def test_losing_the_lease_stops_the_retries_of_a_write_in_progress():
    """A write retrying on 409 must not go on once this replica may no longer write
    (lease or shard lost): the new holder writes that proxy now."""
    store = Store(["file"])
    store.publish("file", {"u0": upstream("u0", 8000)})
    leading = threading.Event()
    leading.set()
    settings = WorkerSettings(
        debounce=0.0, kick_gets=0, retry_attempts=50, retry_initial=0.01, retry_max=0.02
    )
    with DyupsSimulator(workers=1, trylock=True) as sim:
        sim.set_conflict_rate(1.0)

        class LoseLeaseOnSecondConflict(DyupsClient):
            posts = 0

            def upsert(self, up: Upstream) -> WriteResult:
                self.posts += 1
                if self.posts == 2:
                    leading.clear()
                return super().upsert(up)

        client = LoseLeaseOnSecondConflict(ClientSettings(url=sim.url, verify_after_write=False))
        worker = worker_for(
            client,
            store,
            settings,
            may_write=leading.is_set,
        )
        try:
            worker.step()
            assert client.posts == 2  # not the 50 attempts allowed
            assert sim.stats.conflicts == 2 and "u0" not in sim.upstreams()
        finally:
            client.close()


def test_kicks_take_a_slot_shared_by_the_workers():
    """With hundreds of proxies, back-to-back kicks crowded out the writes: a kick
    waits for a syncer-wide slot, and a round written meanwhile is covered by it."""
    slots = FairSlots(1)
    inside: list[str] = []
    peak = 0
    first_entered, second_entered = threading.Event(), threading.Event()
    kicked = {"p0": threading.Event(), "p1": threading.Event()}
    lock = threading.Lock()

    class Kicks(DyupsClient):
        def __init__(self, label: str) -> None:
            super().__init__(ClientSettings(url="http://127.0.0.1:9"))
            self.label = label

        def kick(self, count: int) -> int:
            nonlocal peak
            with lock:
                inside.append(self.label)
                peak = max(peak, len(inside))
            if self.label == "p1":
                second_entered.set()
            else:
                first_entered.set()
                # Hold the slot long enough for p1 to enter if the slot did not bind.
                second_entered.wait(1.0)
            with lock:
                inside.remove(self.label)
            kicked[self.label].set()
            return count

    stop = threading.Event()
    workers = [
        worker_for(
            Kicks(label),
            Store(["file"]),
            WorkerSettings(kick_gets=3),
            label=label,
            stop=stop,
            kick_slots=slots,
        )
        for label in ("p0", "p1")
    ]
    threads = [threading.Thread(target=w._kick_loop, daemon=True) for w in workers]
    for t in threads:
        t.start()
    try:
        workers[0]._kick.set()
        assert first_entered.wait(5)  # p0 holds the slot, in its kick
        workers[1]._kick.set()
        assert kicked["p0"].wait(5) and kicked["p1"].wait(5)
        assert peak == 1
    finally:
        stop.set()
        for w in workers:
            w._kick.set()
        for t in threads:
            t.join(5)


class ReloadClosesFirstDelete(DyupsClient):
    """The first DELETE of `name` meets `nginx -s reload`: the proxy reloads (and loses
    its dynamic upstreams) and the DELETE's connection closes without an answer, as the
    client reports it. (Whether a real close or the client's check of an idle
    connection sees the reload first is a race, so the close is reported here.)"""

    def __init__(self, settings: ClientSettings, sim: DyupsSimulator, name: str) -> None:
        super().__init__(settings)
        self._sim, self._name = sim, name
        self.deletes = 0

    def delete(self, name: str, *, fresh: bool = False) -> WriteResult:
        self.deletes += 1
        if name == self._name and self.deletes == 1:
            self._sim.reload()
            return WriteResult(Outcome.CONFLICT, None, "closed without answer", 0.0)
        return super().delete(name, fresh=fresh)


def _conflicts(metrics: Metrics) -> float:
    return metrics.registry.get_sample_value("dyups_syncer_conflicts_total", {"proxy": "p0"}) or 0


def test_a_delete_closed_by_a_reload_is_not_counted_as_a_conflict():
    store = two_upstreams()
    settings = quick_retries(3, 0.02)
    metrics = Metrics()
    with DyupsSimulator(workers=1) as sim:
        client = ReloadClosesFirstDelete(ClientSettings(url=sim.url), sim, "u1")
        worker = worker_for(client, store, settings, metrics=metrics)
        try:
            worker.step()
            assert set(sim.upstreams()) == {"u0", "u1"}
            store.publish("file", {"u0": upstream("u0", 8000)})
            worker.step()
            # The close was the reload's: a retry found u1 gone (404), no conflict. (A
            # retry may first meet another pooled connection the reload closed.)
            assert client.deletes >= 2 and "u1" not in sim.upstreams()
            assert sim.stats.conflicts == 0 and _conflicts(metrics) == 0
        finally:
            client.close()


def test_deletes_closed_by_a_busy_lock_are_each_counted():
    store = two_upstreams()
    settings = quick_retries(3, 0.02, resync_interval=3600.0, probe_interval=0.05)
    metrics = Metrics()
    with DyupsSimulator(workers=1, trylock=True) as sim:
        client = DyupsClient(ClientSettings(url=sim.url))
        worker = worker_for(client, store, settings, metrics=metrics)
        try:
            worker.step()
            sim.set_conflict_rate(1.0)
            store.publish("file", {"u0": upstream("u0", 8000)})
            worker.step()  # three closes in a row, the last with no attempt after it
            assert sim.stats.conflicts == 3 and _conflicts(metrics) == 3
            sim.set_conflict_rate(0.0)
            for _ in range(100):
                if "u1" not in sim.upstreams():
                    break
                worker.step()
            assert "u1" not in sim.upstreams()
            assert _conflicts(metrics) == sim.stats.conflicts == 3
        finally:
            client.close()


def test_under_a_stream_of_writes_kicks_are_spaced_but_a_lone_change_is_kicked_at_once():
    """A round written while a kick runs means a stream: the next kick waits until
    KICK_STREAM_INTERVAL after the last one started, unless the worker has caught up
    (the stream's last round). A write after a quiet spell is kicked at once."""
    from syncer.proxy.worker import KICK_STREAM_INTERVAL

    now = [100.0]
    clock_calls = [0]

    def clock() -> float:
        if threading.current_thread().name.startswith("kick-"):
            clock_calls[0] += 1
        return now[0]

    kicking, release = threading.Event(), threading.Event()
    kicks: list[float] = []

    class Kicks(DyupsClient):
        def kick(self, count: int) -> int:
            kicks.append(now[0])
            kicking.set()
            release.wait(5)
            return count

    stop = threading.Event()
    worker = worker_for(
        Kicks(ClientSettings(url="http://127.0.0.1:9")),
        Store(["file"]),
        WorkerSettings(kick_gets=3),
        stop=stop,
        clock=clock,
    )
    worker.start()  # its proxy is unreachable: only the kicker matters here
    try:
        worker._kick.set()  # a lone write
        assert kicking.wait(5) and kicks == [100.0]
        kicking.clear()
        worker._kick.set()  # a round written while that kick runs: a stream
        release.set()
        # The kicker looks at its clock while it waits; the clock has not moved.
        calls = clock_calls[0]
        assert eventually(lambda: clock_calls[0] >= calls + 3)
        assert kicks == [100.0]
        now[0] += KICK_STREAM_INTERVAL
        assert kicking.wait(5) and kicks == [100.0, 100.0 + KICK_STREAM_INTERVAL]
        kicking.clear()
        # No round during that kick: the next write, after a quiet spell, goes at once.
        now[0] += 0.01
        release.clear()
        worker._kick.set()
        assert kicking.wait(5) and kicks[-1] == now[0]
        kicking.clear()
        worker._kick.set()  # a stream again...
        release.set()
        calls = clock_calls[0]
        assert eventually(lambda: clock_calls[0] >= calls + 3)
        assert len(kicks) == 3
        worker._kick_now.set()  # ...that the worker has caught up with: kicked at once
        assert kicking.wait(5) and len(kicks) == 4 and kicks[-1] == now[0]
    finally:
        stop.set()
        release.set()
        worker._kick.set()
        worker.join(5)


def test_the_kick_connections_are_closed_once_writes_stop(monkeypatch):
    """They are kept alive between the kicks of a stream of writes; after
    KICK_KEEP_CONNECTIONS without a kick they would only hold descriptors."""
    import syncer.proxy.worker as worker_module

    monkeypatch.setattr(worker_module, "KICK_KEEP_CONNECTIONS", 0.05)
    with DyupsSimulator(workers=2) as sim:
        client = DyupsClient(ClientSettings(url=sim.url))
        stop = threading.Event()
        worker = worker_for(client, Store(["file"]), WorkerSettings(kick_gets=8), stop=stop)
        kicker = threading.Thread(target=worker._kick_loop, daemon=True)
        kicker.start()
        try:
            worker._kick.set()
            assert eventually(lambda: sim.stats.gets == 8)
            assert eventually(lambda: sim.connections() == 0)  # quiet: all closed
            assert sim.stats.gets == 8
            worker._kick.set()  # the next write's kick opens new ones
            assert eventually(lambda: sim.stats.gets == 16 and sim.connections() == 0)
        finally:
            stop.set()
            worker._kick.set()
            kicker.join(5)


def test_workers_started_together_spread_their_resyncs():
    """A resync reads and parses the whole /detail: workers started together would do
    it in the same instant, every time, delaying every proxy's next round."""
    from syncer.proxy.worker import RESYNC_JITTER

    now = [50.0]
    with DyupsSimulator(workers=2) as sim:
        workers = [
            worker_for(
                DyupsClient(ClientSettings(url=sim.url)),
                Store(["file"]),
                WorkerSettings(resync_interval=10.0, kick_gets=0),
                label=f"p{i}",
                clock=lambda: now[0],
            )
            for i in range(20)
        ]
        for w in workers:
            w._resync()
            w.client.close()
    due = [w._next_resync - now[0] for w in workers]
    assert all(10.0 * (1 - RESYNC_JITTER) <= d <= 10.0 for d in due), due
    assert max(due) - min(due) > 10.0 * RESYNC_JITTER / 4, due  # spread, not one instant
