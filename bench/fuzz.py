"""`python -m bench.fuzz [--examples N] [-k TEXT] [--jobs N] [--seed N] [--nice N] [--results PATH] [--resume] [--summary] [--list]`: the long fuzz run.

Runs every property of tests/fuzz (the parsers of proxy answers, the renderer, the
file source, the config loader, the Kubernetes and Consul adapters) with the `long`
hypothesis profile of tests/fuzz/conftest.py: by default 100k examples per target
(`--examples`, or the environment variable DYUPS_FUZZ_EXAMPLES, for another count).
CI runs the same properties with the derandomized `ci` profile (`pytest tests/fuzz`).

The scheduled long run takes 5 to 7 hours on this 2-core machine (5,000 examples per
target took 20 min with `--jobs 2` on a busy machine, 14 to 280 s a target, the
Kubernetes ones slowest): longer than a working session, whose end kills it. So it is
resumable. Every target runs in a fresh process of its own, which imports only the
target's test module. Every finished target appends one JSON line to the results file
(`--results`, default `.fuzz/long.jsonl`, machine-local and gitignored): target,
examples, requested examples, failures, seconds (wall and CPU), seed, commit and whether
the fuzzed code differed from it (`dirty`), the git tree hashes of `syncer/` and
`tests/fuzz/`, the files of those two folders that the target's process had loaded
when it finished with their git blob hashes (`files`), hypothesis and Python versions,
timestamp and the failure text. A target interrupted midway writes nothing and runs
again. Start it, and start it again after each interruption, from the repository root,
niced so that it can share the machine:

    nohup setsid python -m bench.fuzz --examples 100000 --jobs 1 --nice 19 --resume > /tmp/fuzz-long.log 2>&1 &

`--resume` skips a target only if the file has a passing line for it with at least
`--examples` examples on the same fuzzed code: every file its process had loaded has
the same blob hash on disk now (tracked or not; for a clean tree, the hash `git
rev-parse HEAD:PATH` gives). Code the process never loaded cannot have run, so a change
to, say, `syncer/app.py` keeps the parsers' results, and a change to `syncer/model.py`
runs every target that loaded it again. A file imported after it changed on disk gets a
hash that matches nothing. Lines written before `files` was recorded fall back to the
tree hashes of both folders. The run says which targets it skips and why, and which it
runs again because their code changed (naming the files). The hashes cover neither the
installed libraries (the hypothesis version is recorded) nor the seed. A failure on the
same code outweighs any pass on it (the target runs again). `--summary` prints, per
target, the figures of its line on the current code (a failure first, else the largest
run) and whether every target reached the requested count on it (exit 0 if so, 1 if
not): the figures RELIABILITY.md records.

A shorter look after changing a parser: `python -m bench.fuzz --examples 5000 -k kube`.

It prints one line per target as it finishes, then a table:

    target                                               examples  failures   seconds
    test_fuzz_model::test_render_then_parse_round_trips      5000         0      25.0

`examples` counts the calls of the property (a failing target also counts the calls
that replayed and shrank its failure); `failures` the distinct bugs hypothesis
reported (0 or 1 per target unless it found several at once). A failure prints the
minimal falsifying example and a blob for `@reproduce_failure`; the run goes on
with the other targets and exits 1 (0 when every target passed, 2 when `-k` matches
nothing). Failing examples are saved in `.hypothesis/`: replay them with
`HYPOTHESIS_PROFILE=dev pytest tests/fuzz -k NAME` (the `ci` profile is
derandomized and does not read the example database).
"""

from __future__ import annotations

import argparse
import datetime
import functools
import hashlib
import importlib
import json
import multiprocessing
import os
import platform
import stat
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hypothesis
from hypothesis import settings

MODULES = [
    "tests.fuzz.test_fuzz_model",
    "tests.fuzz.test_fuzz_proxy",
    "tests.fuzz.test_fuzz_verify",
    "tests.fuzz.test_fuzz_file_source",
    "tests.fuzz.test_fuzz_config",
    "tests.fuzz.test_fuzz_kube",
    "tests.fuzz.test_fuzz_consul",
]
PROFILE = "bench"
EXAMPLES_ENV = "DYUPS_FUZZ_EXAMPLES"
# The code the targets run: what a result is valid for.
FUZZED_PATHS = ("syncer", "tests/fuzz")
ROOT = Path(__file__).resolve().parent.parent
# Machine-local (gitignored): RELIABILITY.md records the figures, from `--summary`.
RESULTS = ROOT / ".fuzz" / "long.jsonl"


