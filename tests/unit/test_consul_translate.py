"""Consul health entries (API shapes) → upstreams, as tables."""

import pytest

from syncer.sources.consul_translate import Options, Rejection, build_upstream, entry_status

OPT = Options()


def entry(
    sid,
    address="",
    port=8080,
    node_address="10.0.0.1",
    meta=None,
    weights=None,
    status="passing",
    node="n1",
    node_meta=None,
):
    return {
        "Node": {
            "ID": "x",
            "Node": node,
            "Address": node_address,
            "Datacenter": "dc1",
            "TaggedAddresses": {},
            "Meta": node_meta or {},
        },
        "Service": {
            "ID": sid,
            "Service": "web",
            "Tags": ["dyups"],
            "Address": address,
            "Port": port,
            "Meta": meta or {},
            "Weights": weights or {"Passing": 1, "Warning": 1},
        },
        "Checks": [
            {
                "Node": node,
                "CheckID": "serfHealth",
                "Name": "Serf Health Status",
                "Status": "passing",
                "ServiceID": "",
                "ServiceName": "",
            },
            {
                "Node": node,
                "CheckID": f"service:{sid}",
                "Name": "web",
                "Status": status,
                "ServiceID": sid,
                "ServiceName": "web",
            },
        ],
    }


def addresses(u):
    return sorted(s.address for s in u.servers)


def test_address_falls_back_to_the_node_and_v6_is_bracketed():
    u = build_upstream(
        "web",
        [
            entry("a", address="10.1.0.1"),
            entry("b", node_address="10.0.0.2"),
            entry("c", address="fd00::3"),
        ],
        OPT,
    )
    assert addresses(u) == ["10.0.0.2:8080", "10.1.0.1:8080", "[fd00::3]:8080"]
    assert u.name == "web"


def test_statuses_and_warning_weights():
    entries = [
        entry("a", address="10.1.0.1", weights={"Passing": 5, "Warning": 1}),
        entry("b", address="10.1.0.2", status="warning", weights={"Passing": 5, "Warning": 2}),
        entry("c", address="10.1.0.3", status="critical"),
    ]
    assert addresses(build_upstream("web", entries, OPT)) == ["10.1.0.1:8080"]
    both = build_upstream("web", entries, Options(statuses=("passing", "warning")))
    assert {s.address: s.weight for s in both.servers} == {"10.1.0.1:8080": 5, "10.1.0.2:8080": 2}
    assert entry_status(entries[1]) == "warning"


def test_meta_parameters_name_and_directives():
    meta = {
        "dyups-upstream": "Checkout",
        "dyups-weight": "3",
        "dyups-max-fails": "2",
        "dyups-fail-timeout": "5s",
        "dyups-directives": "least_conn",
    }
    u = build_upstream(
        "web",
        [
            entry("a", address="10.1.0.1", meta=meta),
            entry("b", address="10.1.0.2", meta={**meta, "dyups-backup": "true"}),
        ],
        OPT,
    )
    assert u.name == "checkout"
    assert u.render() == (
        "server 10.1.0.1:8080 weight=3 max_fails=2 fail_timeout=5s; "
        "server 10.1.0.2:8080 weight=3 max_fails=2 fail_timeout=5s backup; least_conn;"
    )


def test_no_served_instance_is_none():
    assert build_upstream("web", [entry("a", status="critical")], OPT) is None
    assert build_upstream("web", [], OPT) is None


@pytest.mark.parametrize(
    "meta, reason",
    [
        ({"dyups-weight": "abc"}, "instance"),
        ({"dyups-weight": "\u0663"}, "instance"),  # ARABIC-INDIC DIGIT THREE: int() reads 3
        ({"dyups-directives": "hash $request_uri"}, "directive"),
        ({"dyups-upstream": "bad name;"}, "name"),
        ({"dyups-backup": "maybe"}, "instance"),
    ],
)
def test_bad_meta_rejects_the_service(meta, reason):
    result = build_upstream("web", [entry("a", address="10.1.0.1", meta=meta)], OPT)
    assert isinstance(result, Rejection) and result.reason == reason


