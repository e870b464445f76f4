"""A dyups-compatible HTTP server ("the simulator") for tests and benchmarks.

It reproduces shared/dyups-interface.md call for call, on raw sockets so that the
exact bytes match nginx: no `Content-Type` on dyups answers, the 204 that still
writes `no content\\n`, the DELETE answered by a closed connection, keep-alive.

Behind the HTTP surface it models what makes dyups hard to drive correctly:

* N workers, each with its own upstream table. A connection belongs to one worker
  for its lifetime (as with `reuseport`).
* A write is applied at once by the worker that answers it and queued in a shared
  message queue of bounded size; the other workers apply the queue on their own
  timer and before answering a GET or their own write. A full queue gives the
  `alert: ... not sync ...` 500 and the other workers never see that change.
* The module's slot table (free slots are reused, every POST first builds and
  deletes a sandbox upstream), which is why `/list` order differs between workers.
* trylock (409 / closed connection), poisoning by an unknown nginx variable, body
  truncation, reload / restart / crashed worker, a proxy that is down, hangs or is slow.

The body parser is an independent re-implementation of nginx's config tokenizer
and of the `upstream {}` directives; it deliberately shares no code with
`syncer.model`, so that tests catch bugs in our renderer.

Run one in the foreground: `python -m syncer.testing.dyups --port 8081 --workers 2`.

Choices where nginx was not measured, or where the simulator departs from it:

* A 204 carries no Content-Length, as nginx's header filter strips it; every other
  answer has one. HTML error pages (404 on `/`, 400, 411, 413, 414) are nginx's and
  carry `Content-Type: text/html`; 400/411/413/414 also close the connection.
* Chunked bodies get 411 (nginx would accept them; the syncer never sends them).
* A crashed worker's unapplied queue entries count as applied for it. (The module
  source hands them to the respawned worker instead; the effect seen from outside,
  a worker that lacks what was posted before, is the same.)
* head: `/list` order follows a tree keyed by crc32 of the name; nginx.conf
  upstreams are neither listed nor deletable through the API; a reload or a
  respawned worker restores the dynamic upstreams; the queue model is classic's.
* Any `$variable` not in `known_variables`, in any directive the body reaches,
  poisons the worker (nginx compiles variables only in `hash`; stricter is safer).
* A queued change applied by a poisoned worker installs the upstream with no
  servers (the "half-built" upstream): `GET /upstream/NAME` on it answers 204.
* Worker timers start at random phases; a GET re-arms its worker's timer.
* The shared-memory lock is held only for the microseconds a write takes here, so
  trylock conflicts come from `conflict_rate`, `lock_busy()` or
  `write_seconds_per_server`, rarely by chance.
* Not reproduced: the buffer overflow of `GET /upstream/NAME` for addresses over
  81 bytes, blocking DNS, `init upstream failed` / `out of memory`.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import heapq
import ipaddress
import random
import re
import select
import signal
import socket
import string
import threading
import time
import zlib
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from email.utils import formatdate
from typing import ClassVar, Literal
from urllib.parse import urlsplit

__all__ = [
    "AppliedEvent",
    "BodyError",
    "DyupsSimulator",
    "PoisonError",
    "RawResponse",
    "SimServer",
    "SimStats",
    "main",
    "parse_body",
    "queue_capacity",
    "queue_cost",
    "raw_request",
]

Flavour = Literal["classic", "head"]
Assign = Literal["random", "round_robin"]
Op = Literal["post", "delete"]

SANDBOX = "_dyups_upstream_sandbox_"
NGINX = "nginx/1.24.0"

# Bodies exactly as the module writes them.
SUCCESS = b"success"
ADD_FAILED = b"add server failed"
NOT_FOUND = b"not found uptream"  # sic
NOT_INTERFACE = b"not support this interface"
NOT_API = b"not support this api"
TRY_AGAIN = b"wait and try again\n"
NO_CONTENT = b"no content\n"
ALERT_UPDATE = b"alert: update success but not sync to other process"
ALERT_DELETE = b"alert: delte success but not sync to other process"  # sic


# --------------------------------------------------------------------------- values


@dataclass(frozen=True)
class SimServer:
    """One `server` of an upstream, as a worker holds it (the address is resolved)."""

    addr: str
    weight: int = 1
    max_conns: int = 0
    max_fails: int = 1
    fail_timeout: int = 10
    backup: bool = False
    down: bool = False

    def detail_line(self) -> str:
        return (
            f"server {self.addr} weight={self.weight} max_conns={self.max_conns} "
            f"max_fails={self.max_fails} fail_timeout={self.fail_timeout} "
            f"backup={int(self.backup)} down={int(self.down)}\n"
        )


@dataclass(frozen=True)
class AppliedEvent:
    """A worker applied a change: the answering worker at once, the others from the queue."""

    at: float  # time.monotonic()
    worker: int
    op: Op
    name: str
    body: str | None


@dataclass
class SimStats:
    """Counters. `requests` is keyed by (method, status); status 0 = closed without answer."""

    requests: Counter[tuple[str, int]] = field(default_factory=Counter)
    posts: int = 0
    deletes: int = 0
    gets: int = 0
    conflicts: int = 0  # 409s and DELETEs answered by a closed connection
    alerts: int = 0  # queue-full 500s
    rejected: int = 0  # `add server failed`
    truncated: int = 0  # bodies cut (two-buffer join or truncate_next_body)
    connections: int = 0  # accepted
    hung: int = 0  # requests read while hanging, never answered
    bytes_received: int = 0
    queue_high_water: int = 0  # bytes

    def copy(self) -> SimStats:
        return replace(self, requests=Counter(self.requests))


# --------------------------------------------------------------------------- body parser


class BodyError(ValueError):
    """A body nginx refuses inside `upstream {}`; the module answers 500 `add server failed`."""


class PoisonError(BodyError):
    """The body used an nginx variable that nginx.conf does not; the parsing worker is broken."""


_SPACE = " \t\r\n"
_MAX_INT = 2**63 - 1


def _split_statements(text: str) -> Iterator[tuple[list[str], int]]:
    """Yield (arguments, offset after the `;`) per directive, like ngx_conf_read_token.

    A directive is yielded before the next one is read, because nginx runs each
    directive as soon as it has read it: a later syntax error does not undo an
    earlier directive's side effects (poisoning).
    """
    pos = 0
    args: list[str] = []
    while True:
        pos = _skip_blank(text, pos)
        if pos >= len(text):
            if args:
                raise BodyError('unexpected end of parameter, expecting ";"')
            return
        ch = text[pos]
        if ch == ";":
            if not args:
                raise BodyError('unexpected ";"')
            pos += 1
            yield args, pos
            args = []
        elif ch in "{}":
            # `{` opens a block and `}` closes one: neither exists inside a POST body.
            raise BodyError(f'unexpected "{ch}"')
        else:
            word, pos = _read_word(text, pos)
            args.append(word)


def _skip_blank(text: str, pos: int) -> int:
    """Skip whitespace and `#` comments (a `#` only starts a comment between words)."""
    while pos < len(text):
        if text[pos] in _SPACE:
            pos += 1
        elif text[pos] == "#":
            end = text.find("\n", pos)
            pos = len(text) if end == -1 else end + 1
        else:
            break
    return pos


_PLAIN_WORD = re.compile(r"[^ \t\r\n;{}\\$\"']+")


def _read_word(text: str, pos: int) -> tuple[str, int]:
    if text[pos] in "\"'":
        return _read_quoted(text, pos)
    plain = _PLAIN_WORD.match(text, pos)  # most words: no escapes, variables or braces
    if plain and (plain.end() == len(text) or text[plain.end()] in " \t\r\n;{"):
        return plain.group(), plain.end()
    start = pos
    in_braces = False  # inside `${name}`
    while pos < len(text):
        ch = text[pos]
        if ch == "\\":
            pos += 2
            continue
        if ch == "$" and text.startswith("${", pos):
            in_braces = True
            pos += 2
            continue
        if ch == "}" and in_braces:
            in_braces = False
        elif ch == "}":
            raise BodyError('unexpected "}"')
        elif ch in _SPACE or ch in ";{":
            break
        pos += 1
    return _unescape(text[start:pos]), min(pos, len(text))


def _read_quoted(text: str, pos: int) -> tuple[str, int]:
    quote = text[pos]
    start = pos + 1
    pos = start
    while pos < len(text):
        if text[pos] == "\\":
            pos += 2
            continue
        if text[pos] == quote:
            after = pos + 1
            if after < len(text) and text[after] not in _SPACE and text[after] not in ";{)":
                raise BodyError(f'unexpected "{text[after]}"')
            return _unescape(text[start:pos]), after
        pos += 1
    raise BodyError('unexpected end of parameter, expecting ";"')


_ESCAPES = {'"': '"', "'": "'", "\\": "\\", "t": "\t", "r": "\r", "n": "\n"}


def _unescape(raw: str) -> str:
    """nginx turns only these backslash pairs into one character; others stay as they are."""
    out: list[str] = []
    i = 0
    while i < len(raw):
        if raw[i] == "\\" and i + 1 < len(raw) and raw[i + 1] in _ESCAPES:
            out.append(_ESCAPES[raw[i + 1]])
            i += 2
        else:
            out.append(raw[i])
            i += 1
    return "".join(out)


def _atoi(text: str) -> int:
    """ngx_atoi: ASCII digits only, no sign."""
    if not text or not all("0" <= c <= "9" for c in text) or int(text) > _MAX_INT:
        raise BodyError(f'invalid number "{text}"')
    return int(text)


# Time units in the only order nginx accepts them, with their length in seconds.
_TIME_UNITS: dict[str, float] = {
    "y": 365 * 86400,
    "M": 30 * 86400,
    "w": 7 * 86400,
    "d": 86400,
    "h": 3600,
}
_TIME_UNITS |= {"m": 60, "s": 1, "ms": 0.001}
_TIME_RANK = {unit: rank for rank, unit in enumerate(_TIME_UNITS)}


def parse_time(text: str, *, seconds: bool) -> float:
    """ngx_parse_time: `10`, `5s`, `1m30s`, `500ms` (not when `seconds`), units descending."""
    total = 0.0
    value = 0
    digits = False
    rank = -1 if seconds else _TIME_RANK["M"]  # msec values cannot use y or M
    pos = 0
    while pos < len(text):
        ch = text[pos]
        if "0" <= ch <= "9":
            value = value * 10 + int(ch)
            digits = True
            pos += 1
            continue
        unit = "ms" if text.startswith("ms", pos) else ch
        if unit not in _TIME_RANK or _TIME_RANK[unit] <= rank or (unit == "ms" and seconds):
            raise BodyError(f'invalid time "{text}"')
        rank = _TIME_RANK[unit]
        total += value * _TIME_UNITS[unit]
        value = 0
        pos += len(unit)
        while pos < len(text) and text[pos] == " ":
            pos += 1
    if not digits:
        raise BodyError(f'invalid time "{text}"')
    return total + value  # a bare trailing number counts as seconds


def _parse_size(text: str) -> int:
    match = re.fullmatch(r"(\d+)([kKmMgG]?)", text)
    if not match:
        raise BodyError(f'invalid size "{text}"')
    scale = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}[match.group(2).lower()]
    return int(match.group(1)) * scale


_VARIABLE = re.compile(r"\$(\{)?([A-Za-z0-9_]*)(\})?")


def _check_variables(args: Sequence[str], known: frozenset[str]) -> None:
    """Compiling `$name` registers a new variable at run time, which breaks the worker."""
    for arg in args:
        if "$" not in arg:  # the common case, without a regex (most of a POST's cost)
            continue
        for match in _VARIABLE.finditer(arg):
            braced, name, closed = match.groups()
            if not name or (braced and not closed):
                raise BodyError(f'invalid variable name in "{arg}"')
            if not name.isdigit() and name.lower() not in known:
                raise PoisonError(f'unknown variable "${name}"')


@functools.lru_cache(maxsize=65536)  # pure; every POST formats each of its addresses
def _format_ip(text: str, port: int) -> str | None:
    """The address as nginx prints it (ngx_sock_ntop), or None if `text` is no IP literal."""
    parts = text.split(".")
    if len(parts) == 4 and all(p.isdigit() and p.isascii() and int(p) <= 255 for p in parts):
        return ".".join(str(int(p)) for p in parts) + f":{port}"  # ngx_inet_addr: 010 is 10
    if ":" in text and "%" not in text:
        try:
            v6 = ipaddress.IPv6Address(text)
        except ValueError:
            return None
        shown = f"::ffff:{v6.ipv4_mapped}" if v6.ipv4_mapped else v6.compressed
        return f"[{shown}]:{port}"
    return None


def _parse_port(text: str) -> int:
    if not text.isdigit() or not text.isascii() or not 1 <= int(text) <= 65535:
        raise BodyError("invalid port")
    return int(text)


def resolve_address(text: str, dns: Mapping[str, str]) -> str:
    """ngx_parse_url for `server`: the first resolved address, never the posted name."""
    if text.startswith("unix:"):
        path = text[5:]
        if not path:
            raise BodyError("no path in the unix domain socket")
        if len(path.encode("utf-8", "surrogateescape")) > 107:
            raise BodyError("too long path in the unix domain socket")
        return text
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise BodyError("invalid host")
        port = _parse_port(rest[1:]) if rest else 80
        shown = _format_ip(host, port) if ":" in host else None
        if shown is None:
            raise BodyError("invalid IPv6 address")
        return shown
    if "/" in text:
        raise BodyError("invalid host")  # a URI part is not allowed in `server`
    host, sep, port_text = text.partition(":")  # nginx splits at the first colon
    port = _parse_port(port_text) if sep else 80
    if not host:
        raise BodyError("no host")
    shown = _format_ip(host, port)
    if shown is not None and ":" not in host:
        return shown
    resolved = dns.get(host.lower())
    if resolved is None:
        raise BodyError(f'host not found in upstream "{text}"')
    shown = _format_ip(resolved, port)
    if shown is None:
        raise BodyError(f"dns mapping for {host!r} is not an IP address: {resolved!r}")
    return shown


_CHECK_DIRECTIVES = (
    "check",
    "check_http_send",
    "check_http_expect_alive",
    "check_keepalive_requests",
    "check_fastcgi_param",
)


class _UpstreamBuilder:
    """Runs the directives of one body the way nginx's `upstream {}` handlers do."""

    # directive -> (fewest, most) arguments after the name
    ARITY: ClassVar[dict[str, tuple[int, int]]] = {
        "server": (1, 99),
        "ip_hash": (0, 0),
        "hash": (1, 2),
        "least_conn": (0, 0),
        "random": (0, 2),
        "keepalive": (1, 1),
        "keepalive_requests": (1, 1),
        "keepalive_time": (1, 1),
        "keepalive_timeout": (1, 1),
        "zone": (1, 2),
    }

    def __init__(self, *, known: frozenset[str], dns: Mapping[str, str], check: bool) -> None:
        self.known = known
        self.dns = dns
        self.check = check
        self.servers: list[SimServer] = []
        self.backup_allowed = True  # ip_hash, hash and random drop the BACKUP flag
        self.once: set[str] = set()  # directives nginx refuses twice ("is duplicate")

    def run(self, args: list[str]) -> None:
        name, params = args[0], args[1:]
        arity = self._arity(name)
        if not arity[0] <= len(params) <= arity[1]:
            raise BodyError(f'invalid number of arguments in "{name}" directive')
        _check_variables(params, self.known)
        if name == "server":
            self.servers.append(self._server(params))
        elif name in ("ip_hash", "hash", "random"):
            self._balancer_without_backup(name, params)
        elif name.startswith("check"):
            pass  # accepted as the upstream-check module would; it does not change servers
        elif name != "least_conn":
            self._setting(name, params)

    def finish(self) -> tuple[SimServer, ...]:
        if not any(not server.backup for server in self.servers):
            raise BodyError("no servers are inside upstream")
        return tuple(self.servers)

    def _arity(self, name: str) -> tuple[int, int]:
        if self.check and name in _CHECK_DIRECTIVES:
            return (1, 99)
        if name not in self.ARITY:
            raise BodyError(f'unknown directive "{name}"')
        return self.ARITY[name]

    def _server(self, params: list[str]) -> SimServer:
        numbers = {"weight": 1, "max_conns": 0, "max_fails": 1, "fail_timeout": 10}
        flags = {"backup": False, "down": False}
        for param in params[1:]:
            key, sep, value = param.partition("=")
            if sep and key == "fail_timeout":
                numbers[key] = int(parse_time(value, seconds=True))
            elif sep and key in numbers:
                numbers[key] = _atoi(value)
            elif not sep and param in flags and (param != "backup" or self.backup_allowed):
                flags[param] = True
            else:
                raise BodyError(f'invalid parameter "{param}"')
        if numbers["weight"] == 0:
            raise BodyError('invalid parameter "weight=0"')
        return SimServer(
            addr=resolve_address(params[0], self.dns),
            weight=numbers["weight"],
            max_conns=numbers["max_conns"],
            max_fails=numbers["max_fails"],
            fail_timeout=numbers["fail_timeout"],
            backup=flags["backup"],
            down=flags["down"],
        )

    def _balancer_without_backup(self, name: str, params: list[str]) -> None:
        forms: dict[str, list[list[str]]] = {
            "ip_hash": [[]],
            "random": [[], ["two"], ["two", "least_conn"]],
        }
        valid = forms.get(name)
        if valid is not None and params not in valid:
            raise BodyError(f'invalid parameter "{" ".join(params)}"')
        if name == "hash" and len(params) == 2 and params[1] != "consistent":
            raise BodyError(f'invalid parameter "{params[1]}"')
        self.backup_allowed = False

    def _setting(self, name: str, params: list[str]) -> None:
        if name in self.once:
            raise BodyError(f'"{name}" directive is duplicate')
        self.once.add(name)
        if name == "keepalive" and _atoi(params[0]) == 0:
            raise BodyError(f'invalid value "{params[0]}" in "keepalive" directive')
        if name == "keepalive_requests":
            _atoi(params[0])
        if name in ("keepalive_time", "keepalive_timeout"):
            parse_time(params[0], seconds=False)
        if name == "zone" and len(params) == 2 and _parse_size(params[1]) < 8 * 4096:
            raise BodyError(f'zone "{params[0]}" is too small')