@dataclass(frozen=True)
class Outcome:
    target: str
    examples: int
    seconds: float
    failures: int
    failure: str  # "" when every example passed
    # CPU time of the process: `seconds` is wall time, which a niced run sharing the
    # machine, or one paused with SIGSTOP, stretches.
    cpu_seconds: float = 0.0


@dataclass(frozen=True)
class Code:
    """The fuzzed code a process imported: its git tree hashes, and the commit then."""

    commit: str  # git rev-parse HEAD, "" outside a git checkout
    dirty: bool  # the fuzzed paths differed from the commit's
    trees: dict[str, str] = field(default_factory=dict)  # path -> tree hash; {} without git
    # Every file under FUZZED_PATHS on disk, relative path -> git blob hash; {} without git.
    files: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Result:
    """One line of the results file: a finished target."""

    target: str
    examples: int
    requested: int
    failures: int
    seconds: float
    seed: int | None
    commit: str
    dirty: bool
    trees: dict[str, str]
    hypothesis: str
    python: str
    timestamp: str  # UTC, ISO 8601, when the target finished
    failure: str
    cpu_seconds: float | None = None  # None in the lines written before it was recorded
    # The fuzzed files the target's process had loaded when it finished (relative path ->
    # blob hash): the code it can have run. None in the lines written before they were
    # recorded, which match on `trees` alone.
    files: dict[str, str] | None = None

    @property
    def passed(self) -> bool:
        return self.failures == 0 and not self.failure

    @property
    def revision(self) -> str:
        return (self.commit[:9] or "no git") + ("+dirty" if self.dirty else "")


@dataclass(frozen=True)
class Decision:
    skip: bool
    kind: str  # "done", "new", "changed", "failed", "short" or "unknown"
    reason: str


# --- what code is fuzzed: git tree hashes of the working tree --------------------------


def _git(*args: str, stdin: str | None = None) -> str:
    return subprocess.run(
        ["git", *args], cwd=ROOT, input=stdin, capture_output=True, text=True, check=True
    ).stdout


def tree_hash(blobs: Mapping[str, tuple[str, str]]) -> str:
    """Git's hash of the tree holding `blobs` (relative path -> (mode, blob hash)).

    Built here rather than with `git write-tree`, which needs an index: the owner's
    must not be touched, and this writes nothing to the repository."""
    root: dict[str, Any] = {}
    for path, entry in blobs.items():
        *dirs, name = path.split("/")
        node = root
        for part in dirs:
            node = node.setdefault(part, {})
        node[name] = entry
    return _hash_tree(root)


def _hash_tree(node: Mapping[str, Any]) -> str:
    entries = []
    for name, value in node.items():
        if isinstance(value, dict):
            # Git orders a subtree as if its name ended with "/".
            entries.append(((name + "/").encode(), b"40000", name, _hash_tree(value)))
        else:
            mode, sha = value
            entries.append((name.encode(), mode.encode(), name, sha))
    body = b"".join(
        mode + b" " + name.encode() + b"\0" + bytes.fromhex(sha)
        for _, mode, name, sha in sorted(entries)
    )
    return hashlib.sha1(b"tree %d\0" % len(body) + body).hexdigest()


def _blob(path: Path) -> tuple[str, str] | None:
    """(mode, hash) of a symlink here; regular files are hashed by git (filters)."""
    if not path.is_symlink():
        return None
    target = os.readlink(path).encode()
    return "120000", hashlib.sha1(b"blob %d\0" % len(target) + target).hexdigest()


def worktree_blobs(prefix: str) -> dict[str, tuple[str, str]]:
    """(mode, blob hash) of every file under `prefix` as it is on disk, by path relative
    to the repository: tracked and untracked files, not ignored ones (so not
    __pycache__)."""
    listed = _git("ls-files", "-z", "--cached", "--others", "--exclude-standard", "--", prefix)
    paths = sorted({p for p in listed.split("\0") if p and os.path.lexists(ROOT / p)})
    blobs: dict[str, tuple[str, str]] = {}
    files = []
    for p in paths:
        link = _blob(ROOT / p)
        if link is not None:
            blobs[p] = link
        else:
            files.append(p)
    # Without -w: hashes, and stores nothing.
    listing = "".join(f + "\n" for f in files)
    hashes = _git("hash-object", "--stdin-paths", stdin=listing).split() if files else []
    for p, sha in zip(files, hashes, strict=True):
        executable = (ROOT / p).stat().st_mode & stat.S_IXUSR
        blobs[p] = ("100755" if executable else "100644", sha)
    return blobs