def test_instances_that_disagree_on_the_name_are_rejected():
    result = build_upstream(
        "web",
        [entry("a", meta={"dyups-upstream": "x"}), entry("b", meta={"dyups-upstream": "y"})],
        OPT,
    )
    assert isinstance(result, Rejection) and result.reason == "meta_conflict"


def test_a_bad_address_or_port_rejects():
    assert isinstance(build_upstream("web", [entry("a", address="10.0.0.1;x")], OPT), Rejection)
    assert isinstance(build_upstream("web", [entry("a", port="80")], OPT), Rejection)


def test_strange_node_names_do_not_reject():
    u = build_upstream("web", [entry("a", node="weird node!", node_meta={"zone": "eu-1a"})], OPT)
    assert u.servers[0].node == "" and u.servers[0].zone == "eu-1a"


# ---------------------------------------------------------------- traffic policies
# docs/traffic.md: service meta `dyups-<key>` over the configured default, the node
# meta `zone`, instances out of the served states as draining servers.


def test_traffic_meta_sets_the_policy_over_the_default():
    from syncer.model import TrafficPolicy

    meta = {"dyups-zone-aware": "true", "dyups-slow-start": "20s", "dyups-min-local": "1"}
    default = TrafficPolicy(local_weight_multiplier=3)
    u = build_upstream(
        "web",
        [entry("a", address="10.1.0.1", meta=meta), entry("b", address="10.1.0.2", meta=meta)],
        Options(traffic=default),
    )
    assert u.traffic == TrafficPolicy(
        zone_aware=True, slow_start=20.0, min_local=1, local_weight_multiplier=3
    )
    plain = build_upstream("web", [entry("a")], Options(traffic=default))
    assert plain.traffic == default


@pytest.mark.parametrize(
    "meta, key",
    [
        ({"dyups-zone-aware": "sometimes"}, "zone-aware"),
        ({"dyups-zone-aware": "true", "dyups-min-local": "0"}, "min-local"),
        ({"dyups-drain-seconds": "forever"}, "drain-seconds"),
        ({"dyups-empty": "fallback"}, "empty"),
        ({"dyups-fallback": "10.0.0.1:80;x"}, "fallback"),
        ({"dyups-slow-start": 30}, "slow-start"),  # not a string
    ],
)
def test_bad_traffic_meta_rejects_the_service_naming_the_key(meta, key):
    result = build_upstream("web", [entry("a", address="10.1.0.1", meta=meta)], OPT)
    assert isinstance(result, Rejection), result
    assert (result.reason, result.field, result.service) == ("traffic", f"dyups-{key}", "web")


def test_instances_that_disagree_on_the_policy_are_rejected():
    result = build_upstream(
        "web",
        [
            entry("a", address="10.1.0.1", meta={"dyups-zone-aware": "true"}),
            entry("b", address="10.1.0.2", meta={}),
        ],
        OPT,
    )
    assert isinstance(result, Rejection)
    assert (result.reason, result.field) == ("meta_conflict", "dyups-zone-aware")


def test_the_zone_is_the_node_meta_key_configured():
    entries = [
        entry("a", address="10.1.0.1", node_meta={"zone": "eu-1a", "az": "b"}),
        entry("b", address="10.1.0.2", node_meta={"zone": "not a zone"}),
        entry("c", address="10.1.0.3", node_meta={"zone": 5}),
        entry("d", address="10.1.0.4"),
    ]
    zones = {s.address: s.zone for s in build_upstream("web", entries, OPT).servers}
    assert zones == {
        "10.1.0.1:8080": "eu-1a",
        "10.1.0.2:8080": "",
        "10.1.0.3:8080": "",
        "10.1.0.4:8080": "",
    }
    by_az = build_upstream("web", entries, Options(zone_meta="az"))
    assert {s.address: s.zone for s in by_az.servers}["10.1.0.1:8080"] == "b"
    off = build_upstream("web", entries, Options(zone_meta=""))
    assert {s.zone for s in off.servers} == {""}


