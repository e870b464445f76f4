"""Process-level settings of `run`: the malloc threshold (the others: test_cli.py)."""

from __future__ import annotations

import subprocess
import sys

# Allocates and frees an 8 MiB buffer three times, with small blocks allocated after it,
# and prints how much more anonymous memory the process holds than before (KiB).
PROBE = """
import sys

def rss_anon_kib():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("RssAnon:"))

if sys.argv[1] == "fixed":
    import structlog
    from syncer.process import keep_large_buffers_mmapped
    keep_large_buffers_mmapped(structlog.get_logger())
size = 8 * 1024 * 1024
base = rss_anon_kib()
keep = []
for _ in range(3):
    buffer = bytearray(size)
    buffer[::4096] = b"x" * len(buffer[::4096])  # touch every page
    keep += [bytes(100) for _ in range(1000)]
    del buffer
print(rss_anon_kib() - base)
"""


def retained_kib(mode: str) -> int:
    out = subprocess.run(
        [sys.executable, "-c", PROBE, mode], check=True, capture_output=True, text=True
    )
    return int(out.stdout.split()[-1])


def test_large_buffers_go_back_to_the_system_once_freed():
    """glibc raises its mmap threshold to the size of each large block freed, so the
    next /detail body came from the heap and its pages stayed after it was freed."""
    assert retained_kib("fixed") < 2 * 1024  # of the 8 MiB buffers: nothing kept
