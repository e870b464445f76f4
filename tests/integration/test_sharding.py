"""Sharded leader election: several in-process syncers share the proxies through one
Lease per shard on the fake API server (real client, real wire protocol), driving
simulated proxies. Each proxy must have exactly one writer, the shards must be spread
evenly, and a replica leaving, crashing or joining must move shards, not lose them."""

from __future__ import annotations

import urllib.request

import pytest

from syncer.app import App
from syncer.leadership import encode_payload
from syncer.sharding import shard_of
from tests.fakes import kube_objects as ko
from tests.fakes.kube_api import FakeKubeAPI

from .conftest import eventually, metric
from .test_kubernetes import eps, kube_config, opted_in, slice_of, up

NS = "dyups"
LEASE = "dyups-syncer"
# Long enough that a loaded machine never lets a Lease lapse mid-test (the shards
# must not move unless a test moves them); hand-overs below are releases.
STEADY = {"lease_duration": 8.0, "renew_deadline": 5.0, "retry_period": 0.1}


@pytest.fixture
def kube():
    with FakeKubeAPI(bookmark_interval=0.2) as api:
        yield api


def start(env, kube, identity: str, shards: int, **timings: float) -> App:
    return env.start(
        **kube_config(env, kube),
        snapshot_path=str(env.tmp / f"snapshot-{identity}.json"),
        leader_election={
            "enabled": True,
            "namespace": NS,
            "identity": identity,
            "shards": shards,
            "client": {"api_url": kube.url},
            **(timings or STEADY),
        },
    )


def held(app: App) -> set[int]:
    return set(app.elector.held())


def balanced(apps: list[App], shards: int) -> bool:
    """Every shard held by exactly one replica, each holding floor or ceil of its share,
    and each seeing every other one as a live member."""
    holdings = [held(a) for a in apps]
    low, high = shards // len(apps), -(-shards // len(apps))
    return (
        sum(len(h) for h in holdings) == shards
        and set().union(*holdings) == set(range(shards))
        and all(low <= len(h) <= high for h in holdings)
        and all(len(a.elector.status()["members"]) == len(apps) for a in apps)
    )


def writer(apps: list[App], proxy: str, shards: int) -> App:
    (holder,) = [a for a in apps if shard_of(proxy, shards) in held(a)]
    return holder


def posts(app: App, proxy: str) -> float:
    return metric(app, "dyups_syncer_requests_total", proxy=proxy, method="POST", outcome="applied")


def publish(kube, *ips: str) -> None:
    kube.apply(opted_in("web"))
    kube.apply(slice_of("web-a", endpoints=eps(*ips)))


def assert_one_writer_per_proxy(env, apps: list[App], shards: int) -> None:
    """Each proxy was written only by the holder of its shard, every POST it received
    came from that holder, and every replica with a shard wrote some proxy."""
    pairs = [(f"p{i}", sim) for i, sim in enumerate(env.sims)]
    # A POST is counted once its answer is read, a moment after the proxy applied it.
    assert eventually(
        lambda: all(posts(writer(apps, p, shards), p) == sim.stats.posts for p, sim in pairs)
    )
    writers = set()
    for proxy, sim in pairs:
        holder = writer(apps, proxy, shards)
        writers.add(holder.elector.identity)
        assert posts(holder, proxy) == sim.stats.posts > 0, proxy
        assert [a.elector.identity for a in apps if posts(a, proxy)] == [holder.elector.identity]
        assert holder.state()["leader"]["proxies"][proxy] == shard_of(proxy, shards)
    assert writers == {a.elector.identity for a in apps if held(a)}