DRAIN = {"dyups-drain-as-backup": "true"}


def _fleet(meta, statuses=("passing", "critical", "warning")):
    return [
        entry(f"i{i}", address=f"10.1.0.{i}", meta=meta, status=status, node=f"n{i}")
        for i, status in enumerate(statuses, start=1)
    ]


def test_instances_out_of_the_served_states_drain_only_with_drain_as_backup():
    from syncer.sources.consul_translate import needs_every_instance

    plain = build_upstream("web", _fleet({}), OPT)
    assert addresses(plain) == ["10.1.0.1:8080"] and not plain.has_draining
    assert not needs_every_instance("web", _fleet({}), OPT)
    drains = build_upstream("web", _fleet(DRAIN), OPT)
    assert {s.address: s.draining for s in drains.servers} == {
        "10.1.0.1:8080": False,
        "10.1.0.2:8080": True,  # critical
        "10.1.0.3:8080": True,  # warning, not served with statuses [passing]
    }
    assert needs_every_instance("web", _fleet(DRAIN), OPT)
    both = build_upstream("web", _fleet(DRAIN), Options(statuses=("passing", "warning")))
    assert {s.address: s.draining for s in both.servers} == {
        "10.1.0.1:8080": False,
        "10.1.0.2:8080": True,
        "10.1.0.3:8080": False,
    }
    # without ?passing the query already returns every instance
    assert not needs_every_instance("web", _fleet(DRAIN), Options(statuses=("passing", "warning")))


def test_the_passing_only_view_and_the_full_one_agree_on_the_upstream_values():
    # The draining instance still has the old meta: the served ones decide, as they
    # would with the passing-only query.
    served = entry("a", address="10.1.0.1", meta={**DRAIN, "dyups-upstream": "new"})
    leaving = entry(
        "b", address="10.1.0.2", meta={"dyups-upstream": "old"}, status="critical", node="n2"
    )
    u = build_upstream("web", [served, leaving], OPT)
    assert u.name == "new"
    assert {s.address: s.draining for s in u.servers} == {
        "10.1.0.1:8080": False,
        "10.1.0.2:8080": True,
    }
    assert build_upstream("web", [served], OPT).name == "new"


def test_draining_instances_alone_are_no_upstream():
    assert build_upstream("web", _fleet(DRAIN, ("critical", "critical")), OPT) is None


def test_a_draining_instance_that_cannot_be_a_server_is_left_out():
    served = entry("a", address="10.1.0.1", meta=DRAIN)
    broken = entry("b", address="10.1.0.2;x", meta=DRAIN, status="critical", node="n2")
    backup = entry(
        "c", address="10.1.0.3", meta={**DRAIN, "dyups-backup": "true"}, status="critical"
    )
    u = build_upstream("web", [served, broken, backup], OPT)
    assert {s.address: (s.draining, s.backup) for s in u.servers} == {
        "10.1.0.1:8080": (False, False),
        "10.1.0.3:8080": (True, False),  # its own backup flag does not matter: it drains
    }


def test_an_address_some_instance_serves_is_not_draining():
    served = entry("a", address="10.1.0.1", meta=DRAIN)
    same = entry("b", address="10.1.0.1", meta=DRAIN, status="critical", node="n2")
    u = build_upstream("web", [same, served], OPT)
    assert addresses(u) == ["10.1.0.1:8080"] and not u.has_draining


def test_instances_that_disagree_only_on_a_null_policy_meta_are_rejected_not_a_crash():
    """Found by the long fuzz run: meta `dyups-zone-aware: null` on one instance and
    absent on the other raised StopIteration."""
    first = entry("web-1", meta={"dyups-zone-aware": None})
    second = entry("web-2", node_address="10.0.0.2", node="n2")
    result = build_upstream("web", [first, second], Options())
    assert isinstance(result, Rejection)
    assert result.reason == "meta_conflict" and result.field == "dyups-zone-aware"
