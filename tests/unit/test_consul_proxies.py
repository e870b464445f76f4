"""Proxies discovered through Consul: health entries (GET /v1/health/service/:service,
in the shapes of the fake agent's builders) → proxy targets, zone included."""

import pytest
from pydantic import ValidationError

from syncer.config import ConsulProxiesConfig
from syncer.sources.consul_proxies import node_zone, targets_from_entries
from tests.fakes import consul_objects as co

CFG = ConsulProxiesConfig(service="nginx", nginx_workers=4)


def entry(sid, node_name, address, *, node_meta=None, port=80, status=co.PASSING, dyups_port=8081):
    node = co.node(node_name, address, meta=node_meta)
    svc = co.service("nginx", id=sid, port=port, meta={"dyups-port": str(dyups_port)})
    checks = [co.serf_check(node_name), co.service_check(node_name, sid, "nginx", status=status)]
    return co.health_entry(node, svc, checks)


def test_instances_become_proxies_with_the_zone_of_their_node():
    entries = [
        entry("nginx-1", "edge1", "10.0.0.1", node_meta={"zone": "eu-1a"}),
        entry("nginx-2", "edge2", "10.0.0.2", node_meta={"rack": "r1"}),
        entry("nginx-3", "edge3", "10.0.0.3"),  # the agent's default meta only
        entry("nginx-4", "edge4", "10.0.0.4", node_meta={"zone": "eu-1b"}, status=co.CRITICAL),
    ]
    targets = targets_from_entries(entries, CFG)
    assert {k: (t.url, t.zone) for k, t in targets.items()} == {
        "nginx-1": ("http://10.0.0.1:8081", "eu-1a"),
        "nginx-2": ("http://10.0.0.2:8081", ""),
        "nginx-3": ("http://10.0.0.3:8081", ""),
    }
    assert targets["nginx-1"].nginx_workers == 4


def test_zone_meta_names_the_key_and_null_turns_it_off():
    entries = [entry("nginx-1", "edge1", "10.0.0.1", node_meta={"zone": "a", "az": "b"})]
    by_az = targets_from_entries(entries, CFG.model_copy(update={"zone_meta": "az"}))
    assert by_az["nginx-1"].zone == "b"
    off = targets_from_entries(entries, CFG.model_copy(update={"zone_meta": None}))
    assert off["nginx-1"].zone == ""


def test_a_configured_zone_wins_over_the_node_meta():
    entries = [entry("nginx-1", "edge1", "10.0.0.1", node_meta={"zone": "a"})]
    cfg = CFG.model_copy(update={"zone": "manual"})
    assert targets_from_entries(entries, cfg)["nginx-1"].zone == "manual"


def test_an_invalid_zone_is_no_zone_and_the_instance_stays_a_proxy():
    for bad in ("eu 1a", "a\nb", "zone;", "é", "a" * 254):
        entries = [entry("nginx-1", "edge1", "10.0.0.1", node_meta={"zone": bad})]
        targets = targets_from_entries(entries, CFG)
        assert targets["nginx-1"].zone == "", bad
    assert node_zone({"Meta": {"zone": 5}}, "zone") == ""
    assert node_zone({"Meta": None}, "zone") == ""
    assert node_zone({}, "zone") == ""
    assert node_zone(None, "zone") == ""
    assert node_zone({"Meta": {"zone": "a"}}, None) == ""


def test_zone_meta_must_be_a_consul_meta_key():
    for ok in ("zone", "topology_zone", "az-1"):
        assert ConsulProxiesConfig(service="nginx", zone_meta=ok).zone_meta == ok
    for bad in ("", "a b", "zone/x", "a" * 129):
        with pytest.raises(ValidationError):
            ConsulProxiesConfig(service="nginx", zone_meta=bad)
