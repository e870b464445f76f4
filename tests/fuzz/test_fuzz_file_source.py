"""The file source's `parse_document`: upstreams or SourceDataError; a file written as
the README shows reads back as the upstreams it describes; an unquoted name that YAML
reads as another type (`no`, `010`) is refused, never renamed."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from syncer.model import Upstream
from syncer.sources.file import SourceDataError, parse_document
from tests.fuzz.checks import check_upstream
from tests.fuzz.conftest import fuzz
from tests.fuzz.strategies import file_texts, readme_document, upstream_lists, yaml_retypes

ORIGIN = "upstreams.yaml"


@fuzz
@given(file_texts(), st.booleans())
def test_any_file_gives_upstreams_or_source_data_error(text: str, allow_hostnames: bool) -> None:
    try:
        parsed = parse_document(text, origin=ORIGIN, allow_hostnames=allow_hostnames)
    except SourceDataError as e:
        assert str(e).startswith(f"{ORIGIN}:"), str(e)
        return
    for name, up in parsed.items():
        assert up.name == name
        check_upstream(up)
        assert allow_hostnames or not up.has_hostnames


@fuzz
@given(upstream_lists(max_size=3))
def test_readme_style_file_round_trips(ups: list[Upstream]) -> None:
    text = readme_document(ups)
    assert parse_document(text, origin=ORIGIN, allow_hostnames=True) == {u.name: u for u in ups}


@fuzz
@given(upstream_lists(max_size=3))
def test_unquoted_names_yaml_retypes_are_refused(ups: list[Upstream]) -> None:
    """`no:` or `010:` is refused, naming the key as written, never renamed."""
    text = readme_document(ups, quote_names=False)
    retyped = [u.name for u in ups if yaml_retypes(u.name)]
    if not retyped:
        assert parse_document(text, origin=ORIGIN, allow_hostnames=True) == {u.name: u for u in ups}
        return
    try:
        parse_document(text, origin=ORIGIN, allow_hostnames=True)
    except SourceDataError as e:
        # Usually the first; an integer beyond 64 bits is refused as the file is read,
        # before the names are looked at.
        named = [n for n in retyped if f": upstreams.{n}: the upstream name {n!r}" in str(e)]
        assert named, str(e)
    else:
        raise AssertionError(f"{retyped} accepted unquoted")
