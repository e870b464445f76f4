"""Hypothesis profiles for the fuzz targets, chosen with `HYPOTHESIS_PROFILE`.

- `ci` (default): a modest number of examples per target, so the whole of
  tests/fuzz runs in well under a minute on a 2-core machine; derandomized (the
  examples are a function of the test, so CI is deterministic and a red build
  reproduces anywhere), which also means no example database;
- `dev`: ten times more, random, with the example database (`.hypothesis/`): for a
  local run after changing a parser, and to replay what a long run found;
- `long`: the long run, 100k examples per target (`python -m bench.fuzz`), random,
  saving what it finds in the example database.

Only the fuzz tests use these profiles (through `fuzz`): loading one globally
would change the settings of every other hypothesis test in the session.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, TypeVar

from hypothesis import HealthCheck, settings

PROFILE_ENV = "HYPOTHESIS_PROFILE"
DEFAULT_PROFILE = "ci"
CI_EXAMPLES = 200
LONG_EXAMPLES = 100_000

# Inputs are large or slow to generate on purpose at times (5000-digit numbers,
# whole YAML documents): that says nothing about the code under test.
SLOW_INPUTS = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example]

# CI stops at the first bug it finds: shrinking several at once can take minutes.
settings.register_profile(
    "ci",
    max_examples=CI_EXAMPLES,
    derandomize=True,
    deadline=None,
    suppress_health_check=SLOW_INPUTS,
    report_multiple_bugs=False,
)
settings.register_profile(
    "dev", max_examples=10 * CI_EXAMPLES, deadline=None, suppress_health_check=SLOW_INPUTS
)
settings.register_profile(
    "long",
    max_examples=LONG_EXAMPLES,
    deadline=None,
    suppress_health_check=[*SLOW_INPUTS, HealthCheck.filter_too_much],
    print_blob=True,
)

F = TypeVar("F", bound=Callable[..., Any])


def fuzz(test: F) -> F:
    """Apply the profile named by `HYPOTHESIS_PROFILE` (read when the test is defined)."""
    profile = settings.get_profile(os.environ.get(PROFILE_ENV, DEFAULT_PROFILE))
    result: F = profile(test)
    return result
