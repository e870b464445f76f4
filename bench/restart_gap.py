"""`python -m bench.restart_gap`: the gap after a proxy restart, with and without the dump file.

dyups forgets every dynamic upstream when nginx restarts: until the syncer re-posts
them, a request for a synced upstream fails (`proxy_pass http://$var` answers 502).
With `dump_path`, the syncer keeps an nginx include of what the proxy last accepted,
and nginx loads it at start. Two measurements:

1. **Simulator** (the dyups module's behaviour, classic flavour, 2 nginx workers).
   The syncer runs as its own process against one simulated proxy. Each trial
   restarts the proxy: the simulator is stopped and a new one starts on the same
   port, with no upstreams (dump off), or with the upstreams of the dump file as
   its nginx.conf upstreams (dump on: what `include` does on a real nginx). The
   gap is the time from the new proxy listening until every nginx worker holds
   every synced upstream with its servers: until then a request routed to a worker
   that lacks one fails. The POSTs the syncer sends in the following seconds show
   whether it had to re-post (each POST also resets the upstream's balancer state).
2. **Debian nginx** (no dyups module in it: this measures the include side only).
   The syncer writes the dump file for one upstream pointing at a tiny local HTTP
   backend; nginx starts with a config that includes that file (on) or not (off),
   and a client polls a proxied URL from the moment nginx is spawned. Off, nothing
   can ever create the upstream on this nginx (no dyups), so its 502s last the
   whole window: on an nginx with dyups they would last until the syncer re-posts,
   which is the simulator's gap.

Nothing is asserted: figures are for reading.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import http.client
import http.server
import random
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from bench.harness import (
    NGINX_WORKERS,
    POLL_INTERVAL,
    READ_MSG_TIMEOUT,
    SHM_ZONE_SIZE,
    BenchError,
    SyncerProcess,
    base_spec,
    code_version,
    machine,
    percentiles_ms,
)
from syncer.testing.dyups import DyupsSimulator

SYNC_TIMEOUT = 60.0  # first sync, and the dump file written
GAP_TIMEOUT = 30.0  # one repair: far above a probe interval
PROBE_INTERVAL = 1.0  # the syncer's default: restarts are spread over one of its periods
NGINX_TIMEOUT = 10.0  # nginx start or stop
_BLOCK = re.compile(r"^upstream (\S+) \{\n(.*?)^\}", re.MULTILINE | re.DOTALL)


@dataclass(frozen=True)
class GapOptions:
    upstreams: int = 20
    servers: int = 3
    trials: int = 10  # simulator restarts per mode
    settle: float = 2.5  # seconds after a repair: the syncer's next probes, before the next trial
    nginx_trials: int = 5  # nginx starts per mode
    window: float = 2.0  # seconds of polling after each nginx start
    seed: int = 1  # the pauses between simulator restarts

    def command(self) -> str:
        line = "python -m bench.restart_gap"
        defaults = GapOptions()
        for name in ("upstreams", "servers", "trials", "nginx_trials", "window"):
            if getattr(self, name) != getattr(defaults, name):
                line += f" --{name.replace('_', '-')} {getattr(self, name):g}"
        return line


def _arguments(argv: Sequence[str] | None) -> GapOptions:
    d = GapOptions()
    p = argparse.ArgumentParser(
        prog="python -m bench.restart_gap", description=__doc__.split("\n")[0]
    )
    p.add_argument("--upstreams", type=int, default=d.upstreams, help="synced upstreams (20)")
    p.add_argument("--servers", type=int, default=d.servers, help="servers per upstream (3)")
    p.add_argument("--trials", type=int, default=d.trials, help="simulator restarts per mode (10)")
    p.add_argument(
        "--nginx-trials",
        type=int,
        default=d.nginx_trials,
        help="nginx starts per mode, 0: skip (5)",
    )
    p.add_argument(
        "--window", type=float, default=d.window, help="seconds polled after an nginx start (2)"
    )
    args = p.parse_args(argv)
    if not 1 <= args.upstreams <= 2000 or not 1 <= args.servers <= 50:
        p.error("--upstreams must be 1–2000 and --servers 1–50")
    if not 1 <= args.trials <= 1000 or not 0 <= args.nginx_trials <= 100:
        p.error("--trials must be 1–1000 and --nginx-trials 0–100")
    if not 0.2 <= args.window <= 60:
        p.error("--window must be 0.2–60 seconds")
    return GapOptions(
        upstreams=args.upstreams,
        servers=args.servers,
        trials=args.trials,
        nginx_trials=args.nginx_trials,
        window=args.window,
    )


# ----------------------------------------------------------------- the syncer and its dump


def parse_dump(text: str) -> dict[str, str]:
    """name → body of each `upstream NAME { … }` block of a dump file."""
    return {m[1]: m[2].strip() for m in _BLOCK.finditer(text)}


def write_upstreams(path: Path, spec: dict[str, list[str]]) -> None:
    doc = {"upstreams": {name: {"servers": servers} for name, servers in spec.items()}}
    tmp = path.with_suffix(".tmp")
    tmp.write_text(yaml.safe_dump(doc, sort_keys=False))
    tmp.replace(path)


def start_syncer(work: Path, url: str, dump: Path | None) -> SyncerProcess:
    """The syncer with its defaults (probe 1 s, resync 10 s), one proxy, a file source."""
    proxy: dict[str, Any] = {"url": url, "name": "p0"}
    if dump is not None:
        proxy["dump_path"] = str(dump)
    config = {
        "sources": [
            {"type": "file", "path": str(work / "upstreams.yaml"), "poll_interval": POLL_INTERVAL}
        ],
        "proxies": {"static": [proxy]},
        "snapshot_path": str(work / "snapshot.json"),
        "listen": "127.0.0.1:0",
        "log": {"level": "warning", "format": "json"},
    }
    path = work / "config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return SyncerProcess(path, work / "syncer.log")


def new_simulator(port: int = 0, static: dict[str, str] | None = None) -> DyupsSimulator:
    return DyupsSimulator(
        workers=NGINX_WORKERS,
        shm_zone_size=SHM_ZONE_SIZE,
        read_msg_timeout=READ_MSG_TIMEOUT,
        static=static,
        port=port,
    ).start()


def holds(sim: DyupsSimulator, worker: int, name: str, servers: list[str]) -> bool:
    have = sim.upstreams(worker).get(name)
    return have is not None and sorted(s.addr for s in have) == sorted(servers)


def wait_for(
    predicate: Callable[[], bool], timeout: float, what: str, syncer: SyncerProcess
) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        syncer.check_alive()
        if time.monotonic() > deadline:
            raise BenchError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.02)


def dump_holds(dump: Path, names: set[str]) -> bool:
    return dump.exists() and set(parse_dump(dump.read_text())) >= names


# ----------------------------------------------------------------- simulator restarts


@dataclass
class SimFigures:
    gaps: list[float] = field(default_factory=list)  # per trial: until everything is back
    per_name: list[float] = field(default_factory=list)  # per (trial, upstream)
    posts_after: list[int] = field(default_factory=list)  # per trial, within `settle`
    static_at_start: list[int] = field(default_factory=list)  # upstreams loaded at start


def measure_gap(
    sim: DyupsSimulator, spec: dict[str, list[str]], started: float
) -> tuple[float, list[float]]:
    """From `started` until every worker holds every upstream of `spec`; per name too."""
    back: dict[str, float] = {}

    def all_back(s: DyupsSimulator) -> bool:
        now = time.monotonic()
        for name, servers in spec.items():
            if name not in back and all(holds(s, w, name, servers) for w in range(s.workers)):
                back[name] = now - started
        return len(back) == len(spec)

    if not sim.wait_until(all_back, GAP_TIMEOUT, recheck=0.002):
        raise BenchError(f"the restarted proxy was not repaired within {GAP_TIMEOUT:g} s")
    return max(back.values()), list(back.values())


def simulator_gaps(opts: GapOptions, with_dump: bool) -> SimFigures:
    spec = base_spec(opts.upstreams, opts.servers)
    out = SimFigures()
    with tempfile.TemporaryDirectory(prefix="dyups-gap-") as tmp:
        work = Path(tmp)
        dump = work / "dump" / "upstreams.conf" if with_dump else None
        write_upstreams(work / "upstreams.yaml", spec)
        sim = new_simulator()
        syncer = start_syncer(work, sim.url, dump)
        try:
            wait_for(lambda: _synced(sim, spec), SYNC_TIMEOUT, "the first sync", syncer)
            if dump is not None:
                wait_for(lambda: dump_holds(dump, set(spec)), SYNC_TIMEOUT, "the dump", syncer)
            rng = random.Random(opts.seed)
            for _ in range(opts.trials):
                sim = _one_restart(sim, spec, dump, opts, out, syncer, rng)
        finally:
            syncer.stop()
            sim.stop()
    return out


def _synced(sim: DyupsSimulator, spec: dict[str, list[str]]) -> bool:
    return all(holds(sim, w, n, s) for n, s in spec.items() for w in range(sim.workers))


def _one_restart(
    sim: DyupsSimulator,
    spec: dict[str, list[str]],
    dump: Path | None,
    opts: GapOptions,
    out: SimFigures,
    syncer: SyncerProcess,
    rng: random.Random,
) -> DyupsSimulator:
    """Stop the proxy and start a new one on its port, as an nginx restart does."""
    static = parse_dump(dump.read_text()) if dump is not None else None
    port = sim.port
    sim.stop()
    sim = new_simulator(port, static)
    started = time.monotonic()  # the new proxy listens from here
    gap, per_name = measure_gap(sim, spec, started)
    out.gaps.append(gap)
    out.per_name.extend(per_name)
    out.static_at_start.append(len(static or {}))
    time.sleep(max(0.0, started + gap + opts.settle - time.monotonic()))
    syncer.check_alive()
    out.posts_after.append(sim.stats.posts)
    # A random pause before the next restart, so that restarts land at every phase of
    # the probe timer (else trials spaced alike all find it at the same point).
    time.sleep(rng.uniform(0.0, PROBE_INTERVAL))
    return sim


# ----------------------------------------------------------------- Debian nginx


class Backend:
    """A tiny HTTP server on loopback that answers 200 `backend` to any GET."""

    def __init__(self) -> None:
        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = b"backend\n"
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass  # quiet

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> Backend:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def nginx_binary() -> str | None:
    found = shutil.which("nginx")
    if found is None and Path("/usr/sbin/nginx").exists():
        found = "/usr/sbin/nginx"
    return found


def nginx_conf(work: Path, port: int, include: Path | None) -> Path:
    temp = "\n".join(
        f"    {kind}_temp_path {work}/{kind};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    # A glob, as the README recommends: no error before the syncer's first write.
    included = f"    include {include.parent}/*.conf;\n" if include is not None else ""
    conf = work / ("nginx-dump.conf" if include else "nginx-plain.conf")
    conf.write_text(
        f"""worker_processes {NGINX_WORKERS};
