"""The dump file: an nginx include with the upstreams last applied to one proxy.

dyups forgets everything on a reload or restart, and until the syncer re-posts,
`proxy_pass http://$var` answers 502. With `dump_path`, nginx includes this file at
start and serves the last known servers from its first request (the approach of
nginx-upsync-module); the blocks are then managed through dyups like any other and
stay owned by the syncer. Only upstreams that passed the model's validation can be
in it, rendered by the same canonical renderer, and the file is replaced atomically
(temp file, fsync, rename) and only when its content changes.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from syncer.model import Upstream
from syncer.snapshot import remove_stale_temp, write_atomic

HEADER = "# Written by dyups-syncer: the upstreams last applied to this proxy. Do not edit.\n"


def render_dump(upstreams: Iterable[Upstream]) -> str:
    blocks = [HEADER]
    for upstream in sorted(upstreams, key=lambda u: u.name):
        statements = [s.strip() for s in upstream.render().split(";") if s.strip()]
        inner = "".join(f"    {statement};\n" for statement in statements)
        blocks.append(f"upstream {upstream.name} {{\n{inner}}}\n")
    return "".join(blocks)


class DumpFile:
    def __init__(self, path: Path) -> None:
        self.path = path
        remove_stale_temp(path)
        self._last: str | None = None
        self.writes = 0

    def update(self, upstreams: Iterable[Upstream]) -> bool:
        """Write the file if its content changed; True when it was written."""
        text = render_dump(upstreams)
        if text == self._last:
            return False
        write_atomic(self.path, text)
        self._last = text
        self.writes += 1
        return True
