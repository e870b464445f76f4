"""`python -m bench <scenario> [options]`: run a benchmark scenario and print its figures.

`all` runs the issues' set (change with and without the kick, cold, steady,
kube-rollout, consul-flips, churn, reload, scale) and appends the figures to
BENCHMARKS.md. Nothing is asserted: targets are for reading.

`baselines` runs the same changes against dyups-syncer and the two strategies it
replaces (`bench/baselines/`: full push, poll and diff, every `--interval` seconds) and
prints one table with the ratios; it is not part of `all`.

`limits` (not in `all`) looks for how many proxies × upstreams one syncer drives with a
p99 lag of at most 1 s (`bench/limits.py`); `shards` (not in `all`) runs its load against
1, 2 and 4 syncer replicas sharing the proxies (`bench/shards.py`).

The simulated proxies run in K child processes, round-robin (`bench/simproc.py`), as
real proxies are separate nginx processes: by default one per CPU, at most one per
proxy; `--sim-processes 0` runs them in the bench process, with the driver and the
fakes under one GIL, as every run before it did. `--proxy-url URL …` runs `change` or
`limits` against real dyups proxies instead (`bench/httpwatch.py`).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from bench import churn, discovery, limits, scale, scenarios, shards
from bench.baselines import scenario as baselines
from bench.harness import (
    POLL_INTERVAL,
    REAL_PREFIX,
    REPO,
    BenchError,
    Options,
    OtherLoad,
    Result,
    code_version,
    machine,
)

SCENARIOS: dict[str, Callable[[Options], Result]] = {
    "change": scenarios.change,
    "cold": scenarios.cold,
    "steady": scenarios.steady,
    "kube-rollout": discovery.kube_rollout,
    "consul-flips": discovery.consul_flips,
    "baselines": baselines.baselines,
    "churn": churn.churn,
    "reload": scenarios.reload,
    "scale": scale.scale,
    "limits": limits.limits,
    "shards": shards.shards,
}
# What keeps a scenario from running against real proxies (--proxy-url).
NEEDS_SIMULATORS = {
    "cold": "its figures are per nginx worker (every worker holds every upstream, and its "
    "content), which only the simulators' applied events show",
    "steady": "it counts the requests each proxy answers, which only the simulators count",
    "kube-rollout": "its lag matches each POST a proxy applied (the simulators' applied events) "
    "to the changes; reads over HTTP show states, not POSTs",
    "consul-flips": "its lag matches each POST a proxy applied (the simulators' applied events) "
    "to the changes; reads over HTTP show states, not POSTs",
    "churn": "its lag matches each POST a proxy applied (the simulators' applied events) to "
    "the events; reads over HTTP show states, not POSTs",
    "reload": "it reloads the proxies (a simulator's reload) and times the repair on every "
    "nginx worker",
    "scale": "it checks every nginx worker's content and counts requests, from the simulators",
    "baselines": "each strategy runs against fresh, empty simulators",
    "shards": "it counts the POSTs each proxy got from the simulators, to show that no two "
    "replicas write one proxy",
    "all": "it runs scenarios that need simulators; run change or limits",
}
# How each scenario writes its command line (default: scenarios.command).
COMMANDS: dict[str, Callable[[str, Options], str]] = {
    "kube-rollout": discovery.command,
    "consul-flips": discovery.command,
    "baselines": baselines.command,
    "scale": scale.command,
    "limits": limits.command,
    "churn": churn.command,
    "shards": shards.command,
}
# The issues' parameters. kube-rollout: services × endpoints, rollout duration;
# consul-flips: services × instances, 50 flips/s for 60 s, then 20 s at rest.
DEFAULTS = {
    "change": Options(10, 20, 3, 1000, 0.0, kick=True, debounce=None),
    "cold": Options(10, 2000, 20, 0, 0.0, kick=True, debounce=None),
    "steady": Options(10, 200, 10, 0, 60.0, kick=True, debounce=None),
    "kube-rollout": Options(10, 200, 20, 0, 60.0, kick=True, debounce=None),
    "consul-flips": Options(10, 500, 10, 0, 60.0, kick=True, debounce=None, rate=50, rest=20),
    "baselines": baselines.BaselineOptions(10, 200, 10, 0, 60.0, kick=True, debounce=None),
    # churn: 500 endpoint events/s for 60 s, as EndpointSlice events; reload: 30 reloads,
    # one proxy at a time; scale: upstreams 0 means the two shapes (scale.SHAPES),
    # 30 s at rest each.
    "churn": churn.ChurnOptions(10, 200, 10, 0, 60.0, kick=True, debounce=None, rate=500),
    "reload": Options(10, 200, 10, 30, 0.0, kick=True, debounce=None),
    "scale": Options(2, 0, 0, 0, 0.0, kick=True, debounce=None, rest=30),
    # limits: each size of the grid (limits.DEFAULT_PROXIES × DEFAULT_UPSTREAMS) × 10 servers,
    # 20 changes/s for 30 s.
    "limits": limits.LimitsOptions(0, 0, 10, 0, 30.0, kick=True, debounce=None, rate=20),
    # shards: replicas 1, 2, 4 (as many shards), each 40 proxies × 500 upstreams × 10, the
    # limits load: 20 changes/s for 30 s. A few minutes here.
    "shards": shards.ShardsOptions(40, 500, 10, 0, 30.0, kick=True, debounce=None, rate=20),
}
# What `all` runs: (scenario, settings on top of its defaults). The last four are
# diagnostics: the lag of a change when the previous one's kick has finished; the
# idle cost with the file source's default poll interval; the rollout with 2 proxies
# (a lighter load on the simulators);
# Consul with 100 services (500 is more than the fake can serve on 2 cores).
ALL: list[tuple[str, dict[str, Any]]] = [
    ("change", {"debounce": 0.0, "kick": True}),
    ("change", {"debounce": 0.0, "kick": False}),
    ("cold", {}),
    ("steady", {}),
    ("kube-rollout", {}),
    ("consul-flips", {}),
    ("churn", {}),
    ("reload", {}),
    ("scale", {}),
    ("change", {"debounce": 0.0, "kick": True, "gap": 0.15, "changes": 300}),
    ("steady", {"poll_interval": 1.0}),
    ("kube-rollout", {"proxies": 2}),
    ("consul-flips", {"upstreams": 100}),
]


def _arguments(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench",
        description="Benchmarks of dyups-syncer against simulated dyups proxies. "
        "Defaults are the issues' parameters: change 10 proxies × 20 upstreams × 3 servers, "
        "1,000 changes; cold 10 × 2,000 × 20; steady 10 × 200 × 10 for 60 s; kube-rollout "
        "10 × 200 services × 20 endpoints, every pod replaced over 60 s; consul-flips 10 × "
        "500 services × 10 instances, 50 health flips/s for 60 s, then 20 s at rest; "
        "churn 10 × 200 × 10, --rate (500) endpoint events/s for --duration (60 s) "
        "as EndpointSlice writes to the fake API server (--source file: through the file "
        "source); reload 10 × 200 × 10, --changes (30) proxy reloads one "
        "at a time, each until every nginx worker of the proxy holds every upstream "
        "again; scale: the syncer's memory holding 1,000 × 10 and 5,000 × 20 endpoints "
        "(10,000 and 100,000) with 2 proxies, each after its cold sync and after --rest "
        "(30 s) (--upstreams with --servers: that one shape). "
        "`all` runs change (debounce 0, kick on and off), cold, steady, kube-rollout, "
        "consul-flips, churn, reload and scale, then four diagnostic runs (change with "
        "--gap 0.15, steady with --poll-interval 1, kube-rollout with --proxies 2, "
        "consul-flips with --upstreams 100), and appends the figures to BENCHMARKS.md; "
        "options given to `all` override every run (except --no-kick). The simulators run "
        "in K child processes, round-robin (see --sim-processes); the syncer is its own "
        "process, and the fakes of the discovery scenarios run in the bench process. "
        "`baselines` (not in `all`): 10 × 200 × 10, a single-upstream change every 2 s on "
        "average for 60 s, run against dyups-syncer, a full push and a poll-and-diff every "
        "--interval (10 s), each with fresh simulators; one table with their lag, requests, "
        "CPU and ratios. "
        "`limits` (not in `all`): for each size of a grid (default: proxies 10, 25, 50, 100, "
        "200 × upstreams 500, 2,000; × --servers 10), a cold sync, then --rate (20) "
        "single-upstream changes/s for --duration (30 s): cold sync time, lag until every "
        "proxy accepted each change, syncer CPU and peak RSS, and whether p99 ≤ 1 s; a size "
        "is skipped once a size no larger in either dimension failed. "
        "`shards` (not in `all`): for each of --replicas (1,2,4) R, R syncer replicas "
        "sharing the proxies (leader_election shards: R, or --shards) over the Kubernetes "
        "source, 40 proxies × 500 services × 10 endpoints, once balanced and synced the "
        "limits load (20 changes/s for 30 s): lag until every proxy accepted, CPU, RSS, "
        "shards and proxies per replica, and whether each proxy was written by one "
        "replica only. "
        "--proxy-url URL … runs change or limits against real dyups proxies instead of "
        "simulators; each proxy is read over HTTP to time the changes.",
    )
    p.add_argument("scenario", choices=[*SCENARIOS, "all"])
    p.add_argument(
        "--proxies",
        type=_numbers,
        help="simulated proxies; limits: a list, e.g. 10,50,200",
    )
    p.add_argument(
        "--upstreams",
        type=_numbers,
        help="upstreams in the file source; services opted in; limits: a list, e.g. 500,2000",
    )
    p.add_argument(
        "--grid",
        type=_grid,
        metavar="PxU,…",
        help="limits: the sizes, proxies x upstreams, e.g. 10x500,50x2000 "
        "(instead of the --proxies × --upstreams lists)",
    )
    p.add_argument(
        "--proxy-url",
        nargs="+",
        action="extend",
        metavar="URL",
        help="change, limits: real dyups proxies (their dyups_interface, e.g. "
        f"http://10.0.0.5:8081), instead of simulators; the bench's upstreams are named "
        f"{REAL_PREFIX}… and no other upstream is touched",
    )
    p.add_argument(
        "--servers", type=int, help="servers per upstream; endpoints or instances per service"
    )
    p.add_argument(
        "--source",
        choices=list(churn.SOURCES),
        help="churn: where the endpoint events go: kube, EndpointSlices on the fake API "
        "server (default), or file, the file source",
    )
    p.add_argument(
        "--replicas",
        type=_numbers,
        metavar="R,…",
        help="shards: the syncer replica counts to run, e.g. 1,2,4 (the default)",
    )
    p.add_argument(
        "--shards",
        type=int,
        help="shards: the shards of every run (default: as many as its replicas)",
    )
    p.add_argument(
        "--changes",
        type=int,
        help="change: single-upstream changes, one at a time; reload: proxy reloads",
    )
    p.add_argument(
        "--duration",
        type=float,
        metavar="SECONDS",
        help="steady: idle window; kube-rollout: the rolling restart; consul-flips: the flips; "
        "baselines: the window of changes; churn: the events; limits, shards: the changes",
    )
    p.add_argument(
        "--interval",
        type=float,
        metavar="SECONDS",
        help=f"baselines: the baselines' interval (default {baselines.DEFAULT_INTERVAL:g})",
    )
    p.add_argument(
        "--rate",
        type=float,
        metavar="PER_SECOND",
        help="consul-flips: health flips; churn: endpoint events; limits, shards: upstream changes",
    )
    p.add_argument(
        "--rest",
        type=float,
        metavar="SECONDS",
        help="consul-flips: idle window after the flips; scale: idle window after each cold sync",
    )
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
    p.add_argument(
        "--sim-processes",
        type=int,
        metavar="K",
        help="child processes hosting the simulated proxies, round-robin (default: one per "
        f"CPU, here {os.cpu_count()}, at most one per proxy); 0 runs them in the bench "
        "process, with the driver and the fakes under one GIL, as before",
    )
    args = p.parse_args(argv)
    _real(p, args)
    _sizes(p, args)
    bounds = {
        "proxies": (1, limits.MAX_PROXIES if args.scenario == "limits" else 100),
        "upstreams": (1, 60_000),
        "servers": (1, 254),
        "changes": (1, scenarios.MAX_CHANGES),
        "sim_processes": (0, 100),
        "replicas": (1, shards.MAX_REPLICAS),
        "shards": (1, shards.MAX_SHARDS),
    }
    for name, (low, high) in bounds.items():
        value = getattr(args, name)
        values = value if isinstance(value, list) else [value]
        if any(v is not None and not low <= v <= high for v in values):
            p.error(f"--{name.replace('_', '-')} must be between {low} and {high}")
    if args.duration is not None and args.duration <= 0:
        p.error("--duration must be positive")
    if args.rate is not None and not 0.1 <= args.rate <= 1000:
        p.error("--rate must be between 0.1 and 1000")
    if args.rest is not None and args.rest <= 0:
        p.error("--rest must be positive")
    if args.scenario == "kube-rollout" and (args.upstreams or 0) > discovery.MAX_SERVICES:
        p.error(f"kube-rollout: --upstreams is at most {discovery.MAX_SERVICES}")
    if args.scenario == "scale" and (args.upstreams is None) != (args.servers is None):
        p.error("scale: give --upstreams and --servers together, or neither (the two shapes)")
    if args.scenario == "consul-flips" and args.servers is not None and args.servers < 2:
        p.error("consul-flips: --servers must be at least 2")
    for name in ("debounce", "gap"):
        if getattr(args, name) is not None and getattr(args, name) < 0:
            p.error(f"--{name} cannot be negative")
    if args.interval is not None and (args.scenario != "baselines" or args.interval <= 0):
        p.error("--interval is for baselines only, and must be positive")
    if args.poll_interval is not None and not 0.001 <= args.poll_interval <= 60:
        p.error("--poll-interval must be between 0.001 and 60")
    _only(p, args)
    return args


def _only(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Options of one scenario only."""
    for name, scenario in (("source", "churn"), ("replicas", "shards"), ("shards", "shards")):
        if getattr(args, name) is not None and args.scenario != scenario:
            p.error(f"--{name} is for {scenario} only")
    kube = args.scenario == "shards" or (args.scenario == "churn" and args.source != "file")
    if args.poll_interval is not None and kube:
        p.error(f"{args.scenario}: --poll-interval is for the file source, not Kubernetes")


