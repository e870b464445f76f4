"""The resumable long fuzz run (`bench/fuzz.py`): its results file, what `--resume` skips,
`--summary`, and the git tree hashes that say which code a result is valid for. No
hypothesis run here: the decisions are pure functions of the file's lines."""

from __future__ import annotations

import dataclasses
import datetime
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from bench import fuzz
from bench.fuzz import Code, Outcome, Result

TARGET = "test_fuzz_model::test_render_then_parse_round_trips"
OTHER = "test_fuzz_kube::test_pods_give_upstream_or_rejection"
TREES = {"syncer": "a" * 40, "tests/fuzz": "b" * 40}
# What the target's process loaded, and one fuzzed file it did not.
FILES = {"syncer/model.py": "1" * 40, "tests/fuzz/test_fuzz_model.py": "2" * 40}
UNLOADED = "syncer/app.py"
CODE = Code(commit="c" * 40, dirty=False, trees=TREES, files={**FILES, UNLOADED: "3" * 40})
NOW = datetime.datetime(2026, 11, 27, 3, 0, tzinfo=datetime.UTC)


def result(
    target: str = TARGET, examples: int = 100_000, failures: int = 0, **changes: Any
) -> Result:
    failure = "Falsifying example" if failures else ""
    outcome = Outcome(target, examples, 1234.5, failures, failure, cpu_seconds=600.04)
    line = fuzz.to_result(outcome, CODE, 100_000, None, NOW, FILES)
    return dataclasses.replace(line, **changes)


def test_a_line_round_trips_with_what_the_issue_asks_for() -> None:
    line = fuzz.format_line(result(failures=1))
    assert line.endswith("\n") and line.count("\n") == 1
    parsed = fuzz.parse_line(line)
    assert parsed == result(failures=1)
    assert parsed is not None
    assert parsed.timestamp == "2026-11-27T03:00:00+00:00"
    assert parsed.failure == "Falsifying example"
    assert parsed.hypothesis and parsed.python and parsed.seed is None
    assert parsed.cpu_seconds == 600.0


def test_a_line_written_before_cpu_seconds_were_recorded_still_reads() -> None:
    data = json.loads(fuzz.format_line(result()))
    del data["cpu_seconds"]
    parsed = fuzz.parse_line(json.dumps(data))
    assert parsed is not None and parsed.cpu_seconds is None
    row = fuzz.summary([TARGET], [parsed], CODE, 100_000)[0].splitlines()[1]
    assert row.split()[1:5] == ["100000", "0", "1234.5", "-"]


@pytest.mark.parametrize(
    "text",
    ["", "   ", '{"target": "x", "exa', "[1, 2]", "42", '{"target": "x"}', "not json"],
)
def test_what_is_not_a_result_line_is_none(text: str) -> None:
    assert fuzz.parse_line(text) is None


