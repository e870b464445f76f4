"""A fake Consul agent that speaks the real HTTP API, for tests.

No Consul binary runs on these machines, so code that uses the Consul client library
unmodified (py-consul or python-consul2: `consul.Consul(host, port, ...)`,
`catalog.services`, `health.service`, the raw `http.get(CB.json(index=True), path,
params)`) is tested against this.

It serves, over plain HTTP/1.1 on 127.0.0.1 (keep-alive), the read endpoints a service
discovery client uses, with the shapes of https://developer.hashicorp.com/consul/api-docs:

* `GET /v1/catalog/services` → `{"name": [tags...]}` (every tag of any instance).
* `GET /v1/health/service/<name>` → `[{"Node": {...}, "Service": {...}, "Checks": [...]}]`
  with `passing` (only entries whose every check, node checks included, is passing),
  `tag` (repeatable; all must match, case-insensitively as Consul compares them),
  `node-meta` (repeatable `key:value`), `filter`, `near` (accepted, ignored: entries are
  ordered by node name then service ID).
* `GET /v1/catalog/service/<name>` → `[{ServiceNode}]` with `tag`, `node-meta`, `filter`.
* `GET /v1/status/leader` → `"127.0.0.1:8300"` (`""` without a known leader).
* on all of them: `dc` (an unknown datacenter: 500 `No path to datacenter`), `ns` and
  `partition` (or the `X-Consul-Namespace`/`X-Consul-Partition` headers; `ns=*` is every
  namespace). With `enterprise=False` the agent is Consul CE: `ns`/`partition` are
  answered 400 `Bad request: Invalid query parameter: "ns" - Namespaces are a Consul
  Enterprise feature`, as agent/http_ce.go does, and no `Namespace`/`Partition` fields
  are sent. `stale`/`consistent`/`leader` (both `stale` and `consistent`: 400 `Cannot
  specify ?stale with ?consistent, conflicting semantics.`), `cached` (answered as a
  MISS: `X-Cache: MISS`, `Age: 0`), `pretty`.
* read headers: `X-Consul-Index`, `X-Consul-KnownLeader`, `X-Consul-LastContact`,
  `X-Consul-Effective-Consistency` (`leader`, `stale` or `consistent`, see
  api-docs/features/consistency), `X-Consul-Default-ACL-Policy`, `Content-Type:
  application/json`; errors are `text/plain; charset=utf-8` bodies, as Go's net/http
  sends them.

**Filter** (`?filter=`, https://developer.hashicorp.com/consul/api-docs/features/filtering):
a subset of go-bexpr: `Sel == "v"`, `Sel != "v"`, `"v" in Sel`, `"v" not in Sel`,
`Sel contains "v"`, `Sel not contains "v"`, `Sel matches "re"`, `Sel not matches "re"`,
`Sel is empty`, `Sel is not empty`, joined with `and`, `or`, `not` and parentheses.
Selectors are dotted (`Service.Meta.version`) or indexed (`ServiceMeta["version"]`);
values are "quoted", `raw`, numbers or true/false. A selector through a list (`Checks.
Status`) matches if any element does. `in` works on lists (membership), maps (a key)
and strings (a substring). The filter runs on each health entry (health), on each
service instance in the flat ServiceNode shape (`ServiceName`, `ServiceTags`,
`ServiceMeta`, `NodeMeta`, ... - catalog/services and catalog/service), as Consul's
does. An unknown top-level selector or a syntax error is answered 500 `Failed to create
boolean expression evaluator: ...` (the error comes back from the RPC); a construct the
fake does not implement is answered the same way, with "fake consul agent:" in it.

**Indexes** follow the state store (agent/consul/state/catalog.go) and
https://developer.hashicorp.com/consul/api-docs/features/blocking: one raft-like index
for the whole fake, bumped once per write; each write stamps what it touched
(`CreateIndex`/`ModifyIndex`) and the "index table" entries Consul keeps:

* `/v1/catalog/services`: the `services` table index - it moves on every service
  instance registration, change or deregistration (of any service), not on health
  check changes.
* `/v1/health/service/<name>` and `/v1/catalog/service/<name>`: the `service.<name>`
  index - it moves when an instance of that service is registered, changed or
  deregistered, when one of its checks changes status, and when a node hosting it
  changes (address, serfHealth); it does not move for other services. A service with no
  instances answers the `service_last_extinction` index (the write that removed the
  last instance of any service), or before any extinction the max of the nodes,
  services and checks tables. Namespaces and partitions have their own entries.
* an index of 0 is sent as 1, as agent/http.go's setIndex does.
* a write that changes nothing writes nothing (no new index), as Consul's anti-entropy
  sends nothing in sync; `touch(service)` is the idempotent write that moves a
  service's index without changing its result.

**Blocking queries**: with `?index=N` (N > 0) a request blocks while the index of ITS
result is <= N, until it moves past N or `wait` elapses (`wait` a Go duration, `5s`,
`10m`, `1m30s`; unset or <= 0: `default_query_time`, 5 min; capped at
`max_query_time`, 10 min); then it answers 200 with the current result and index (the
same index on timeout). `?index=0` or no index answers at once. Jitter of up to wait/16
is added only with `jitter=True` (off by default, for predictable tests). A bad
`wait` is 400 `Invalid wait time`, a bad `index` 400 `Invalid index`. `reset_index`
models a snapshot restore: the state store is abandoned, so every blocked query answers
at once, with the now lower index; a client that keeps its old, higher index then
blocks until the index passes it again - the "miss future updates" hazard the doc warns
about.

**ACLs** (`acl_tokens={secret: rules}`, rules `None` = every service, or an iterable of
service-name prefixes as `service_prefix` rules): the token is read from `?token=`,
then `X-Consul-Token`, then `Authorization: Bearer`, in agent/http.go's order. An
unknown token is 403 `ACL not found`. Like Consul, catalog and health reads are not
refused for a missing permission: results the token may not read are filtered out
(with `X-Consul-Results-Filtered-By-ACLs: true` for a non-anonymous token); a request
without a token uses the anonymous token (`anonymous_rules`, default: nothing, as
`default_policy = "deny"`). To see a 403 `Permission denied` use `fail_next(status=403)`.
KV and session endpoints have rules of their own, see below.

**KV store and sessions**, what client-side leader election needs
(https://developer.hashicorp.com/consul/api-docs/kv, .../api-docs/session, the contract
in https://developer.hashicorp.com/consul/docs/dynamic-app-config/sessions and the
recipe in .../dynamic-app-config/sessions/application-leader-election). Each datacenter
(and namespace/partition) has its own store:

* `PUT /v1/session/create`, a JSON body whose keys match case-insensitively (as Go
  decodes them; both Python libraries send `name`, `ttl`, `lockdelay`...): `Name`,
  `Node` (default: the agent's node, `node_name`, which always exists), `LockDelay` (a
  Go duration, or a number of ns; under 1000 ns it is taken as seconds, as agent/
  session_endpoint.go's FixupLockDelay does; default 15s), `Behavior` (`release`, the
  default, or `delete`), `TTL` (a Go duration; "" or 0: none), `Checks`/`NodeChecks`
  (node check IDs: `serfHealth`, the default that any given `Checks` replaces, or
  `service:<id>`), `ServiceChecks` (`[{"ID": ...}]`) → `{"ID": "<uuid4>"}`. Errors are
  500s with the server's words: `Invalid Behavior setting 'x'`, `Session TTL 'x'
  invalid: ...`, `Invalid Session TTL '5000000000', must be between [10s=24h0m0s]`
  (`session_ttl_min`, default 10 s), `Missing node registration`, `Missing check 'x'
  registration`, `Check 'x' is in critical state`; a body that does not decode: 400
  `Request decode failed: ...`.
* `PUT /v1/session/renew/<id>` → `[session]` (the TTL timer restarts); an unknown,
  destroyed or expired session: 404 `Session id '<id>' not found`.
* `PUT /v1/session/destroy/<id>` → `true`, also for an unknown ID (idempotent).
* `GET /v1/session/info/<id>` → `[session]`, or `[]` when there is none (never 404);
  `GET /v1/session/list`, `GET /v1/session/node/<node>`. They block on the sessions
  table index, which moves on create and invalidation (not on renew). A session:
  `ID`, `Name`, `Node`, `LockDelay` (ns), `Behavior`, `TTL` (as given), `NodeChecks`,
  `ServiceChecks`, `Checks` (only if given and not just serfHealth, as 1.7+ does),
  `CreateIndex`, `ModifyIndex`.
* `GET /v1/kv/<key>` → `[{"LockIndex", "Key", "Flags", "Value" (base64; null when
  empty), "Session" (only while locked), "CreateIndex", "ModifyIndex"}]`, or 404 with
  an empty body (index headers still sent) when absent; `?raw`: the value itself, as
  `text/plain`. X-Consul-Index is the key's ModifyIndex; for an absent key the KV
  table index, which moves on every KV write - so a blocking query on an absent key
  wakes on any KV write, as agent/consul/kvs_endpoint.go's does.
* `PUT /v1/kv/<key>` (body: the value, at most 512 KiB, else 413) → `true`/`false`:
  plain (always `true`), `?flags=`, `?cas=<index>` (0: only if absent; else only if
  the ModifyIndex matches), `?acquire=<session>`, `?release=<session>` (more than one
  of cas/acquire/release: 400 `Conflicting flags: ...`).
* `DELETE /v1/kv/<key>` → `true`; with `?cas=`, whether it deleted (an absent key:
  `true`; `cas=0` never deletes).

Locks (agent/consul/state/kvs.go, kvs_endpoint.go): an acquire succeeds when nobody
holds the key (`LockIndex` + 1, `Session` set, value and flags written; a missing key
is created) or the same session does (value written, `LockIndex` unchanged); while
another session holds it: `false`. An unknown session: 500 `invalid session "<id>"`.
A release by the holder clears `Session` (not `LockIndex`) and, as on a real agent,
stores the request body as the value (a release without a body empties it); by anyone
else: `false`. A plain PUT or DELETE ignores locks (they are advisory). A session is
invalidated when destroyed, when its TTL runs out, by `expire_session`, when its node
is deregistered, or when one of its checks goes critical or away (`set_node_health`,
`set_status`, `deregister`...: in that same write). Its keys are then released
(`release`: `Session` cleared, `ModifyIndex` moves) or deleted (`delete`), and each
starts its lock-delay (capped at 60 s): until it ends, an acquire answers `false`
even for a free key (checked before the session, as the leader does). A release
starts no lock-delay. Unchanged writes (same value, flags and holder) write nothing.

**Session time**: TTLs and lock-delays run on the fake's clock, `clock()` (default
`time.monotonic`) plus everything `advance(seconds)` added. `clock=lambda: 0.0` stops
it, so that only `advance` moves it: deterministic tests with real (10 s and up) TTLs.
With a moving clock an expiry is applied by the next request or control call, and
by a blocked query when its timer fires (blocked queries wake for it, taking the clock to
run at real speed, and at least every 0.5 s). A session expires `session_ttl_multiplier` × TTL after
its creation or last renew: 2 by default, as Consul's leader does it (agent/consul/
session_ttl.go, `SessionTTLMultiplier`; the doc only promises "not before the TTL" and
warns sessions "may not be reaped for up to double this TTL"); 1 expires exactly at
the TTL. An expiry is one write per session, dated when its timer fired (its keys'
lock-delays start then). Without a known leader nothing expires and writes are 500
`No cluster leader`; `set_leader(True)` restarts every TTL, as a leader failover does.

**KV and session ACLs**: `kv_rules={secret: key prefixes or None}` gives a token
`key_prefix "<p>" { policy = "write" }` for each prefix (None: every key) and, if it
has any, `session_prefix "" { policy = "write" }`, what the leader-election guide asks
for. A token of `acl_tokens` missing from `kv_rules` gets every key and session if its
service rules are None (a management token), nothing otherwise; `kv_rules` tokens are
known tokens too. Without a token: `anonymous_kv_rules` (default: nothing). A missing
permission is 403 `Permission denied: token with AccessorID '<id>' lacks permission
'key:write' on "<key>"` for KV reads and writes and session writes; session reads are
filtered instead.

Test controls (all thread-safe; every request and state change notifies `wait_for`):
`register`, `deregister`, `deregister_node`, `set_status`, `set_node_health`,
`set_node_address`, `touch`, `index`, `service_index`, `services_index`, `instances`,
KV and sessions `kv_put`, `kv_delete`, `kv_entry`, `kv_index`, `create_session`,
`expire_session`, `session_info`, `sessions`, `lock_delay_remaining`, `advance`, `now`,
faults `reset_index`, `return_empty_once`, `empty_all`, `answer_unchanged_fast`,
`fail_next`, `set_leader`, `go_down`/`come_up`, `hang` (faults apply to every endpoint;
a write answered by `fail_next` writes nothing); observation `requests`, `count`,
`request_counts`, `open_blocking`, `open_blocking_queries`, `generation`, `wait_for`.

Departures from a real agent, on purpose: one index for every datacenter (a real one
has an index per datacenter), no catalog writes over HTTP (tests write with the
controls), no agent endpoints, no node-level ACL rules, no gzip, no streaming backend,
no `X-Consul-ContentHash` (hash-based) blocking, `near` does not sort, no KV
`recurse`/`keys`/`separator` (500 with "fake consul agent:"), no `/v1/txn`, session IDs
are not checked to be UUIDs, no prepared queries to clean up on invalidation.
"""

