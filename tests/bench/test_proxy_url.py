"""`python -m bench change --proxy-url …`: the bench against dyups interfaces it did not
start, read only over HTTP. Two simulators play the real proxies; the bench sees only
their URLs, and the test checks the bench's figures against what the simulators applied."""

from __future__ import annotations

import urllib.request
from collections.abc import Iterator

import pytest

from bench.__main__ import main
from bench.harness import REAL_PREFIX, upstream_name
from bench.scenarios import marker, marker_index
from syncer.testing.dyups import DyupsSimulator, Flavour
from tests.bench.tables import numbers, table

UPSTREAMS = 4
CHANGES = 12
STATIC = {"static_be": "server 127.0.0.1:18091;"}  # from nginx.conf
FOREIGN = "server 127.0.0.1:18092;"  # posted by someone else
LEFTOVER = "server 10.9.9.9:8080;"  # as an earlier bench run leaves its upstreams


def _post(url: str, name: str, body: str) -> None:
    request = urllib.request.Request(f"{url}/upstream/{name}", body.encode(), method="POST")
    with urllib.request.urlopen(request, timeout=10) as answer:
        assert answer.status == 200


@pytest.fixture(params=["classic", "head"])
def proxies(request: pytest.FixtureRequest) -> Iterator[list[DyupsSimulator]]:
    flavour: Flavour = request.param
    sims = [DyupsSimulator(flavour=flavour, static=STATIC, seed=i).start() for i in range(2)]
    try:
        for sim in sims:
            _post(sim.url, "someone_elses", FOREIGN)
            # An earlier run's upstreams: one still wanted, with other servers, one not.
            _post(sim.url, upstream_name(0, REAL_PREFIX), LEFTOVER)
            _post(sim.url, upstream_name(UPSTREAMS + 5, REAL_PREFIX), LEFTOVER)
        yield sims
    finally:
        for sim in sims:
            sim.stop()


def test_change_with_proxy_urls(
    proxies: list[DyupsSimulator], capsys: pytest.CaptureFixture[str]
) -> None:
    urls = [sim.url for sim in proxies]
    argv = ["change", "--proxy-url", *urls, "--upstreams", str(UPSTREAMS), "--servers", "2"]
    assert main([*argv, "--changes", str(CHANGES), "--debounce", "0"]) == 0

    out = capsys.readouterr().out
    rows = table(out)
    assert "real proxies" in out.splitlines()[0]
    assert f"--proxy-url {' '.join(urls)}" in out
    assert rows["proxies"].startswith(f"real dyups proxies ({proxies[0].flavour})")
    assert rows["changes accepted by every proxy"] == f"{CHANGES} of {CHANGES}"
    assert len(numbers(rows["accept lag p50 / p90 / p99 / max (ms)"])) == 4
    interval = next(v for k, v in rows.items() if k.startswith("read interval achieved"))
    assert len(numbers(interval)) == 4
    assert rows["failed reads of the proxies"] == "0"
    assert numbers(rows["POSTs per proxy (the syncer's count), mean (min–max)"])[0] >= CHANGES

    for sim in proxies:
        # Every change reached this proxy: a POST carrying its marker was applied.
        posted = {marker_index(e) for e in sim.applied if e.op == "post"}
        assert set(range(CHANGES)) <= posted
        held = {name: sorted(s.addr for s in servers) for name, servers in sim.upstreams().items()}
        # The bench's upstreams hold their last change; the rest of the proxy is as it was.
        for k in range(UPSTREAMS):
            last = max(i for i in range(CHANGES) if i % UPSTREAMS == k)
            assert marker(last) in held[upstream_name(k, REAL_PREFIX)]
        assert upstream_name(UPSTREAMS + 5, REAL_PREFIX) not in held
        assert held["someone_elses"] == ["127.0.0.1:18092"]
        if sim.flavour == "classic":  # head does not show nginx.conf upstreams
            assert held["static_be"] == ["127.0.0.1:18091"]
