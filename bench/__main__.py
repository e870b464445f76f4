"""`python -m bench <scenario> [options]`: run a benchmark scenario and print its figures.

`all` runs the issue's set (change with and without the kick, cold, steady) and
appends the figures to BENCHMARKS.md. Nothing is asserted: targets are for reading.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from bench import scenarios
from bench.harness import (
    POLL_INTERVAL,
    REPO,
    BenchError,
    Options,
    Result,
    code_version,
    machine,
)

SCENARIOS: dict[str, Callable[[Options], Result]] = {
    "change": scenarios.change,
    "cold": scenarios.cold,
    "steady": scenarios.steady,
}
# The parameters.
DEFAULTS = {
    "change": Options(10, 20, 3, 1000, 0.0, kick=True, debounce=None),
    "cold": Options(10, 2000, 20, 0, 0.0, kick=True, debounce=None),
    "steady": Options(10, 200, 10, 0, 60.0, kick=True, debounce=None),
}
# What `all` runs: (scenario, settings on top of its defaults). The last two are
# diagnostics: the lag of a change when the previous one's kick has finished, and
# the idle cost with the file source's default poll interval.
ALL: list[tuple[str, dict[str, Any]]] = [
    ("change", {"debounce": 0.0, "kick": True}),
    ("change", {"debounce": 0.0, "kick": False}),
    ("cold", {}),
    ("steady", {}),
    ("change", {"debounce": 0.0, "kick": True, "gap": 0.15, "changes": 300}),
    ("steady", {"poll_interval": 1.0}),
]


def _arguments(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench",
        description="Benchmarks of dyups-syncer against simulated dyups proxies. "
        "Defaults are the issue's parameters: change 10 proxies × 20 upstreams × 3 servers, "
        "1,000 changes; cold 10 × 2,000 × 20; steady 10 × 200 × 10 for 60 s. "
        "`all` runs change (debounce 0, kick on and off), cold and steady, then two "
        "diagnostic runs (change with --gap 0.15, steady with --poll-interval 1), and "
        "appends the figures to BENCHMARKS.md; options given to `all` override every run "
        "(except --no-kick).",
    )
    p.add_argument("scenario", choices=[*SCENARIOS, "all"])
    p.add_argument("--proxies", type=int, help="simulated proxies")
    p.add_argument("--upstreams", type=int, help="upstreams in the file source")
    p.add_argument("--servers", type=int, help="servers per upstream")
    p.add_argument("--changes", type=int, help="change: single-upstream changes, one at a time")
    p.add_argument("--duration", type=float, metavar="SECONDS", help="steady: idle window")
    p.add_argument(
        "--no-kick", action="store_true", help="proxy config `kick: false` (no propagation GETs)"
    )
    p.add_argument(
        "--debounce", type=float, metavar="SECONDS", help="syncer debounce (default: 100 ms)"
    )
    p.add_argument(
        "--poll-interval",
        type=float,
        metavar="SECONDS",
        help=f"file source poll_interval (default here: {POLL_INTERVAL:g})",
    )
    p.add_argument(
        "--gap",
        type=float,
        metavar="SECONDS",
        help="change: idle pause before each change, not counted in the lag (default 0)",
    )
    args = p.parse_args(argv)
    limits = {
        "proxies": (1, 100),
        "upstreams": (1, 60_000),
        "servers": (1, 254),
        "changes": (1, scenarios.MAX_CHANGES),
    }
    for name, (low, high) in limits.items():
        value = getattr(args, name)
        if value is not None and not low <= value <= high:
            p.error(f"--{name} must be between {low} and {high}")
    if args.duration is not None and args.duration <= 0:
        p.error("--duration must be positive")
    for name in ("debounce", "gap"):
        if getattr(args, name) is not None and getattr(args, name) < 0:
            p.error(f"--{name} cannot be negative")
    if args.poll_interval is not None and not 0.001 <= args.poll_interval <= 60:
        p.error("--poll-interval must be between 0.001 and 60")
    return args


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    names = ["proxies", "upstreams", "servers", "changes", "duration", "debounce"]
    names += ["poll_interval", "gap"]
    found = {name: getattr(args, name) for name in names if getattr(args, name) is not None}
    if args.no_kick and args.scenario != "all":
        found["kick"] = False
    return found


def _run(scenario: str, opts: Options) -> Result:
    print(f"running: {scenarios.command(scenario, opts)}", file=sys.stderr, flush=True)
    result = SCENARIOS[scenario](opts)
    print(result.markdown(), flush=True)
    return result


def _report(results: list[Result], load: tuple[float, float, float], code: str) -> str:
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [f"## Run of {now}", "", "Machine:", ""]
    lines += [f"- {line}" for line in machine()]
    lines += [f"- load average before the run: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}"]
    lines += [f"- code measured: {code}"]
    lines += ["", "Commands (`python -m bench all` runs them in this order):", "", "```sh"]
    lines += [r.command for r in results]
    lines += ["```", ""]
    return "\n".join(lines) + "\n" + "\n".join(r.markdown() for r in results)


def main(argv: Sequence[str] | None = None) -> int:
    args = _arguments(argv)
    overrides = _overrides(args)
    try:
        if args.scenario != "all":
            _run(args.scenario, dataclasses.replace(DEFAULTS[args.scenario], **overrides))
            return 0
        load, code = os.getloadavg(), code_version()
        results = []
        for scenario, settings in ALL:
            opts = dataclasses.replace(DEFAULTS[scenario], **{**settings, **overrides})
            results.append(_run(scenario, opts))
    except BenchError as e:
        print(f"bench: {e}", file=sys.stderr)
        return 1
    if (now := code_version()) != code:
        code += f"; at the end of the run: {now}"
    path = REPO / "BENCHMARKS.md"
    with path.open("a", encoding="utf-8") as out:
        out.write("\n" + _report(results, load, code))
    print(f"appended to {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