from __future__ import annotations

import base64
import contextlib
import json
import random
import re
import select
import socket
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, TypeVar
from urllib.parse import parse_qs, quote_plus, unquote, urlsplit

from tests.fakes import consul_objects as co

JSON = dict[str, Any]
T = TypeVar("T")
Rules = tuple[str, ...] | None  # service-name prefixes; None: every service

DEFAULT_QUERY_TIME = 300.0  # seconds, Consul's default_query_time
MAX_QUERY_TIME = 600.0  # seconds, Consul's max_query_time
JITTER_FRACTION = 16  # structs.JitterFraction
LEADER_ADDRESS = "127.0.0.1:8300"

# Sessions and KV (agent/structs, agent/consul/config.go, agent/config defaults).
SESSION_TTL_MULTIPLIER = 2.0  # structs.SessionTTLMultiplier: a TTL timer runs 2 × TTL
SESSION_TTL_MIN = 10.0  # seconds, session_ttl_min
SESSION_TTL_MAX = 86400.0  # seconds, structs.SessionTTLMax
DEFAULT_LOCK_DELAY = 15.0  # seconds
MAX_LOCK_DELAY = 60.0  # seconds, structs.MaxLockDelay
KV_MAX_VALUE_SIZE = 512 * 1024  # bytes, kv_max_value_size
AGENT_NODE = "consul-server-1"
ANONYMOUS_ACCESSOR = "00000000-0000-0000-0000-000000000002"

_POLL = 0.05  # how often a waiter re-checks what nothing notifies (wait_for, a hang)
# How often an idle blocked query checks whether its client went away. Not every
# 50 ms: hundreds of blocked queries (one per service) would spend a core on it.
_GONE_CHECK = 0.5
_DEFAULT = "default"
_ACCESSOR_NS = uuid.UUID("3c2d5f0e-8a4b-4c1e-9f7d-2b6a1e0c9d44")

# Bodies a real agent sends for some statuses; fail_next uses them unless told otherwise.
FAULT_BODIES = {
    400: "Bad request: injected",
    403: "Permission denied",
    404: "",
    429: "rate limit exceeded",
    500: "No cluster leader",
    503: "Service Unavailable",
}


class ConsulHTTPError(Exception):
    """Raised inside the server to answer with a status and a text body."""

    def __init__(self, code: int, body: str, *, meta: bool = False) -> None:
        super().__init__(body)
        self.code = code
        self.body = body
        self.meta = meta  # also send the X-Consul-Index/KnownLeader/LastContact headers


# --- Go durations ---------------------------------------------------------------------

_DURATION_UNITS = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,
    "μs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}
_DURATION_PART = re.compile(r"(\d+\.?\d*|\.\d+)(ns|us|µs|μs|ms|s|m|h)")


def parse_go_duration(text: str) -> float:
    """Seconds in a Go duration (`time.ParseDuration`): "300ms", "5s", "1m30s", "0"."""
    rest = text
    sign = 1.0
    if rest[:1] in ("+", "-"):
        sign = -1.0 if rest[0] == "-" else 1.0
        rest = rest[1:]
    if rest == "0":
        return 0.0
    if not rest:
        raise ValueError(f"invalid duration {text!r}")
    total, pos = 0.0, 0
    while pos < len(rest):
        m = _DURATION_PART.match(rest, pos)
        if m is None:
            raise ValueError(f"invalid duration {text!r}")
        total += float(m.group(1)) * _DURATION_UNITS[m.group(2)]
        pos = m.end()
    return sign * total


def format_go_duration(seconds: float) -> str:
    """A duration as Go's `time.Duration.String()` writes it: "10s", "1m30s", "24h0m0s",
    "1.5s", "500ms"."""
    ns = round(seconds * 1e9)
    sign = "-" if ns < 0 else ""
    ns = abs(ns)
    if ns == 0:
        return "0s"
    if ns < 1_000_000_000:
        for unit, size in (("ms", 1_000_000), ("µs", 1_000), ("ns", 1)):
            if ns >= size:
                return f"{sign}{_decimal(ns, size)}{unit}"
    whole, frac = divmod(ns, 1_000_000_000)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    out = f"{hours}h" if hours else ""
    if hours or minutes:
        out += f"{minutes}m"
    return f"{sign}{out}{_decimal(secs * 1_000_000_000 + frac, 1_000_000_000)}s"


def _decimal(value: int, unit: int) -> str:
    whole, frac = divmod(value, unit)
    if not frac:
        return str(whole)
    digits = len(str(unit)) - 1
    return f"{whole}.{frac:0{digits}d}".rstrip("0")


# --- filter expressions (a go-bexpr subset) --------------------------------------------


class FilterError(ValueError):
    pass


_TOKEN = re.compile(
    r"""\s*(?:
        (?P<op>==|!=|\(|\)|\[|\]|\.)
      | "(?P<dq>(?:[^"\\]|\\.)*)"
      | `(?P<raw>[^`]*)`
      | (?P<num>-?\d+(?:\.\d+)?)(?![\w])
      | (?P<ident>[A-Za-z_][A-Za-z0-9_\-]*)
    )""",
    re.VERBOSE,
)
_KEYWORDS = {"and", "or", "not", "in", "is", "empty", "contains", "matches"}
_MISSING = object()


@dataclass(frozen=True)
class _Tok:
    kind: str  # op, str, num, ident, kw, end
    text: str


def _tokenize(expr: str) -> list[_Tok]:
    out: list[_Tok] = []
    pos = 0
    while pos < len(expr):
        if expr[pos:].strip() == "":
            break
        m = _TOKEN.match(expr, pos)
        if m is None or m.end() == pos:
            raise FilterError(f"1:{pos + 1}: syntax error near {expr[pos : pos + 10]!r}")
        pos = m.end()
        if m.group("op") is not None:
            out.append(_Tok("op", m.group("op")))
        elif m.group("dq") is not None:
            out.append(_Tok("str", json.loads(f'"{m.group("dq")}"')))
        elif m.group("raw") is not None:
            out.append(_Tok("str", m.group("raw")))
        elif m.group("num") is not None:
            out.append(_Tok("num", m.group("num")))
        else:
            word = m.group("ident")
            out.append(_Tok("kw" if word.lower() in _KEYWORDS else "ident", word))
    out.append(_Tok("end", ""))
    return out


Predicate = Callable[[Mapping[str, Any]], bool]


class _FilterParser:
    def __init__(self, expr: str, selectors: frozenset[str]) -> None:
        self.toks = _tokenize(expr)
        self.pos = 0
        self.selectors = selectors

    def peek(self, offset: int = 0) -> _Tok:
        return self.toks[min(self.pos + offset, len(self.toks) - 1)]

    def take(self) -> _Tok:
        tok = self.peek()
        self.pos += 1
        return tok

    def is_kw(self, word: str, offset: int = 0) -> bool:
        tok = self.peek(offset)
        return tok.kind == "kw" and tok.text.lower() == word

    def expect_kw(self, word: str) -> None:
        if not self.is_kw(word):
            raise FilterError(f"expected {word!r}, found {self.peek().text!r}")
        self.take()

    def parse(self) -> Predicate:
        pred = self.parse_or()
        if self.peek().kind != "end":
            raise FilterError(f"unexpected {self.peek().text!r}")
        return pred

    def parse_or(self) -> Predicate:
        parts = [self.parse_and()]
        while self.is_kw("or"):
            self.take()
            parts.append(self.parse_and())
        if len(parts) == 1:
            return parts[0]
        return lambda d: any(p(d) for p in parts)

    def parse_and(self) -> Predicate:
        parts = [self.parse_not()]
        while self.is_kw("and"):
            self.take()
            parts.append(self.parse_not())
        if len(parts) == 1:
            return parts[0]
        return lambda d: all(p(d) for p in parts)

    def parse_not(self) -> Predicate:
        if self.is_kw("not"):
            self.take()
            inner = self.parse_not()
            return lambda d: not inner(d)
        return self.parse_primary()

    def parse_primary(self) -> Predicate:
        tok = self.peek()
        if tok.kind == "op" and tok.text == "(":
            self.take()
            inner = self.parse_or()
            closing = self.take()
            if closing.text != ")":
                raise FilterError(f"expected ')', found {closing.text!r}")
            return inner
        if tok.kind in ("str", "num"):
            value = self.take().text
            negate = False
            if self.is_kw("not"):
                self.take()
                negate = True
            self.expect_kw("in")
            path = self.parse_selector()
            return _negate(negate, lambda d: any(_contains(v, value) for v in _resolve(d, path)))
        if tok.kind == "ident":
            path = self.parse_selector()
            return self.parse_match(path)
        raise FilterError(f"unexpected {tok.text or 'end of expression'!r}")

    def parse_selector(self) -> tuple[str, ...]:
        tok = self.take()
        if tok.kind != "ident":
            raise FilterError(f"expected a selector, found {tok.text!r}")
        if tok.text not in self.selectors:
            raise FilterError(f'Selector "{tok.text}" is not valid')
        path = [tok.text]
        while True:
            nxt = self.peek()
            if nxt.kind == "op" and nxt.text == ".":
                self.take()
                part = self.take()
                if part.kind not in ("ident", "kw", "num"):
                    raise FilterError(f"expected a field after '.', found {part.text!r}")
                path.append(part.text)
            elif nxt.kind == "op" and nxt.text == "[":
                self.take()
                key = self.take()
                if key.kind != "str" or self.take().text != "]":
                    raise FilterError('expected ["key"]')
                path.append(key.text)
            else:
                return tuple(path)

    def parse_value(self) -> str:
        tok = self.take()
        if tok.kind in ("str", "num", "ident"):
            return tok.text
        raise FilterError(f"expected a value, found {tok.text!r}")

    def parse_match(self, path: tuple[str, ...]) -> Predicate:
        tok = self.peek()
        if tok.kind == "op" and tok.text in ("==", "!="):
            self.take()
            value = self.parse_value()
            equal = tok.text == "=="
            if equal:
                return lambda d: any(_equals(v, value) for v in _resolve(d, path))
            return lambda d: not any(_equals(v, value) for v in _resolve(d, path))
        if self.is_kw("is"):
            self.take()
            negate = False
            if self.is_kw("not"):
                self.take()
                negate = True
            self.expect_kw("empty")
            return _negate(negate, lambda d: all(_empty(v) for v in _resolve(d, path)))
        negate = False
        if self.is_kw("not"):
            self.take()
            negate = True
        if self.is_kw("contains"):
            self.take()
            value = self.parse_value()
            return _negate(negate, lambda d: any(_contains(v, value) for v in _resolve(d, path)))
        if self.is_kw("matches"):
            self.take()
            pattern = re.compile(self.parse_value())
            return _negate(
                negate,
                lambda d: any(
                    isinstance(v, str) and pattern.search(v) is not None for v in _resolve(d, path)
                ),
            )
        raise FilterError(
            f"fake consul agent: unsupported match operator {self.peek().text!r} after "
            f"{'.'.join(path)}"
        )


def _negate(negate: bool, pred: Predicate) -> Predicate:
    return (lambda d: not pred(d)) if negate else pred


def _resolve(data: Any, path: tuple[str, ...]) -> list[Any]:
    values = [data]
    for key in path:
        nxt: list[Any] = []
        for value in values:
            items = value if isinstance(value, list) else [value]
            for item in items:
                if isinstance(item, Mapping) and key in item:
                    nxt.append(item[key])
        values = nxt
    return values


def _equals(value: Any, literal: str) -> bool:
    if isinstance(value, bool):
        return literal.lower() in ("true", "false") and value == (literal.lower() == "true")
    if isinstance(value, int | float):
        try:
            return float(value) == float(literal)
        except ValueError:
            return False
    return isinstance(value, str) and value == literal


def _contains(value: Any, literal: str) -> bool:
    if isinstance(value, list):
        return any(_equals(v, literal) for v in value)
    if isinstance(value, Mapping):
        return literal in value
    if isinstance(value, str):
        return literal in value
    return False


def _empty(value: Any) -> bool:
    return value is None or (isinstance(value, list | dict | str) and len(value) == 0)


HEALTH_SELECTORS = frozenset({"Node", "Service", "Checks"})
SERVICE_NODE_SELECTORS = frozenset(
    {
        "ID",
        "Node",
        "Address",
        "Datacenter",
        "TaggedAddresses",
        "NodeMeta",
        "ServiceKind",
        "ServiceID",
        "ServiceName",
        "ServiceTags",
        "ServiceAddress",
        "ServiceTaggedAddresses",
        "ServiceWeights",
        "ServiceMeta",
        "ServicePort",
        "ServiceEnableTagOverride",
        "ServiceProxy",
        "ServiceConnect",
        "Namespace",
        "Partition",
    }
)