def parse_body(
    body: str,
    *,
    known_variables: Iterable[str] = (),
    dns: Mapping[str, str] | None = None,
    upstream_check_module: bool = False,
) -> tuple[SimServer, ...]:
    """The servers a POST body installs, or BodyError (PoisonError: the worker is now broken)."""
    builder = _UpstreamBuilder(
        known=frozenset(v.lower() for v in known_variables),
        dns=_dns_table(dns),
        check=upstream_check_module,
    )
    for args, _end in _split_statements(body):
        builder.run(args)
    return builder.finish()


@functools.lru_cache(maxsize=4096)
def _parse_shared(
    body: str, known: frozenset[str], dns: tuple[tuple[str, str], ...], check: bool
) -> tuple[SimServer, ...]:
    """parse_body, once per body and configuration for all the simulators of a process.

    A benchmark posts each body to every proxy, and parsing was most of a simulator's
    CPU: repeating it for the proxies of one process measured the harness, not the
    syncer. The result is immutable; a body that fails raises again each time (errors
    are not cached), so poisoning and rejections behave as before."""
    return parse_body(body, known_variables=known, dns=dict(dns), upstream_check_module=check)


def _dns_table(dns: Mapping[str, str] | None) -> dict[str, str]:
    return {"localhost": "127.0.0.1"} | {k.lower(): v for k, v in (dns or {}).items()}


