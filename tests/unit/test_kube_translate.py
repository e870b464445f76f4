"""Services and EndpointSlices (API reference shapes) → upstreams, as tables."""

import pytest

from syncer.model import Upstream
from syncer.sources.kube_translate import (
    Options,
    Rejection,
    build_upstream,
    parse_service,
    service_of,
    trigger_time,
)

P = "dyups-syncer.io"


def svc(name="web", ns="shop", annotations=None, ports=None):
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": ns, "annotations": annotations or {}},
        "spec": {
            "ports": ports
            if ports is not None
            else [{"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP"}]
        },
    }


def ep(ip, ready=True, serving=None, terminating=None, zone="z1", node="n1"):
    cond = {"ready": ready}
    if serving is not None:
        cond["serving"] = serving
    if terminating is not None:
        cond["terminating"] = terminating
    return {
        "addresses": [ip],
        "conditions": cond,
        "zone": zone,
        "nodeName": node,
        "targetRef": {"kind": "Pod", "namespace": "shop", "name": f"pod-{ip}"},
    }


def slc(
    name, endpoints, service="web", ns="shop", address_type="IPv4", ports=None, annotations=None
):
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": name,
            "namespace": ns,
            "annotations": annotations or {},
            "labels": {
                "kubernetes.io/service-name": service,
                "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io",
            },
        },
        "addressType": address_type,
        "endpoints": endpoints,
        "ports": ports
        if ports is not None
        else [{"name": "http", "port": 8080, "protocol": "TCP"}],
    }


OPT = Options()


def upstream_of(service, slices, options=OPT):
    spec = parse_service(service, options)
    assert not isinstance(spec, Rejection) and spec is not None, spec
    return build_upstream(spec, slices, options)


def addresses(u):
    return sorted(s.address for s in u.servers)


def test_services_without_the_annotation_are_ignored():
    assert parse_service(svc(), OPT) is None


@pytest.mark.parametrize(
    "value, name", [("", "shop-web"), ("true", "shop-web"), ("Checkout", "checkout")]
)
def test_upstream_name(value, name):
    assert parse_service(svc(annotations={f"{P}/upstream": value}), OPT).upstream == name


def test_static_mapping_opts_in_without_annotation():
    spec = parse_service(svc(), Options(static={"shop/web": ("http", "web-static")}))
    assert spec.upstream == "web-static" and spec.port_name == "http"


def test_merges_slices_dedupes_and_picks_the_named_port():
    s = svc(
        annotations={f"{P}/upstream": "web"},
        ports=[{"name": "http", "port": 80, "targetPort": 8080}, {"name": "metrics", "port": 9090}],
    )
    s["metadata"]["annotations"][f"{P}/port"] = "http"
    slices = [
        slc(
            "a",
            [ep("10.0.0.1"), ep("10.0.0.2")],
            ports=[{"name": "metrics", "port": 9090}, {"name": "http", "port": 8080}],
        ),
        slc("b", [ep("10.0.0.2"), ep("10.0.0.3")]),
        slc("c", [ep("fd00::1")], address_type="IPv6"),
        slc("d", [ep("web.example.com")], address_type="FQDN"),
    ]
    u = upstream_of(s, slices)
    assert addresses(u) == ["10.0.0.1:8080", "10.0.0.2:8080", "10.0.0.3:8080", "[fd00::1]:8080"]
    assert {s.zone for s in u.servers} == {"z1"} and {s.node for s in u.servers} == {"n1"}


def test_fqdn_slices_only_when_enabled():
    s = svc(annotations={f"{P}/upstream": "web"})
    u = upstream_of(
        s, [slc("d", [ep("web.example.com")], address_type="FQDN")], Options(allow_fqdn=True)
    )
    assert addresses(u) == ["web.example.com:8080"]


def test_ready_endpoints_only():
    s = svc(annotations={f"{P}/upstream": "web"})
    u = upstream_of(
        s, [slc("a", [ep("10.0.0.1"), ep("10.0.0.2", ready=False), ep("10.0.0.3", ready=None)])]
    )
    assert addresses(u) == ["10.0.0.1:8080", "10.0.0.3:8080"]  # nil ready reads as ready