def compile_filter(expr: str, selectors: frozenset[str]) -> Predicate:
    """Compile a `?filter=` expression (the subset described in the module doc) against
    the top-level selectors of the filtered shape. Raises `FilterError`."""
    return _FilterParser(expr, selectors).parse()


# --- state ------------------------------------------------------------------------------


@dataclass
class _Node:
    dc: str
    partition: str
    name: str
    address: str
    id: str
    meta: dict[str, str]
    create_index: int
    modify_index: int
    serf_status: str
    serf_create: int
    serf_modify: int


@dataclass
class _Instance:
    dc: str
    partition: str
    namespace: str
    node: str
    id: str
    name: str
    tags: tuple[str, ...]
    address: str
    port: int
    meta: dict[str, str]
    weights: dict[str, int]
    create_index: int
    modify_index: int
    status: str
    output: str
    check_create: int
    check_modify: int

    @property
    def key(self) -> tuple[str, str, str, str, str]:
        return (self.dc, self.partition, self.node, self.namespace, self.id)


@dataclass
class _Session:
    dc: str
    partition: str
    namespace: str
    id: str
    name: str
    node: str
    lock_delay: float  # seconds
    behavior: str
    ttl: str  # as given; "" for none
    ttl_seconds: float  # 0: no TTL
    node_checks: tuple[str, ...]
    service_checks: tuple[tuple[str, str], ...]  # (check ID, namespace)
    legacy_checks: tuple[str, ...]  # `Checks` as given, shown unless just serfHealth
    create_index: int
    modify_index: int
    deadline: float | None  # on the fake's clock; None: no TTL

    @property
    def check_ids(self) -> tuple[str, ...]:
        return self.node_checks + tuple(cid for cid, _ in self.service_checks)


KVKey = tuple[str, str, str, str]  # (dc, partition, namespace, key)


@dataclass
class _KVEntry:
    dc: str
    partition: str
    namespace: str
    key: str
    value: bytes
    flags: int
    session: str  # "" when not locked
    lock_index: int
    create_index: int
    modify_index: int


@dataclass(frozen=True)
class RecordedRequest:
    """One request as the fake saw it.

    `endpoint` is "catalog.services", "catalog.service", "health.service",
    "status.leader", "kv", "session.create", "session.renew", "session.destroy",
    "session.info", "session.list", "session.node" or "unknown"; `service` is the name
    in the path: a service, a KV key, a session ID or a node. `query` keeps every value
    of repeated parameters (`param(name)` gives the last); `body` is what was sent.
    `status` 0 means never answered (the connection was cut or the client went away).
    `outcome`: "immediate", "changed", "timeout", "abandoned" (reset_index), "fast"
    (answer_unchanged_fast), "empty", "fault", "error", "cut", "gone"."""

    method: str
    path: str
    endpoint: str
    service: str | None
    query: Mapping[str, tuple[str, ...]]
    headers: Mapping[str, str]
    token: str | None
    token_source: str | None  # "query", "header", "bearer" or None
    consistency: str  # "default", "stale", "consistent"
    namespace: str | None
    partition: str | None
    index: int | None  # ?index asked for
    wait: float | None  # seconds this blocking query could wait (None: did not block)
    status: int
    response_index: int | None
    outcome: str
    body: bytes = b""

    def param(self, name: str) -> str | None:
        values = self.query.get(name)
        return values[-1] if values else None

    @property
    def blocking(self) -> bool:
        return bool(self.index)


@dataclass(eq=False)
class BlockingQuery:
    """A request that is blocked right now. `seen_generation` is the last state
    generation it re-checked its index against (and still kept blocking)."""

    endpoint: str
    service: str | None
    index: int
    deadline: float
    seen_generation: int


@dataclass
class _Waiter:
    """A blocked query's own wake-up: woken only when something may end its wait, so
    that a change to one service does not wake hundreds of queries (one per service)
    that would find their index unchanged. `epoch`, `abandon`, `empty_epoch`: the
    state it blocked in."""

    q: _Query
    epoch: int
    abandon: int
    empty_epoch: int
    wake: threading.Condition


@dataclass
class _Fault:
    status: int
    body: str
    path_prefix: str | None


@dataclass
class _Query:
    path: str
    endpoint: str
    service: str | None
    dc: str
    namespace: str
    partition: str
    token: str | None
    token_source: str | None
    rules: Rules
    anonymous: bool
    consistency: str
    min_index: int
    wait: float | None
    params: dict[str, list[str]] = field(default_factory=dict)
    kv_rules: Rules = None  # key prefixes the token may read and write; None: every key


