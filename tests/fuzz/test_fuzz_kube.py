"""Kubernetes Services and EndpointSlices → upstreams: a ServiceSpec, None or a
Rejection, never an exception; every upstream renders in the grammar and reads back."""

from __future__ import annotations

import contextlib
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from syncer.model import DEFAULT_TRAFFIC, ModelError, TrafficPolicy, canonical_host
from syncer.sources.kube_translate import (
    Options,
    ServiceSpec,
    build_upstream,
    key_of,
    parse_service,
)
from syncer.sources.services import Rejection
from tests.fuzz.checks import check_upstream
from tests.fuzz.conftest import fuzz
from tests.fuzz.strategies import k8s_cases

options = st.builds(
    Options,
    terminating_fallback=st.booleans(),
    traffic=st.sampled_from(
        [DEFAULT_TRAFFIC, TrafficPolicy(zone_aware=True, drain_as_backup=True)]
    ),
    allow_fqdn=st.booleans(),
    static=st.one_of(st.none(), st.just({"shop/web": ("http", "")})),
)


def _hosts(slices: list[dict[str, Any]]) -> set[str]:
    """The canonical hosts the slices list (an endpoint's first address is its address)."""
    out = set()
    for slice_ in slices:
        for ep in slice_.get("endpoints") or []:
            addresses = ep.get("addresses")
            if isinstance(addresses, list | str) and addresses:
                with contextlib.suppress(ModelError):
                    out.add(canonical_host(str(addresses[0]), allow_hostname=True))
    return out


def _check(service: dict[str, Any], slices: list[dict[str, Any]], opts: Options) -> None:
    spec = parse_service(service, opts)
    if spec is None or isinstance(spec, Rejection):
        assert spec is None or spec.service == key_of(service)
        return
    assert isinstance(spec, ServiceSpec)
    result = build_upstream(spec, slices, opts)
    if result is None or isinstance(result, Rejection):
        return
    assert result.name == spec.upstream
    check_upstream(result)
    assert result.traffic == spec.traffic
    # Draining servers only under drain-as-backup, and never alone.
    assert not result.has_draining or result.traffic.drain_as_backup
    assert any(not s.draining for s in result.servers)
    # Every server is an endpoint of one of the slices: nothing is invented.
    assert {s.host for s in result.servers} <= _hosts(slices)


@fuzz
@given(k8s_cases(), options)
def test_api_shaped_objects_give_upstream_none_or_rejection(
    case: tuple[dict[str, Any], list[dict[str, Any]]], opts: Options
) -> None:
    _check(*case, opts)


@fuzz
@given(k8s_cases(wrong_types=True), options)
def test_wrongly_typed_objects_give_upstream_none_or_rejection(
    case: tuple[dict[str, Any], list[dict[str, Any]]], opts: Options
) -> None:
    _check(*case, opts)