def test_terminating_fallback_like_kube_proxy():
    s = svc(annotations={f"{P}/upstream": "web"})
    rollout = [
        slc(
            "a",
            [
                ep("10.0.0.1", ready=False, serving=True, terminating=True),
                ep("10.0.0.2", ready=False, serving=False, terminating=True),
                ep("10.0.0.3", ready=False, serving=False, terminating=False),
            ],
        )
    ]
    assert addresses(upstream_of(s, rollout)) == ["10.0.0.1:8080"]
    assert upstream_of(s, rollout, Options(terminating_fallback=False)) is None
    mixed = [
        slc("a", [ep("10.0.0.1", ready=False, serving=True, terminating=True), ep("10.0.0.4")])
    ]
    assert addresses(upstream_of(s, mixed)) == [
        "10.0.0.4:8080"
    ]  # a ready endpoint exists: no fallback


def test_parameters_and_directives_from_annotations():
    s = svc(
        annotations={
            f"{P}/upstream": "web",
            f"{P}/weight": "3",
            f"{P}/max-fails": "0",
            f"{P}/fail-timeout": "5s",
            f"{P}/directives": "least_conn; keepalive 16",
        }
    )
    u = upstream_of(s, [slc("a", [ep("10.0.0.1")])])
    assert (
        u.render()
        == "server 10.0.0.1:8080 weight=3 max_fails=0 fail_timeout=5s; least_conn; keepalive 16;"
    )


@pytest.mark.parametrize(
    "annotations, ports, reason, field",
    [
        ({f"{P}/weight": "abc"}, None, "weight", f"{P}/weight"),
        ({f"{P}/weight": "0"}, None, None, None),  # validated when the upstream is built
        ({f"{P}/port": "grpc"}, None, "port_not_found", f"{P}/port"),
        ({}, [{"name": "a", "port": 1}, {"name": "b", "port": 2}], "port_required", f"{P}/port"),
        ({f"{P}/directives": "hash $request_uri"}, None, "directive", f"{P}/directives"),
        ({f"{P}/directives": "zone x 1m"}, None, "directive", f"{P}/directives"),
        ({f"{P}/upstream": "bad name;"}, None, "name", f"{P}/upstream"),
        ({f"{P}/fail-timeout": "1d"}, None, "fail_timeout", f"{P}/fail-timeout"),
    ],
)
def test_bad_annotations_reject_the_service_naming_the_field(annotations, ports, reason, field):
    s = svc(annotations={f"{P}/upstream": "web", **annotations}, ports=ports)
    spec = parse_service(s, OPT)
    if reason is None:
        result = build_upstream(spec, [slc("a", [ep("10.0.0.1")])], OPT)
        assert isinstance(result, Rejection) and result.reason == "endpoint"
        return
    assert isinstance(spec, Rejection)
    assert (spec.reason, spec.field, spec.service) == (reason, field, "shop/web")


def test_numeric_port_annotation_matches_the_service_port():
    s = svc(annotations={f"{P}/upstream": "web", f"{P}/port": "80"})
    assert parse_service(s, OPT).port_name == "http"


def test_unnamed_single_port():
    s = svc(annotations={f"{P}/upstream": "web"}, ports=[{"port": 80, "targetPort": 8080}])
    u = upstream_of(s, [slc("a", [ep("10.0.0.1")], ports=[{"port": 8080, "protocol": "TCP"}])])
    assert addresses(u) == ["10.0.0.1:8080"]


def test_bad_endpoint_address_rejects_the_service():
    s = svc(annotations={f"{P}/upstream": "web"})
    spec = parse_service(s, OPT)
    result = build_upstream(spec, [slc("a", [ep("10.0.0.1;evil")])], OPT)
    assert isinstance(result, Rejection) and result.reason == "endpoint"


def test_trigger_time_and_service_label():
    s = slc(
        "a",
        [],
        annotations={"endpoints.kubernetes.io/last-change-trigger-time": "2026-11-25T10:00:00Z"},
    )
    assert trigger_time(s) == 1795600800.0
    assert trigger_time(slc("a", [])) is None
    assert service_of(s) == "shop/web"