class FakeConsulAgent:
    """A threaded Consul agent (HTTP API) on 127.0.0.1 with an in-memory catalog.

    `with FakeConsulAgent() as agent:` starts it; `consul.Consul(host=agent.host,
    port=agent.port)` talks to it. `port` picks the port (0: any free); after
    `go_down()`/`come_up()` the same port serves again with the same state.

    `consul_service=True` registers, like every real cluster, the `consul` service on a
    server node (`node_name`, 127.0.0.1:8300): it shows in `/v1/catalog/services`.
    `node_name` is also the agent's own node, where sessions go by default (it exists
    for them, passing serfHealth, even unregistered: an agent registers itself).

    Sessions and KV: `clock` (seconds, monotonic) and `advance` drive TTLs and
    lock-delays; `session_ttl_multiplier`, `session_ttl_min`, `kv_rules` and
    `anonymous_kv_rules` as in the module doc.
    """

    def __init__(
        self,
        *,
        port: int = 0,
        datacenter: str = "dc1",
        datacenters: Iterable[str] = (),
        enterprise: bool = True,
        consul_service: bool = True,
        acl_tokens: Mapping[str, Iterable[str] | None] | None = None,
        anonymous_rules: Iterable[str] | None = (),
        default_query_time: float = DEFAULT_QUERY_TIME,
        max_query_time: float = MAX_QUERY_TIME,
        jitter: bool = False,
        nil_for_empty: bool = False,
        initial_index: int = 0,
        node_name: str = AGENT_NODE,
        kv_rules: Mapping[str, Iterable[str] | None] | None = None,
        anonymous_kv_rules: Iterable[str] | None = (),
        clock: Callable[[], float] = time.monotonic,
        session_ttl_multiplier: float = SESSION_TTL_MULTIPLIER,
        session_ttl_min: float = SESSION_TTL_MIN,
    ) -> None:
        self._cond_lock = threading.RLock()  # also the blocked queries' wake-ups' lock
        self._cond = threading.Condition(self._cond_lock)
        self.datacenter = datacenter
        self._datacenters = {datacenter, *datacenters}
        self.enterprise = enterprise
        self.node_name = node_name
        self._kv_acl: dict[str, Rules] = {
            tok: (None if r is None else tuple(r)) for tok, r in (kv_rules or {}).items()
        }
        self._acl: dict[str, Rules] | None = None
        if acl_tokens is not None or kv_rules is not None:
            self._acl = {
                tok: (None if r is None else tuple(r)) for tok, r in (acl_tokens or {}).items()
            }
            for tok in self._kv_acl:
                self._acl.setdefault(tok, ())
        self._anonymous: Rules = None if anonymous_rules is None else tuple(anonymous_rules)
        self._anonymous_kv: Rules = (
            None if anonymous_kv_rules is None else tuple(anonymous_kv_rules)
        )
        self._clock = clock
        self._clock_offset = 0.0
        self.session_ttl_multiplier = session_ttl_multiplier
        self.session_ttl_min = session_ttl_min
        self._sessions: dict[str, _Session] = {}
        self._kv: dict[KVKey, _KVEntry] = {}
        self._lock_delays: dict[KVKey, float] = {}  # key → end of its lock-delay
        self.default_query_time = default_query_time
        self.max_query_time = max_query_time
        self.jitter = jitter
        self.nil_for_empty = nil_for_empty
        self._raft = initial_index
        self._tables: dict[tuple[str, ...], int] = {}
        self._nodes: dict[tuple[str, str, str], _Node] = {}
        self._instances: dict[tuple[str, str, str, str, str], _Instance] = {}
        # (dc, partition, service name) → instances per namespace: a service's index is
        # read on every change by every blocked query, so not by a scan of all instances.
        self._live: dict[tuple[str, str, str], Counter[str]] = {}
        self._generation = 0
        self._abandon = 0
        # faults
        self._empty_once: Counter[str] = Counter()
        self._empty_all = False
        self._empty_all_catalog = False
        self._empty_epoch = 0
        self._fast_unchanged = 0
        self._faults: list[_Fault] = []
        self._hang = False
        self._known_leader = True
        self._last_contact_ms = 0
        # observation
        self._requests: list[RecordedRequest] = []
        self._blocked: list[BlockingQuery] = []
        self._waiters: list[_Waiter] = []  # the blocked queries' wake-ups
        # serving
        self._connections: set[socket.socket] = set()
        self._port = port
        self._httpd: _Server | None = None
        self._thread: threading.Thread | None = None
        self._epoch = 0
        self._started = False
        if consul_service:
            self.register(node_name, "127.0.0.1", "consul", port=8300, dc=datacenter)

    # --- lifecycle ---------------------------------------------------------------------

    def start(self) -> FakeConsulAgent:
        with self._cond:
            if self._started:
                return self
            self._started = True
        self.come_up()
        return self

    def stop(self) -> None:
        with self._cond:
            if not self._started:
                return
            self._started = False
            self._hang = False
        self.go_down()

    def __enter__(self) -> FakeConsulAgent:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def host(self) -> str:
        return "127.0.0.1"

    @property
    def port(self) -> int:
        return self._port

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._port}"

    @property
    def is_up(self) -> bool:
        with self._cond:
            return self._httpd is not None

    def go_down(self) -> None:
        """Stop listening (connections to the port are refused) and cut every open
        connection, blocked queries and idle keep-alive ones alike. State is kept."""
        with self._cond:
            httpd, thread = self._httpd, self._thread
            if httpd is None:
                return
            self._httpd = self._thread = None
            self._epoch += 1
            connections = list(self._connections)
            self._notify()
        httpd.shutdown()
        httpd.server_close()
        for conn in connections:
            _shutdown(conn)
        if thread is not None:
            thread.join(timeout=5)

    def come_up(self) -> None:
        """Listen again on the same port, with the same state."""
        with self._cond:
            if self._httpd is not None:
                return
            httpd = _Server(("127.0.0.1", self._port), _Handler)
            httpd.agent = self
            httpd.epoch = self._epoch
            self._port = httpd.server_address[1]
            self._httpd = httpd
            self._thread = threading.Thread(
                target=httpd.serve_forever,
                kwargs={"poll_interval": 0.05},
                name=f"fake-consul-agent:{self._port}",
                daemon=True,
            )
            self._thread.start()
            self._notify()

    # --- catalog controls --------------------------------------------------------------

    def register(
        self,
        node: str,
        address: str,
        service: str,
        service_id: str | None = None,
        *,
        port: int = 8080,
        tags: Iterable[str] = (),
        meta: Mapping[str, str] | None = None,
        service_address: str = "",
        weights: Mapping[str, int] | None = None,
        node_meta: Mapping[str, str] | None = None,
        status: str = co.PASSING,
        output: str = "",
        dc: str | None = None,
        namespace: str = _DEFAULT,
        partition: str = _DEFAULT,
    ) -> int:
        """Register (or re-register: an upsert) a service instance on a node, creating
        the node (with a passing serfHealth check) if needed, in one write. The instance
        gets one service check (`service:<id>`) with `status`. `service_id` defaults to
        the service name, as an agent does (IDs are unique per node). Returns the index of
        the write (the current index if nothing changed)."""
        dc = dc or self.datacenter
        _check_status(status)
        self._check_tenancy(namespace, partition)
        sid = service_id or service
        new_weights = dict(weights) if weights is not None else {"Passing": 1, "Warning": 1}
        with self._cond:
            self._datacenters.add(dc)
            nkey = (dc, partition, node)
            n = self._nodes.get(nkey)
            merged_meta = {"consul-network-segment": "", **(node_meta or {})}
            node_new = n is None
            node_changed = n is not None and (
                n.address != address or (node_meta is not None and n.meta != merged_meta)
            )
            ikey = (dc, partition, node, namespace, sid)
            inst = self._instances.get(ikey)
            fields = {
                "tags": tuple(tags),
                "address": service_address,
                "port": port,
                "meta": dict(meta or {}),
                "weights": new_weights,
            }
            renamed = inst is not None and inst.name != service
            inst_changed = inst is not None and any(
                getattr(inst, k) != v for k, v in fields.items()
            )
            status_changed = inst is not None and (inst.status, inst.output) != (status, output)
            nothing_new = not (node_new or node_changed or inst is None or renamed)
            if nothing_new and not (inst_changed or status_changed):
                return self._raft
            idx = self._next()
            if n is None:
                n = _Node(
                    dc=dc,
                    partition=partition,
                    name=node,
                    address=address,
                    id=co.node_id(node, dc),
                    meta=merged_meta,
                    create_index=idx,
                    modify_index=idx,
                    serf_status=co.PASSING,
                    serf_create=idx,
                    serf_modify=idx,
                )
                self._nodes[nkey] = n
                self._bump(dc, partition, "nodes", idx)
                self._bump(dc, partition, "checks", idx)
            elif node_changed:
                n.address = address
                if node_meta is not None:
                    n.meta = merged_meta
                n.modify_index = idx
                self._bump(dc, partition, "nodes", idx)
                self._bump_node_services(n, idx)
            if inst is not None and renamed:
                self._remove_instance(inst, idx)
                inst = None
            if inst is None:
                inst = _Instance(
                    dc=dc,
                    partition=partition,
                    namespace=namespace,
                    node=node,
                    id=sid,
                    name=service,
                    tags=tuple(tags),
                    address=service_address,
                    port=port,
                    meta=dict(meta or {}),
                    weights=new_weights,
                    create_index=idx,
                    modify_index=idx,
                    status=status,
                    output=output,
                    check_create=idx,
                    check_modify=idx,
                )
                self._instances[ikey] = inst
                self._live.setdefault((dc, partition, service), Counter())[inst.namespace] += 1
                self._bump(dc, partition, "services", idx)
                self._bump(dc, partition, "checks", idx)
                self._bump_service(inst, idx)
            else:
                if inst_changed:
                    for k, v in fields.items():
                        setattr(inst, k, v)
                    inst.modify_index = idx
                    self._bump(dc, partition, "services", idx)
                    self._bump_service(inst, idx)
                if status_changed:
                    inst.status, inst.output = status, output
                    inst.check_modify = idx
                    self._bump(dc, partition, "checks", idx)
                    self._bump_service(inst, idx)
            self._revalidate_sessions(dc, partition, node, idx)
            self._changed()
            return idx

    def deregister(
        self,
        service_id: str,
        *,
        node: str | None = None,
        dc: str | None = None,
        namespace: str | None = None,
        partition: str | None = None,
    ) -> int:
        """Remove one service instance (and its check). Raises KeyError if none matches,
        ValueError if several do (name the node). Returns the write's index."""
        with self._cond:
            inst = self._find(
                service_id, node=node, dc=dc, namespace=namespace, partition=partition
            )
            idx = self._next()
            self._remove_instance(inst, idx)
            self._revalidate_sessions(inst.dc, inst.partition, inst.node, idx)
            self._changed()
            return idx

    def deregister_node(
        self, node: str, *, dc: str | None = None, partition: str = _DEFAULT
    ) -> int:
        """Remove a node with every service instance on it, in one write."""
        dc = dc or self.datacenter
        with self._cond:
            n = self._nodes.get((dc, partition, node))
            if n is None:
                raise KeyError(f"no node {node!r} in {dc}/{partition}")
            idx = self._next()
            on_node = [
                i
                for i in self._instances.values()
                if (i.dc, i.partition, i.node) == (dc, partition, node)
            ]
            for inst in on_node:
                self._remove_instance(inst, idx)
            del self._nodes[(dc, partition, node)]
            self._bump(dc, partition, "nodes", idx)
            self._bump(dc, partition, "checks", idx)
            self._revalidate_sessions(dc, partition, node, idx, node_gone=True)
            self._changed()
            return idx

    def set_status(
        self,
        service_id: str,
        status: str,
        *,
        output: str | None = None,
        node: str | None = None,
        dc: str | None = None,
        namespace: str | None = None,
        partition: str | None = None,
    ) -> int:
        """Set the status ("passing", "warning", "critical") of an instance's service
        check. A status (and output) it already has writes nothing."""
        _check_status(status)
        with self._cond:
            inst = self._find(
                service_id, node=node, dc=dc, namespace=namespace, partition=partition
            )
            new_output = inst.output if output is None else output
            if (inst.status, inst.output) == (status, new_output):
                return self._raft
            idx = self._next()
            inst.status, inst.output, inst.check_modify = status, new_output, idx
            self._bump(inst.dc, inst.partition, "checks", idx)
            self._bump_service(inst, idx)
            self._revalidate_sessions(inst.dc, inst.partition, inst.node, idx)
            self._changed()
            return idx

    def set_node_health(
        self, node: str, status: str, *, dc: str | None = None, partition: str = _DEFAULT
    ) -> int:
        """Set a node's serfHealth check: every instance on the node is affected (with
        `passing=1` a node that is not passing drops all its instances)."""
        _check_status(status)
        with self._cond:
            n = self._node(node, dc, partition)
            if n.serf_status == status:
                return self._raft
            idx = self._next()
            n.serf_status, n.serf_modify = status, idx
            self._bump(n.dc, n.partition, "checks", idx)
            self._bump_node_services(n, idx)
            self._revalidate_sessions(n.dc, n.partition, n.name, idx)
            self._changed()
            return idx

    def set_node_address(
        self, node: str, address: str, *, dc: str | None = None, partition: str = _DEFAULT
    ) -> int:
        """Change a node's address (instances without their own Address move with it)."""
        with self._cond:
            n = self._node(node, dc, partition)
            if n.address == address:
                return self._raft
            idx = self._next()
            n.address, n.modify_index = address, idx
            self._bump(n.dc, n.partition, "nodes", idx)
            self._bump_node_services(n, idx)
            self._changed()
            return idx

    def touch(
        self,
        service: str,
        *,
        dc: str | None = None,
        namespace: str = _DEFAULT,
        partition: str = _DEFAULT,
    ) -> int:
        """An idempotent write: the service's index moves, its result does not (blocked
        queries on it answer with the same body and a higher index)."""
        dc = dc or self.datacenter
        with self._cond:
            if not any(
                (i.dc, i.partition, i.namespace, i.name) == (dc, partition, namespace, service)
                for i in self._instances.values()
            ):
                raise KeyError(f"no instance of {service!r}")
            idx = self._next()
            self._tables[(dc, partition, "service", namespace, service)] = idx
            self._changed()
            return idx

    # --- KV and session controls --------------------------------------------------------

    @property
    def now(self) -> float:
        """The fake's clock (seconds): `clock()` plus everything `advance` added."""
        with self._cond:
            return self._clock() + self._clock_offset

    def advance(self, seconds: float) -> None:
        """Move the fake's clock forward. Sessions whose TTL timer ran out are
        invalidated at once, each in its own write dated when its timer fired."""
        if seconds < 0:
            raise ValueError("the clock only moves forward")
        with self._cond:
            self._clock_offset += seconds
            self._reap_sessions()
            self._changed()

    def create_session(
        self,
        name: str = "",
        *,
        node: str | None = None,
        ttl: float | str | None = None,
        behavior: str = "release",
        lock_delay: float | str = DEFAULT_LOCK_DELAY,
        checks: Iterable[str] = (co.SERF_CHECK_ID,),
        dc: str | None = None,
        namespace: str = _DEFAULT,
        partition: str = _DEFAULT,
    ) -> str:
        """Create a session as `PUT /v1/session/create` would (seconds or Go durations
        for `ttl` and `lock_delay`); returns its ID. What the endpoint would refuse
        raises `ConsulHTTPError` with the status and body it would answer."""
        spec: dict[str, Any] = {
            "name": name,
            "behavior": behavior,
            "checks": list(checks),
            "lockdelay": lock_delay
            if isinstance(lock_delay, str)
            else format_go_duration(lock_delay),
        }
        if node is not None:
            spec["node"] = node
        if ttl is not None:
            spec["ttl"] = ttl if isinstance(ttl, str) else format_go_duration(ttl)
        with self._cond:
            self._check_tenancy(namespace, partition)
            self._reap_sessions()
            return self._create_session(dc or self.datacenter, partition, namespace, spec)

    def expire_session(self, session_id: str) -> int:
        """Invalidate a session now, as its TTL running out would: its keys are released
        (or deleted) and their lock-delay starts now. KeyError if there is no such
        session. Returns the write's index."""
        with self._cond:
            self._reap_sessions()
            s = self._sessions.get(session_id)
            if s is None:
                raise KeyError(f"no session {session_id!r}")
            idx = self._next()
            self._invalidate_session(s, idx, self.now)
            self._changed()
            return idx

    def session_info(self, session_id: str) -> JSON | None:
        """The session as `/v1/session/info` shows it, None if there is none."""
        with self._cond:
            self._reap_sessions()
            s = self._sessions.get(session_id)
            return None if s is None else self._session_json(s)

    @property
    def sessions(self) -> list[JSON]:
        """Every live session (all datacenters), ordered by ID."""
        with self._cond:
            self._reap_sessions()
            return [self._session_json(self._sessions[sid]) for sid in sorted(self._sessions)]

    def kv_put(
        self,
        key: str,
        value: bytes | str = b"",
        *,
        flags: int = 0,
        cas: int | None = None,
        acquire: str | None = None,
        release: str | None = None,
        dc: str | None = None,
        namespace: str = _DEFAULT,
        partition: str = _DEFAULT,
    ) -> bool:
        """What `PUT /v1/kv/<key>` does (without ACLs or leader): plain, `cas`,
        `acquire` (lock-delay included) or `release`. Returns its `true`/`false`."""
        data = value.encode() if isinstance(value, str) else value
        with self._cond:
            self._check_tenancy(namespace, partition)
            self._reap_sessions()
            t = (dc or self.datacenter, partition, namespace, key)
            return self._kv_put(t, data, flags, cas=cas, acquire=acquire, release=release)

    def kv_delete(
        self,
        key: str,
        *,
        cas: int | None = None,
        dc: str | None = None,
        namespace: str = _DEFAULT,
        partition: str = _DEFAULT,
    ) -> bool:
        """What `DELETE /v1/kv/<key>` does (locks are advisory: a held key goes too)."""
        with self._cond:
            self._reap_sessions()
            return self._kv_delete((dc or self.datacenter, partition, namespace, key), cas)

    def kv_entry(
        self,
        key: str,
        *,
        dc: str | None = None,
        namespace: str = _DEFAULT,
        partition: str = _DEFAULT,
    ) -> JSON | None:
        """The entry as `GET /v1/kv/<key>` shows it (`Value` base64), None if absent."""
        with self._cond:
            self._reap_sessions()
            entry = self._kv.get((dc or self.datacenter, partition, namespace, key))
            return None if entry is None else self._kv_json(entry)

    def kv_index(
        self,
        key: str,
        *,
        dc: str | None = None,
        namespace: str = _DEFAULT,
        partition: str = _DEFAULT,
    ) -> int:
        """The X-Consul-Index `GET /v1/kv/<key>` answers now."""
        with self._cond:
            self._reap_sessions()
            return max(1, self._kv_index((dc or self.datacenter, partition, namespace, key)))

    def lock_delay_remaining(
        self,
        key: str,
        *,
        dc: str | None = None,
        namespace: str = _DEFAULT,
        partition: str = _DEFAULT,
    ) -> float:
        """Seconds (on the fake's clock) until `key` may be acquired again; 0 if now."""
        with self._cond:
            self._reap_sessions()
            until = self._lock_delays.get((dc or self.datacenter, partition, namespace, key))
            return 0.0 if until is None else max(0.0, until - self.now)

    # --- state observation -------------------------------------------------------------

    @property
    def index(self) -> int:
        """The raft index: that of the last write."""
        with self._cond:
            return self._raft

    @property
    def generation(self) -> int:
        """Bumped on every state change and fault toggle (what blocked queries re-check)."""
        with self._cond:
            return self._generation

    def service_index(
        self,
        service: str,
        *,
        dc: str | None = None,
        namespace: str = _DEFAULT,
        partition: str = _DEFAULT,
    ) -> int:
        """The X-Consul-Index `/v1/health/service/<service>` answers now."""
        with self._cond:
            return max(1, self._service_index(dc or self.datacenter, partition, namespace, service))

    def services_index(self, *, dc: str | None = None, partition: str = _DEFAULT) -> int:
        """The X-Consul-Index `/v1/catalog/services` answers now."""
        with self._cond:
            return max(1, self._tables.get((dc or self.datacenter, partition, "services"), 0))

    def instances(self, service: str | None = None) -> list[JSON]:
        """Health entries (as `/v1/health/service` would send them, unfiltered) of every
        instance, or of one service, in every datacenter and namespace."""
        with self._cond:
            return [
                self._entry(i)
                for i in self._sorted_instances()
                if service is None or i.name == service
            ]

    # --- faults --------------------------------------------------------------------------

    def reset_index(self, value: int) -> None:
        """A raft snapshot restore: the index goes back to `value` (every table and object
        index is clamped to it, the next write is `value + 1`) and the state store is
        abandoned, so every blocked query answers at once with the lower index."""
        if value < 0:
            raise ValueError("index must be >= 0")
        with self._cond:
            self._raft = value
            for key, idx in list(self._tables.items()):
                self._tables[key] = min(idx, value)
            for n in self._nodes.values():
                n.create_index = min(n.create_index, value)
                n.modify_index = min(n.modify_index, value)
                n.serf_create = min(n.serf_create, value)
                n.serf_modify = min(n.serf_modify, value)
            for i in self._instances.values():
                i.create_index = min(i.create_index, value)
                i.modify_index = min(i.modify_index, value)
                i.check_create = min(i.check_create, value)
                i.check_modify = min(i.check_modify, value)
            for s in self._sessions.values():
                s.create_index = min(s.create_index, value)
                s.modify_index = min(s.modify_index, value)
            for e in self._kv.values():
                e.create_index = min(e.create_index, value)
                e.modify_index = min(e.modify_index, value)
            self._abandon += 1
            self._changed()

    def return_empty_once(self, service: str) -> None:
        """The next answer for `service` (health/service or catalog/service) is 200 `[]`
        with the current index; a query blocked on it now is answered so at once."""
        with self._cond:
            self._empty_once[service] += 1
            self._changed()

    def empty_all(self, on: bool, *, catalog_services: bool = False) -> None:
        """While on, every health/service and catalog/service answer is 200 `[]` (and with
        `catalog_services` every catalog/services answer `{}`), index unchanged - the
        glitch seen around leader elections. Turning it on answers blocked queries at
        once; turning it off wakes nothing (a client that trusted `[]` stays wrong until
        the index moves)."""
        with self._cond:
            self._empty_all = on
            self._empty_all_catalog = on and catalog_services
            if on:
                self._empty_epoch += 1
            self._changed()

    def answer_unchanged_fast(self, n: int) -> None:
        """The next `n` blocking queries (those blocked now included) answer at once with
        the unchanged index and result: the loop that "returns unchanged quickly"."""
        with self._cond:
            self._fast_unchanged += n
            self._changed()

    def fail_next(
        self,
        n: int = 1,
        status: int = 500,
        body: str | None = None,
        *,
        path_prefix: str | None = None,
    ) -> None:
        """The next `n` requests (whose path starts with `path_prefix`, if given; blocked
        queries included, answered at once) get `status` with a text body (by default
        what Consul sends: 500 "No cluster leader", 403 "Permission denied", ...)."""
        text = body if body is not None else FAULT_BODIES.get(status, "injected failure")
        with self._cond:
            self._faults.extend(_Fault(status, text, path_prefix) for _ in range(n))
            self._changed()

    def set_leader(self, known: bool, *, last_contact_ms: int = 0) -> None:
        """Without a known leader, default and consistent reads are 500 "No cluster
        leader"; `?stale` reads are served with `X-Consul-KnownLeader: false` and
        `X-Consul-LastContact: last_contact_ms`. Writes (KV, sessions) are 500 and no
        session expires; a leader regained restarts every session's TTL, as a new
        leader does (initializeSessionTimers)."""
        with self._cond:
            self._reap_sessions()  # timers that fired while there was a leader
            if known and not self._known_leader:
                for s in self._sessions.values():
                    self._restart_ttl(s)
            self._known_leader = known
            self._last_contact_ms = last_contact_ms
            self._changed()

    def hang(self, on: bool) -> None:
        """While on, new requests are accepted and read but never answered (they are
        answered normally once it is turned off, if the client still waits)."""
        with self._cond:
            self._hang = on
            self._changed()

    # --- request observation -------------------------------------------------------------

    @property
    def requests(self) -> list[RecordedRequest]:
        with self._cond:
            return list(self._requests)

    def clear_requests(self) -> None:
        with self._cond:
            self._requests.clear()

    @property
    def request_counts(self) -> Counter[tuple[str, str | None]]:
        """Requests so far by (endpoint, service)."""
        with self._cond:
            return Counter((r.endpoint, r.service) for r in self._requests)

    def count(
        self,
        endpoint: str | None = None,
        service: str | None = None,
        *,
        status: int | None = None,
        blocking: bool | None = None,
    ) -> int:
        """How many (finished) requests match."""
        with self._cond:
            return sum(
                1
                for r in self._requests
                if (endpoint is None or r.endpoint == endpoint)
                and (service is None or r.service == service)
                and (status is None or r.status == status)
                and (blocking is None or r.blocking == blocking)
            )

    @property
    def open_blocking(self) -> int:
        with self._cond:
            return len(self._blocked)

    @property
    def open_blocking_queries(self) -> list[BlockingQuery]:
        with self._cond:
            return [
                BlockingQuery(q.endpoint, q.service, q.index, q.deadline, q.seen_generation)
                for q in self._blocked
            ]

    def open_blocking_for(self, endpoint: str, service: str | None = None) -> int:
        with self._cond:
            return sum(
                1
                for q in self._blocked
                if q.endpoint == endpoint and (service is None or q.service == service)
            )

    def wait_for(self, predicate: Callable[[], T], timeout: float = 5.0) -> T:
        """Wait until `predicate()` is truthy and return its value (the last, falsy, value
        on timeout). Woken by every request and state change; also re-checked every 50 ms
        so that predicates over client-side state work too."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                self._reap_sessions()
                result = predicate()
                remaining = deadline - time.monotonic()
                if result or remaining <= 0:
                    return result
                self._cond.wait(min(remaining, _POLL))

    # --- store internals (callers hold the lock) ---------------------------------------

    def _check_tenancy(self, namespace: str, partition: str) -> None:
        if not self.enterprise and (namespace != _DEFAULT or partition != _DEFAULT):
            raise ValueError("namespaces and partitions need enterprise=True")

    def _next(self) -> int:
        self._raft += 1
        return self._raft

    def _changed(self) -> None:
        self._generation += 1
        self._notify()

    def _notify(self) -> None:
        """Wake every waiter on the state (wait_for, a hang) and the blocked queries
        whose wait the state may now end."""
        self._cond.notify_all()
        for w in self._waiters:
            if self._block_ends(w) is not None:
                w.wake.notify()

    def _bump(self, dc: str, partition: str, table: str, idx: int) -> None:
        self._tables[(dc, partition, table)] = idx

    def _bump_service(self, inst: _Instance, idx: int) -> None:
        self._tables[(inst.dc, inst.partition, "service", inst.namespace, inst.name)] = idx

    def _bump_node_services(self, n: _Node, idx: int) -> None:
        for inst in self._instances.values():
            if (inst.dc, inst.partition, inst.node) == (n.dc, n.partition, n.name):
                self._bump_service(inst, idx)

    def _remove_instance(self, inst: _Instance, idx: int) -> None:
        del self._instances[inst.key]
        service = (inst.dc, inst.partition, inst.name)
        live = self._live[service]
        live[inst.namespace] -= 1
        others_left = live[inst.namespace] > 0
        if not others_left:
            del live[inst.namespace]
            if not live:
                del self._live[service]
        self._bump(inst.dc, inst.partition, "services", idx)
        self._bump(inst.dc, inst.partition, "checks", idx)
        if others_left:
            self._bump_service(inst, idx)
        else:
            # Consul garbage-collects service.<name> and records the extinction.
            self._tables.pop((inst.dc, inst.partition, "service", inst.namespace, inst.name), None)
            self._bump(inst.dc, inst.partition, "extinction", idx)

    def _find(
        self,
        service_id: str,
        *,
        node: str | None,
        dc: str | None,
        namespace: str | None,
        partition: str | None,
    ) -> _Instance:
        found = [
            i
            for i in self._instances.values()
            if i.id == service_id
            and (node is None or i.node == node)
            and (dc is None or i.dc == dc)
            and (namespace is None or i.namespace == namespace)
            and (partition is None or i.partition == partition)
        ]
        if not found:
            raise KeyError(f"no service instance {service_id!r}")
        if len(found) > 1:
            where = sorted(f"{i.dc}/{i.node}/{i.namespace}" for i in found)
            raise ValueError(f"service ID {service_id!r} is on several nodes: {where}")
        return found[0]

    def _node(self, node: str, dc: str | None, partition: str) -> _Node:
        n = self._nodes.get((dc or self.datacenter, partition, node))
        if n is None:
            raise KeyError(f"no node {node!r}")
        return n

    def _service_index(self, dc: str, partition: str, namespace: str, name: str) -> int:
        counts = self._live.get((dc, partition, name), Counter())
        live = list(counts) if namespace == "*" else [namespace] if counts[namespace] else []
        if live:
            return max(self._tables.get((dc, partition, "service", ns, name), 0) for ns in live)
        extinct = self._tables.get((dc, partition, "extinction"))
        if extinct is not None:
            return extinct
        return max(self._tables.get((dc, partition, t), 0) for t in ("nodes", "services", "checks"))

    def _sorted_instances(self) -> list[_Instance]:
        return sorted(self._instances.values(), key=lambda i: (i.dc, i.node, i.namespace, i.id))

    def _node_json(self, n: _Node) -> JSON:
        return co.node(
            n.name,
            n.address,
            datacenter=n.dc,
            id=n.id,
            meta=n.meta,
            create_index=n.create_index,
            modify_index=n.modify_index,
            partition=n.partition if self.enterprise else None,
        )

    def _entry(self, inst: _Instance) -> JSON:
        n = self._nodes[(inst.dc, inst.partition, inst.node)]
        ns = inst.namespace if self.enterprise else None
        ap = inst.partition if self.enterprise else None
        nil = self.nil_for_empty
        service_json = co.service(
            inst.name,
            id=inst.id,
            tags=inst.tags,
            address=inst.address,
            port=inst.port,
            meta=inst.meta,
            weights=inst.weights,
            create_index=inst.create_index,
            modify_index=inst.modify_index,
            namespace=ns,
            partition=ap,
            nil_for_empty=nil,
        )
        checks = [
            co.serf_check(
                n.name,
                n.serf_status,
                create_index=n.serf_create,
                modify_index=n.serf_modify,
                namespace=_DEFAULT if self.enterprise else None,
                partition=ap,
                nil_for_empty=nil,
            ),
            co.service_check(
                n.name,
                inst.id,
                inst.name,
                inst.status,
                service_tags=inst.tags,
                output=inst.output,
                create_index=inst.check_create,
                modify_index=inst.check_modify,
                namespace=ns,
                partition=ap,
                nil_for_empty=nil,
            ),
        ]
        return co.health_entry(self._node_json(n), service_json, checks)

    # --- KV and session internals (callers hold the lock) -------------------------------

    def _restart_ttl(self, s: _Session) -> None:
        if s.ttl_seconds > 0:
            s.deadline = self.now + s.ttl_seconds * self.session_ttl_multiplier

    def _reap_sessions(self) -> None:
        """Invalidate every session whose TTL timer has fired (the leader's timers: none
        without a known leader), one write each, in the order they fired."""
        if not self._known_leader or not self._sessions:
            return
        now = self.now
        due = sorted(
            (s for s in self._sessions.values() if s.deadline is not None and s.deadline <= now),
            key=lambda s: (s.deadline, s.id),
        )
        for s in due:
            assert s.deadline is not None
            self._invalidate_session(s, self._next(), s.deadline)
        if due:
            self._changed()

    def _invalidate_session(self, s: _Session, idx: int, at: float) -> None:
        """state/session.go deleteSessionTxn: the session goes; its keys are released or
        deleted in the same write, and their lock-delay (capped at 60 s) starts at `at`."""
        del self._sessions[s.id]
        self._bump(s.dc, s.partition, "sessions", idx)
        delay = min(s.lock_delay, MAX_LOCK_DELAY)
        for t, entry in list(self._kv.items()):
            if entry.session != s.id:
                continue
            if s.behavior == "delete":
                del self._kv[t]
            else:
                entry.session, entry.modify_index = "", idx
            self._bump(entry.dc, entry.partition, "kvs", idx)
            if delay > 0:
                self._lock_delays[t] = at + delay

    def _revalidate_sessions(
        self, dc: str, partition: str, node: str, idx: int, *, node_gone: bool = False
    ) -> None:
        """After a catalog write on `node`: invalidate (in that write) the sessions on it
        whose node went away or one of whose checks is now critical or gone."""
        for sid in sorted(self._sessions):
            s = self._sessions[sid]
            if (s.dc, s.partition, s.node) != (dc, partition, node):
                continue
            statuses = [self._node_check_status(dc, partition, node, c) for c in s.check_ids]
            if node_gone or any(st is None or st == co.CRITICAL for st in statuses):
                self._invalidate_session(s, idx, self.now)

    def _node_exists(self, dc: str, partition: str, node: str) -> bool:
        return (dc, partition, node) in self._nodes or node == self.node_name

    def _node_check_status(self, dc: str, partition: str, node: str, check_id: str) -> str | None:
        """The status of a check on a node (serfHealth or service:<id>), None if none."""
        n = self._nodes.get((dc, partition, node))
        if check_id == co.SERF_CHECK_ID:
            if n is not None:
                return n.serf_status
            return co.PASSING if node == self.node_name else None
        prefix = "service:"
        if check_id.startswith(prefix):
            for inst in self._instances.values():
                if (inst.dc, inst.partition, inst.node) == (dc, partition, node) and (
                    inst.id == check_id[len(prefix) :]
                ):
                    return inst.status
        return None

    def _create_session(self, dc: str, partition: str, namespace: str, spec: JSON) -> str:
        """agent/consul/session_endpoint.go Apply + state/session.go sessionCreateTxn, on
        a decoded body (lower-cased keys)."""
        behavior = spec.get("behavior") or "release"
        if behavior not in ("release", "delete"):
            raise ConsulHTTPError(500, f"Invalid Behavior setting '{behavior}'")
        ttl = spec.get("ttl") or ""
        ttl_seconds = 0.0
        if ttl:
            try:
                ttl_seconds = parse_go_duration(ttl)
            except ValueError:
                raise ConsulHTTPError(
                    500, f"Session TTL '{ttl}' invalid: time: invalid duration \"{ttl}\""
                ) from None
            if ttl_seconds != 0 and not (self.session_ttl_min <= ttl_seconds <= SESSION_TTL_MAX):
                raise ConsulHTTPError(
                    500,
                    f"Invalid Session TTL '{round(ttl_seconds * 1e9)}', must be between "
                    f"[{format_go_duration(self.session_ttl_min)}="
                    f"{format_go_duration(SESSION_TTL_MAX)}]",
                )
        lock_delay = _lock_delay_seconds(spec.get("lockdelay", DEFAULT_LOCK_DELAY * 1e9))
        node = spec.get("node") or self.node_name
        legacy = tuple(spec["checks"] or ()) if "checks" in spec else (co.SERF_CHECK_ID,)
        node_checks = tuple(dict.fromkeys(legacy + tuple(spec.get("nodechecks") or ())))
        service_checks = tuple(
            (str(c.get("id", "")), str(c.get("namespace", "")) or namespace)
            for c in spec.get("servicechecks") or ()
        )
        if not self._node_exists(dc, partition, node):
            raise ConsulHTTPError(500, "Missing node registration")
        for cid in node_checks + tuple(cid for cid, _ in service_checks):
            status = self._node_check_status(dc, partition, node, cid)
            if status is None:
                raise ConsulHTTPError(500, f"Missing check '{cid}' registration")
            if status == co.CRITICAL:
                raise ConsulHTTPError(500, f"Check '{cid}' is in {status} state")
        idx = self._next()
        session = _Session(
            dc=dc,
            partition=partition,
            namespace=namespace,
            id=str(uuid.uuid4()),
            name=str(spec.get("name") or ""),
            node=node,
            lock_delay=lock_delay,
            behavior=behavior,
            ttl=ttl,
            ttl_seconds=max(ttl_seconds, 0.0),
            node_checks=node_checks,
            service_checks=service_checks,
            legacy_checks=legacy,
            create_index=idx,
            modify_index=idx,
            deadline=None,
        )
        self._restart_ttl(session)
        self._sessions[session.id] = session
        self._bump(dc, partition, "sessions", idx)
        self._changed()
        return session.id

    def _session_json(self, s: _Session) -> JSON:
        out: JSON = {
            "ID": s.id,
            "Name": s.name,
            "Node": s.node,
            "LockDelay": round(s.lock_delay * 1e9),
            "Behavior": s.behavior,
            "TTL": s.ttl,
            "NodeChecks": list(s.node_checks) or None,
            "ServiceChecks": [
                {"ID": cid, "Namespace": ns} if self.enterprise else {"ID": cid}
                for cid, ns in s.service_checks
            ]
            or None,
        }
        if s.legacy_checks and s.legacy_checks != (co.SERF_CHECK_ID,):
            out["Checks"] = list(s.legacy_checks)
        if self.enterprise:
            out["Namespace"], out["Partition"] = s.namespace, s.partition
        out["CreateIndex"], out["ModifyIndex"] = s.create_index, s.modify_index
        return out

    def _kv_index(self, t: KVKey) -> int:
        """agent/consul/kvs_endpoint.go Get: the key's ModifyIndex, or the KV table index
        (kvs and tombstones) when there is no such key."""
        entry = self._kv.get(t)
        if entry is not None:
            return entry.modify_index
        return self._tables.get((t[0], t[1], "kvs"), 0)

    def _kv_json(self, entry: _KVEntry) -> JSON:
        out: JSON = {
            "LockIndex": entry.lock_index,
            "Key": entry.key,
            "Flags": entry.flags,
            "Value": base64.b64encode(entry.value).decode() if entry.value else None,
        }
        if entry.session:
            out["Session"] = entry.session
        if self.enterprise:
            out["Partition"], out["Namespace"] = entry.partition, entry.namespace
        out["CreateIndex"], out["ModifyIndex"] = entry.create_index, entry.modify_index
        return out

    def _kv_write(self, t: KVKey, value: bytes, flags: int, session: str, lock_index: int) -> None:
        """Store the new state of key `t`, in one write."""
        idx = self._next()
        entry = self._kv.get(t)
        if entry is None:
            entry = self._kv[t] = _KVEntry(
                *t,
                value=value,
                flags=flags,
                session=session,
                lock_index=lock_index,
                create_index=idx,
                modify_index=idx,
            )
        entry.value, entry.flags, entry.session = value, flags, session
        entry.lock_index, entry.modify_index = lock_index, idx
        self._bump(t[0], t[1], "kvs", idx)
        self._changed()

    def _kv_put(
        self,
        t: KVKey,
        value: bytes,
        flags: int,
        *,
        cas: int | None = None,
        acquire: str | None = None,
        release: str | None = None,
    ) -> bool:
        """state/kvs.go kvsSetTxn/kvsSetCASTxn/kvsLockTxn/kvsUnlockTxn, with the leader's
        lock-delay check first (kvs_endpoint.go kvsPreApply)."""
        entry = self._kv.get(t)
        if acquire is not None:
            until = self._lock_delays.get(t)
            if until is not None:
                if until > self.now:
                    return False
                del self._lock_delays[t]
            if not acquire:
                raise ConsulHTTPError(500, "missing session")
            s = self._sessions.get(acquire)
            if s is None or (s.dc, s.partition) != (t[0], t[1]):
                raise ConsulHTTPError(500, f"invalid session {json.dumps(acquire)}")
            if entry is not None and entry.session not in ("", acquire):
                return False  # someone else holds it
            if entry is not None and (entry.session, entry.value, entry.flags) == (
                acquire,
                value,
                flags,
            ):
                return True  # held already, nothing changes: nothing written
            lock_index = 0 if entry is None else entry.lock_index
            if entry is None or entry.session != acquire:
                lock_index += 1  # a new holder
            self._kv_write(t, value, flags, acquire, lock_index)
            return True
        if release is not None:
            if not release:
                raise ConsulHTTPError(500, "missing session")
            if entry is None or entry.session != release:
                return False
            self._kv_write(t, value, flags, "", entry.lock_index)
            return True
        if cas is not None and (
            (cas == 0 and entry is not None)
            or (cas != 0 and (entry is None or entry.modify_index != cas))
        ):
            return False
        if entry is not None and (entry.value, entry.flags) == (value, flags):
            return True  # unchanged: nothing written
        if entry is None:
            self._kv_write(t, value, flags, "", 0)
        else:
            self._kv_write(t, value, flags, entry.session, entry.lock_index)
        return True

    def _kv_delete(self, t: KVKey, cas: int | None) -> bool:
        """state/kvs.go kvsDeleteTxn/kvsDeleteCASTxn (an absent key is a success)."""
        entry = self._kv.get(t)
        if entry is None:
            return True
        if cas is not None and entry.modify_index != cas:
            return False
        idx = self._next()
        del self._kv[t]
        self._bump(t[0], t[1], "kvs", idx)  # the tombstone moves the table index
        self._changed()
        return True

    def _record(self, request: RecordedRequest) -> None:
        with self._cond:
            self._requests.append(request)
            self._cond.notify_all()

    # --- HTTP serving ------------------------------------------------------------------

    def _register_conn(self, server: _Server, conn: socket.socket) -> bool:
        with self._cond:
            if server.epoch != self._epoch or self._httpd is None:
                return False
            self._connections.add(conn)
            return True

    def _unregister_conn(self, conn: socket.socket) -> None:
        with self._cond:
            self._connections.discard(conn)

    def _handle(self, h: _Handler) -> None:
        parts = urlsplit(h.path)
        raw_params = parse_qs(parts.query, keep_blank_values=True)
        path = unquote(parts.path)
        endpoint, service = _route(path)
        headers = {k: v for k, v in h.headers.items()}
        token, token_source = _token(raw_params, h.headers)
        consistency = (
            "consistent"
            if "consistent" in raw_params
            else "stale"
            if "stale" in raw_params
            else "default"
        )
        base: dict[str, Any] = {
            "method": h.command,
            "path": path,
            "endpoint": endpoint,
            "service": service,
            "query": {k: tuple(v) for k, v in raw_params.items()},
            "headers": headers,
            "token": token,
            "token_source": token_source,
            "consistency": consistency,
            "namespace": _first(raw_params, "ns") or h.headers.get("X-Consul-Namespace"),
            "partition": _first(raw_params, "partition") or h.headers.get("X-Consul-Partition"),
            "index": None,
            "wait": None,
        }
        request_body = base["body"] = self._read_body(h)
        epoch = h.server.epoch

        def finish(status: int, response_index: int | None, outcome: str) -> None:
            self._record(
                RecordedRequest(
                    **base, status=status, response_index=response_index, outcome=outcome
                )
            )

        # A hung agent reads the request and says nothing.
        if not self._await_unhung(h, epoch):
            _cut(h)
            finish(0, None, "cut" if self._epoch != epoch else "gone")
            return
        try:
            if endpoint == "unknown":
                raise ConsulHTTPError(404, "")
            methods = _METHODS.get(endpoint, ("GET",))
            if h.command not in methods and not (h.command == "HEAD" and "GET" in methods):
                raise ConsulHTTPError(405, f"method {h.command} not allowed")
            fault = self._take_fault(path)
            if fault is not None:
                finish(fault.status, None, "fault")
                _send(h, fault.status, fault.body.encode(), _text_headers())
                return
            if endpoint == "status.leader":
                with self._cond:
                    leader = LEADER_ADDRESS if self._known_leader else ""
                finish(200, None, "immediate")
                _send(h, 200, json.dumps(leader).encode(), [("Content-Type", "application/json")])
                return
            q = self._parse_query(endpoint, service, raw_params, h)
            base["index"] = q.min_index or None
            if endpoint in _CATALOG_READS:
                code, body, extra, index, outcome = self._serve_read(h, q, epoch, base)
            elif endpoint == "kv" and h.command in ("GET", "HEAD"):
                code, body, extra, index, outcome = self._serve_kv_read(h, q, epoch, base)
            elif endpoint in _SESSION_READS:
                code, body, extra, index, outcome = self._serve_session_read(h, q, epoch, base)
            else:
                code, body, extra, index, outcome = self._serve_write(h.command, q, request_body)
        except ConsulHTTPError as exc:
            hdrs = _text_headers()
            if exc.meta:
                hdrs += self._meta_headers(self._raft, "default")
            if exc.code == 405:
                hdrs.append(("Allow", ",".join(("OPTIONS", *_METHODS.get(endpoint, ("GET",))))))
            finish(exc.code, None, "error")
            _send(h, exc.code, exc.body.encode(), hdrs)
            return
        if outcome in ("cut", "gone"):
            _cut(h)
            finish(0, None, outcome)
            return
        # Recorded before it is sent: a client that got its answer finds it in `requests`.
        finish(code, index, outcome)
        _send(h, code, body, extra)

    @staticmethod
    def _read_body(h: _Handler) -> bytes:
        length = int(h.headers.get("Content-Length") or 0)
        return h.rfile.read(length) if length > 0 else b""

    def _await_unhung(self, h: _Handler, epoch: int) -> bool:
        with self._cond:
            while self._hang:
                if self._epoch != epoch:
                    return False
                self._cond.wait(_POLL)
                if _peer_closed(h.connection):
                    return False
            return self._epoch == epoch

    def _take_fault(self, path: str) -> _Fault | None:
        with self._cond:
            for i, fault in enumerate(self._faults):
                if fault.path_prefix is None or path.startswith(fault.path_prefix):
                    del self._faults[i]
                    self._changed()
                    return fault
            return None

    def _parse_query(
        self, endpoint: str, service: str | None, params: dict[str, list[str]], h: _Handler
    ) -> _Query:
        # agent/http.go: parseDC, parseToken, parseConsistency, parseWait; then the
        # enterprise meta (http_ce.go in CE).
        if "stale" in params and "consistent" in params:
            raise ConsulHTTPError(
                400, "Cannot specify ?stale with ?consistent, conflicting semantics."
            )
        wait: float | None = None
        if _first(params, "wait"):
            try:
                wait = parse_go_duration(_first(params, "wait") or "")
            except ValueError:
                raise ConsulHTTPError(400, "Invalid wait time") from None
        min_index = 0
        if _first(params, "index"):
            raw = _first(params, "index") or ""
            if not raw.isdigit():
                raise ConsulHTTPError(400, "Invalid index")
            min_index = int(raw)
        ns_header = h.headers.get("X-Consul-Namespace") or ""
        ap_header = h.headers.get("X-Consul-Partition") or ""
        ns = _first(params, "ns") or ""
        ap = _first(params, "partition") or ""
        if not self.enterprise:
            for value, what, kind in (
                (ns_header, 'header: "X-Consul-Namespace"', "Namespaces"),
                (ns, 'query parameter: "ns"', "Namespaces"),
                (ap_header, 'header: "X-Consul-Partition"', "Partitions"),
                (ap, 'query parameter: "partition"', "Partitions"),
            ):
                if value:
                    raise ConsulHTTPError(
                        400,
                        f"Bad request: Invalid {what} - {kind} are a Consul Enterprise feature",
                    )
        token, source = _token(params, h.headers)
        with self._cond:
            rules: Rules = None
            kv_rules: Rules = None
            anonymous = not token
            if self._acl is not None:
                if token:
                    if token not in self._acl:
                        raise ConsulHTTPError(403, "ACL not found", meta=True)
                    rules = self._acl[token]
                    kv_rules = self._kv_acl.get(token, None if rules is None else ())
                else:
                    rules = self._anonymous
                    kv_rules = self._anonymous_kv
            dc = _first(params, "dc") or self.datacenter
            if dc not in self._datacenters:
                raise ConsulHTTPError(500, "No path to datacenter")
        consistency = (
            "consistent" if "consistent" in params else "stale" if "stale" in params else "default"
        )
        passing = _first(params, "passing")
        if passing is not None and passing.lower() not in ("", "1", "0", "true", "false"):
            raise ConsulHTTPError(400, "Invalid value for ?passing")
        return _Query(
            path=unquote(urlsplit(h.path).path),
            endpoint=endpoint,
            service=service,
            dc=dc,
            namespace=ns or ns_header or _DEFAULT,
            partition=ap or ap_header or _DEFAULT,
            token=token,
            token_source=source,
            rules=rules,
            anonymous=anonymous,
            consistency=consistency,
            min_index=min_index,
            wait=wait,
            params=params,
            kv_rules=kv_rules,
        )

    def _endpoint_index(self, q: _Query) -> int:
        if q.endpoint == "catalog.services":
            return self._tables.get((q.dc, q.partition, "services"), 0)
        if q.endpoint == "kv":
            return self._kv_index((q.dc, q.partition, q.namespace, q.service or ""))
        if q.endpoint in _SESSION_READS:
            return self._tables.get((q.dc, q.partition, "sessions"), 0)
        assert q.service is not None
        return self._service_index(q.dc, q.partition, q.namespace, q.service)

    def _await_index(
        self, h: _Handler, q: _Query, epoch: int, base: dict[str, Any]
    ) -> tuple[str, int, _Fault | None]:
        """(Holding the lock.) A read's leader check, then, with `?index=N`, its block.
        Returns the outcome, the endpoint's index and, for a "fault", the fault."""
        self._reap_sessions()
        if not self._known_leader and q.consistency != "stale":
            raise ConsulHTTPError(500, "No cluster leader")
        index = self._endpoint_index(q)
        if q.min_index <= 0 or max(index, 1) > q.min_index:
            return "immediate", index, None
        outcome = self._block(h, q, epoch, base)
        if outcome in ("cut", "gone"):
            return outcome, index, None
        if outcome == "fault":
            fault = self._take_fault(q.path)
            assert fault is not None
            return outcome, index, fault
        if not self._known_leader and q.consistency != "stale":
            raise ConsulHTTPError(500, "No cluster leader")
        return outcome, self._endpoint_index(q), None

    def _serve_read(
        self, h: _Handler, q: _Query, epoch: int, base: dict[str, Any]
    ) -> tuple[int, bytes, list[tuple[str, str]], int | None, str]:
        with self._cond:
            outcome, index, fault = self._await_index(h, q, epoch, base)
            if outcome in ("cut", "gone"):
                return 0, b"", [], None, outcome
            if fault is not None:
                return fault.status, fault.body.encode(), _text_headers(), None, "fault"
            empty = self._take_empty(q)
            if empty:
                outcome = "empty"
            payload, filtered = self._payload(q, empty=empty)
            headers = [("Content-Type", "application/json")]
            headers += self._meta_headers(index, q.consistency)
            if self._acl is not None and filtered and not q.anonymous:
                headers.append(("X-Consul-Results-Filtered-By-ACLs", "true"))
            if "cached" in q.params:
                headers += [("X-Cache", "MISS"), ("Age", "0")]
        return 200, _json_body(payload, q.params), headers, max(index, 1), outcome

    def _serve_kv_read(
        self, h: _Handler, q: _Query, epoch: int, base: dict[str, Any]
    ) -> tuple[int, bytes, list[tuple[str, str]], int | None, str]:
        """agent/kvs_endpoint.go KVSGet (one key): 404 with index headers when absent."""
        key = q.service or ""
        if any(p in q.params for p in ("recurse", "keys", "separator")):
            raise ConsulHTTPError(
                500, "fake consul agent: ?recurse, ?keys and ?separator are not implemented"
            )
        if not key:
            raise ConsulHTTPError(400, "Missing key name")
        with self._cond:
            if not _allowed(q.kv_rules, key):
                raise self._denied(q, "key:read", key)
            outcome, index, fault = self._await_index(h, q, epoch, base)
            if outcome in ("cut", "gone"):
                return 0, b"", [], None, outcome
            if fault is not None:
                return fault.status, fault.body.encode(), _text_headers(), None, "fault"
            entry = self._kv.get((q.dc, q.partition, q.namespace, key))
            meta = self._meta_headers(index, q.consistency)
            payload = None if entry is None else [self._kv_json(entry)]
        if entry is None:
            return 404, b"", meta, max(index, 1), outcome
        if "raw" in q.params:
            raw_headers = [
                ("Content-Type", "text/plain"),
                ("X-Content-Type-Options", "nosniff"),
                ("Content-Security-Policy", "sandbox"),
            ]
            return 200, entry.value, raw_headers + meta, max(index, 1), outcome
        headers = [("Content-Type", "application/json"), *meta]
        return 200, _json_body(payload, q.params), headers, max(index, 1), outcome

    def _serve_session_read(
        self, h: _Handler, q: _Query, epoch: int, base: dict[str, Any]
    ) -> tuple[int, bytes, list[tuple[str, str]], int | None, str]:
        """agent/session_endpoint.go SessionGet/SessionList/SessionsForNode: `[]` rather
        than null, sessions the token may not read filtered out."""
        if q.endpoint != "session.list" and not q.service:
            missing = "Missing node name" if q.endpoint == "session.node" else "Missing session"
            raise ConsulHTTPError(400, missing)
        with self._cond:
            outcome, index, fault = self._await_index(h, q, epoch, base)
            if outcome in ("cut", "gone"):
                return 0, b"", [], None, outcome
            if fault is not None:
                return fault.status, fault.body.encode(), _text_headers(), None, "fault"
            found = []
            for sid in sorted(self._sessions):
                s = self._sessions[sid]
                if (s.dc, s.partition) != (q.dc, q.partition) or q.namespace not in (
                    "*",
                    s.namespace,
                ):
                    continue
                if q.endpoint == "session.list" or q.service == (
                    s.id if q.endpoint == "session.info" else s.node
                ):
                    found.append(s)
            filtered = bool(found) and not _may_session(q.kv_rules)
            payload = [] if filtered else [self._session_json(s) for s in found]
            headers = [("Content-Type", "application/json")]
            headers += self._meta_headers(index, q.consistency)
            if self._acl is not None and filtered and not q.anonymous:
                headers.append(("X-Consul-Results-Filtered-By-ACLs", "true"))
        return 200, _json_body(payload, q.params), headers, max(index, 1), outcome

    def _serve_write(
        self, method: str, q: _Query, body: bytes
    ) -> tuple[int, bytes, list[tuple[str, str]], int | None, str]:
        """KV PUT/DELETE and session create/renew/destroy: applied by the leader (500 `No
        cluster leader` without one), answered with JSON and no index headers."""
        with self._cond:
            self._reap_sessions()
            if q.endpoint == "kv":
                result: Any = self._kv_request(method, q, body)
            elif q.endpoint == "session.create":
                spec = _session_spec(body)
                node = spec.get("node") or self.node_name
                self._require_leader()
                if not _may_session(q.kv_rules):
                    raise self._denied(q, "session:write", node)
                result = {"ID": self._create_session(q.dc, q.partition, q.namespace, spec)}
            else:
                sid = q.service or ""
                if not sid:
                    raise ConsulHTTPError(400, "Missing session")
                self._require_leader()
                s = self._sessions.get(sid)
                if s is not None and (s.dc, s.partition) != (q.dc, q.partition):
                    s = None
                if s is not None and not _may_session(q.kv_rules):
                    raise self._denied(q, "session:write", s.node)
                if q.endpoint == "session.renew":
                    if s is None:
                        raise ConsulHTTPError(404, f"Session id '{sid}' not found")
                    self._restart_ttl(s)
                    result = [self._session_json(s)]
                else:  # destroy: idempotent
                    if s is not None:
                        self._invalidate_session(s, self._next(), self.now)
                        self._changed()
                    result = True
        return (
            200,
            _json_body(result, q.params),
            [("Content-Type", "application/json")],
            None,
            "immediate",
        )

    def _kv_request(self, method: str, q: _Query, body: bytes) -> bool:
        """agent/kvs_endpoint.go KVSPut/KVSDelete, then the store."""
        key = q.service or ""
        params = q.params
        if "recurse" in params:
            raise ConsulHTTPError(500, "fake consul agent: ?recurse is not implemented")
        if not key:
            raise ConsulHTTPError(400, "Missing key name")
        if method == "PUT" and sum(f in params for f in ("cas", "acquire", "release")) > 1:
            encoded = "&".join(
                f"{quote_plus(k)}={quote_plus(v)}" for k in sorted(params) for v in params[k]
            )
            raise ConsulHTTPError(400, f"Conflicting flags: {encoded}\n")
        flags = _uint_param(params, "flags") or 0
        cas = _uint_param(params, "cas")
        if method == "PUT" and len(body) > KV_MAX_VALUE_SIZE:
            raise ConsulHTTPError(
                413,
                f"Request body({len(body)} bytes) too large, max size: {KV_MAX_VALUE_SIZE} "
                "bytes. See https://developer.hashicorp.com/docs/agent/config/config-files"
                "#kv_max_value_size.",
            )
        self._require_leader()
        if not _allowed(q.kv_rules, key):
            raise self._denied(q, "key:write", key)
        t = (q.dc, q.partition, q.namespace, key)
        if method == "DELETE":
            return self._kv_delete(t, cas)
        return self._kv_put(
            t,
            body,
            flags,
            cas=cas,
            acquire=_first(params, "acquire") if "acquire" in params else None,
            release=_first(params, "release") if "release" in params else None,
        )

    def _require_leader(self) -> None:
        if not self._known_leader:
            raise ConsulHTTPError(500, "No cluster leader")

    def _denied(self, q: _Query, permission: str, name: str) -> ConsulHTTPError:
        """acl.PermissionDeniedError as Consul 1.15+ words it."""
        return ConsulHTTPError(
            403,
            f"Permission denied: token with AccessorID '{_accessor(q.token)}' lacks "
            f"permission '{permission}' on {json.dumps(name)}",
        )

    def _meta_headers(self, index: int, consistency: str) -> list[tuple[str, str]]:
        effective = {"default": "leader"}.get(consistency, consistency)
        return [
            ("X-Consul-Default-Acl-Policy", "allow" if self._acl is None else "deny"),
            ("X-Consul-Effective-Consistency", effective),
            ("X-Consul-Index", str(max(index, 1))),
            ("X-Consul-Knownleader", "true" if self._known_leader else "false"),
            ("X-Consul-Lastcontact", str(0 if self._known_leader else self._last_contact_ms)),
        ]

    def _block(self, h: _Handler, q: _Query, epoch: int, base: dict[str, Any]) -> str:
        """Wait (holding the condition) until the endpoint's index passes q.min_index or
        something else ends the wait. Returns the outcome."""
        wait = q.wait if q.wait is not None and q.wait > 0 else self.default_query_time
        wait = min(wait, self.max_query_time)
        if self.jitter:
            wait += random.uniform(0, wait / JITTER_FRACTION)
        base["wait"] = wait
        if self._fast_unchanged > 0:
            self._fast_unchanged -= 1
            self._changed()
            return "fast"
        deadline = time.monotonic() + wait
        entry = BlockingQuery(q.endpoint, q.service, q.min_index, deadline, self._generation)
        waiter = _Waiter(
            q, epoch, self._abandon, self._empty_epoch, threading.Condition(self._cond_lock)
        )
        self._blocked.append(entry)
        self._waiters.append(waiter)
        self._cond.notify_all()
        try:
            while True:
                self._reap_sessions()
                outcome = self._block_ends(waiter)
                if outcome == "fast":
                    self._fast_unchanged -= 1
                    self._changed()
                if outcome is not None:
                    return outcome
                entry.seen_generation = self._generation
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return "timeout"
                waiter.wake.wait(self._idle_wait(remaining))
                if _peer_closed(h.connection):
                    return "gone"
        finally:
            self._blocked.remove(entry)
            self._waiters.remove(waiter)
            self._cond.notify_all()

    def _block_ends(self, w: _Waiter) -> str | None:
        """The outcome that ends a blocked query's wait now, or None: it blocks on."""
        q = w.q
        if self._epoch != w.epoch:
            return "cut"
        if self._abandon != w.abandon:
            return "abandoned"
        if max(self._endpoint_index(q), 1) > q.min_index:
            return "changed"
        if self._fast_unchanged > 0:
            return "fast"
        if any(f.path_prefix is None or q.path.startswith(f.path_prefix) for f in self._faults):
            return "fault"
        if q.endpoint in ("health.service", "catalog.service") and (
            self._empty_once.get(q.service or "", 0) > 0
            or (self._empty_all and self._empty_epoch != w.empty_epoch)
        ):
            return "changed"
        if (
            q.endpoint == "catalog.services"
            and self._empty_all_catalog
            and self._empty_epoch != w.empty_epoch
        ):
            return "changed"
        if not self._known_leader and q.consistency != "stale":
            return "changed"
        return None

    def _idle_wait(self, remaining: float) -> float:
        """How long a blocked query sleeps unless notified: until its deadline, the next
        check of its client, or the next session TTL timer (an expiry is a write that
        may answer it; only a known leader runs the timers)."""
        wait = min(remaining, _GONE_CHECK)
        if self._known_leader:
            timers = [s.deadline for s in self._sessions.values() if s.deadline is not None]
            if timers:
                wait = min(wait, max(min(timers) - self.now, 0.0))
        return wait

    def _take_empty(self, q: _Query) -> bool:
        if q.endpoint == "catalog.services":
            return self._empty_all_catalog
        if self._empty_all:
            return True
        if q.service is not None and self._empty_once.get(q.service, 0) > 0:
            self._empty_once[q.service] -= 1
            return True
        return False

    def _payload(self, q: _Query, *, empty: bool) -> tuple[Any, bool]:
        """The answer body and whether ACLs filtered anything out."""
        if q.endpoint == "catalog.services":
            if empty:
                return {}, False
        elif empty:
            return [], False
        selectors = HEALTH_SELECTORS if q.endpoint == "health.service" else SERVICE_NODE_SELECTORS
        predicate: Predicate | None = None
        expr = _first(q.params, "filter")
        if expr:
            try:
                predicate = compile_filter(expr, selectors)
            except (FilterError, re.error) as exc:
                raise ConsulHTTPError(
                    500, f"Failed to create boolean expression evaluator: {exc}"
                ) from None
        tags = [t.lower() for t in q.params.get("tag", []) if t]
        node_meta = [m.partition(":") for m in q.params.get("node-meta", [])]
        passing = (_first(q.params, "passing") or "x").lower() in ("", "1", "true")
        filtered = False
        rows: list[JSON] = []
        names: list[tuple[str, tuple[str, ...]]] = []
        for inst in self._sorted_instances():
            if (inst.dc, inst.partition) != (q.dc, q.partition):
                continue
            if q.namespace != "*" and inst.namespace != q.namespace:
                continue
            if q.service is not None and inst.name != q.service:
                continue
            node = self._nodes[(inst.dc, inst.partition, inst.node)]
            if any(node.meta.get(k) != v for k, _, v in node_meta):
                continue
            if q.endpoint != "catalog.services" and not all(
                t in {x.lower() for x in inst.tags} for t in tags
            ):
                continue
            entry = self._entry(inst)
            shape = (
                entry
                if q.endpoint == "health.service"
                else co.catalog_service_node(entry["Node"], entry["Service"])
            )
            if predicate is not None and not predicate(shape):
                continue
            if (
                q.endpoint == "health.service"
                and passing
                and any(c["Status"] != co.PASSING for c in entry["Checks"])
            ):
                continue
            if not _allowed(q.rules, inst.name):
                filtered = True
                continue
            if q.endpoint == "catalog.services":
                names.append((inst.name, inst.tags))
            else:
                rows.append(shape)
        if q.endpoint == "catalog.services":
            return co.services_map(names), filtered
        return rows, filtered


