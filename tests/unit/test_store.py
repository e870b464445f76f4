import json

import pytest

from syncer.model import Server, Upstream
from syncer.snapshot import SnapshotError, SnapshotWriter, load, write_atomic
from syncer.state import Store


def up(name, ip="10.0.0.1"):
    return Upstream(name, (Server(ip, 80),))


def test_not_ready_until_every_source_read():
    s = Store(["a", "b"])
    assert not s.current().ready
    s.publish("a", {"x": up("x")})
    assert not s.current().ready
    s.publish("b", {})
    assert s.current().ready and not s.current().restoring


def test_names_belong_to_one_source():
    s = Store(["a", "b"])
    s.publish("a", {"x": up("x")})
    r = s.publish("b", {"x": up("x", "10.0.0.2"), "y": up("y")})
    assert r.collisions == ("x",)
    assert s.current().upstreams["x"].servers[0].host == "10.0.0.1"


def test_changed_at_and_removals_are_tracked():
    t = [100.0]
    s = Store(["a"], clock=lambda: t[0])
    s.publish("a", {"x": up("x"), "y": up("y")}, changed_at=50.0)
    assert s.current().changed_at["x"] == 50.0
    t[0] = 200.0
    r = s.publish("a", {"x": up("x")})
    assert r.removed == ("y",) and s.current().changed_at["y"] == 200.0
    v = s.current().version
    s.publish("a", {"x": up("x")})  # nothing changed: no new version
    assert s.current().version == v


def test_empty_result_keeps_last_known_unless_allowed():
    s = Store(["a"])
    s.publish("a", {"x": up("x")})
    assert s.publish("a", {}).held_empty and "x" in s.current().upstreams
    s2 = Store(["a"], allow_empty=True)
    s2.publish("a", {"x": up("x")})
    s2.publish("a", {})
    assert not s2.current().upstreams


def test_snapshot_round_trip_restores_and_marks_restoring(tmp_path):
    s = Store(["a"])
    s.publish("a", {"x": up("x")})
    s.claim("http://p", ["x"])
    s.record_applied("http://p", "x", "abc")
    path = tmp_path / "snap.json"
    write_atomic(path, s.snapshot().to_json())
    s2 = Store(["a"])
    assert s2.restore(load(path)) == []
    cur = s2.current()
    assert cur.ready and cur.restoring and "x" in cur.upstreams
    assert s2.proxy_record("http://p").owned == {"x"}
    assert s2.proxy_record("http://p").applied == {"x": "abc"}
    # the live source then says nothing: held, not wiped
    s2.publish("a", {})
    assert "x" in s2.current().upstreams and not s2.current().restoring


@pytest.mark.parametrize("content", ["", "{", "[]", json.dumps({"format": 99})])
def test_corrupt_snapshot_is_an_error_not_a_crash(tmp_path, content):
    path = tmp_path / "snap.json"
    path.write_text(content)
    with pytest.raises(SnapshotError):
        load(path)


def test_snapshot_entries_that_fail_validation_are_skipped(tmp_path):
    s = Store(["a"])
    data = s.snapshot()
    data.sources["a"] = {"x": "server 1.2.3.4;;", "y": "server 1.2.3.4:80 weight=2;"}
    problems = s.restore(data)
    assert len(problems) == 1 and "x" in problems[0]
    assert set(s.current().upstreams) == {"y"}


def test_writer_coalesces_and_flushes_on_stop(tmp_path):
    s = Store(["a"])
    path = tmp_path / "snap.json"
    writer = SnapshotWriter(path, s.snapshot, delay=0.01)
    writer.start()
    s.publish("a", {"x": up("x")})
    writer.mark_dirty()
    writer.stop()
    assert "x" in load(path).sources["a"]
    assert writer.writes >= 1
    assert not list(tmp_path.glob(".snap.json.*"))  # no temp file left behind


def test_write_failure_is_reported_not_raised(tmp_path):
    errors = []
    blocker = tmp_path / "file"
    blocker.write_text("x")
    writer = SnapshotWriter(blocker / "snap.json", Store(["a"]).snapshot, on_error=errors.append)
    assert writer.write_now() is False and errors