def worktree_tree(prefix: str) -> str:
    """The tree hash `prefix` would have if committed as it is on disk."""
    blobs = worktree_blobs(prefix)
    return tree_hash({p[len(prefix) + 1 :]: entry for p, entry in blobs.items()})


def current_code() -> Code:
    """The fuzzed code on disk now; no trees (so nothing reusable) outside git."""
    try:
        blobs = {p: worktree_blobs(p) for p in FUZZED_PATHS}
    except (OSError, subprocess.CalledProcessError):
        return Code(commit="", dirty=True)
    trees = {
        p: tree_hash({f[len(p) + 1 :]: entry for f, entry in under.items()})
        for p, under in blobs.items()
    }
    files = {f: sha for under in blobs.values() for f, (_, sha) in under.items()}
    try:
        commit = _git("rev-parse", "HEAD").strip()
        committed = {p: _git("rev-parse", f"HEAD:{p}").strip() for p in FUZZED_PATHS}
    except subprocess.CalledProcessError:  # no commit yet, or the paths are not in it
        return Code(commit="", dirty=True, trees=trees, files=files)
    return Code(commit=commit, dirty=trees != committed, trees=trees, files=files)


def loaded_files(code: Code, modules: Iterable[Any]) -> dict[str, str]:
    """The fuzzed files among `modules` (normally sys.modules' values), with the blob
    hash `code` saw: what a target can have run. A file `code` did not see, or one
    that differs on disk now (it may have been imported after a change), gets a hash
    that matches nothing, so that its result is never reused."""
    loaded = {}
    prefixes = tuple(p + "/" for p in FUZZED_PATHS)
    for module in modules:
        path = getattr(module, "__file__", None)
        if not path:
            continue
        try:
            rel = Path(path).resolve().relative_to(ROOT).as_posix()
        except ValueError:  # outside the repository: a library
            continue
        if rel.startswith(prefixes):
            loaded[rel] = code.files.get(rel, "unknown")
    if not code.files:
        return loaded
    now = current_code().files
    return {
        rel: sha if now.get(rel) == sha else "changed-during-run" for rel, sha in loaded.items()
    }


# --- the targets ------------------------------------------------------------------------


def _describe(e: BaseException) -> tuple[int, str]:
    """How many failures an exception reports, and their text: the message, then
    hypothesis's notes (the falsifying example and its blob)."""
    if isinstance(e, BaseExceptionGroup):
        parts = [_describe(sub) for sub in e.exceptions]
        return sum(n for n, _ in parts), "\n".join(text for _, text in parts)
    return 1, "".join(traceback.format_exception_only(e)).strip()


def _setup(examples: int) -> None:
    """Select the bench profile; must run before the test modules are imported (a
    hypothesis test takes its settings when it is defined)."""
    from tests.fuzz import conftest

    os.environ[conftest.PROFILE_ENV] = PROFILE
    settings.register_profile(PROFILE, parent=settings.get_profile("long"), max_examples=examples)


def targets(modules: Sequence[str] = MODULES) -> dict[str, Callable[..., Any]]:
    """Every hypothesis test of the fuzz modules, by `module::function`."""
    found: dict[str, Callable[..., Any]] = {}
    for name in modules:
        module = importlib.import_module(name)
        for attr, value in vars(module).items():
            if attr.startswith("test_") and hasattr(value, "hypothesis"):
                found[f"{name.rsplit('.', 1)[-1]}::{attr}"] = value
    return found


def load(
    examples: int, modules: Sequence[str] = MODULES
) -> tuple[dict[str, Callable[..., Any]], Code]:
    """The targets of `modules` and the code they run.

    A process fuzzes the modules it imported, however the files change afterwards (a
    run lasts hours while others edit `syncer/`), so the hashes are taken at import,
    and a change during the import is refused."""
    before = current_code()
    _setup(examples)
    found = targets(modules)
    if current_code().files != before.files:
        raise SystemExit("the fuzzed code changed while it was imported: start again")
    return found, before


def module_of(target: str) -> str:
    return "tests.fuzz." + target.split("::", 1)[0]


