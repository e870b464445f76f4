"""BlockingQuery: the loop that follows one Consul endpoint."""

from __future__ import annotations

import threading

from syncer import log
from syncer.sources.consul import BlockingQuery


def test_an_answer_the_source_cannot_use_does_not_end_the_watcher():
    """on_change raising (e.g. a health answer that is not a list) is logged and the
    query starts over after a backoff, instead of killing the watcher thread."""
    stop = threading.Event()
    seen: list[object] = []
    indexes = iter(range(1, 1000))

    def fetch(index: int, wait: str) -> tuple[int, object]:
        return next(indexes), "not a list" if not seen else ["ok"]

    def on_change(data: object, index: int) -> None:
        seen.append(data)
        if data == "not a list":
            raise ValueError("health answer is not a list")
        stop.set()

    query = BlockingQuery(
        fetch=fetch,
        on_change=on_change,
        wait=1.0,
        min_interval=0.0,
        backoff_max=0.01,
        log=log.get("t"),
    )
    thread = threading.Thread(target=query.run, args=(stop,), daemon=True)
    thread.start()
    thread.join(10)
    assert not thread.is_alive()
    assert seen == ["not a list", ["ok"]]
    assert query.synced.is_set() and query.healthy