def test_concurrent_durable_writes_share_one_write(tmp_path):
    import threading

    s = Store(["a"])
    gate = threading.Event()
    produced = []

    def produce():
        produced.append(1)
        gate.wait(5)
        return s.snapshot()

    writer = SnapshotWriter(tmp_path / "snap.json", produce)
    first = threading.Thread(target=writer.write_now)
    first.start()
    assert eventually_true(lambda: produced)
    s.claim("p", ["late"])  # made while the first write runs: needs a later write
    waiters = [threading.Thread(target=writer.write_now) for _ in range(5)]
    for w in waiters:
        w.start()
    gate.set()
    first.join(5)
    for w in waiters:
        w.join(5)
    assert writer.writes == 2  # the five waiters shared one write
    assert load(tmp_path / "snap.json").proxies["p"]["owned"] == ["late"]


def eventually_true(predicate, timeout=5.0):
    import time

    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.001)
    return True


def test_snapshot_keeps_what_traffic_policies_read():
    """A restart with the source down must plan the same per-proxy upstreams: the
    policy, zones, hints and draining flags survive the snapshot (bodies alone do not)."""
    import json

    from syncer.model import EmptyPolicy, Server, TrafficPolicy, Upstream
    from syncer.snapshot import SnapshotData

    policy = TrafficPolicy(
        zone_aware=True,
        slow_start=30.0,
        empty=EmptyPolicy.FALLBACK,
        fallback=(Server("127.0.0.1", 8081),),
        drain_as_backup=True,
    )
    servers = (
        Server("10.0.0.1", 80, zone="a", node="n1", for_zones=("a", "b")),
        Server("10.0.0.2", 80, zone="b", draining=True),
    )
    policed = Upstream("web", servers, traffic=policy)
    plain = Upstream("api", (Server("10.0.1.1", 80, zone="a"),))
    first = Store(["src"])
    first.publish("src", {"web": policed, "api": plain})
    data = first.snapshot()
    assert data.sources["src"]["api"] == plain.body  # no policy: the body alone
    second = Store(["src"])
    loaded = json.loads(data.to_json())
    assert second.restore(SnapshotData(loaded["sources"], loaded["proxies"])) == []
    restored = second.current().upstreams["web"]
    assert restored == policed and restored.traffic == policy
    assert [(s.zone, s.node, s.for_zones, s.draining) for s in restored.servers] == [
        ("a", "n1", ("a", "b"), False),
        ("b", "", (), True),
    ]


def test_a_malformed_policy_entry_in_the_snapshot_is_skipped_not_fatal():
    from syncer.snapshot import SnapshotData

    store = Store(["src"])
    bad = {"body": "server 10.0.0.1:80;", "traffic": {"empty": "explode"}, "servers": {}}
    problems = store.restore(SnapshotData({"src": {"web": bad}}, {}))
    assert len(problems) == 1 and "web" in problems[0]
    assert "web" not in store.current().upstreams


def test_a_single_lease_record_replaces_the_last_one():
    store = Store(["src"])
    store.import_ownership({"owned": ["web", "api"], "foreign": {"p0": ["api"]}})
    assert store.proxy_record("p0").owned == {"web"}
    store.import_ownership({"owned": ["api"], "foreign": {}})
    assert store.proxy_record("p0").owned == {"api"}
    assert store.export_ownership() == {"owned": ["api"], "foreign": {}}


def test_records_of_several_leases_merge_and_each_replaces_only_its_own():
    """Shards: each Lease's holder publishes its record; a name owned in any record is
    shared, one foreign on a proxy in any record stays foreign there."""
    store = Store(["src"])
    store.import_ownership({"owned": ["web"], "foreign": {"p1": ["old"]}}, "syncer-0")
    store.import_ownership({"owned": ["api", "old"], "foreign": {}}, "syncer-1")
    assert store.proxy_record("p0").owned == {"web", "api", "old"}
    assert store.proxy_record("p1").owned == {"web", "api"}
    store.import_ownership({"owned": ["api"], "foreign": {}}, "syncer-1")  # syncer-1 again
    assert store.proxy_record("p0").owned == {"web", "api"}
    store.import_ownership({"owned": [], "foreign": {}}, "syncer-0")
    assert store.proxy_record("p1").owned == {"api"}
    assert store.export_ownership() == {"owned": ["api"], "foreign": {}}