def run_target(name: str, examples: int, seed: int | None) -> tuple[Outcome, Code, dict[str, str]]:
    """Run one target; called in a fresh process of its own (see `run`), which imports
    only the target's module, so that the files it loaded are the code it can have run."""
    found, code = load(examples, [module_of(name)])
    test: Any = found[name]
    inner = test.hypothesis.inner_test
    calls = 0

    @functools.wraps(inner)
    def counted(*args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        return inner(*args, **kwargs)

    test.hypothesis.inner_test = counted
    if seed is not None:
        test = hypothesis.seed(seed)(test)
    started, cpu = time.perf_counter(), time.process_time()
    failures, failure = 0, ""
    try:
        test()
    except Exception as e:  # a falsified property (or a health check), reported and counted
        failures, failure = _describe(e)
    finally:
        test.hypothesis.inner_test = inner
    seconds = time.perf_counter() - started
    outcome = Outcome(name, calls, seconds, failures, failure, time.process_time() - cpu)
    return outcome, code, loaded_files(code, list(sys.modules.values()))


# --- the results file -------------------------------------------------------------------


def to_result(
    outcome: Outcome,
    code: Code,
    requested: int,
    seed: int | None,
    now: datetime.datetime,
    files: Mapping[str, str] | None = None,
) -> Result:
    return Result(
        target=outcome.target,
        examples=outcome.examples,
        requested=requested,
        failures=outcome.failures,
        seconds=round(outcome.seconds, 1),
        cpu_seconds=round(outcome.cpu_seconds, 1),
        seed=seed,
        commit=code.commit,
        dirty=code.dirty,
        trees=dict(code.trees),
        hypothesis=hypothesis.__version__,
        python=platform.python_version(),
        timestamp=now.astimezone(datetime.UTC).isoformat(timespec="seconds"),
        failure=outcome.failure,
        files=None if files is None else dict(files),
    )


def format_line(result: Result) -> str:
    return json.dumps(vars(result), ensure_ascii=False, sort_keys=True) + "\n"


def parse_line(text: str) -> Result | None:
    """A result from a line of the file; None for a line that is not one (blank, or
    cut short by a kill mid-write)."""
    try:
        data = json.loads(text)
        result = Result(**data)
    except (ValueError, TypeError):
        return None
    fields_ok = (
        isinstance(result.target, str)
        and isinstance(result.examples, int)
        and isinstance(result.failures, int)
        and isinstance(result.trees, dict)
    )
    return result if fields_ok else None


def read_results(path: Path) -> tuple[list[Result], int]:
    """Every result in the file, in the order written, and how many lines were not."""
    if not path.exists():
        return [], 0
    results, bad = [], 0
    for text in path.read_text(encoding="utf-8").splitlines():
        if not text.strip():
            continue
        result = parse_line(text)
        if result is None:
            bad += 1
        else:
            results.append(result)
    return results, bad


def append_result(path: Path, result: Result) -> None:
    """Append one line, synced to disk: the run may be killed any time after."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a+b") as f:
        # A line cut short by a kill must not swallow this one.
        f.seek(0, os.SEEK_END)
        if f.tell() > 0:
            f.seek(-1, os.SEEK_END)
            if f.read(1) != b"\n":
                f.write(b"\n")
        f.write(format_line(result).encode("utf-8"))
        f.flush()
        os.fsync(f.fileno())


# --- what to skip -----------------------------------------------------------------------


def same_code(result: Result, code: Code) -> bool:
    """Whether `result` was fuzzed on the code on disk now: each file its process had
    loaded is unchanged (other files cannot have run); a line without that list
    (written before it was recorded) needs the same trees."""
    if not code.trees:
        return False
    if result.files:
        return all(code.files.get(path) == sha for path, sha in result.files.items())
    return result.trees == code.trees


def _changed(result: Result, code: Code) -> str:
    if result.files:
        files = sorted(p for p, sha in result.files.items() if code.files.get(p) != sha)
        return ", ".join(files)
    old, new = result.trees, code.trees
    paths = [p for p in sorted(set(old) | set(new)) if old.get(p) != new.get(p)]
    return ", ".join(p + "/" for p in paths)


def decide_one(target: str, results: Iterable[Result], code: Code, examples: int) -> Decision:
    """Whether `target` already passed `examples` examples on `code`.

    A failure on this code outweighs any pass on it: the bug is there whatever the
    order of the runs, and running again replays it from the example database."""
    mine = [r for r in results if r.target == target]
    if not code.trees:
        return Decision(False, "unknown", "run: the fuzzed code has no git tree hash here")
    same = [r for r in mine if same_code(r, code)]
    failed = [r for r in same if not r.passed]
    if failed:
        last = failed[-1]
        return Decision(
            False, "failed", f"run again: failed at {last.revision} on {last.timestamp}"
        )
    done = [r for r in same if r.examples >= examples]
    if done:
        best = max(done, key=lambda r: r.examples)
        return Decision(
            True, "done", f"passed {best.examples} examples at {best.revision} on {best.timestamp}"
        )
    if same:
        most = max(r.examples for r in same)
        return Decision(False, "short", f"run: only {most} of {examples} examples on this code")
    if mine:
        last = mine[-1]
        return Decision(
            False,
            "changed",
            f"run again: {_changed(last, code) or 'the code'} changed since its "
            f"result at {last.revision} on {last.timestamp}",
        )
    return Decision(False, "new", "run: no result yet")


def decide(
    names: Sequence[str], results: Sequence[Result], code: Code, examples: int
) -> dict[str, Decision]:
    return {n: decide_one(n, results, code, examples) for n in names}


def report_decisions(decisions: Mapping[str, Decision]) -> str:
    """Skipped targets, then those run again because their code changed, then the rest."""
    order = ["done", "changed", "failed", "short", "new", "unknown"]
    heads = {"done": "skipped", "changed": "code changed"}
    width = max(len(n) for n in decisions)
    lines = []
    for kind in order:
        for name, d in decisions.items():
            if d.kind == kind:
                lines.append(f"{heads.get(kind, 'to run'):<12}  {name:<{width}}  {d.reason}")
    return "\n".join(lines)


# --- the summary ------------------------------------------------------------------------


def shown(target: str, results: Sequence[Result], code: Code) -> Result | None:
    """The line the summary shows: the latest failure on this code, else its largest
    passing run, else the latest line on older code (as `decide_one` weighs them)."""
    mine = [r for r in results if r.target == target]
    same = [r for r in mine if same_code(r, code)]
    failed = [r for r in same if not r.passed]
    if failed:
        return failed[-1]
    if same:
        return max(same, key=lambda r: r.examples)
    return mine[-1] if mine else None


def summary(
    names: Sequence[str], results: Sequence[Result], code: Code, examples: int
) -> tuple[str, bool]:
    """The per-target table of the results file, and whether every target passed
    `examples` examples on `code`."""
    width = max([len("target"), *(len(n) for n in names)])
    lines = [
        f"{'target':<{width}}  {'examples':>8}  {'failures':>8}  {'seconds':>8}  {'cpu s':>8}  "
        f"{'commit':<15}  {'finished (UTC)':<25}  code"
    ]
    complete = 0
    for name in names:
        r = shown(name, results, code)
        if r is None:
            lines.append(
                f"{name:<{width}}  {'-':>8}  {'-':>8}  {'-':>8}  {'-':>8}  {'':<15}  {'':<25}  "
                "no result"
            )
            continue
        same = same_code(r, code)
        if same and r.passed and r.examples >= examples:
            complete += 1
        cpu = "-" if r.cpu_seconds is None else f"{r.cpu_seconds:.1f}"
        lines.append(
            f"{name:<{width}}  {r.examples:>8}  {r.failures:>8}  {r.seconds:>8.1f}  {cpu:>8}  "
            f"{r.revision:<15}  {r.timestamp:<25}  {'current' if same else 'older code'}"
        )
    shown_results = [r for r in (shown(n, results, code) for n in names) if r is not None]
    lines.append(
        f"\n{complete} of {len(names)} targets passed {examples} examples on the current code "
        f"({', '.join(f'{p} {h[:9]}' for p, h in code.trees.items()) or 'no git'}); shown: "
        f"{sum(r.examples for r in shown_results)} examples, "
        f"{sum(r.seconds for r in shown_results):.0f} s wall"
    )
    return "\n".join(lines), complete == len(names)


# --- the command ------------------------------------------------------------------------


def _default_examples() -> int:
    raw = os.environ.get(EXAMPLES_ENV, "")
    try:
        return int(raw) if raw else 100_000
    except ValueError:
        raise SystemExit(f"{EXAMPLES_ENV}={raw!r} is not a number") from None


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _niceness(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 19:  # lowering it needs privileges; 19 is the lowest priority
        raise argparse.ArgumentTypeError(f"must be 0 to 19, got {value}")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench.fuzz",
        description=(__doc__ or "").split("\n\n")[1].replace("\n", " "),
    )
    parser.add_argument(
        "--examples",
        type=_positive,
        default=_default_examples(),
        help=f"examples per target (default from {EXAMPLES_ENV}, else 100000)",
    )
    parser.add_argument("-k", dest="match", default="", help="only targets whose name has TEXT")
    parser.add_argument("--jobs", type=_positive, default=1, help="targets run in parallel (1)")
    parser.add_argument("--seed", type=int, default=None, help="a fixed seed, to repeat a run")
    parser.add_argument(
        "--nice", type=_niceness, default=0, help="add N (0-19) to the niceness of the run (0)"
    )
    parser.add_argument(
        "--results",
        type=Path,
        default=RESULTS,
        help="the JSON-lines file each finished target is appended to (.fuzz/long.jsonl)",
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="skip the targets that passed --examples examples on the same fuzzed code",
    )
    parser.add_argument(
        "--summary", action="store_true", help="print the results file's figures and exit"
    )
    parser.add_argument("--list", action="store_true", help="list the targets and exit")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    found, code = load(args.examples)
    names = [n for n in found if args.match in n]
    if args.list or not names:
        print("\n".join(names) or f"no target matches {args.match!r}")
        return 0 if names else 2
    results, bad = read_results(args.results)
    if bad:
        print(f"{args.results}: {bad} unreadable line(s) ignored", flush=True)
    if args.summary:
        text, complete = summary(names, results, code, args.examples)
        print(text)
        return 0 if complete else 1
    if args.resume:
        decisions = decide(names, results, code, args.examples)
        print(report_decisions(decisions), flush=True)
        names = [n for n in names if not decisions[n].skip]
    if args.nice:
        # Inherited by the processes that run the targets (one fresh process each).
        os.nice(args.nice)
    return run(names, args, code)


def run(names: Sequence[str], args: argparse.Namespace, code: Code) -> int:
    print(
        f"{len(names)} targets, {args.examples} examples each, {args.jobs} job(s), "
        f"code {code.commit[:9] or 'no git'}{'+dirty' if code.dirty else ''}, "
        f"results to {args.results}",
        flush=True,
    )
    if not names:
        print("nothing to run: `--summary` shows the results", flush=True)
        return 0
    width = max(len(n) for n in names)
    started = time.perf_counter()
    outcomes: dict[str, Outcome] = {}

    def finish(outcome: Outcome, code: Code, files: dict[str, str]) -> None:
        now = datetime.datetime.now(datetime.UTC)
        append_result(args.results, to_result(outcome, code, args.examples, args.seed, now, files))
        status = f"FAILED ({outcome.failures})" if outcome.failure else "ok"
        print(
            f"{outcome.target:<{width}}  {outcome.examples:>8} examples  "
            f"{outcome.seconds:>8.1f} s  {status}",
            flush=True,
        )
        if outcome.failure:
            print("    " + outcome.failure.replace("\n", "\n    "), flush=True)
        outcomes[outcome.target] = outcome

    # One fresh process per target (spawned: it imports only the target's module), so
    # that the fuzzed files it loaded are exactly the code the target can have run.
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(args.jobs, mp_context=context, max_tasks_per_child=1) as pool:
        futures = [pool.submit(run_target, n, args.examples, args.seed) for n in names]
        # Recorded as each one finishes, so that a kill loses only the running ones.
        for future in as_completed(futures):
            finish(*future.result())
    ordered = [outcomes[n] for n in names]
    print(table(ordered), flush=True)
    failed = [o.target for o in ordered if o.failure]
    total = sum(o.examples for o in ordered)
    print(
        f"total: {total} examples in {time.perf_counter() - started:.1f} s; "
        f"{len(failed)} of {len(ordered)} targets failed",
        flush=True,
    )
    return 1 if failed else 0


def table(outcomes: Sequence[Outcome]) -> str:
    """The per-target summary: target, examples, failures, seconds."""
    width = max([len("target"), *(len(o.target) for o in outcomes)])
    lines = [f"{'target':<{width}}  {'examples':>8}  {'failures':>8}  {'seconds':>8}"]
    for o in outcomes:
        lines.append(f"{o.target:<{width}}  {o.examples:>8}  {o.failures:>8}  {o.seconds:>8.1f}")
    return "\n".join(["", *lines])


if __name__ == "__main__":
    sys.exit(main())
