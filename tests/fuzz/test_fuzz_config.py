"""The configuration loader: any file and environment give a Config or ConfigError."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

from hypothesis import given

from syncer.config import Config, ConfigError, load
from tests.fuzz.conftest import fuzz
from tests.fuzz.strategies import CONFIG_BASE, config_envs, config_texts, dump

_DIRS: dict[int, Path] = {}


def _path() -> Path:
    """config.yaml in a directory of this process's own (bench.fuzz runs targets in
    parallel processes)."""
    pid = os.getpid()
    if pid not in _DIRS:
        _DIRS[pid] = Path(tempfile.mkdtemp(prefix="dyups-fuzz-config-"))
        atexit.register(shutil.rmtree, _DIRS[pid], ignore_errors=True)
    return _DIRS[pid] / "config.yaml"


def _load(text: str, env: dict[str, str]) -> Config | ConfigError:
    # Lone surrogates become bytes that are not UTF-8: a file can hold anything.
    _path().write_text(text, encoding="utf-8", errors="surrogatepass")
    try:
        return load(_path(), env=env)
    except ConfigError as e:
        return e


def _check(result: Config | ConfigError) -> None:
    if isinstance(result, ConfigError):
        assert result.errors and all(isinstance(e, str) for e in result.errors)
        assert all(e.startswith(str(_path())) for e in result.errors), result.errors
    else:
        assert isinstance(result, Config) and result.sources


def test_the_base_document_loads() -> None:
    # The mutations start from a valid document: otherwise they test nothing.
    assert isinstance(_load(dump(CONFIG_BASE), {}), Config)


@fuzz
@given(config_texts())
def test_any_file_gives_config_or_config_error(text: str) -> None:
    _check(_load(text, {}))


@fuzz
@given(config_texts(), config_envs)
def test_any_environment_gives_config_or_config_error(text: str, env: dict[str, str]) -> None:
    _check(_load(text, env))