_SESSION_FIELDS = {
    "name": ("Name", "string"),
    "node": ("Node", "string"),
    "behavior": ("Behavior", "structs.SessionBehavior"),
    "ttl": ("TTL", "string"),
    "lockdelay": ("LockDelay", "time.Duration"),
    "checks": ("Checks", "[]types.CheckID"),
    "nodechecks": ("NodeChecks", "[]string"),
    "servicechecks": ("ServiceChecks", "[]structs.ServiceCheck"),
}


def _json_type(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object" if isinstance(value, dict) else "null"


def _session_spec(body: bytes) -> JSON:
    """A session create body decoded as Go's encoding/json would into structs.Session
    (keys case-insensitive, unknown keys ignored): lower-cased keys. 400 otherwise."""
    if not body.strip():
        return {}
    try:
        raw = json.loads(body)
    except ValueError as exc:
        raise ConsulHTTPError(400, f"Request decode failed: {exc}") from None
    if raw is None:
        return {}  # JSON null decodes into nothing
    if not isinstance(raw, dict):
        raise ConsulHTTPError(
            400,
            f"Request decode failed: json: cannot unmarshal {_json_type(raw)} into Go value "
            "of type structs.Session",
        )
    spec = {k.lower(): v for k, v in raw.items() if k.lower() in _SESSION_FIELDS}
    for key, value in spec.items():
        name, go_type = _SESSION_FIELDS[key]
        if value is None:
            continue
        if key == "lockdelay":
            ok = isinstance(value, str | int | float) and not isinstance(value, bool)
        elif key in ("checks", "nodechecks"):
            ok = isinstance(value, list) and all(isinstance(v, str) for v in value)
        elif key == "servicechecks":
            ok = isinstance(value, list) and all(isinstance(v, dict) for v in value)
            if ok:
                spec[key] = [{k.lower(): v for k, v in c.items()} for c in value]
        else:
            ok = isinstance(value, str)
        if not ok:
            raise ConsulHTTPError(
                400,
                f"Request decode failed: json: cannot unmarshal {_json_type(value)} into Go "
                f"struct field Session.{name} of type {go_type}",
            )
    return spec


def _lock_delay_seconds(value: Any) -> float:
    """agent/session_endpoint.go FixupLockDelay: a Go duration or a number of ns, either
    taken as seconds when under 1000 ns ("15s" → 15 s, 15 → 15 s, "0s" → 0)."""
    if isinstance(value, str):
        try:
            ns = round(parse_go_duration(value) * 1e9)
        except ValueError:
            raise ConsulHTTPError(
                400, f'Request decode failed: time: invalid duration "{value}"'
            ) from None
    else:
        ns = value
    return float(ns) if ns < 1000 else ns / 1e9


def _accessor(token: str | None) -> str:
    """A stable AccessorID for a secret (the anonymous token's well-known one)."""
    return str(uuid.uuid5(_ACCESSOR_NS, token)) if token else ANONYMOUS_ACCESSOR


def _check_status(status: str) -> None:
    if status not in co.STATUSES:
        raise ValueError(f"status must be one of {co.STATUSES}, not {status!r}")


def _allowed(rules: Rules, name: str) -> bool:
    return rules is None or any(name.startswith(prefix) for prefix in rules)


def _may_session(kv_rules: Rules) -> bool:
    """session:write/read: granted to a token that may write some key (module doc)."""
    return kv_rules is None or len(kv_rules) > 0


def _json_body(payload: Any, params: Mapping[str, list[str]]) -> bytes:
    """agent/http.go marshalJSON: compact, or indented with a newline for `?pretty`."""
    if "pretty" in params:
        return (json.dumps(payload, indent=4) + "\n").encode()
    return json.dumps(payload, separators=(",", ":")).encode()


def _uint_param(params: Mapping[str, list[str]], name: str) -> int | None:
    """A uint64 query parameter, as strconv.ParseUint reads it (the error is a 500)."""
    if name not in params:
        return None
    raw = _first(params, name) or ""
    if not raw.isdigit() or int(raw) >= 2**64:
        raise ConsulHTTPError(500, f'strconv.ParseUint: parsing "{raw}": invalid syntax')
    return int(raw)


def _first(params: Mapping[str, list[str]], name: str) -> str | None:
    values = params.get(name)
    return values[0] if values else None


def _token(params: Mapping[str, list[str]], headers: Any) -> tuple[str | None, str | None]:
    """agent/http.go parseTokenInternal: ?token, then X-Consul-Token, then Bearer."""
    if _first(params, "token"):
        return _first(params, "token"), "query"
    if headers.get("X-Consul-Token"):
        return str(headers.get("X-Consul-Token")), "header"
    auth = str(headers.get("Authorization") or "")
    scheme, _, value = auth.partition(" ")
    if scheme == "Bearer" and value.strip():
        return value.strip().split(" ")[0], "bearer"
    return None, None


_CATALOG_READS = ("catalog.services", "catalog.service", "health.service")
_SESSION_READS = ("session.info", "session.list", "session.node")
# Methods each endpoint is registered with (agent/http_register.go); GET implies HEAD.
_METHODS = {
    "kv": ("GET", "PUT", "DELETE"),
    "session.create": ("PUT",),
    "session.renew": ("PUT",),
    "session.destroy": ("PUT",),
}


def _route(path: str) -> tuple[str, str | None]:
    if path == "/v1/catalog/services":
        return "catalog.services", None
    if path == "/v1/status/leader":
        return "status.leader", None
    if path == "/v1/session/create":
        return "session.create", None
    if path == "/v1/session/list":
        return "session.list", None
    for prefix, endpoint in (
        ("/v1/health/service/", "health.service"),
        ("/v1/catalog/service/", "catalog.service"),
    ):
        if path.startswith(prefix) and len(path) > len(prefix):
            return endpoint, path[len(prefix) :]
    # These answer 400 for an empty name, as Consul's handlers do.
    for prefix, endpoint in (
        ("/v1/kv/", "kv"),
        ("/v1/session/renew/", "session.renew"),
        ("/v1/session/destroy/", "session.destroy"),
        ("/v1/session/info/", "session.info"),
        ("/v1/session/node/", "session.node"),
    ):
        if path.startswith(prefix):
            return endpoint, path[len(prefix) :]
    return "unknown", None


def _text_headers() -> list[tuple[str, str]]:
    return [("Content-Type", "text/plain; charset=utf-8")]


def _send(h: _Handler, code: int, body: bytes, headers: list[tuple[str, str]]) -> None:
    try:
        h.send_response(code)
        for name, value in headers:
            h.send_header(name, value)
        h.send_header("Vary", "Accept-Encoding")
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        if h.command != "HEAD":
            h.wfile.write(body)
    except OSError:
        h.close_connection = True


def _cut(h: _Handler) -> None:
    _shutdown(h.connection)
    h.close_connection = True


def _peer_closed(conn: socket.socket) -> bool:
    """True if the client closed its end (readable with nothing to read)."""
    try:
        readable, _, _ = select.select([conn], [], [], 0)
        if not readable:
            return False
        return conn.recv(1, socket.MSG_PEEK) == b""
    except (OSError, ValueError):
        return True


def _shutdown(conn: socket.socket) -> None:
    with contextlib.suppress(OSError):
        conn.shutdown(socket.SHUT_RDWR)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    # Go's net.Listen asks for the kernel's maximum backlog; socketserver's default of 5
    # makes a client that opens hundreds of blocking queries at once wait for SYN
    # retries (1 s, then 3 s, ...) that a real agent never causes.
    request_queue_size = socket.SOMAXCONN
    agent: FakeConsulAgent
    epoch: int

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # cut connections are part of the game


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def send_response(self, code: int, message: str | None = None) -> None:
        # Consul (Go's net/http) sends no Server header.
        self.log_request(code)
        self.send_response_only(code, message)
        self.send_header("Date", self.date_time_string())

    def setup(self) -> None:
        super().setup()
        # As Go's net/http: no Nagle, else headers and body written apart wait for an ACK.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if not self.server.agent._register_conn(self.server, self.connection):
            _shutdown(self.connection)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.agent._unregister_conn(self.connection)

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _serve(self) -> None:
        self.server.agent._handle(self)

    do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = do_PATCH = _serve


__all__ = [
    "AGENT_NODE",
    "ANONYMOUS_ACCESSOR",
    "DEFAULT_LOCK_DELAY",
    "DEFAULT_QUERY_TIME",
    "FAULT_BODIES",
    "HEALTH_SELECTORS",
    "KV_MAX_VALUE_SIZE",
    "MAX_LOCK_DELAY",
    "MAX_QUERY_TIME",
    "SERVICE_NODE_SELECTORS",
    "SESSION_TTL_MAX",
    "SESSION_TTL_MIN",
    "SESSION_TTL_MULTIPLIER",
    "BlockingQuery",
    "ConsulHTTPError",
    "FakeConsulAgent",
    "FilterError",
    "RecordedRequest",
    "compile_filter",
    "format_go_duration",
    "parse_go_duration",
]