def test_two_replicas_split_the_proxies_and_each_proxy_has_one_writer(kube, make_env):
    env = make_env(8)  # p0..p7 fall in every one of 4 shards
    assert {shard_of(f"p{i}", 4) for i in range(8)} == set(range(4))
    apps = [start(env, kube, identity, 4) for identity in ("a", "b")]
    # No upstream yet: the shards settle before anything is written, so every write
    # below comes from the final holder.
    assert eventually(lambda: balanced(apps, 4))
    publish(kube, "10.0.0.1")
    assert env.wait_converged(desired={"web": up("web", "10.0.0.1:8080")})
    publish(kube, "10.0.0.2")
    assert env.wait_converged(desired={"web": up("web", "10.0.0.2:8080")})
    assert_one_writer_per_proxy(env, apps, 4)

    for app in apps:
        assert metric(app, "dyups_syncer_leader") == 1
        assert metric(app, "dyups_syncer_shards_held") == 2
        assert metric(app, "dyups_syncer_shards") == 4
        # Gauges of what the others hold follow a round after the Leases.
        assert eventually(lambda app=app: metric(app, "dyups_syncer_shard_members") == 2)
        assert eventually(lambda app=app: metric(app, "dyups_syncer_shards_unheld") == 0)
        status = app.state()["leader"]
        assert status["members"] == ["a", "b"] and status["quota"] == 2
        assert status["held"] == sorted(held(app)) and status["writes_blocked"] is None
    # The Leases: one per shard naming its holder, one per member, all in one group.
    leases = {o["metadata"]["name"]: o for o in kube.objects("leases", NS)}
    for i in range(4):
        (holder,) = [a for a in apps if i in held(a)]
        assert leases[f"{LEASE}-{i}"]["spec"]["holderIdentity"] == holder.elector.identity
        assert leases[f"{LEASE}-{i}"]["metadata"]["labels"] == {
            "dyups-syncer.io/lease-group": LEASE,
            "dyups-syncer.io/lease-role": "shard",
            "dyups-syncer.io/shards": "4",
        }
    members = [o for n, o in leases.items() if n.startswith(f"{LEASE}-member-")]
    assert sorted(m["spec"]["holderIdentity"] for m in members) == ["a", "b"]
    assert LEASE not in leases  # no single Lease with shards


def test_four_replicas_one_leaves_then_one_joins(kube, make_env):
    env = make_env(8)
    apps = [start(env, kube, identity, 4) for identity in ("a", "b", "c", "d")]
    assert eventually(lambda: balanced(apps, 4))
    publish(kube, "10.0.0.1")
    assert env.wait_converged(desired={"web": up("web", "10.0.0.1:8080")})
    assert_one_writer_per_proxy(env, apps, 4)

    # A replica leaves (SIGTERM): it releases its shard and its membership at once,
    # the others take the shard over and its proxies keep converging.
    leaving = apps.pop(1)
    (its_shard,) = held(leaving)
    leaving.shutdown()
    assert eventually(lambda: balanced(apps, 4))
    assert any(its_shard in held(a) for a in apps)
    publish(kube, "10.0.0.3")
    assert env.wait_converged(desired={"web": up("web", "10.0.0.3:8080")})
    assert len([o for o in kube.objects("leases", NS) if "-member-" in o["metadata"]["name"]]) == 3

    # A replica joins: one holding two shards hands one over, the newcomer takes it.
    def released() -> float:
        return sum(metric(a, "dyups_syncer_shard_changes_total", change="released") for a in apps)

    before = released()
    apps.append(start(env, kube, "e", 4))
    assert eventually(lambda: balanced(apps, 4))
    assert len(held(apps[-1])) == 1
    publish(kube, "10.0.0.4")
    assert env.wait_converged(desired={"web": up("web", "10.0.0.4:8080")})
    assert released() - before == 1  # the newcomer's shard, and nothing else, moved


