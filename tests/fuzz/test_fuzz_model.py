"""The renderer and the constructors behind it: hostile values either raise
ModelError or make an upstream whose body is in the grammar and reads back."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from syncer.model import Directive, ModelError, Server, Upstream, upstream_from_body
from tests.fuzz.checks import DIRECTIVE_RE, check_body, check_upstream
from tests.fuzz.conftest import fuzz
from tests.fuzz.strategies import (
    balancer_texts,
    bodies,
    host_spellings,
    hostile_directive_texts,
    hostile_hosts,
    hostile_text,
    keepalive_texts,
    mostly,
    upstream_names,
    upstreams,
    wrong_values,
)


@fuzz
@given(upstreams())
def test_render_then_parse_round_trips(up: Upstream) -> None:
    check_upstream(up)


# Mostly valid values with a few hostile ones: a hostile host only reaches the
# renderer when the port, the parameters, the name and the directives are fine.
server_args = st.fixed_dictionaries(
    {
        "host": mostly(host_spellings, hostile_hosts),
        "port": mostly(st.integers(1, 65535), st.integers()),
    },
    optional={
        "weight": mostly(st.integers(1, 1_000_000), st.integers()),
        "max_fails": mostly(st.integers(0, 1_000_000), st.integers()),
        "fail_timeout": mostly(st.integers(0, 365 * 24 * 3600), st.integers()),
        "max_conns": mostly(st.integers(0, 1_000_000_000), st.integers()),
        "backup": st.booleans(),
        "down": st.booleans(),
        "allow_hostname": st.booleans(),
        "zone": mostly(st.just(""), hostile_text),
        "node": mostly(st.just(""), hostile_text),
    },
)
directive_texts = mostly(st.one_of(balancer_texts, keepalive_texts), hostile_directive_texts)


def _build(name: Any, servers: list[dict[str, Any]], directives: list[Any]) -> Upstream | None:
    try:
        return Upstream(
            name,
            tuple(Server(**kwargs) for kwargs in servers),
            tuple(Directive.parse(text) for text in directives),
        )
    except ModelError:
        return None


@fuzz
@given(
    mostly(upstream_names, hostile_text),
    st.lists(server_args, min_size=1, max_size=4),
    st.lists(directive_texts, max_size=2),
)
def test_hostile_values_raise_model_error_or_render_safely(
    name: str, servers: list[dict[str, Any]], directives: list[str]
) -> None:
    up = _build(name, servers, directives)
    if up is not None:
        check_upstream(up)


wrong_server_args = st.fixed_dictionaries(
    {
        "host": st.one_of(hostile_hosts, wrong_values),
        "port": st.one_of(st.integers(), wrong_values),
    },
    optional={
        key: wrong_values
        for key in ("weight", "max_fails", "fail_timeout", "max_conns", "backup", "down", "zone")
    },
)


@fuzz
@given(
    st.one_of(upstream_names, wrong_values),
    st.lists(wrong_server_args, min_size=1, max_size=3),
    st.lists(st.one_of(hostile_directive_texts, wrong_values), max_size=2),
)
def test_wrong_types_raise_model_error(
    name: Any, servers: list[dict[str, Any]], directives: list[Any]
) -> None:
    up = _build(name, servers, directives)
    if up is not None:
        check_upstream(up)


@fuzz
@given(st.one_of(directive_texts, hostile_directive_texts))
def test_directive_parse_raises_model_error_or_is_allowlisted(text: str) -> None:
    try:
        directive = Directive.parse(text)
    except ModelError:
        return
    (statement,) = check_body(directive.render())
    assert DIRECTIVE_RE.fullmatch(statement), statement
    assert Directive.parse(directive.render()) == directive


@fuzz
@given(st.one_of(upstream_names, hostile_text), bodies)
def test_upstream_from_body_raises_model_error_or_round_trips(name: str, body: str) -> None:
    try:
        up = upstream_from_body(name, body)
    except ModelError:
        return
    check_upstream(up)
