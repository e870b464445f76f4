"""Baseline (b), poll and diff: every interval, read the file, then for each proxy in
turn read `GET /detail`, POST each upstream whose servers differ from the file's, and
DELETE the upstreams it created that left the file.

    python -m bench.baselines.poll_diff --file F --proxy URL [--proxy URL ...] --interval N
"""

from __future__ import annotations

import http.client
from collections.abc import Sequence
from pathlib import Path

from bench.baselines.common import Proxy, arguments, every, read_upstreams, warn
from syncer.model import ObservedUpstream, ParseError, Upstream, parse_detail


def sync_proxy(proxy: Proxy, upstreams: dict[str, Upstream], created: set[str]) -> None:
    status, text = proxy.request("GET", "/detail")
    if status not in (200, 204):
        warn(f"{proxy.url}: GET /detail: {status}")
        return
    held: dict[str, ObservedUpstream] = parse_detail(text) if status == 200 else {}
    for name, upstream in upstreams.items():
        have = held.get(name)
        if have is not None and have.servers == upstream.servers:
            continue
        status, text = proxy.request("POST", f"/upstream/{name}", upstream.render())
        if status == 200:
            created.add(name)
        else:
            warn(f"{proxy.url}: POST {name}: {status} {text.strip()}")
    for name in sorted((created & held.keys()) - upstreams.keys()):
        status, text = proxy.request("DELETE", f"/upstream/{name}")
        if status in (200, 404):
            created.discard(name)
        else:
            warn(f"{proxy.url}: DELETE {name}: {status} {text.strip()}")


def sync(path: Path, proxies: list[Proxy], created: dict[str, set[str]]) -> None:
    upstreams = read_upstreams(path)
    if upstreams is None:
        return
    for proxy in proxies:
        try:
            sync_proxy(proxy, upstreams, created.setdefault(proxy.url, set()))
        except (OSError, http.client.HTTPException, ParseError) as e:
            warn(f"{proxy.url}: {e!r}; next proxy")


def main(argv: Sequence[str] | None = None) -> int:
    args = arguments("python -m bench.baselines.poll_diff", __doc__ or "", argv)
    proxies = [Proxy(url) for url in args.proxy]
    created: dict[str, set[str]] = {}  # proxy URL → names this process POSTed there
    every(args.interval, lambda: sync(args.file, proxies, created))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