def test_a_line_cut_by_a_kill_is_counted_and_does_not_swallow_the_next(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "long.jsonl"
    fuzz.append_result(path, result())
    with path.open("a") as f:
        f.write(fuzz.format_line(result(OTHER))[:30])  # killed mid-write: no newline
    fuzz.append_result(path, result(OTHER))
    results, bad = fuzz.read_results(path)
    assert [r.target for r in results] == [TARGET, OTHER]
    assert bad == 1


def test_a_missing_file_has_no_results(tmp_path: Path) -> None:
    assert fuzz.read_results(tmp_path / "none.jsonl") == ([], 0)


def test_a_pass_on_the_same_code_with_enough_examples_is_skipped() -> None:
    decision = fuzz.decide_one(TARGET, [result()], CODE, 100_000)
    assert decision.skip and decision.kind == "done"
    assert "passed 100000 examples at ccccccccc on 2026-11-27" in decision.reason
    # more examples than asked for count too
    assert fuzz.decide_one(TARGET, [result()], CODE, 5_000).skip


def test_a_pass_on_older_parser_code_is_not_reused() -> None:
    old = result(files={**FILES, "syncer/model.py": "d" * 40})
    decision = fuzz.decide_one(TARGET, [old], CODE, 100_000)
    assert not decision.skip and decision.kind == "changed"
    assert "syncer/model.py changed" in decision.reason and "tests/fuzz" not in decision.reason


def test_a_change_to_a_fuzzed_file_the_target_never_loaded_keeps_its_pass() -> None:
    elsewhere = dataclasses.replace(CODE, files={**CODE.files, UNLOADED: "9" * 40})
    decision = fuzz.decide_one(TARGET, [result()], elsewhere, 100_000)
    assert decision.skip and decision.kind == "done"
    # but a file it loaded that is gone now is a change
    gone = dataclasses.replace(CODE, files={UNLOADED: "3" * 40, "syncer/model.py": "1" * 40})
    decision = fuzz.decide_one(TARGET, [result()], gone, 100_000)
    assert decision.kind == "changed" and "tests/fuzz/test_fuzz_model.py" in decision.reason


def test_a_line_without_its_loaded_files_needs_the_same_trees() -> None:
    # Lines written before the loaded files were recorded: any change of syncer/ counts.
    older = result(files=None)
    assert fuzz.decide_one(TARGET, [older], CODE, 100_000).skip
    elsewhere = dataclasses.replace(CODE, trees={**TREES, "syncer": "d" * 40})
    decision = fuzz.decide_one(TARGET, [older], elsewhere, 100_000)
    assert decision.kind == "changed" and "syncer/ changed" in decision.reason


def test_a_change_of_the_fuzz_tests_alone_also_reruns() -> None:
    old = result(files={**FILES, "tests/fuzz/test_fuzz_model.py": "e" * 40})
    decision = fuzz.decide_one(TARGET, [old], CODE, 100_000)
    assert decision.kind == "changed" and "tests/fuzz/test_fuzz_model.py changed" in decision.reason


def test_too_few_examples_rerun() -> None:
    decision = fuzz.decide_one(TARGET, [result(examples=10_000)], CODE, 100_000)
    assert not decision.skip and decision.kind == "short"
    assert "only 10000 of 100000" in decision.reason


def test_a_failure_on_the_same_code_reruns_even_after_a_pass() -> None:
    for lines in (
        [result(failures=1)],
        [result(), result(failures=1)],
        [result(failures=1), result()],
    ):
        decision = fuzz.decide_one(TARGET, lines, CODE, 100_000)
        assert not decision.skip and decision.kind == "failed", lines


def test_a_pass_of_another_target_or_without_git_is_not_reused() -> None:
    assert fuzz.decide_one(OTHER, [result()], CODE, 100_000).kind == "new"
    assert fuzz.decide_one(TARGET, [result()], Code("", True), 100_000).kind == "unknown"
    # a line written outside git (no trees) matches no code
    assert not fuzz.decide_one(TARGET, [result(trees={}, files=None)], CODE, 100_000).skip


def test_a_dirty_run_counts_for_the_commit_with_the_same_trees() -> None:
    # What was fuzzed is the trees; committing that working tree as it was keeps them.
    dirty = result(dirty=True, commit="f" * 40)
    assert fuzz.decide_one(TARGET, [dirty], CODE, 100_000).skip


def test_the_report_says_what_is_skipped_and_what_changed() -> None:
    decisions = fuzz.decide(
        [TARGET, OTHER, "x::y"],
        [result(), result(OTHER, files={**FILES, "syncer/model.py": "d" * 40})],
        CODE,
        100_000,
    )
    lines = fuzz.report_decisions(decisions).splitlines()
    assert lines[0].startswith("skipped") and TARGET in lines[0]
    assert lines[1].startswith("code changed") and OTHER in lines[1]
    assert lines[2].startswith("to run") and "no result yet" in lines[2]


def test_the_summary_is_complete_only_when_every_target_passed_on_this_code() -> None:
    text, complete = fuzz.summary([TARGET], [result()], CODE, 100_000)
    assert complete
    assert "1 of 1 targets passed 100000 examples on the current code" in text
    row = next(line for line in text.splitlines() if line.startswith(TARGET))
    assert row.split()[1:5] == ["100000", "0", "1234.5", "600.0"] and row.endswith("current")

    old = result(OTHER, files={**FILES, "syncer/model.py": "d" * 40})
    text, complete = fuzz.summary([TARGET, OTHER, "x::y"], [result(), old], CODE, 100_000)
    assert not complete
    assert "1 of 3 targets" in text
    assert any(line.startswith(OTHER) and line.endswith("older code") for line in text.splitlines())
    assert any(line.startswith("x::y") and line.endswith("no result") for line in text.splitlines())
    assert not fuzz.summary([TARGET], [result(examples=5_000)], CODE, 100_000)[1]
    assert not fuzz.summary([TARGET], [result(), result(failures=1)], CODE, 100_000)[1]


# --- the tree hashes ---------------------------------------------------------------------

needs_git = pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")


def git(*args: str, cwd: Path = fuzz.ROOT, stdin: str | None = None) -> str:
    return subprocess.run(
        ["git", *args], cwd=cwd, input=stdin, capture_output=True, text=True, check=True
    ).stdout.strip()


def test_the_empty_tree_has_gits_hash() -> None:
    assert fuzz.tree_hash({}) == "4b825dc642cb6eb9a060e54bf8d69288fbee4904"


@needs_git
def test_the_tree_hash_of_committed_files_is_gits(tmp_path: Path) -> None:
    # A throwaway repository (not this checkout, which may be an sdist or have no
    # commit): files, an executable, a nested folder; its tree hash, computed here
    # from the blobs git lists, must be the one git gives.
    pkg = tmp_path / "syncer"
    (pkg / "proxy").mkdir(parents=True)
    (pkg / "model.py").write_text("x = 1\n")
    (pkg / "proxy" / "dyups.py").write_text("y = 2\n")
    (pkg / "run.sh").write_text("#!/bin/sh\n")
    (pkg / "run.sh").chmod(0o755)
    git("init", "-q", cwd=tmp_path)
    git("add", "-A", cwd=tmp_path)
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "x", cwd=tmp_path)
    blobs = {}
    for line in git("ls-tree", "-r", "HEAD", "--", "syncer", cwd=tmp_path).splitlines():
        meta, path = line.split("\t", 1)
        mode, _, sha = meta.split()
        blobs[path[len("syncer/") :]] = (mode, sha)
    assert len(blobs) == 3
    assert fuzz.tree_hash(blobs) == git("rev-parse", "HEAD:syncer", cwd=tmp_path)