# Found by tests/fuzz: payloads that violate the API schema raised TypeError,
# ValueError or OverflowError out of the translation. They reject the service
# (reason "malformed", the field named), never raise.
@pytest.mark.parametrize(
    "annotations, ports, field",
    [
        ({f"{P}/directives": None}, None, f"{P}/directives"),
        ({f"{P}/directives": 5}, None, f"{P}/directives"),
        ({f"{P}/weight": 3}, None, f"{P}/weight"),
        ({f"{P}/port": 80}, None, f"{P}/port"),
        ({f"{P}/upstream": None}, None, f"{P}/upstream"),
        ({f"{P}/upstream": ["web"]}, None, f"{P}/upstream"),
        ({}, ["http"], "spec.ports.0"),
        ({}, "http", "spec.ports"),
        ({}, [{"name": 5, "port": 80}], "spec.ports.0.name"),
        ({}, [{"name": "http", "port": "80"}], "spec.ports.0.port"),
    ],
)
def test_wrongly_typed_service_fields_reject_the_service(annotations, ports, field):
    s = svc(annotations={f"{P}/upstream": "web", **annotations}, ports=ports)
    spec = parse_service(s, OPT)
    assert isinstance(spec, Rejection), spec
    assert (spec.reason, spec.field, spec.service) == ("malformed", field, "shop/web")


def test_a_service_that_does_not_opt_in_is_ignored_however_malformed():
    s = svc(ports=["http"])
    s["metadata"]["annotations"] = ["not", "a", "mapping"]
    assert parse_service(s, OPT) is None


def _endpoint_with(**fields):
    endpoint = ep("10.0.0.1")
    endpoint.update(fields)
    return endpoint


@pytest.mark.parametrize(
    "slice_, field",
    [
        (slc("a", [_endpoint_with(addresses=True)]), "endpoints.0.addresses"),
        (slc("a", [_endpoint_with(addresses="10.0.0.1")]), "endpoints.0.addresses"),
        (slc("a", [_endpoint_with(addresses=[5])]), "endpoints.0.addresses.0"),
        (slc("a", [_endpoint_with(conditions=[True])]), "endpoints.0.conditions"),
        (slc("a", [ep("10.0.0.1", ready="yes")]), "endpoints.0.conditions.ready"),
        (slc("a", [ep("10.0.0.1", serving=1)]), "endpoints.0.conditions.serving"),
        (slc("a", [ep("10.0.0.1", terminating="no")]), "endpoints.0.conditions.terminating"),
        (slc("a", ["10.0.0.1"]), "endpoints.0"),
        (slc("a", {"addresses": ["10.0.0.1"]}), "endpoints"),
        (slc("a", [ep("10.0.0.1")], ports=[{"name": "http", "port": "abc"}]), "ports.0.port"),
        (
            slc("a", [ep("10.0.0.1")], ports=[{"name": "http", "port": float("inf")}]),
            "ports.0.port",
        ),
        (slc("a", [ep("10.0.0.1")], ports=[{"name": "http", "port": [1]}]), "ports.0.port"),
        (slc("a", [ep("10.0.0.1")], ports=[{"name": "http", "port": True}]), "ports.0.port"),
        (slc("a", [ep("10.0.0.1")], ports=[{"name": "http", "port": 10**5000}]), "ports.0.port"),
        (slc("a", [ep("10.0.0.1")], ports=[{"name": ["http"], "port": 80}]), "ports.0.name"),
        (slc("a", [ep("10.0.0.1")], ports=["http"]), "ports.0"),
        (slc("a", [ep("10.0.0.1")], ports=8080), "ports"),
    ],
)
def test_wrongly_typed_slice_fields_reject_the_service(slice_, field):
    spec = parse_service(svc(annotations={f"{P}/upstream": "web"}), OPT)
    result = build_upstream(spec, [slice_], OPT)
    assert isinstance(result, Rejection), result
    assert (result.reason, result.service) == ("malformed", "shop/web")
    assert result.field == f"EndpointSlice shop/a: {field}", result.field


