"""Source faults: the file source replaced by garbage, emptied, or removed.

None of them may delete anything: the proxies keep the last good upstreams across
full resyncs, the fault is visible in the metrics, and the next good file is
applied as usual. Each fault is injected once (not repeated with
$DYUPS_FAULT_TRIALS): the same bytes fail the same way, and every injection has
to wait for a full resync of every worker.
"""

from __future__ import annotations

import functools
import time

import pytest

from tests.faults.conftest import (
    differences,
    eventually,
    expected,
    metric,
    record,
)

BASE = {
    "web": ["10.0.0.1:80", "10.0.0.2:80"],
    "api": ["10.0.1.1:9000"],
    "img": ["10.0.3.1:80"],
    "auth": ["10.0.2.1:8080"],
}
CHANGED = {**BASE, "web": ["10.0.0.1:80", "10.0.0.3:80"]}

FAULTS = {
    # replaced by garbage (never deleted)
    "binary garbage": b"\xff\xfe\x00\x9c" + bytes(range(256)) * 4,
    "broken yaml": b"upstreams: {web: [\n  servers: {{{\n",
    "wrong shape": b"- web\n- api\n",
    "invalid server": b'upstreams:\n  web:\n    servers: ["10.0.0.1:80; evil"]\n',
    # answering nothing
    "empty file": b"",
    "no upstreams": b"upstreams: {}\n",
    "null upstreams": b"upstreams:\n",
    "file removed": None,
}


def count_calls(obj, attribute: str) -> list[int]:
    """Wrap a method of `obj` to count its calls (a one-element list)."""
    calls = [0]
    original = getattr(obj, attribute)

    @functools.wraps(original)
    def counted(*args, **kwargs):
        calls[0] += 1
        return original(*args, **kwargs)

    setattr(obj, attribute, counted)
    return calls


@pytest.mark.parametrize("fault", list(FAULTS))
def test_a_bad_or_empty_source_deletes_nothing(make_env, fault):
    env = make_env(2)
    env.write(BASE)
    app = env.start()
    assert env.wait_converged()
    desired = env.desired()
    source = app.sources[0].name
    resyncs = [count_calls(w.client, "observe") for w in app.workers]
    writes = [(s.stats.posts, s.stats.deletes) for s in env.sims]

    content = FAULTS[fault]
    if content is None:
        env.file.unlink()
    else:
        env.file.write_bytes(content)
    if fault in ("empty file", "no upstreams", "null upstreams"):
        # read fine, answered nothing: held, not applied
        assert eventually(lambda: metric(app, "dyups_syncer_source_empty_held", source=source) == 1)
    else:
        assert eventually(lambda: metric(app, "dyups_syncer_source_up", source=source) == 0)
        reason = "read" if content is None else "invalid"
        assert metric(app, "dyups_syncer_source_errors_total", source=source, reason=reason) >= 1
    # Every worker runs a full resync after the fault: still nothing written.
    seen = [r[0] for r in resyncs]
    assert eventually(lambda: all(r[0] >= n + 1 for r, n in zip(resyncs, seen, strict=True)))
    assert [(s.stats.posts, s.stats.deletes) for s in env.sims] == writes
    assert set(app.store.current().upstreams) == set(desired)
    left = [d for s in env.sims for d in differences(s, expected(desired, s))]
    assert not left  # lost: 0

    env.write(CHANGED)
    started = time.monotonic()
    assert env.wait_converged()
    assert all(s.stats.deletes == 0 for s in env.sims)
    assert eventually(lambda: metric(app, "dyups_syncer_source_up", source=source) == 1)
    assert metric(app, "dyups_syncer_source_empty_held", source=source) == 0
    record(
        f"source {fault}",
        trials=1,  # the same bytes fail the same way: injected once
        converged=1,
        lost=len(left),
        deletes=sum(s.stats.deletes for s in env.sims),
        samples={"next_good_file_applied_s": [time.monotonic() - started]},
    )