def cut_after_servers(body: str, keep: int) -> str | None:
    """`body` cut after its first `keep` server directives, or None if nothing would be cut."""
    seen = 0
    try:
        for args, end in _split_statements(body):
            seen += args[0] == "server"
            if seen == keep and body[end:].strip():
                return body[:end]
    except BodyError:
        return None
    return None


# --------------------------------------------------------------------------- queue cost

_PAGE = 4096
_SLAB_MAX = _PAGE // 2
_MSG_STRUCT = 72  # sizeof(ngx_dyups_msg_t) on 64-bit: queue 16, name 16, content 16, 3 x 8


def _slab(size: int) -> int:
    """Bytes ngx_slab_alloc takes for `size`: powers of two from 8, whole pages above 2 KiB."""
    if size <= 0:
        return 0
    if size > _SLAB_MAX:
        return -(-size // _PAGE) * _PAGE
    return max(8, 1 << (size - 1).bit_length())


def queue_cost(name: str, body: str | None, workers: int) -> int:
    """Shared-memory bytes one queued change holds until every worker has applied it.

    ngx_http_dyups_send_msg makes four slab allocations: the message struct, one pid
    per worker, the name and the body (none for a DELETE). Calibration with the
    defaults (2 MiB zone, 2 workers): a 611-byte body costs 128 + 8 + 8 + 1024 =
    1,168 bytes and 1,774 fit, against the measured first alert at write #1,772
    (unpaced, no timer fired); a 3,092-byte body takes a whole page, 4,240 bytes,
    488 fit, so 300/s drains in time (0 alerts) while 1,000/s overflows by
    hundreds. The measured 600/s row (38 alerts) is lower than this model gives
    (~100 a second) because real workers hold the lock while they apply.
    """
    size = _slab(_MSG_STRUCT) + _slab(4 * workers)
    size += _slab(len(name.encode("utf-8", "surrogateescape")))
    if body is not None:
        size += _slab(len(body.encode("utf-8", "surrogateescape")))
    return size


def queue_capacity(shm_zone_size: int) -> int:
    """Bytes of messages a zone holds: its pages after the slab header, minus two.

    ngx_slab_init keeps ~700 bytes of header and 24 bytes of descriptor per 4 KiB
    page; the zone's own allocations (log context, queue head, worker status
    table) take one page each of two slot sizes.
    """
    pages = (shm_zone_size - 704) // (_PAGE + 24) - 2
    return max(0, pages) * _PAGE


# --------------------------------------------------------------------------- worker state

_ASCII_LOWER = str.maketrans(string.ascii_uppercase, string.ascii_lowercase)


def _fold(name: str) -> str:
    """ngx_strncasecmp: ASCII-only case folding."""
    return name.translate(_ASCII_LOWER)


@dataclass
class _Slot:
    name: str
    servers: tuple[SimServer, ...] = ()
    body: str = ""
    static: bool = False
    live: bool = True


class _SlotTable:
    """One worker's upstreams, reproducing ngx_dyups_find_upstream / do_update / do_delete.

    A deleted slot is reused by the next upstream created; the module's scan keeps
    the last free slot it passes, i.e. the highest index (no proxied request holds
    a reference here, so a deleted slot is free at once). Every POST first creates
    and deletes the sandbox upstream. Together this gives the module's `/list`
    order, e.g. `static_be v6 web mixed` in the classic vectors. Indexed rather
    than scanned so that thousands of upstreams stay cheap.
    """

    def __init__(self, slots: Iterable[_Slot] = ()) -> None:
        self.slots: list[_Slot] = list(slots)
        self.index = {_fold(slot.name): i for i, slot in enumerate(self.slots)}
        self.free: list[int] = []  # heap of negated indices: the highest free slot first

    def lookup(self, name: str) -> _Slot | None:
        i = self.index.get(_fold(name))
        return None if i is None else self.slots[i]

    def update(self, slot: _Slot) -> None:
        self.delete(slot.name)
        key = _fold(slot.name)
        if self.free:
            i = -heapq.heappop(self.free)
            self.slots[i] = slot
        else:
            i = len(self.slots)
            self.slots.append(slot)
        self.index[key] = i

    def delete(self, name: str) -> bool:
        i = self.index.pop(_fold(name), None)
        if i is None:
            return False
        self.slots[i].live = False
        heapq.heappush(self.free, -i)
        return True

    def sandbox(self) -> None:
        """The throw-away upstream every POST builds first (whether or not the body parses)."""
        self.update(_Slot(SANDBOX))
        self.delete(SANDBOX)

    def live(self) -> list[_Slot]:
        return [slot for slot in self.slots if slot.live]


@dataclass
class _Worker:
    index: int
    table: _SlotTable
    poisoned: bool = False
    ready_at: float = 0.0  # a respawned worker sleeps before it serves
    next_tick: float = 0.0  # its dyups_read_msg_timeout timer


@dataclass
class _Message:
    op: Op
    name: str
    body: str | None
    servers: tuple[SimServer, ...]
    cost: int
    pending: set[int]  # workers that have not applied it yet


# --------------------------------------------------------------------------- HTTP wire

_REASONS = {
    100: "Continue",
    200: "OK",
    204: "No Content",
    400: "Bad Request",
    404: "Not Found",
    405: "Not Allowed",
    409: "Conflict",
    411: "Length Required",
    413: "Request Entity Too Large",
    414: "Request-URI Too Large",
    500: "Internal Server Error",
    505: "HTTP Version Not Supported",
}
_MAX_LINE = 8 * 1024  # large_client_header_buffers 4 8k
_MAX_HEAD = 4 * _MAX_LINE
_BODY_BUFFER = 8 * 1024  # client_body_buffer_size on x86-64; larger bodies go to a file


@dataclass(frozen=True)
class _Reply:
    status: int
    body: bytes = b""
    html: bool = False  # nginx's own error page (which, unlike dyups, has a Content-Type)
    close: bool = False


def _page(status: int, detail: str = "") -> _Reply:
    """nginx's HTML error page; these statuses also end keep-alive, as nginx does."""
    title = f"{status} {_REASONS[status]}"
    head = f"400 {detail}" if detail else title
    extra = f"<center>{detail}</center>\r\n" if detail else ""
    text = (
        f"<html>\r\n<head><title>{head}</title></head>\r\n<body>\r\n"
        f"<center><h1>{title}</h1></center>\r\n{extra}<hr><center>{NGINX}</center>\r\n"
        "</body>\r\n</html>\r\n"
    )
    return _Reply(status, text.encode(), html=True, close=status in (400, 411, 413, 414, 505))


@functools.lru_cache(maxsize=2)
def _http_date(second: int) -> str:
    return formatdate(second, usegmt=True)  # once a second, not once an answer


def _render(reply: _Reply, *, keep_alive: bool) -> bytes:
    lines = [
        f"HTTP/1.1 {reply.status} {_REASONS[reply.status]}",
        f"Server: {NGINX}",
        f"Date: {_http_date(int(time.time()))}",
    ]
    if reply.html:
        lines.append("Content-Type: text/html")
    if reply.status != 204:  # nginx's header filter drops Content-Length from a 204
        lines.append(f"Content-Length: {len(reply.body)}")
    lines.append("Connection: keep-alive" if keep_alive else "Connection: close")
    # A 204 still carries the body it was given: that is the module's `no content\n` quirk.
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + reply.body


@dataclass(frozen=True)
class _Request:
    method: str
    segments: list[str]  # decoded, normalised path split like ngx_dyups_parse_path
    body: bytes | None  # None: neither Content-Length nor body
    body_reads: list[int]  # bytes per socket read that carried the body
    keep_alive: bool


class _Wire:
    """The read side of one connection."""

    def __init__(self, sock: socket.socket, on_read: Callable[[int], None]) -> None:
        self.sock = sock
        self.buf = bytearray()
        self.on_read = on_read

    def fill(self) -> int:
        data = self.sock.recv(65536)
        self.buf += data
        if data:
            self.on_read(len(data))
        return len(data)

    def read_head(self) -> bytes | _Reply | None:
        """Bytes up to the blank line, an error page, or None at end of stream."""
        while True:
            while self.buf and self.buf[0] in b"\r\n":  # nginx skips empty lines before a request
                del self.buf[:1]
            line_end = self.buf.find(b"\n")
            if line_end > _MAX_LINE or (line_end == -1 and len(self.buf) > _MAX_LINE):
                return _page(414)
            end, sep = _head_end(self.buf)
            if end >= 0:
                head = bytes(self.buf[:end])
                del self.buf[: end + sep]
                return (
                    head if end <= _MAX_HEAD else _page(400, "Request Header Or Cookie Too Large")
                )
            if len(self.buf) > _MAX_HEAD:
                return _page(400, "Request Header Or Cookie Too Large")
            if not self.fill():
                return None

    def read_body(self, length: int) -> tuple[bytes, list[int]] | None:
        reads = [min(length, len(self.buf))] if self.buf and length else []
        while sum(reads) < length:
            before = len(self.buf)
            if not self.fill():
                return None
            reads.append(min(length - sum(reads), len(self.buf) - before))
        body = bytes(self.buf[:length])
        del self.buf[:length]
        return body, reads


def _head_end(buf: bytearray) -> tuple[int, int]:
    ends = [(buf.find(sep), len(sep)) for sep in (b"\r\n\r\n", b"\n\n")]
    found = [e for e in ends if e[0] >= 0]
    return min(found) if found else (-1, 0)


def _parse_segments(target: str) -> list[str] | None:
    """r->uri as nginx makes it (decoded, merged slashes, dot segments), split at `/`."""
    if not target.startswith("/"):
        match = re.match(r"(?i)https?://[^/?#]*", target)
        if not match:
            return None
        target = target[match.end() :] or "/"
    raw = re.split(r"[?#]", target, maxsplit=1)[0].encode("latin-1")
    decoded = bytearray()
    i = 0
    while i < len(raw):
        if raw[i] == ord("%"):
            pair = raw[i + 1 : i + 3]
            if len(pair) != 2 or not all(chr(c) in string.hexdigits for c in pair):
                return None
            decoded.append(int(pair, 16))
            i += 3
        else:
            decoded.append(raw[i])
            i += 1
    segments: list[str] = []
    for part in bytes(decoded).split(b"/"):
        if part in (b"", b"."):
            continue
        if part == b"..":
            if not segments:
                return None
            segments.pop()
            continue
        segments.append(part.decode("utf-8", "surrogateescape"))
    return segments


def _parse_head(head: bytes) -> tuple[str, str, tuple[int, int], dict[str, str]] | _Reply:
    lines = [line.rstrip(b"\r").decode("latin-1") for line in head.split(b"\n")]
    parts = lines[0].split()
    if len(parts) != 3 or not re.fullmatch(r"[A-Z_-]+", parts[0]):
        return _page(400)
    version = re.fullmatch(r"HTTP/([0-9])\.([0-9])", parts[2])
    if not version:
        return _page(400)
    if version.group(1) != "1":
        return _page(505)
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip():
            return _page(400)
        key = name.lower()
        if key in headers and key in ("host", "content-length", "transfer-encoding"):
            return _page(400)
        headers[key] = value.strip()
    return parts[0], parts[1], (1, int(version.group(2))), headers


def _read_request(wire: _Wire, *, max_body: int) -> _Request | _Reply | None:
    head = wire.read_head()
    if not isinstance(head, bytes):
        return head
    parsed = _parse_head(head)
    if isinstance(parsed, _Reply):
        return parsed
    method, target, version, headers = parsed
    segments = _parse_segments(target)
    if segments is None or (version == (1, 1) and "host" not in headers):
        return _page(400)
    tokens = {t.strip().lower() for t in headers.get("connection", "").split(",")}
    keep_alive = "close" not in tokens and (version == (1, 1) or "keep-alive" in tokens)
    if "transfer-encoding" in headers:
        return _page(411)  # chunked bodies are not simulated
    length_text = headers.get("content-length")
    if length_text is None:
        return _Request(method, segments, None, [], keep_alive)
    if not re.fullmatch(r"[0-9]+", length_text):
        return _page(400)
    length = int(length_text)
    if max_body and length > max_body:
        return _page(413)
    if length and headers.get("expect", "").lower() == "100-continue":
        wire.sock.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
    got = wire.read_body(length)
    if got is None:
        return None
    return _Request(method, segments, got[0], got[1], keep_alive)


def _two_buffer_join(body: bytes, reads: list[int]) -> bytes:
    """ngx_http_dyups_read_body joins only the first two buffers of an in-memory body."""
    preread = reads[0] if reads else 0
    if len(reads) < 3 or len(body) - preread > _BODY_BUFFER:
        return body
    return body[: reads[0] + reads[1]]


def _text(status: int, body: bytes) -> _Reply:
    return _Reply(status, body)


class _Conn:
    """One accepted connection; it belongs to one worker for its whole life."""

    def __init__(self, sock: socket.socket, worker: int) -> None:
        self.sock = sock
        self.worker = worker
        self.retired = False  # reload: finish the request in flight, then close
        self.thread: threading.Thread | None = None

    def shutdown(self, how: int = socket.SHUT_RDWR) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(how)


class _Listener:
    """The listening socket and its accept thread; closing it refuses new connections."""

    def __init__(self, host: str, port: int, admit: Callable[[socket.socket], None]) -> None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, port))
        self.sock.listen(128)
        self.sock.setblocking(False)
        self.port: int = self.sock.getsockname()[1]
        self.wake_r, self.wake_w = socket.socketpair()
        self.admit = admit
        self.thread = threading.Thread(target=self._loop, name="dyups-sim-accept", daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        try:
            while True:
                ready, _, _ = select.select([self.sock, self.wake_r], [], [])
                if self.wake_r in ready:
                    return
                with contextlib.suppress(OSError):  # the client may already be gone
                    client, _ = self.sock.accept()
                    client.setblocking(True)
                    self.admit(client)
        finally:
            self.sock.close()
            self.wake_r.close()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.wake_w.send(b"x")
        self.thread.join(5)
        self.wake_w.close()


# --------------------------------------------------------------------------- simulator


class DyupsSimulator:
    """A dyups interface on 127.0.0.1 with N workers, a shared queue and fault switches.

    All inspection methods are thread-safe. `wait_until` is woken on every state change.
    """

    def __init__(
        self,
        *,
        flavour: Flavour = "classic",
        workers: int = 2,
        static: Mapping[str, str] | None = None,
        read_msg_timeout: float = 1.0,
        shm_zone_size: int = 2 * 1024 * 1024,
        trylock: bool = False,
        conflict_rate: float = 0.0,
        known_variables: Iterable[str] = (),
        dns: Mapping[str, str] | None = None,
        client_max_body_size: int = 1024 * 1024,
        upstream_check_module: bool = False,
        host: str = "127.0.0.1",
        port: int = 0,
        seed: int | None = None,
        assign: Assign = "random",
        keepalive_requests: int = 1000,
        keepalive_timeout: float = 75.0,
        write_seconds_per_server: float = 0.0,
        applied_limit: int = 100_000,
    ) -> None:
        if flavour not in ("classic", "head"):
            raise ValueError(f"unknown flavour {flavour!r}")
        if workers < 1 or read_msg_timeout <= 0 or shm_zone_size < 8 * _PAGE:
            raise ValueError("need workers >= 1, read_msg_timeout > 0, shm_zone_size >= 32 KiB")
        self.flavour: Flavour = flavour
        self.host = host
        self.read_msg_timeout = read_msg_timeout
        self.shm_zone_size = shm_zone_size
        self.queue_capacity = queue_capacity(shm_zone_size)
        self._n = workers
        self._trylock = trylock and flavour == "classic"
        self._conflict_rate = conflict_rate
        self._known = frozenset(v.lower() for v in known_variables)
        self._dns_key = tuple(sorted(_dns_table(dns).items()))  # see _parse_shared
        self._max_body = client_max_body_size
        self._check = upstream_check_module
        self._port = port
        self._assign: Assign = assign
        self._keepalive_requests = keepalive_requests
        self._keepalive_timeout = keepalive_timeout
        self._write_cost = write_seconds_per_server
        self._rng = random.Random(seed)
        self._static = [(name, body, self._parse(body)) for name, body in (static or {}).items()]

        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)
        self._timer_cv = threading.Condition(self._lock)
        self._shm = threading.Lock()  # the zone's mutex, which trylock tries
        self._stopping = threading.Event()
        self._version = 0  # bumped on every change, so that wait_until misses none

        self._workers = [self._fresh_worker(i, time.monotonic()) for i in range(workers)]
        # The shared queue, seen per worker: what each has still to apply, oldest first.
        self._pending: list[deque[_Message]] = [deque() for _ in range(workers)]
        self._queue_length = 0
        self._queue_bytes = 0
        self._persisted: dict[str, _Slot] = {}  # head: what survives a reload, by folded name
        self._stats = SimStats()
        self._applied: deque[AppliedEvent] = deque(maxlen=applied_limit)
        self._conns: set[_Conn] = set()
        self._routes: deque[int] = deque()
        self._round_robin = 0
        self._hang = False
        self._delay = 0.0
        self._truncate_next: int | None = None
        self._listener: _Listener | None = None
        self._timer: threading.Thread | None = None

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> DyupsSimulator:
        if self._timer is not None:
            raise RuntimeError("simulator already started")
        self._listener = _Listener(self.host, self._port, self._admit)
        self._port = self._listener.port
        self._timer = threading.Thread(target=self._timer_loop, name="dyups-sim-timer", daemon=True)
        self._timer.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        with self._lock:
            self._notify()
            self._timer_cv.notify_all()
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        threads = self._drop_connections(lambda conn: True)
        for thread in threads:
            thread.join(5)
        if self._timer is not None:
            self._timer.join(5)

    def __enter__(self) -> DyupsSimulator:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        return self._port

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self._port}"

    @property
    def workers(self) -> int:
        return self._n

    # ------------------------------------------------------------------ faults

    def reload(self) -> None:
        """HUP. classic: back to nginx.conf upstreams. head: dynamic upstreams are restored."""
        with self._lock:
            self._new_generation(keep_dynamic=self.flavour == "head")
            for conn in self._conns:  # old workers finish the request in flight, then close
                conn.retired = True
                conn.shutdown(socket.SHUT_RD)

    def restart(self) -> None:
        """Stop and start nginx: every dynamic change is lost, in both flavours."""
        with self._lock:
            self._persisted.clear()
            self._new_generation(keep_dynamic=False)
        self._drop_connections(lambda conn: True)

    def crash_worker(self, index: int) -> None:
        """The worker dies and is respawned with only nginx.conf upstreams (head: restored).

        Its connections are reset; the respawned worker sleeps 2 x read_msg_timeout
        before it serves; queued changes it had not applied count as applied for it.
        """
        with self._lock:
            now = time.monotonic()
            worker = self._fresh_worker(index, now + 2 * self.read_msg_timeout)
            self._workers[index] = worker
            if self.flavour == "head":
                self._restore(worker)
            for message in self._pending[index]:
                self._mark_applied(message, index)
            self._pending[index].clear()
            self._notify()
            self._timer_cv.notify_all()
        self._drop_connections(lambda conn: conn.worker == index)

    def go_down(self) -> None:
        """Refuse connections (and reset open ones); state and timers are kept."""
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        self._drop_connections(lambda conn: True)

    def come_up(self) -> None:
        """Accept again on the same port."""
        if self._listener is None and not self._stopping.is_set():
            self._listener = _Listener(self.host, self._port, self._admit)

    def hang(self, on: bool) -> None:
        """Read requests and never answer them; switching off closes those connections."""
        with self._lock:
            self._hang = on
            self._notify()

    def set_delay(self, seconds: float) -> None:
        """Answer every request this late (the delay comes before the request is handled)."""
        with self._lock:
            self._delay = seconds

    def truncate_next_body(self, keep_servers: int = 2) -> None:
        """The next POST keeps only its first `keep_servers` server directives, and succeeds."""
        with self._lock:
            self._truncate_next = keep_servers

    def set_conflict_rate(self, rate: float) -> None:
        """With trylock on: this fraction of writes find the lock busy (409 / closed DELETE)."""
        with self._lock:
            self._conflict_rate = rate

    def route_next(self, *workers: int) -> None:
        """The next accepted connections go to these workers, in order, before `assign`."""
        with self._lock:
            self._routes.extend(workers)

    @contextlib.contextmanager
    def lock_busy(self) -> Iterator[None]:
        """Hold the shared-memory mutex, as a worker syncing its queue does.

        Meanwhile trylock writes fail (409 / closed DELETE), and other writes and
        every classic GET wait, as they do on nginx.
        """
        with self._shm:
            yield

    # ------------------------------------------------------------------ inspection

    def upstreams(self, worker: int | None = None) -> dict[str, list[SimServer]]:
        """Name -> servers as that worker holds them (worker 0 by default), in its order.

        classic: nginx.conf upstreams too (the API manages them). head: only the
        upstreams made through the API, as its `/list` shows them.
        """
        with self._lock:
            slots = self._view(self._workers[worker or 0])
            return {slot.name: list(slot.servers) for slot in slots}

    def bodies(self, worker: int = 0) -> dict[str, str]:
        """Name -> body as posted, for the upstreams that came through the API."""
        with self._lock:
            slots = self._view(self._workers[worker])
            return {slot.name: slot.body for slot in slots if not slot.static}

    def names_everywhere(self) -> set[str]:
        """Names (as worker 0 spells them) that every worker holds."""
        with self._lock:
            views = [{_fold(s.name): s.name for s in self._view(w)} for w in self._workers]
            common = set.intersection(*(set(view) for view in views))
            return {views[0][key] for key in common}

    def converged(self) -> bool:
        """Every worker holds the same upstreams with the same servers."""
        with self._lock:
            tables = [{_fold(s.name): s.servers for s in self._view(w)} for w in self._workers]
            return all(table == tables[0] for table in tables)

    def poisoned_workers(self) -> set[int]:
        with self._lock:
            return {w.index for w in self._workers if w.poisoned}

    def queue_length(self) -> int:
        with self._lock:
            return self._queue_length

    def queue_bytes(self) -> int:
        with self._lock:
            return self._queue_bytes

    def connections(self) -> int:
        """Connections open now."""
        with self._lock:
            return len(self._conns)

    @property
    def stats(self) -> SimStats:
        with self._lock:
            return self._stats.copy()

    def reset_stats(self) -> None:
        with self._lock:
            self._stats = SimStats()

    @property
    def applied(self) -> list[AppliedEvent]:
        with self._lock:
            return list(self._applied)

    def clear_applied(self) -> None:
        with self._lock:
            self._applied.clear()

    def wait_until(
        self,
        predicate: Callable[[DyupsSimulator], bool],
        timeout: float,
        *,
        recheck: float = 0.05,
    ) -> bool:
        """Wait until `predicate(self)` holds; False on timeout.

        Re-checked on every change of the simulator, and at least every `recheck`
        seconds so that it may also look at outside state (the syncer's). It runs
        outside the simulator's lock, so it may call into code that waits on it.
        """
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                version = self._version
            if predicate(self):
                return True
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            with self._lock:
                if self._version == version:
                    self._changed.wait(min(left, recheck))

    def _notify(self) -> None:
        self._version += 1
        self._changed.notify_all()

    # ------------------------------------------------------------------ state helpers

    def _parse(self, body: str) -> tuple[SimServer, ...]:
        return _parse_shared(body, self._known, self._dns_key, self._check)

    def _fresh_worker(self, index: int, ready_at: float) -> _Worker:
        table = _SlotTable()
        if self.flavour == "classic":  # head's table holds only what came through the API
            table = _SlotTable(_Slot(n, ss, body, static=True) for n, body, ss in self._static)
        phase = self._rng.random() * self.read_msg_timeout
        return _Worker(index, table, ready_at=ready_at, next_tick=ready_at + phase)

    def _restore(self, worker: _Worker) -> None:
        for slot in self._persisted.values():
            worker.table.update(replace(slot))

    def _new_generation(self, *, keep_dynamic: bool) -> None:
        now = time.monotonic()
        self._workers = [self._fresh_worker(i, now) for i in range(self._n)]
        if keep_dynamic:
            for worker in self._workers:
                self._restore(worker)
        self._pending = [deque() for _ in range(self._n)]
        self._queue_length = 0
        self._queue_bytes = 0
        self._notify()
        self._timer_cv.notify_all()

    def _view(self, worker: _Worker) -> list[_Slot]:
        """What the interface can show of a worker (head never shows nginx.conf upstreams)."""
        if self.flavour == "classic":
            return worker.table.live()
        return sorted(worker.table.live(), key=_tree_order)

    def _event(self, worker: int, op: Op, name: str, body: str | None) -> None:
        self._applied.append(AppliedEvent(time.monotonic(), worker, op, name, body))
        self._notify()

    def _apply_message(self, worker: _Worker, message: _Message) -> None:
        if message.op == "delete":
            worker.table.delete(message.name)
        else:
            # A poisoned worker cannot parse: it is left with a half-built upstream.
            servers = () if worker.poisoned else message.servers
            worker.table.update(_Slot(message.name, servers, message.body or ""))
        self._event(worker.index, message.op, message.name, message.body)

    def _mark_applied(self, message: _Message, index: int) -> None:
        message.pending.discard(index)
        if not message.pending:  # every worker has it: the slab memory is freed
            self._queue_length -= 1
            self._queue_bytes -= message.cost

    def _drain(self, worker: _Worker) -> None:
        """ngx_http_dyups_read_msg_locked: apply, oldest first, what this worker has not."""
        pending = self._pending[worker.index]
        while pending:
            message = pending.popleft()
            self._apply_message(worker, message)
            self._mark_applied(message, worker.index)

    def _enqueue(self, worker: int, op: Op, name: str, slot: _Slot | None) -> bool:
        others = set(range(self._n)) - {worker}
        if not others:
            return True
        body = slot.body if slot else None
        cost = queue_cost(name, body, self._n)
        if self._queue_bytes + cost > self.queue_capacity:
            return False
        servers = slot.servers if slot else ()
        message = _Message(op, name, body, servers, cost, others)
        for index in others:
            self._pending[index].append(message)
        self._queue_length += 1
        self._queue_bytes += cost
        self._stats.queue_high_water = max(self._stats.queue_high_water, self._queue_bytes)
        return True

    # ------------------------------------------------------------------ timers

    def _timer_loop(self) -> None:
        while True:
            index = self._next_due()
            if index is None:
                return
            with self._shm, self._lock:
                worker = self._workers[index]
                now = time.monotonic()
                if worker.next_tick <= now and worker.ready_at <= now:
                    self._drain(worker)
                    worker.next_tick = now + self.read_msg_timeout

    def _next_due(self) -> int | None:
        with self._lock:
            while not self._stopping.is_set():
                now = time.monotonic()
                due = min(self._workers, key=lambda w: max(w.next_tick, w.ready_at))
                wait = max(due.next_tick, due.ready_at) - now
                if wait <= 0:
                    return due.index
                self._timer_cv.wait(wait)
            return None

    def _sync_for_read(self, index: int) -> None:
        """A GET applies the queue first and re-arms the worker's timer (ngx_http_dyups_read_msg)."""
        with self._shm, self._lock:
            worker = self._workers[index]
            self._drain(worker)
            worker.next_tick = time.monotonic() + self.read_msg_timeout

    # ------------------------------------------------------------------ connections

    def _admit(self, sock: socket.socket) -> None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with self._lock:
            conn = _Conn(sock, self._pick_worker())
            self._conns.add(conn)
            self._stats.connections += 1
            self._notify()
        conn.thread = threading.Thread(target=self._serve, args=(conn,), daemon=True)
        conn.thread.start()

    def _pick_worker(self) -> int:
        if self._routes:
            return self._routes.popleft() % self._n
        if self._assign == "round_robin":
            self._round_robin += 1
            return (self._round_robin - 1) % self._n
        return self._rng.randrange(self._n)

    def _drop_connections(self, which: Callable[[_Conn], bool]) -> list[threading.Thread]:
        with self._lock:
            doomed = [conn for conn in self._conns if which(conn)]
        for conn in doomed:
            conn.shutdown()
        return [conn.thread for conn in doomed if conn.thread is not None]

    def _count_bytes(self, n: int) -> None:
        with self._lock:
            self._stats.bytes_received += n
            self._notify()

    def _serve(self, conn: _Conn) -> None:
        wire = _Wire(conn.sock, self._count_bytes)
        served = 0
        try:
            conn.sock.settimeout(self._keepalive_timeout)
            while not conn.retired:
                request = _read_request(wire, max_body=self._max_body)
                if request is None:
                    return
                if isinstance(request, _Reply):
                    self._count(conn, "-", request.status)
                    conn.sock.sendall(_render(request, keep_alive=False))
                    return
                served += 1
                reply = self._respond(conn, request)
                if reply is None:
                    return  # closed without a byte
                keep = request.keep_alive and not reply.close and not conn.retired
                keep = keep and served < self._keepalive_requests
                conn.sock.sendall(_render(reply, keep_alive=keep))
                if not keep:
                    return
        except OSError:
            return
        finally:
            with self._lock:
                self._conns.discard(conn)
                self._notify()
            conn.shutdown()
            conn.sock.close()

    def _count(self, conn: _Conn, method: str, status: int) -> None:
        with self._lock:
            self._stats.requests[(method, status)] += 1
            self._notify()

    def _respond(self, conn: _Conn, request: _Request) -> _Reply | None:
        if not self._before_answer(conn):
            return None
        reply = self._dispatch(conn.worker, request)
        self._count(conn, request.method, reply.status if reply else 0)
        return reply

    def _before_answer(self, conn: _Conn) -> bool:
        """Hang, delay, and a respawning worker's pause; False: never answer."""
        with self._lock:
            if self._hang:
                self._stats.hung += 1
                self._notify()
                while self._hang and not self._stopping.is_set():
                    self._changed.wait()
                return False
            delay = self._delay
        if delay and self._stopping.wait(delay):
            return False
        with self._lock:
            while not self._stopping.is_set():
                wait = self._workers[conn.worker].ready_at - time.monotonic()
                if wait <= 0:
                    return True
                self._changed.wait(wait)
        return False

    # ------------------------------------------------------------------ the interface

    def _dispatch(self, worker: int, request: _Request) -> _Reply | None:
        if request.method == "GET":
            return self._get(worker, request.segments)
        if request.method == "DELETE":
            return self._delete(worker, request.segments)
        if request.method == "POST":
            return self._post(worker, request)
        return _text(405, b"")  # the module answers any other method with an empty 405

    def _get(self, worker: int, segments: list[str]) -> _Reply:
        with self._lock:
            self._stats.gets += 1
            self._notify()
        keyword = _fold(segments[0]) if segments else ""
        if self.flavour == "classic" or keyword == "list":
            self._sync_for_read(worker)
        if not segments:
            return _page(404)
        with self._lock:
            if self.flavour == "head":
                return self._head_list(worker) if keyword == "list" else _text(404, b"")
            if keyword == "list":
                return _listing("".join(f"{s.name}\n" for s in self._view(self._workers[worker])))
            if keyword == "detail":
                return _listing(self._detail(worker))
            if keyword == "upstream" and len(segments) == 2:
                slot = self._workers[worker].table.lookup(segments[1])
                if slot is not None:
                    return _listing("".join(f"server {s.addr}\n" for s in slot.servers))
            return _text(404, b"")

    def _detail(self, worker: int) -> str:
        blocks = [
            f"{slot.name}\n" + "".join(s.detail_line() for s in slot.servers) + "\n"
            for slot in self._view(self._workers[worker])
        ]
        return "".join(blocks)

    def _head_list(self, worker: int) -> _Reply:
        slots = self._view(self._workers[worker])
        return _listing("".join(f"upstream {s.name} {{\n{s.body}\n}}\n" for s in slots))

    def _post(self, worker: int, request: _Request) -> _Reply:
        with self._lock:
            self._stats.posts += 1
            self._notify()
        if request.body is None:
            return _text(204, NO_CONTENT)
        if len(request.segments) != 2:
            return _text(404, NOT_INTERFACE)
        if _fold(request.segments[0]) != "upstream":
            return _text(404, NOT_API)
        body = self._received_body(request)
        if not self._lock_for_write():
            return _text(409, TRY_AGAIN)
        try:
            self._hold_for(body)
            with self._lock:
                return self._update(worker, request.segments[1], body)
        finally:
            self._shm.release()

    def _received_body(self, request: _Request) -> str:
        assert request.body is not None
        raw = _two_buffer_join(request.body, request.body_reads)
        body = raw.decode("utf-8", "surrogateescape")
        with self._lock:
            keep, self._truncate_next = self._truncate_next, None
            cut = cut_after_servers(body, keep) if keep is not None else None
            if len(raw) < len(request.body) or cut is not None:
                self._stats.truncated += 1
                self._notify()
        return body if cut is None else cut

    def _lock_for_write(self) -> bool:
        """Writers wait for the zone's mutex, or with trylock give up at once."""
        if not self._trylock:
            self._shm.acquire()
            return True
        with self._lock:
            injected = self._conflict_rate > 0 and self._rng.random() < self._conflict_rate
            if injected or not self._shm.acquire(blocking=False):
                self._stats.conflicts += 1
                self._notify()
                return False
        return True

    def _hold_for(self, body: str) -> None:
        """Parsing a large body takes time on nginx; meanwhile the mutex stays held."""
        if self._write_cost:
            time.sleep(self._write_cost * body.count("server"))

    def _update(self, index: int, name: str, body: str) -> _Reply:
        worker = self._workers[index]
        self._drain(worker)
        if self.flavour == "classic":
            worker.table.sandbox()
        try:
            if worker.poisoned:
                raise BodyError("this worker can no longer parse any body")
            servers = self._parse(body)
        except BodyError as error:
            worker.poisoned = worker.poisoned or isinstance(error, PoisonError)
            self._stats.rejected += 1
            self._notify()
            return _text(500, ADD_FAILED)
        slot = _Slot(name, servers, body)
        worker.table.update(slot)
        if self.flavour == "head":
            self._persisted[_fold(name)] = replace(slot)
        self._event(index, "post", name, body)
        if not self._enqueue(index, "post", name, slot):
            self._stats.alerts += 1
            return _text(500, ALERT_UPDATE)
        return _text(200, SUCCESS)

    def _delete(self, worker: int, segments: list[str]) -> _Reply | None:
        with self._lock:
            self._stats.deletes += 1
            self._notify()
        if len(segments) != 2:
            return _text(405, NOT_INTERFACE)
        if _fold(segments[0]) != "upstream":
            return _text(405, NOT_API)
        if not self._lock_for_write():
            return None  # trylock busy: the module closes the connection without a byte
        try:
            with self._lock:
                return self._remove(worker, segments[1])
        finally:
            self._shm.release()

    def _remove(self, index: int, name: str) -> _Reply:
        worker = self._workers[index]
        if self.flavour == "classic":  # head answers from what this worker has synced so far
            self._drain(worker)
        if not worker.table.delete(name):
            return _text(404, NOT_FOUND)
        self._persisted.pop(_fold(name), None)
        self._event(index, "delete", name, None)
        if not self._enqueue(index, "delete", name, None):
            self._stats.alerts += 1
            return _text(500, ALERT_DELETE)
        return _text(200, SUCCESS)


