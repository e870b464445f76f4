"""Process-level settings of the daemon (`run` only): open files, malloc, the collector.

Each answers something measured in the benchmarks (BENCHMARKS.md, fifth session); none
changes what the syncer does, only what the process costs.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import resource
from typing import Any

# glibc's mallopt parameter and the threshold we fix it at (its initial default).
_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 128 * 1024


def raise_descriptor_limit(log: Any) -> None:
    """Lift the soft limit on open files to the hard one, as Go programs do at start.

    Each proxy holds a few connections: the keep-alive pool (up to 4), the probe's,
    and while writes go on the kick's (`kick_gets`, 16 for 2 nginx workers). With the
    common soft limit of 1,024, a fleet of about 50 proxies would run out; the hard
    limit is what the operator allows."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if soft == resource.RLIM_INFINITY or soft >= target:
        return
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ValueError, OSError) as e:
        log.warning("descriptor_limit_unchanged", soft=soft, hard=hard, error=str(e))
        return
    log.info("descriptor_limit_raised", soft=soft, to=target)


def freeze_startup_heap(log: Any) -> None:
    """Once the first sync is done: collect, then move everything alive to the
    permanent generation, which full collections no longer walk.

    That heap (the Kubernetes client's modules and models, pydantic, the first desired
    state) is most of what a full collection walked: in kube-rollout such a collection
    stopped every worker for 86-115 ms (recorded with gc.callbacks). Done once, so
    the only cost is that a reference cycle among those objects that dies later is
    never collected; reference counting frees everything else as before."""
    gc.collect()
    gc.freeze()
    log.info("startup_heap_frozen", objects=gc.get_freeze_count())


def keep_large_buffers_mmapped(log: Any) -> None:
    """Fix glibc's mmap threshold at its initial 128 KiB.

    glibc raises the threshold to the size of each large block freed (up to 32 MiB), so
    after the first resync the next `/detail` bodies (MBs at 100k endpoints) came from the
    heap instead of their own mappings, and their pages stayed in the process after they
    were freed: 100k endpoints on 2 proxies, RSS after 30 s at rest 205.6 MB, and 166.1 MB
    with the threshold fixed (`bench scale`). Setting it explicitly turns the adjustment
    off. Not glibc (no `mallopt`): nothing to do."""
    libc_name = ctypes.util.find_library("c")
    if libc_name is None:
        return
    mallopt = getattr(ctypes.CDLL(libc_name), "mallopt", None)
    if mallopt is None:
        return
    if mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1:  # 1 on success, 0 on error
        log.info("malloc_mmap_threshold_fixed", bytes=MMAP_THRESHOLD)
    else:
        log.warning("malloc_mmap_threshold_unchanged", bytes=MMAP_THRESHOLD)
