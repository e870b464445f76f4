"""Baseline (a), full push: every interval, read the file and POST every upstream to
every proxy, one after the other, whether it changed or not.

What kube2dyups-style scripts and full-push controllers do. Nothing is read back and
nothing is deleted.

    python -m bench.baselines.full_push --file F --proxy URL [--proxy URL ...] --interval N
"""

from __future__ import annotations

import http.client
from collections.abc import Sequence
from pathlib import Path

from bench.baselines.common import Proxy, arguments, every, read_upstreams, warn


def push(path: Path, proxies: list[Proxy]) -> None:
    upstreams = read_upstreams(path)
    if upstreams is None:
        return
    for proxy in proxies:
        for name, upstream in upstreams.items():
            try:
                status, text = proxy.request("POST", f"/upstream/{name}", upstream.render())
            except (OSError, http.client.HTTPException) as e:
                warn(f"{proxy.url}: POST {name}: {e!r}; next proxy")
                break
            if status != 200:
                warn(f"{proxy.url}: POST {name}: {status} {text.strip()}")


def main(argv: Sequence[str] | None = None) -> int:
    args = arguments("python -m bench.baselines.full_push", __doc__ or "", argv)
    proxies = [Proxy(url) for url in args.proxy]
    every(args.interval, lambda: push(args.file, proxies))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