def test_a_crashed_replica_stops_writing_and_its_shards_are_taken_over(kube, make_env):
    env = make_env(4)
    timings = {"lease_duration": 3.0, "renew_deadline": 2.0, "retry_period": 0.1}
    apps = [start(env, kube, identity, 2, **timings) for identity in ("a", "b")]
    assert eventually(lambda: balanced(apps, 2))
    publish(kube, "10.0.0.1")
    assert env.wait_converged(desired={"web": up("web", "10.0.0.1:8080")})

    crashed, survivor = apps
    # What the crashed replica created, the survivor knows from its shards' Leases once
    # they were renewed after the writes (a crash before that loses the record, as
    # with a single Lease).
    theirs = [f"p{i}" for i in range(4) if shard_of(f"p{i}", 2) in held(crashed)]
    assert theirs
    assert eventually(lambda: all("web" in survivor.store.proxy_record(p).owned for p in theirs))
    # A crash, as far as the Leases can tell: no renewal, no release, no goodbye.
    crashed.elector._stop.set()
    crashed.elector._thread.join()
    assert eventually(lambda: not crashed.elector.is_leader())  # the renew deadline
    assert eventually(lambda: held(survivor) == {0, 1})  # each Lease's own expiry
    assert eventually(lambda: survivor.elector.status()["members"] == ["b"])
    # ... and its membership Lease, expired, is deleted by the survivor.
    assert eventually(
        lambda: (
            [
                o["spec"]["holderIdentity"]
                for o in kube.objects("leases", NS)
                if "-member-" in o["metadata"]["name"]
            ]
            == ["b"]
        )
    )
    publish(kube, "10.0.0.2")
    assert env.wait_converged(desired={"web": up("web", "10.0.0.2:8080")})
    assert metric(crashed, "dyups_syncer_shard_changes_total", change="lost") >= 1


def test_turning_sharding_on_waits_for_the_single_lease_and_keeps_its_ownership(kube, make_env):
    """During the rollout that turns sharding on, the old pods' leader still holds the
    single Lease and writes every proxy: the sharded replicas write nothing until it
    lets go, then manage the upstreams it created (learnt from its ownership record)."""
    env = make_env(2)
    for sim in env.sims:  # what the old leader created
        request = urllib.request.Request(
            f"{sim.url}/upstream/web", data=b"server 10.0.0.9:8080;", method="POST"
        )
        with urllib.request.urlopen(request, timeout=5) as answer:
            assert answer.status == 200
    # Renewed by the old leader as far as the replicas can tell: it does not expire
    # during the test.
    single = ko.lease(NS, LEASE, "old-leader", lease_duration_seconds=600)
    single["metadata"]["annotations"] = {
        "dyups-syncer.io/ownership": encode_payload({"owned": ["web"], "foreign": {}})
    }
    kube.apply(single)
    publish(kube, "10.0.0.1")
    apps = [start(env, kube, identity, 2) for identity in ("a", "b")]
    assert eventually(lambda: balanced(apps, 2))
    assert eventually(
        lambda: all(
            "old-leader holds the single Lease" in (a.state()["leader"]["writes_blocked"] or "")
            for a in apps
        )
    )
    assert all(metric(a, "dyups_syncer_shards_blocked") == 1 for a in apps)
    assert [sim.stats.posts for sim in env.sims] == [1, 1]  # only the old leader's

    # The old leader shuts down: it releases the single Lease (holder cleared).
    released = kube.get("leases", NS, LEASE)
    released["spec"]["holderIdentity"] = ""
    released["spec"]["leaseDurationSeconds"] = 1
    kube.update(released)
    assert env.wait_converged(desired={"web": up("web", "10.0.0.1:8080")})
    assert all(metric(a, "dyups_syncer_shards_blocked") == 0 for a in apps)
    for i in range(2):
        assert (
            metric(writer(apps, f"p{i}", 2), "dyups_syncer_ownership_conflicts", proxy=f"p{i}") == 0
        )
    # Once expired, the single Lease goes (a replica starting later need not wait for it).
    assert eventually(lambda: kube.get("leases", NS, LEASE) is None)


def test_replicas_with_another_shard_count_write_nothing_while_both_run(kube, make_env):
    """A rollout changing `shards`: a proxy's shard differs between the two counts, so
    neither side writes while the other is live; the survivors resume alone."""
    env = make_env(2)
    publish(kube, "10.0.0.1")
    old = start(env, kube, "old", 2)
    assert env.wait_converged(desired={"web": up("web", "10.0.0.1:8080")})
    new = start(env, kube, "new", 4)
    assert eventually(
        lambda: (
            old.state()["leader"]["writes_blocked"] == "replica new runs with shards: 4"
            and new.state()["leader"]["writes_blocked"] == "replica old runs with shards: 2"
        )
    )
    old.shutdown()
    assert eventually(lambda: new.state()["leader"]["writes_blocked"] is None)
    publish(kube, "10.0.0.2")
    assert env.wait_converged(desired={"web": up("web", "10.0.0.2:8080")})
    assert eventually(lambda: held(new) == {0, 1, 2, 3})