def test_a_slice_that_is_not_a_mapping_rejects_the_service():
    spec = parse_service(svc(annotations={f"{P}/upstream": "web"}), OPT)
    result = build_upstream(spec, [["not", "a", "slice"]], OPT)
    assert isinstance(result, Rejection) and result.reason == "malformed"


@pytest.mark.parametrize(
    "zone, node",
    [
        ("zone a", "node;1"),  # not label values
        ("z" * 254, "é"),
        (5, ["n1"]),  # not strings
        (None, None),
    ],
)
def test_a_strange_zone_or_node_is_dropped_not_fatal(zone, node):
    # Found by tests/fuzz: Server(zone=, node=) refused them, which rejected the service.
    s = svc(annotations={f"{P}/upstream": "web"})
    u = upstream_of(s, [slc("a", [ep("10.0.0.1", zone=zone, node=node), ep("10.0.0.2")])])
    assert addresses(u) == ["10.0.0.1:8080", "10.0.0.2:8080"]
    zones = {s.address: (s.zone, s.node) for s in u.servers}
    assert zones == {"10.0.0.1:8080": ("", ""), "10.0.0.2:8080": ("z1", "n1")}


def test_hostile_numbers_in_annotations_are_refused():
    for value in ("١٦", "9" * 4301, "1" * 10):
        s = svc(annotations={f"{P}/upstream": "web", f"{P}/weight": value})
        spec = parse_service(s, OPT)
        assert isinstance(spec, Rejection) and spec.reason == "weight", (value, spec)


def test_trigger_time_and_service_label_of_malformed_slices():
    bad = slc("a", [], annotations={"endpoints.kubernetes.io/last-change-trigger-time": 5})
    assert trigger_time(bad) is None
    bad["metadata"]["labels"]["kubernetes.io/service-name"] = ["web"]
    assert service_of(bad) is None
    assert trigger_time({"metadata": "x"}) is None and service_of({"metadata": "x"}) is None


# ---------------------------------------------------------------- traffic policies
# docs/traffic.md: `dyups-syncer.io/<key>` annotations over the configured default,
# endpoint zones and hints, terminating endpoints as draining servers.


def test_traffic_annotations_set_the_policy_over_the_default():
    from syncer.model import EmptyPolicy, Server, TrafficPolicy

    default = TrafficPolicy(min_local=3, drain_seconds=10)
    s = svc(
        annotations={
            f"{P}/upstream": "web",
            f"{P}/zone-aware": "true",
            f"{P}/min-local": "1",
            f"{P}/min-local-fraction": "0.5",
            f"{P}/local-weight-multiplier": "4",
            f"{P}/slow-start": "30s",
            f"{P}/slow-start-steps": "5",
            f"{P}/empty": "fallback",
            f"{P}/fallback": "127.0.0.1:8999",
            f"{P}/drain-as-backup": "yes",
            f"{P}/drain-seconds": "2m",
        }
    )
    u = upstream_of(s, [slc("a", [ep("10.0.0.1")])], Options(traffic=default))
    assert u.traffic == TrafficPolicy(
        zone_aware=True,
        min_local=1,
        min_local_fraction=0.5,
        local_weight_multiplier=4,
        slow_start=30.0,
        slow_start_steps=5,
        empty=EmptyPolicy.FALLBACK,
        fallback=(Server("127.0.0.1", 8999),),
        drain_as_backup=True,
        drain_seconds=120.0,
    )
    assert u.render() == "server 10.0.0.1:8080;"  # never rendered


def test_without_traffic_annotations_a_service_gets_the_default_policy():
    from syncer.model import DEFAULT_TRAFFIC, TrafficPolicy

    s = svc(annotations={f"{P}/upstream": "web"})
    assert upstream_of(s, [slc("a", [ep("10.0.0.1")])]).traffic is DEFAULT_TRAFFIC
    default = TrafficPolicy(zone_aware=True)
    u = upstream_of(s, [slc("a", [ep("10.0.0.1")])], Options(traffic=default))
    assert u.traffic == default
    # One annotation changes one key; the rest stays the default's.
    s = svc(annotations={f"{P}/upstream": "web", f"{P}/slow-start": "10s"})
    u = upstream_of(s, [slc("a", [ep("10.0.0.1")])], Options(traffic=default))
    assert (u.traffic.zone_aware, u.traffic.slow_start) == (True, 10.0)


