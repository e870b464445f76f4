"""`python -m bench.fuzz [--examples N] [-k TEXT] [--jobs N] [--seed N] [--list]`: the long fuzz run.

Runs every property of tests/fuzz (the parsers of proxy answers, the renderer, the
file source, the config loader, the Kubernetes and Consul adapters) with the `long`
hypothesis profile of tests/fuzz/conftest.py: by default 100k examples per target
(`--examples`, or the environment variable DYUPS_FUZZ_EXAMPLES, for another count).
CI runs the same properties with the derandomized `ci` profile (`pytest tests/fuzz`).

The scheduled long run, from the repository root:

    python -m bench.fuzz --examples 100000 --jobs 2

It takes hours: 5,000 examples per target took 20 min with `--jobs 2` on a busy 2-core
machine (14 to 280 s a target, the Kubernetes ones slowest), so expect 5 to 7 hours.

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
import functools
import importlib
import os
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import Any

import hypothesis
from hypothesis import settings

MODULES = [
    "tests.fuzz.test_fuzz_model",
    "tests.fuzz.test_fuzz_proxy",
    "tests.fuzz.test_fuzz_file_source",
    "tests.fuzz.test_fuzz_config",
    "tests.fuzz.test_fuzz_kube",
    "tests.fuzz.test_fuzz_consul",
]
PROFILE = "bench"


EXAMPLES_ENV = "DYUPS_FUZZ_EXAMPLES"


@dataclass(frozen=True)
class Outcome:
    target: str
    examples: int
    seconds: float
    failures: int
    failure: str  # "" when every example passed


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


def run_target(name: str, examples: int, seed: int | None) -> Outcome:
    _setup(examples)
    test: Any = targets()[name]
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
    started = time.perf_counter()
    failures, failure = 0, ""
    try:
        test()
    except Exception as e:  # a falsified property (or a health check), reported and counted
        failures, failure = _describe(e)
    return Outcome(name, calls, time.perf_counter() - started, failures, failure)


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


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.fuzz",
        description=__doc__.split("\n\n")[1].replace("\n", " "),
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
    parser.add_argument("--list", action="store_true", help="list the targets and exit")
    args = parser.parse_args(argv)

    _setup(args.examples)
    names = [n for n in targets() if args.match in n]
    if args.list or not names:
        print("\n".join(names) or f"no target matches {args.match!r}")
        return 0 if names else 2
    print(f"{len(names)} targets, {args.examples} examples each, {args.jobs} job(s)", flush=True)
    width = max(len(n) for n in names)
    started = time.perf_counter()
    outcomes: list[Outcome] = []

    def show(outcome: Outcome) -> None:
        status = f"FAILED ({outcome.failures})" if outcome.failure else "ok"
        print(
            f"{outcome.target:<{width}}  {outcome.examples:>8} examples  "
            f"{outcome.seconds:>8.1f} s  {status}",
            flush=True,
        )
        if outcome.failure:
            print("    " + outcome.failure.replace("\n", "\n    "), flush=True)
        outcomes.append(outcome)

    if args.jobs > 1:
        with ProcessPoolExecutor(max_workers=args.jobs) as pool:
            futures = [pool.submit(run_target, n, args.examples, args.seed) for n in names]
            for future in futures:
                show(future.result())
    else:
        for name in names:
            show(run_target(name, args.examples, args.seed))
    print(table(outcomes), flush=True)
    failed = [o.target for o in outcomes if o.failure]
    total = sum(o.examples for o in outcomes)
    print(
        f"total: {total} examples in {time.perf_counter() - started:.1f} s; "
        f"{len(failed)} of {len(outcomes)} targets failed",
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