pid {work}/nginx.pid;
error_log {work}/error.log;
events {{ worker_connections 256; }}
http {{
    access_log off;
{temp}
{included}    server {{
        listen 127.0.0.1:{port};
        location / {{
            set $backend web;
            proxy_pass http://$backend;
        }}
    }}
}}
"""
    )
    return conf


def write_dump_for(backend_port: int, work: Path) -> Path:
    """Let the syncer write the dump file for `web` → the backend (through a simulator:
    Debian's nginx has no dyups interface to write to)."""
    spec = {"web": [f"127.0.0.1:{backend_port}"]}
    dump = work / "dump" / "upstreams.conf"
    write_upstreams(work / "upstreams.yaml", spec)
    sim = new_simulator()
    syncer = start_syncer(work, sim.url, dump)
    try:
        wait_for(lambda: dump_holds(dump, {"web"}), SYNC_TIMEOUT, "the dump file", syncer)
    finally:
        syncer.stop()
        sim.stop()
    return dump


@dataclass
class Start:
    listening_s: float | None  # spawn → first answer
    first_status: int | None
    failed: int  # answers other than 200 after nginx began listening
    answered: int
    first_ok_s: float | None  # spawn → first 200


def _get(port: int) -> int | None:
    """Status of GET / on a fresh connection; None when nothing listens yet."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
    try:
        conn.request("GET", "/", headers={"Connection": "close"})
        return conn.getresponse().status
    except (OSError, http.client.HTTPException):
        return None  # refused while nginx starts (or reset while it stops)
    finally:
        conn.close()


@contextlib.contextmanager
def running_nginx(binary: str, conf: Path, work: Path) -> Iterator[subprocess.Popen[bytes]]:
    command = [binary, "-e", str(work / "error.log"), "-p", str(work), "-c", str(conf)]
    proc = subprocess.Popen(
        [*command, "-g", "daemon off;"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        yield proc
    finally:
        proc.send_signal(signal.SIGTERM)  # fast shutdown
        try:
            proc.wait(NGINX_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(NGINX_TIMEOUT)


def one_start(binary: str, conf: Path, work: Path, port: int, window: float) -> Start:
    with running_nginx(binary, conf, work) as proc:
        spawned = time.monotonic()
        listening = first_ok = None
        first_status = None
        failed = answered = 0
        while (now := time.monotonic()) < (listening or spawned) + window:
            if proc.poll() is not None:
                tail = (work / "error.log").read_text(errors="replace")[-1000:]
                raise BenchError(f"nginx exited with {proc.returncode}: {tail}")
            status = _get(port)
            if status is not None:
                answered += 1
                if listening is None:
                    listening, first_status = now, status
                if status == 200 and first_ok is None:
                    first_ok = now
                failed += status != 200
            elif now - spawned > NGINX_TIMEOUT:
                raise BenchError(f"nginx did not listen within {NGINX_TIMEOUT:g} s")
            time.sleep(0.005)
    return Start(
        None if listening is None else listening - spawned,
        first_status,
        failed,
        answered,
        None if first_ok is None else first_ok - spawned,
    )


def nginx_starts(opts: GapOptions) -> dict[bool, list[Start]] | str:
    """Per mode (include or not), one Start per trial; or why it was not measured."""
    binary = nginx_binary()
    if binary is None:
        return "not measured: no nginx binary (apt-get install nginx)"
    results: dict[bool, list[Start]] = {False: [], True: []}
    with tempfile.TemporaryDirectory(prefix="dyups-gap-nginx-") as tmp, Backend() as backend:
        work = Path(tmp)
        work.chmod(0o755)  # nginx workers run as nobody when the master is root
        dump = write_dump_for(backend.port, work)
        port = _free_port()
        for include in (False, True):
            conf = nginx_conf(work, port, dump if include else None)
            for _ in range(opts.nginx_trials):
                results[include].append(one_start(binary, conf, work, port, opts.window))
    return results


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


# ----------------------------------------------------------------- report


def _ms(values: Sequence[float]) -> str:
    return percentiles_ms(values) if values else "—"


def _mean(values: Sequence[float]) -> str:
    return f"{statistics.fmean(values):.1f} ({min(values):g}–{max(values):g})" if values else "—"


def simulator_rows(off: SimFigures, on: SimFigures, opts: GapOptions) -> list[tuple[str, ...]]:
    return [
        (
            "simulator: proxy listening → every nginx worker holds every synced upstream "
            "(the gap), p50 / p90 / p99 / max (ms)",
            _ms(off.gaps),
            _ms(on.gaps),
        ),
        (
            "simulator: per upstream, proxy listening → every worker holds it, "
            "p50 / p90 / p99 / max (ms)",
            _ms(off.per_name),
            _ms(on.per_name),
        ),
        (
            "simulator: upstreams the proxy held when it began listening, per restart",
            _mean(off.static_at_start),
            _mean(on.static_at_start),
        ),
        (
            f"simulator: POSTs the syncer sent from the restart to {opts.settle:g} s after "
            "the repair, per restart: mean (min–max)",
            _mean(off.posts_after),
            _mean(on.posts_after),
        ),
    ]


def nginx_rows(starts: dict[bool, list[Start]] | str, opts: GapOptions) -> list[tuple[str, ...]]:
    if isinstance(starts, str):
        return [("Debian nginx", starts, starts)]

    def column(include: bool, pick: Callable[[list[Start]], str]) -> str:
        return pick(starts[include])

    def first_statuses(xs: list[Start]) -> str:
        counts: dict[str, int] = {}
        for x in xs:
            counts[str(x.first_status)] = counts.get(str(x.first_status), 0) + 1
        return ", ".join(f"{k} ×{n}" for k, n in sorted(counts.items()))

    def failed(xs: list[Start]) -> str:
        return ", ".join(f"{x.failed} of {x.answered}" for x in xs)

    def first_ok(xs: list[Start]) -> str:
        ok = [x.first_ok_s for x in xs if x.first_ok_s is not None]
        never = len(xs) - len(ok)
        text = _ms(ok) if ok else ""
        if never:
            text += (
                "; " if text else ""
            ) + f"{never} of {len(xs)} starts: no 200 within the window"
        return text

    def listening(xs: list[Start]) -> str:
        return _ms([x.listening_s for x in xs if x.listening_s is not None])

    return [
        (
            "Debian nginx: status of the first proxied request answered, per start",
            column(False, first_statuses),
            column(True, first_statuses),
        ),
        (
            f"Debian nginx: proxied requests failed (not 200) of those answered in the first "
            f"{opts.window:g} s after nginx began listening, per start",
            column(False, failed),
            column(True, failed),
        ),
        (
            "Debian nginx: spawn → first 200, p50 / p90 / p99 / max (ms)",
            column(False, first_ok),
            column(True, first_ok),
        ),
        (
            "Debian nginx: spawn → listening (not part of the gap), p50 / p90 / p99 / max (ms)",
            column(False, listening),
            column(True, listening),
        ),
    ]


def report(rows: list[tuple[str, ...]], opts: GapOptions, started: str, code: str) -> str:
    setup = (
        f"Simulator: one proxy (classic, {NGINX_WORKERS} nginx workers), {opts.upstreams} "
        f"upstreams × {opts.servers} servers, {opts.trials} restarts per mode; the syncer with "
        "its defaults (probe 1 s, resync 10 s, debounce 100 ms, kick on). Debian nginx: "
        f"{opts.nginx_trials} starts per mode, one upstream `web` → a local HTTP backend, "
        "`proxy_pass http://$backend`, a fresh connection every 5 ms."
    )
    lines = [
        f"### restart gap (run of {started})",
        "",
        f"`{opts.command()}`",
        "",
        setup,
        "",
        "Machine: " + "; ".join(machine()) + f"; code measured: {code}",
        "",
        "| figure | dump_path off | dump_path on |",
        "|---|---|---|",
        *[f"| {' | '.join(row)} |" for row in rows],
        "",
        "What each figure measures:",
        "",
        "- *simulator gap*: from the restarted proxy accepting connections until every nginx "
        "worker holds every synced upstream with its servers; a request routed to a worker "
        "that lacks its upstream fails meanwhile. The restart before it (no listener) is not "
        "counted: any nginx restart has it.",
        "- *upstreams held at start*: with the dump, what the include gave the new proxy.",
        "- *POSTs after the restart*: 0 means the syncer found the proxy holding what it "
        "should and re-posted nothing (no balancer reset).",
        "- *Debian nginx*: a real nginx without dyups. With the include, the upstream exists "
        "from nginx's first request. Without it, nothing can create the upstream on this "
        "nginx, so the 502s last the whole window; on an nginx with dyups they would last "
        "until the syncer re-posts (the simulator's gap, dump off).",
    ]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    opts = _arguments(argv)
    started = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    code = code_version()
    print(f"running: {opts.command()}", file=sys.stderr, flush=True)
    try:
        off = simulator_gaps(opts, with_dump=False)
        on = simulator_gaps(opts, with_dump=True)
        starts = nginx_starts(opts) if opts.nginx_trials else "skipped (--nginx-trials 0)"
    except BenchError as e:
        print(f"bench.restart_gap: {e}", file=sys.stderr)
        return 1
    rows = simulator_rows(off, on, opts) + nginx_rows(starts, opts)
    print(report(rows, opts, started, code), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
