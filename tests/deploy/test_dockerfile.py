"""The container image's Dockerfile and .dockerignore (no Docker engine here: lint and read)."""

from __future__ import annotations

import fnmatch
import re
import tomllib

from tests.deploy.conftest import ROOT, run, tool

DOCKERFILE = ROOT / "Dockerfile"
OCI_LABELS = ["title", "description", "version", "revision", "created", "licenses", "source"]


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out: list[tuple[str, str]] = []
    buf = ""
    for line in DOCKERFILE.read_text().splitlines():
        if line.lstrip().startswith("#") and not buf:
            continue
        if line.lstrip().startswith("#"):
            continue
        buf += line.rstrip("\\").rstrip() + " " if line.endswith("\\") else line
        if not line.endswith("\\"):
            if buf.strip():
                word, _, rest = buf.strip().partition(" ")
                out.append((word.upper(), rest.strip()))
            buf = ""
    return out


def test_hadolint_passes_at_the_strictest_threshold() -> None:
    result = run([tool("hadolint"), "--no-color", "--failure-threshold", "style", str(DOCKERFILE)])
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == ""


def test_every_hadolint_ignore_is_justified() -> None:
    lines = DOCKERFILE.read_text().splitlines()
    for i, line in enumerate(lines):
        if "hadolint ignore" in line:
            above = lines[i - 1].strip() if i else ""
            assert above.startswith("#") and len(above.split()) >= 4, (
                f"line {i + 1}: a `hadolint ignore` needs a comment saying why just above it"
            )
    assert (
        not (ROOT / ".hadolint.yaml").exists()
        or "ignored" not in (ROOT / ".hadolint.yaml").read_text()
    )


def test_multi_stage_on_a_pinned_slim_python_base() -> None:
    froms = [args for word, args in instructions() if word == "FROM"]
    assert len(froms) >= 2, "multi-stage build"
    base = froms[0].split()[0]
    assert re.fullmatch(r"python:\d+\.\d+\.\d+-slim-\w+", base), f"pin the base by version: {base}"
    # Every later stage starts from the pinned base or an earlier stage.
    stages = {froms[0].split()[-1]}
    for args in froms[1:]:
        image, *_, alias = args.split()
        assert image in stages, f"FROM {image}: only the pinned base or an earlier stage"
        stages.add(alias)


def test_runtime_stage_installs_the_wheel_into_a_venv_and_leaves_no_cache() -> None:
    text = DOCKERFILE.read_text()
    runtime = text[text.rindex("\nFROM ") :]
    assert "pip wheel" in text[: text.rindex("\nFROM ")], "the build stage builds the wheels"
    assert "--mount=type=bind,from=build" in runtime, (
        "wheels come from the build stage, not a layer"
    )
    assert "python -m venv" in runtime and "--no-index" in runtime and "--no-cache-dir" in runtime
    assert "apt-get" not in text and "gcc" not in text, "no compiler or package cache"


def test_non_root_numeric_user_entrypoint_and_cmd() -> None:
    ins = instructions()
    last_from = max(i for i, (w, _) in enumerate(ins) if w == "FROM")
    runtime = ins[last_from:]
    users = [a for w, a in runtime if w == "USER"]
    assert users and re.fullmatch(r"[1-9]\d*(:[1-9]\d*)?", users[-1]), "a numeric non-root USER"
    assert ("ENTRYPOINT", '["dyups-syncer"]') in runtime
    assert ("CMD", '["run", "-c", "/etc/dyups-syncer/config.yaml"]') in runtime
    volumes = " ".join(a for w, a in runtime if w == "VOLUME")
    assert "/var/lib/dyups-syncer" in volumes, "the snapshot directory is a volume (read-only root)"


def test_oci_labels() -> None:
    labels = " ".join(a for w, a in instructions() if w == "LABEL")
    present = set(re.findall(r"org\.opencontainers\.image\.([a-z.]+)=", labels))
    assert set(OCI_LABELS) - {"source"} <= present, f"missing {set(OCI_LABELS) - present}"


def test_version_matches_the_package() -> None:
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    args = dict(a.split("=", 1) for w, a in instructions() if w == "ARG" and "=" in a)
    assert args["VERSION"] == version, "ARG VERSION in Dockerfile must equal pyproject's version"


def _ignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last matching pattern wins; `!` re-includes."""
    ignored = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pat = pattern.lstrip("!").rstrip("/")
        parts = path.split("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        if any(
            fnmatch.fnmatch(p, pat) or fnmatch.fnmatch(p, pat.replace("**/", "")) for p in prefixes
        ):
            ignored = not negate
    return ignored


def test_dockerignore_sends_what_the_build_copies_and_nothing_else() -> None:
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    copied = []
    for word, args in instructions():
        if word == "COPY" and "--from" not in args:
            copied += args.split()[:-1]
    needed = [*copied, "syncer/__init__.py", "syncer/examples/config.yaml", "syncer/py.typed"]
    for path in needed:
        assert not _ignored(path, patterns), (
            f"{path} is needed by the build but .dockerignore drops it"
        )
    for path in (
        ".git/config",
        ".venv/bin/python",
        "tests/deploy/conftest.py",
        "helm/dyups-syncer/Chart.yaml",
        "syncer/__pycache__/cli.cpython-311.pyc",
        ".ci/run",
        "bench/x.py",
    ):
        assert _ignored(path, patterns), f"{path} should not be sent to the build"