@needs_git
def test_the_order_of_entries_is_gits(tmp_path: Path) -> None:
    # A subtree sorts as if named "a/": after "a-b" and "a.py", before "a0".
    blob = "e69de29bb2d1d6434b8b29ae775ad8c2e48c5391"  # the empty file
    blobs = {"a.py": ("100644", blob), "a/x": ("100644", blob), "a-b": ("100755", blob)}
    blobs["a0"] = ("100644", blob)
    subtree = fuzz.tree_hash({"x": ("100644", blob)})
    git("init", "-q", cwd=tmp_path)
    listing = "".join(
        f"{mode} {'tree' if mode == '040000' else 'blob'} {sha}\t{name}\n"
        for name, (mode, sha) in [
            ("a0", ("100644", blob)),
            ("a", ("040000", subtree)),
            ("a.py", ("100644", blob)),
            ("a-b", ("100755", blob)),
        ]
    )
    assert fuzz.tree_hash(blobs) == git("mktree", "--missing", cwd=tmp_path, stdin=listing)


# --- the files a target loaded ---------------------------------------------------------


class FakeModule:
    def __init__(self, path: Path | None) -> None:
        self.__file__ = None if path is None else str(path)


def test_loaded_files_are_the_fuzzed_files_among_the_modules() -> None:
    code = Code("c" * 40, False, TREES, files={})  # outside git: nothing to compare with
    modules = [
        FakeModule(fuzz.ROOT / "syncer" / "model.py"),
        FakeModule(fuzz.ROOT / "tests" / "fuzz" / "conftest.py"),
        FakeModule(fuzz.ROOT / "bench" / "fuzz.py"),  # not fuzzed code
        FakeModule(Path(pytest.__file__)),  # a library
        FakeModule(None),  # a builtin
    ]
    assert fuzz.loaded_files(code, modules) == {
        "syncer/model.py": "unknown",
        "tests/fuzz/conftest.py": "unknown",
    }


@needs_git
def test_a_loaded_file_that_differs_on_disk_matches_nothing() -> None:
    code = fuzz.current_code()
    model = fuzz.ROOT / "syncer" / "model.py"
    assert fuzz.loaded_files(code, [FakeModule(model)]) == {
        "syncer/model.py": code.files["syncer/model.py"]
    }
    # as if it had been imported after a change made since the hashes were taken
    stale = dataclasses.replace(code, files={**code.files, "syncer/model.py": "0" * 40})
    assert fuzz.loaded_files(stale, [FakeModule(model)]) == {
        "syncer/model.py": "changed-during-run"
    }


@needs_git
def test_a_target_records_only_the_files_its_own_process_loaded(tmp_path: Path) -> None:
    results = tmp_path / "long.jsonl"
    target = "test_fuzz_model::test_directive_parse_raises_model_error_or_is_allowlisted"
    args = ["--examples", "3", "-k", target.split("::")[1], "--results", str(results)]
    run = subprocess.run(
        [sys.executable, "-m", "bench.fuzz", *args],
        cwd=fuzz.ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    (line,) = fuzz.read_results(results)[0]
    assert line.target == target and line.passed and line.files is not None
    code = fuzz.current_code()
    assert line.files["syncer/model.py"] == code.files["syncer/model.py"]
    assert "tests/fuzz/test_fuzz_model.py" in line.files
    # the other fuzz modules and what only they import were not loaded
    assert "tests/fuzz/test_fuzz_kube.py" not in line.files
    assert "syncer/sources/kube_translate.py" not in line.files
    assert fuzz.decide_one(target, [line], code, 3).skip