@pytest.mark.parametrize(
    "annotations, key",
    [
        ({"zone-aware": "maybe"}, "zone-aware"),
        ({"min-local": "two"}, "min-local"),
        # out of range, after a valid key: the key at fault is named, not the first one
        ({"zone-aware": "true", "min-local": "0"}, "min-local"),
        ({"min-local-fraction": "1.5"}, "min-local-fraction"),
        ({"slow-start": "30 seconds"}, "slow-start"),
        ({"slow-start-steps": "1"}, "slow-start-steps"),
        ({"empty": "explode"}, "empty"),
        ({"empty": "fallback"}, "empty"),  # without fallback servers
        ({"fallback": "backend.local:80"}, "fallback"),  # no DNS from an annotation
        ({"fallback": "10.0.0.1:80; evil"}, "fallback"),
        ({"drain-as-backup": "١"}, "drain-as-backup"),
        ({"drain-seconds": "9" * 4400}, "drain-seconds"),
    ],
)
def test_a_bad_traffic_annotation_rejects_the_service_naming_it(annotations, key):
    s = svc(annotations={f"{P}/upstream": "web", **{f"{P}/{k}": v for k, v in annotations.items()}})
    spec = parse_service(s, OPT)
    assert isinstance(spec, Rejection), spec
    assert (spec.reason, spec.field, spec.service) == ("traffic", f"{P}/{key}", "shop/web")
    assert spec.message and not spec.message.startswith(f"{key}:")


def test_a_traffic_annotation_that_is_not_a_string_is_malformed():
    s = svc(annotations={f"{P}/upstream": "web", f"{P}/zone-aware": True})
    spec = parse_service(s, OPT)
    assert isinstance(spec, Rejection)
    assert (spec.reason, spec.field) == ("malformed", f"{P}/zone-aware")


def test_hints_for_zones_become_for_zones_strange_names_dropped():
    s = svc(annotations={f"{P}/upstream": "web"})
    hinted = ep("10.0.0.1")
    hinted["hints"] = {"forZones": [{"name": "z1"}, {"name": "bad zone"}, {"name": "z2"}]}
    duplicate = ep("10.0.0.2")
    duplicate["hints"] = {"forZones": [{"name": "z2"}, {"name": "z2"}, {"name": 5}, "z3", {}]}
    odd = ep("10.0.0.3")
    odd["hints"] = {"forZones": "z1"}  # not a list: no hints, not a rejection
    odder = ep("10.0.0.4")
    odder["hints"] = ["z1"]
    u = upstream_of(s, [slc("a", [hinted, duplicate, odd, odder, ep("10.0.0.5")])])
    assert {s.address: s.for_zones for s in u.servers} == {
        "10.0.0.1:8080": ("z1", "z2"),
        "10.0.0.2:8080": ("z2",),
        "10.0.0.3:8080": (),
        "10.0.0.4:8080": (),
        "10.0.0.5:8080": (),
    }


def _rollout():
    return [
        slc(
            "a",
            [
                ep("10.0.0.1"),
                ep("10.0.0.2", ready=False, serving=True, terminating=True),
                ep("10.0.0.3", ready=False, serving=False, terminating=True),
            ],
        )
    ]


def test_terminating_endpoints_drain_only_with_drain_as_backup():
    plain = svc(annotations={f"{P}/upstream": "web"})
    u = upstream_of(plain, _rollout())
    assert addresses(u) == ["10.0.0.1:8080"] and not u.has_draining  # as before
    drains = svc(annotations={f"{P}/upstream": "web", f"{P}/drain-as-backup": "true"})
    u = upstream_of(drains, _rollout())
    # serving and terminating: draining; not serving any more: gone
    assert {s.address: s.draining for s in u.servers} == {
        "10.0.0.1:8080": False,
        "10.0.0.2:8080": True,
    }
    assert u.render() == "server 10.0.0.1:8080; server 10.0.0.2:8080;"  # the policy decides


