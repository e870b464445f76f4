"""Consul health entries → an upstream, None or a Rejection, never an exception; every
upstream renders in the grammar and reads back."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from syncer.model import DEFAULT_TRAFFIC, TrafficPolicy
from syncer.sources.consul_translate import (
    Entry,
    Options,
    build_upstream,
    needs_every_instance,
)
from syncer.sources.services import Rejection
from tests.fuzz.checks import check_upstream
from tests.fuzz.conftest import fuzz
from tests.fuzz.strategies import consul_cases

options = st.builds(
    Options,
    statuses=st.sampled_from([("passing",), ("passing", "warning")]),
    use_consul_weights=st.booleans(),
    traffic=st.sampled_from(
        [DEFAULT_TRAFFIC, TrafficPolicy(zone_aware=True, drain_as_backup=True)]
    ),
)


def _check(service: str, entries: list[Entry], opts: Options) -> None:
    result = build_upstream(service, entries, opts)
    if result is None:
        return
    if isinstance(result, Rejection):
        assert result.service == service
        return
    check_upstream(result)
    # Draining servers only under drain-as-backup, and never alone; needs_every_instance
    # answers (never raises) for whatever the query returned.
    assert not result.has_draining or result.traffic.drain_as_backup
    assert any(not s.draining for s in result.servers)
    assert needs_every_instance(service, entries, opts) in (True, False)


@fuzz
@given(consul_cases(), options)
def test_api_shaped_entries_give_upstream_none_or_rejection(
    case: tuple[str, list[Entry]], opts: Options
) -> None:
    _check(*case, opts)


@fuzz
@given(consul_cases(wrong_types=True), options)
def test_wrongly_typed_entries_give_upstream_none_or_rejection(
    case: tuple[str, list[Entry]], opts: Options
) -> None:
    _check(*case, opts)