def test_a_single_lease_that_cannot_be_read_blocks_the_writes(kube, make_env):
    """The single Lease unreadable (the apiserver fails that GET) is not a free single
    Lease: a leader of it may have just started, so the sharded replicas write nothing
    until they can read it again; then the change they held back goes out."""
    env = make_env(2)
    publish(kube, "10.0.0.1")
    apps = [start(env, kube, identity, 2) for identity in ("a", "b")]
    assert eventually(lambda: balanced(apps, 2))
    assert env.wait_converged(desired={"web": up("web", "10.0.0.1:8080")})

    kube.fail("get", "leases", LEASE)
    assert eventually(
        lambda: all(
            "the single Lease dyups-syncer could not be read"
            in (a.state()["leader"]["writes_blocked"] or "")
            for a in apps
        )
    )
    assert all(metric(a, "dyups_syncer_shards_blocked") == 1 for a in apps)
    before = [sim.stats.posts for sim in env.sims]
    publish(kube, "10.0.0.2")
    wanted = up("web", "10.0.0.2:8080")
    assert eventually(lambda: all(a.store.current().upstreams.get("web") == wanted for a in apps))
    # Three more guard rounds (one GET of the single Lease each, every 0.1 s): long
    # after a worker woken by the change would have written it.
    gets = kube.count("get", "leases")
    assert eventually(lambda: kube.count("get", "leases") >= gets + 3 * len(apps))
    assert [sim.stats.posts for sim in env.sims] == before
    assert all([s.addr for s in sim.upstreams()["web"]] == ["10.0.0.1:8080"] for sim in env.sims)

    kube.heal()
    assert env.wait_converged(desired={"web": wanted})
    assert all(metric(a, "dyups_syncer_shards_blocked") == 0 for a in apps)


def test_shard_leases_beyond_the_shard_count_are_deleted_once_free(kube, make_env):
    """After a rollout that lowers `shards`, the Leases of the shards that no longer
    exist go: a released one at once, one whose holder died once it has expired."""
    from syncer.shard_election import GROUP_LABEL, ROLE_LABEL, SHARDS_LABEL

    labels = {GROUP_LABEL: LEASE, ROLE_LABEL: "shard", SHARDS_LABEL: "4"}
    kube.apply(ko.lease(NS, f"{LEASE}-2", None, labels=labels))  # released at shutdown
    kube.apply(ko.lease(NS, f"{LEASE}-3", "crashed", lease_duration_seconds=1, labels=labels))
    env = make_env(2)
    publish(kube, "10.0.0.1")
    app = start(env, kube, "a", 2)
    assert eventually(lambda: held(app) == {0, 1})
    assert eventually(lambda: kube.get("leases", NS, f"{LEASE}-2") is None)
    assert eventually(lambda: kube.get("leases", NS, f"{LEASE}-3") is None)
    names = {lease["metadata"]["name"] for lease in kube.objects("leases", NS)}
    assert {f"{LEASE}-0", f"{LEASE}-1"} <= names and not names & {f"{LEASE}-2", f"{LEASE}-3"}
    assert env.wait_converged(desired={"web": up("web", "10.0.0.1:8080")})


def test_a_shard_lease_beyond_the_count_held_by_a_live_replica_stays(kube, make_env):
    env = make_env(2)
    publish(kube, "10.0.0.1")
    old = start(env, kube, "old", 4)
    assert eventually(lambda: held(old) == {0, 1, 2, 3})
    new = start(env, kube, "new", 2)
    assert eventually(lambda: new.state()["leader"]["writes_blocked"] is not None)
    # Several rounds of the new replica (one LIST each): the old one's Leases stay.
    lists = kube.count("list", "leases")
    assert eventually(lambda: kube.count("list", "leases") >= lists + 10)
    assert kube.get("leases", NS, f"{LEASE}-3")["spec"]["holderIdentity"] == "old"
    assert not [r for r in kube.requests if r.verb == "delete" and r.name == f"{LEASE}-3"]
    old.shutdown()  # releases its shards: now they can go
    assert eventually(lambda: kube.get("leases", NS, f"{LEASE}-3") is None)
