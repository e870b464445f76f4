"""Keep the harness's own garbage collections short, so that they are not measured as lag.

The bench process (driver, fakes) and the simulator processes hold ever more live
objects during a run: slices and their watch events, every applied event with its
body. CPython's full collection walks all of them, and recorded with `gc.callbacks`
during `kube-rollout` it paused the bench process for up to 330 ms (the fake API
server's watch stalled; the driver fell behind its schedule) and a simulator process
for up to 145 ms (five proxies stopped answering). Both showed up as the syncer's lag,
although the syncer did nothing wrong.

`keep_collections_short` moves every object alive to the permanent generation
(`gc.freeze`) now and then every `every` seconds, so that a collection only walks what
was allocated since. Reference counting still frees everything that is not in a
cycle; a cycle that lived past a freeze and dies later is not collected, which a
benchmark of minutes can afford and a daemon could not. The syncer does not use it.
"""

from __future__ import annotations

import gc
import threading
import time

FREEZE_EVERY = 2.0  # seconds

_started = threading.Event()


def keep_collections_short(every: float = FREEZE_EVERY) -> None:
    """Freeze now and every `every` seconds, on a daemon thread (once per process)."""
    if _started.is_set():
        return
    _started.set()
    gc.freeze()

    def freeze_periodically() -> None:
        while True:
            time.sleep(every)
            gc.freeze()

    threading.Thread(target=freeze_periodically, name="gc-freeze", daemon=True).start()