def test_the_default_policy_can_drain_too():
    from syncer.model import TrafficPolicy

    opts = Options(traffic=TrafficPolicy(drain_as_backup=True))
    u = upstream_of(svc(annotations={f"{P}/upstream": "web"}), _rollout(), opts)
    assert [s.address for s in u.servers if s.draining] == ["10.0.0.2:8080"]
    # ...and a service may switch it off
    off = svc(annotations={f"{P}/upstream": "web", f"{P}/drain-as-backup": "false"})
    assert not upstream_of(off, _rollout(), opts).has_draining


def test_without_ready_endpoints_the_terminating_fallback_still_serves_them():
    drains = svc(annotations={f"{P}/upstream": "web", f"{P}/drain-as-backup": "true"})
    rollout = [slc("a", [ep("10.0.0.2", ready=False, serving=True, terminating=True)])]
    u = upstream_of(drains, rollout)
    assert addresses(u) == ["10.0.0.2:8080"] and not u.has_draining
    assert upstream_of(drains, rollout, Options(terminating_fallback=False)) is None


def test_an_address_ready_in_one_slice_and_terminating_in_another_is_not_draining():
    drains = svc(annotations={f"{P}/upstream": "web", f"{P}/drain-as-backup": "true"})
    slices = [
        slc("a", [ep("10.0.0.1", ready=False, serving=True, terminating=True), ep("10.0.0.2")]),
        slc("b", [ep("10.0.0.1")]),
    ]
    u = upstream_of(drains, slices)
    assert addresses(u) == ["10.0.0.1:8080", "10.0.0.2:8080"] and not u.has_draining


def test_draining_servers_keep_zone_node_and_hints():
    drains = svc(annotations={f"{P}/upstream": "web", f"{P}/drain-as-backup": "true"})
    leaving = ep("10.0.0.2", ready=False, serving=True, terminating=True, zone="z2", node="n2")
    leaving["hints"] = {"forZones": [{"name": "z2"}]}
    u = upstream_of(drains, [slc("a", [ep("10.0.0.1"), leaving])])
    (server,) = [s for s in u.servers if s.draining]
    assert (server.zone, server.node, server.for_zones) == ("z2", "n2", ("z2",))


def test_a_rebuild_reuses_the_unchanged_servers_of_the_previous_upstream():
    spec = parse_service(svc(annotations={f"{P}/upstream": "true"}), OPT)
    assert not isinstance(spec, Rejection) and spec is not None
    v6 = slc("b", [ep("fd00::1")], address_type="IPv6")
    slices = [slc("a", [ep("10.0.0.1"), ep("10.0.0.2")]), v6]
    first = build_upstream(spec, slices, OPT)
    assert isinstance(first, Upstream)
    again = build_upstream(spec, slices, OPT, first)
    assert isinstance(again, Upstream) and again == first
    assert all(a is b for a, b in zip(again.servers, first.servers, strict=True))
    # A change in anything a Server holds builds that one anew, and only that one.
    moved = [slc("a", [ep("10.0.0.1", zone="z2"), ep("10.0.0.2")]), v6]
    third = build_upstream(spec, moved, OPT, first)
    assert isinstance(third, Upstream)
    by_address = {s.address: s for s in third.servers}
    assert by_address["10.0.0.1:8080"].zone == "z2"
    before = {s.address: s for s in first.servers}
    assert by_address["10.0.0.1:8080"] is not before["10.0.0.1:8080"]
    assert by_address["10.0.0.2:8080"] is before["10.0.0.2:8080"]
    assert by_address["[fd00::1]:8080"] is before["[fd00::1]:8080"]
    heavier = parse_service(svc(annotations={f"{P}/upstream": "true", f"{P}/weight": "5"}), OPT)
    assert not isinstance(heavier, Rejection) and heavier is not None
    fourth = build_upstream(heavier, slices, OPT, first)
    assert isinstance(fourth, Upstream) and {s.weight for s in fourth.servers} == {5}