def _listing(text: str) -> _Reply:
    """200 with the text, or 204 when there is nothing (do_get on an empty buffer)."""
    data = text.encode("utf-8", "surrogateescape")
    return _Reply(200, data) if data else _Reply(204)


def _tree_order(slot: _Slot) -> tuple[int, str]:
    """head lists from a tree keyed by a hash of the name, so the order looks arbitrary."""
    key = _fold(slot.name)
    return zlib.crc32(key.encode("utf-8", "surrogateescape")), key


# --------------------------------------------------------------------------- raw client


@dataclass(frozen=True)
class RawResponse:
    """One answer as bytes arrived: framing is taken from Content-Length, else read to EOF."""

    status: int
    headers: list[tuple[str, str]]
    body: bytes
    raw: bytes

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers if k.lower() == name.lower()), None)

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")


def parse_response(raw: bytes) -> RawResponse:
    head, sep, rest = raw.partition(b"\r\n\r\n")
    if not sep:
        raise ValueError(f"no complete response head in {raw[:200]!r}")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = [(k.strip(), v.strip()) for k, _, v in (line.partition(":") for line in lines[1:])]
    length = next((v for k, v in headers if k.lower() == "content-length"), None)
    body = rest[: int(length)] if length is not None else rest
    return RawResponse(status, headers, body, raw)


