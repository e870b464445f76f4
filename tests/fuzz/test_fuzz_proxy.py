"""The proxy-answer parsers: `/detail`, `/list` in both flavours, `GET /upstream/NAME`.

Hostile and near-valid answers give the documented result or ParseError; every
server that comes out renders in the grammar; rendering then parsing round-trips.
"""

from __future__ import annotations

from hypothesis import given

from syncer.model import (
    ObservedUpstream,
    ParseError,
    Upstream,
    normalize_address,
    parse_detail,
    parse_list_classic,
    parse_list_head,
    parse_upstream_addresses,
)
from tests.fuzz.checks import check_server
from tests.fuzz.conftest import fuzz
from tests.fuzz.strategies import (
    classic_list_text,
    classic_list_texts,
    detail_answers,
    detail_texts,
    head_list_text,
    head_list_texts,
    upstream_addresses_text,
    upstream_addresses_texts,
    upstream_lists,
    upstreams,
)


def _check_observed(parsed: dict[str, ObservedUpstream]) -> None:
    for name, observed in parsed.items():
        assert observed.name == name == name.lower() and name.strip() == name != "", repr(name)
        if observed.servers is not None:
            assert list(observed.servers) == sorted(observed.servers)
            for server in observed.servers:
                check_server(server)


# ---------------------------------------------------------------- hostile answers
@fuzz
@given(detail_texts)
def test_parse_detail_gives_servers_or_parse_error(text: str) -> None:
    try:
        parsed = parse_detail(text)
    except ParseError:
        return
    _check_observed(parsed)
    assert all(o.servers for o in parsed.values()) and all(o.body is None for o in parsed.values())


@fuzz
@given(classic_list_texts)
def test_parse_list_classic_gives_names(text: str) -> None:
    names = parse_list_classic(text)
    for name in names:
        assert name and name == name.strip() == name.lower() and "\n" not in name, repr(name)


@fuzz
@given(head_list_texts)
def test_parse_list_head_gives_bodies_or_parse_error(text: str) -> None:
    try:
        parsed = parse_list_head(text)
    except ParseError:
        return
    _check_observed(parsed)
    assert all(isinstance(o.body, str) for o in parsed.values())


@fuzz
@given(upstream_addresses_texts)
def test_parse_upstream_addresses_gives_addresses_or_parse_error(text: str) -> None:
    try:
        addresses = parse_upstream_addresses(text)
    except ParseError:
        return
    for address in addresses:
        assert address and len(address.split()) == 1 and address == address.strip(), repr(address)
        # Reported addresses are only compared with ours, never rendered: normalising
        # gives a stable form or ParseError.
        try:
            normalized = normalize_address(address)
        except ParseError:
            continue
        assert normalize_address(normalized) == normalized and " " not in normalized


# ---------------------------------------------------------------- render → parse
@fuzz
@given(detail_answers())
def test_detail_round_trips(answer: tuple[list[Upstream], str]) -> None:
    ups, text = answer
    parsed = parse_detail(text)
    assert parsed == {u.name: ObservedUpstream(u.name, u.servers) for u in ups}


@fuzz
@given(upstream_lists())
def test_head_list_round_trips(ups: list[Upstream]) -> None:
    parsed = parse_list_head(head_list_text(ups))
    assert parsed == {u.name: ObservedUpstream(u.name, u.servers, u.render()) for u in ups}


@fuzz
@given(upstream_lists())
def test_classic_list_round_trips(ups: list[Upstream]) -> None:
    assert parse_list_classic(classic_list_text(ups)) == {u.name for u in ups}


@fuzz
@given(upstreams())
def test_upstream_addresses_round_trip(up: Upstream) -> None:
    addresses = parse_upstream_addresses(upstream_addresses_text(up))
    assert addresses == [s.address for s in up.servers]
    assert [normalize_address(a) for a in addresses] == addresses
