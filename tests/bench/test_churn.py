"""`python -m bench churn`: the driver makes every event once, in order, one server of
one upstream each, batched as the target allows; and a short run through the
Kubernetes source, where every event is matched to the POSTs that carried it."""

from __future__ import annotations

import itertools
import time
from typing import cast

import pytest

from bench.__main__ import main
from bench.churn import Batch, ChurnOptions, churn_address, drive
from bench.discovery import Versions
from bench.harness import Bench, base_spec
from tests.bench.tables import table


class Recorder:
    """A target that keeps each write's batch; `gap` makes the driver batch."""

    inside = "driver"

    def __init__(self, gap: float) -> None:
        self.gap = gap
        self.writes = 0
        self.batches: list[list[tuple[str, tuple[str, ...]]]] = []

    def sources(self) -> None:
        return None

    def write(self, batch: Batch) -> list[float]:
        self.batches.append(list(batch))
        self.writes += 1
        return [time.monotonic()] * len(batch)  # one stamp per write, as a file's

    def writes_text(self, events: int) -> str:
        return ""

    def rows(self, metrics: object) -> list[tuple[str, str]]:
        return []


class NoBench:
    def check_alive(self) -> None:
        pass


@pytest.mark.parametrize("gap", [0.0, 0.01])
def test_every_event_once_in_order_one_server_each(gap: float) -> None:
    opts = ChurnOptions(1, 5, 3, 0, 0.1, kick=True, debounce=None, rate=1000)
    spec = base_spec(opts.upstreams, opts.servers)
    versions: Versions = {n: [(float("-inf"), frozenset(s))] for n, s in spec.items()}
    target = Recorder(gap)
    driven = drive(cast(Bench, NoBench()), target, opts, spec, versions)

    events = [event for batch in target.batches for event in batch]
    assert driven.made == len(events) == len(driven.late) == 100
    if gap:  # 10 ms between writes at 1,000 events/s: several events a write
        assert len(target.batches) < len(events)
    # Event i brings churn_address(i) in, in one upstream, replacing one server.
    for i, (_, servers) in enumerate(events):
        assert churn_address(i) in servers and len(servers) == opts.servers
    for name, states in versions.items():
        for (_, before), (_, after) in itertools.pairwise(states):
            assert isinstance(before, frozenset) and isinstance(after, frozenset)
            assert len(before - after) == len(after - before) == 1, name
        assert states[-1][1] == frozenset(spec[name])
    assert sum(len(states) - 1 for states in versions.values()) == 100


def test_churn_through_the_kubernetes_source(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["churn", "--proxies", "2", "--upstreams", "10", "--servers", "3"]
    assert main([*argv, "--rate", "50", "--duration", "2"]) == 0

    out = capsys.readouterr().out
    rows = table(out)
    assert "--source kube" in out
    assert rows["source"] == "Kubernetes source (EndpointSlices)"
    assert rows["endpoint events (each replaces one server of one random upstream)"].startswith(
        "100 of 100 made"
    )
    assert rows["upstream changes"] == "100"
    assert rows["changes accepted by every proxy"] == "100 of 100"
    assert rows["POSTs carrying no pending state (stale or unknown)"] == "0"
    assert rows["POSTs repeating the servers the proxy already had"] == "0"
    assert rows["syncer warnings and errors logged"] == "0"
