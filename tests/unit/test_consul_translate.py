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