def raw_request(
    url: str,
    method: str,
    path: str,
    body: str | bytes | None = None,
    *,
    headers: Sequence[tuple[str, str]] = (),
    timeout: float = 10.0,
) -> RawResponse:
    """Send one request in one write on a new connection (`Connection: close`), read to EOF.

    `body=None` sends no Content-Length; `""` sends `Content-Length: 0`.
    """
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    data = body.encode() if isinstance(body, str) else body
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}:{port}", "Connection: close"]
    lines += [f"{k}: {v}" for k, v in headers]
    if data is not None:
        lines.append(f"Content-Length: {len(data)}")
    request = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (data or b"")
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.sendall(request)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return parse_response(b"".join(chunks))


# --------------------------------------------------------------------------- command line


def _pairs(values: Sequence[str], what: str) -> dict[str, str]:
    pairs: dict[str, str] = {}
    for value in values:
        key, sep, rest = value.partition("=")
        if not sep or not key:
            raise SystemExit(f"{what} must look like KEY=VALUE, got {value!r}")
        pairs[key] = rest
    return pairs


def _arguments(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m syncer.testing.dyups",
        description="Run a dyups interface simulator in the foreground.",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8081)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--flavour", choices=("classic", "head"), default="classic")
    parser.add_argument("--static", action="append", default=[], metavar="NAME=BODY")
    parser.add_argument("--read-msg-timeout", type=float, default=1.0, metavar="SECONDS")
    parser.add_argument("--shm-zone-size", type=int, default=2 * 1024 * 1024, metavar="BYTES")
    parser.add_argument("--trylock", action="store_true")
    parser.add_argument("--conflict-rate", type=float, default=0.0)
    parser.add_argument("--known-variable", action="append", default=[], metavar="NAME")
    parser.add_argument("--dns", action="append", default=[], metavar="HOST=IP")
    parser.add_argument("--client-max-body-size", type=int, default=1024 * 1024)
    parser.add_argument("--upstream-check-module", action="store_true")
    parser.add_argument("--assign", choices=("random", "round_robin"), default="random")
    parser.add_argument("--seed", type=int)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = _arguments(argv)
    simulator = DyupsSimulator(
        flavour=args.flavour,
        workers=args.workers,
        static=_pairs(args.static, "--static"),
        read_msg_timeout=args.read_msg_timeout,
        shm_zone_size=args.shm_zone_size,
        trylock=args.trylock,
        conflict_rate=args.conflict_rate,
        known_variables=args.known_variable,
        dns=_pairs(args.dns, "--dns"),
        client_max_body_size=args.client_max_body_size,
        upstream_check_module=args.upstream_check_module,
        host=args.host,
        port=args.port,
        seed=args.seed,
        assign=args.assign,
    )
    done = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: done.set())
    with simulator:
        print(f"dyups simulator ({args.flavour}, {args.workers} workers) on {simulator.url}")
        print(f"queue capacity {simulator.queue_capacity} bytes", flush=True)
        done.wait()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
