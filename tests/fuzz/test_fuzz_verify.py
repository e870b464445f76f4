"""The client's read-back after a write (`DyupsClient._verify`): any answer gives a verdict.

Apart from the parsers of tests/fuzz/test_fuzz_proxy.py, so that those (which load only
syncer/model.py) keep their long-run results when the client changes.
"""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from syncer.model import Upstream
from syncer.proxy import dyups
from syncer.proxy.dyups import ClientSettings, DyupsClient, Flavour
from tests.fuzz.conftest import fuzz
from tests.fuzz.strategies import (
    head_list_text,
    mutated,
    upstream_addresses_text,
    upstream_addresses_texts,
    upstreams,
)


class _Answering(DyupsClient):
    """A client whose every read gets the same 200 answer, without a network."""

    def __init__(self, flavour: Flavour, text: str) -> None:
        super().__init__(ClientSettings(url="http://127.0.0.1:9", flavour=flavour))
        self.text = text

    def _read(self, path: str, *, fresh: bool = False) -> Any:
        return dyups._Answer(200, self.text)


@st.composite
def _read_backs(draw: st.DrawFn) -> tuple[Upstream, Flavour, str, bool]:
    """An upstream, a flavour, what the proxy reads back, and whether it is exact."""
    up = draw(upstreams())
    flavour = draw(st.sampled_from(Flavour))
    exact = upstream_addresses_text(up) if flavour is Flavour.CLASSIC else head_list_text([up])
    text = draw(st.one_of(st.just(exact), mutated(exact), upstream_addresses_texts))
    return up, flavour, text, text == exact


@fuzz
@given(_read_backs())
def test_verify_gives_a_verdict_never_an_exception(
    case: tuple[Upstream, Flavour, str, bool],
) -> None:
    up, flavour, text, exact = case
    verdict = _Answering(flavour, text)._verify(up)
    assert isinstance(verdict, str)
    if exact:
        assert verdict == "", verdict