def _numbers(text: str) -> list[int]:
    """`10` or `10,25,50`."""
    try:
        return [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number or a list like 10,25: {text!r}") from None


def _grid(text: str) -> list[tuple[int, int]]:
    """`10x500,50x2000`: (proxies, upstreams) pairs."""
    try:
        pairs = [part.lower().split("x") for part in text.split(",")]
        return [(int(p), int(u)) for p, u in pairs]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a grid like 10x500,50x2000: {text!r}") from None


def _sizes(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Lists of proxies and upstreams, and --grid, are for limits only; there they
    become `args.grid` (and --grid's numbers are checked like the lists')."""
    if args.scenario != "limits":
        if args.grid is not None:
            p.error("--grid is for limits only")
        for name in ("proxies", "upstreams"):
            value = getattr(args, name)
            if value is not None and len(value) > 1:
                p.error(f"--{name}: a list is for limits only")
            setattr(args, name, None if value is None else value[0])
        return
    if args.grid is not None and (args.proxies or args.upstreams):
        p.error("limits: give --grid, or --proxies and --upstreams lists, not both")
    if args.grid is None:
        proxies = args.proxies or list(limits.DEFAULT_PROXIES)
        upstreams = args.upstreams or list(limits.DEFAULT_UPSTREAMS)
        if args.proxy_url:
            proxies = [len(args.proxy_url)]
        args.grid = [(n, u) for n in proxies for u in upstreams]
        args.proxies, args.upstreams = proxies, upstreams
    else:
        args.proxies = [n for n, _ in args.grid]
        args.upstreams = [u for _, u in args.grid]


def _real(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """--proxy-url: only where the scenario can read real proxies, and alone."""
    if not args.proxy_url:
        return
    if args.scenario in NEEDS_SIMULATORS:
        p.error(
            f"--proxy-url: {args.scenario} needs simulated proxies: "
            f"{NEEDS_SIMULATORS[args.scenario]}"
        )
    bad = [url for url in args.proxy_url if not url.startswith(("http://", "https://"))]
    if bad:
        p.error(f"--proxy-url: not an http:// or https:// URL: {' '.join(bad)}")
    if len(set(args.proxy_url)) != len(args.proxy_url):
        p.error("--proxy-url: a URL is given twice")
    if args.sim_processes is not None:
        p.error("--sim-processes: there are no simulators with --proxy-url")
    if args.proxies is not None or args.grid is not None:
        p.error("--proxy-url: the proxies are the URLs given; leave out --proxies and --grid")


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    names = ["proxies", "upstreams", "servers", "changes", "duration", "debounce"]
    names += ["poll_interval", "gap", "rate", "rest", "sim_processes", "interval"]
    names += ["source", "shards"]
    found = {name: getattr(args, name) for name in names if getattr(args, name) is not None}
    if args.no_kick and args.scenario != "all":
        found["kick"] = False
    if args.proxy_url:
        found["proxy_urls"] = tuple(args.proxy_url)
        found["proxies"] = len(args.proxy_url)
    if args.replicas is not None:
        found["replicas"] = tuple(args.replicas)
    if args.scenario == "limits":
        # The grid is the sizes; `proxies` and `upstreams` keep the largest, for the record.
        found["grid"] = tuple(args.grid)
        found["proxies"] = max(n for n, _ in args.grid)
        found["upstreams"] = max(u for _, u in args.grid)
    return found


def _run(scenario: str, opts: Options) -> Result:
    describe = COMMANDS.get(scenario, scenarios.command)
    print(f"running: {describe(scenario, opts)}", file=sys.stderr, flush=True)
    with OtherLoad() as other:
        result = SCENARIOS[scenario](opts)
    result.rows.append(
        (
            "other processes' CPU during the run, mean / max of 2 s samples (% of one core)",
            other.summary(),
        )
    )
    print(result.markdown(), flush=True)
    return result


def _report(results: list[Result], load: tuple[float, float, float], code: str) -> str:
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [f"## Run of {now}", "", "Machine:", ""]
    lines += [f"- {line}" for line in machine()]
    end = os.getloadavg()
    lines += [f"- load average before the run: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}"]
    lines += [f"- load average after the run: {end[0]:.2f} {end[1]:.2f} {end[2]:.2f}"]
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
