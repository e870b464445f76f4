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

Test controls (all thread-safe; every request and state change notifies `wait_for`):
`register`, `deregister`, `deregister_node`, `set_status`, `set_node_health`,
`set_node_address`, `touch`, `index`, `service_index`, `services_index`, `instances`,
faults `reset_index`, `return_empty_once`, `empty_all`, `answer_unchanged_fast`,
`fail_next`, `set_leader`, `go_down`/`come_up`, `hang`; observation `requests`,
`count`, `request_counts`, `open_blocking`, `open_blocking_queries`, `generation`,
`wait_for`.

Departures from a real agent, on purpose: one index for every datacenter (a real one
has an index per datacenter), no writes over HTTP (tests write with the controls), no
agent endpoints, no node-level ACL rules, no gzip, no streaming backend, no
`X-Consul-ContentHash` (hash-based) blocking, `near` does not sort.
"""

from __future__ import annotations

import contextlib
import json
import random
import re
import select
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, TypeVar
from urllib.parse import parse_qs, unquote, urlsplit

from tests.fakes import consul_objects as co

JSON = dict[str, Any]
T = TypeVar("T")
Rules = tuple[str, ...] | None  # service-name prefixes; None: every service

DEFAULT_QUERY_TIME = 300.0  # seconds, Consul's default_query_time
MAX_QUERY_TIME = 600.0  # seconds, Consul's max_query_time
JITTER_FRACTION = 16  # structs.JitterFraction
LEADER_ADDRESS = "127.0.0.1:8300"

_POLL = 0.05  # how often an idle blocked query checks whether its client went away
_DEFAULT = "default"

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


@dataclass(frozen=True)
class RecordedRequest:
    """One request as the fake saw it.

    `endpoint` is "catalog.services", "catalog.service", "health.service",
    "status.leader" or "unknown"; `query` keeps every value of repeated parameters
    (`param(name)` gives the last). `status` 0 means never answered (the connection was
    cut or the client went away). `outcome`: "immediate", "changed", "timeout",
    "abandoned" (reset_index), "fast" (answer_unchanged_fast), "empty", "fault",
    "error", "cut", "gone"."""

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


class FakeConsulAgent:
    """A threaded Consul agent (HTTP API) on 127.0.0.1 with an in-memory catalog.

    `with FakeConsulAgent() as agent:` starts it; `consul.Consul(host=agent.host,
    port=agent.port)` talks to it. `port` picks the port (0: any free); after
    `go_down()`/`come_up()` the same port serves again with the same state.

    `consul_service=True` registers, like every real cluster, the `consul` service on a
    server node (`consul-server-1`, 127.0.0.1:8300): it shows in `/v1/catalog/services`.
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
    ) -> None:
        self._cond = threading.Condition(threading.RLock())
        self.datacenter = datacenter
        self._datacenters = {datacenter, *datacenters}
        self.enterprise = enterprise
        self._acl: dict[str, Rules] | None = (
            None
            if acl_tokens is None
            else {tok: (None if r is None else tuple(r)) for tok, r in acl_tokens.items()}
        )
        self._anonymous: Rules = None if anonymous_rules is None else tuple(anonymous_rules)
        self.default_query_time = default_query_time
        self.max_query_time = max_query_time
        self.jitter = jitter
        self.nil_for_empty = nil_for_empty
        self._raft = initial_index
        self._tables: dict[tuple[str, ...], int] = {}
        self._nodes: dict[tuple[str, str, str], _Node] = {}
        self._instances: dict[tuple[str, str, str, str, str], _Instance] = {}
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
        # serving
        self._connections: set[socket.socket] = set()
        self._port = port
        self._httpd: _Server | None = None
        self._thread: threading.Thread | None = None
        self._epoch = 0
        self._started = False
        if consul_service:
            self.register("consul-server-1", "127.0.0.1", "consul", port=8300, dc=datacenter)

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
            self._cond.notify_all()
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
            self._cond.notify_all()

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
        `X-Consul-LastContact: last_contact_ms`."""
        with self._cond:
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
        self._cond.notify_all()

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
        self._bump(inst.dc, inst.partition, "services", idx)
        self._bump(inst.dc, inst.partition, "checks", idx)
        same = (inst.dc, inst.partition, inst.namespace, inst.name)
        if any((i.dc, i.partition, i.namespace, i.name) == same for i in self._instances.values()):
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
        live = {
            i.namespace
            for i in self._instances.values()
            if (i.dc, i.partition, i.name) == (dc, partition, name)
            and (namespace == "*" or i.namespace == namespace)
        }
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
        self._read_body(h)
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
            if h.command not in ("GET", "HEAD"):
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
            code, body, extra, index, outcome = self._serve_read(h, q, epoch, base)
        except ConsulHTTPError as exc:
            hdrs = _text_headers()
            if exc.meta:
                hdrs += self._meta_headers(self._raft, "default")
            if exc.code == 405:
                hdrs.append(("Allow", "OPTIONS,GET"))
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
            anonymous = not token
            if self._acl is not None:
                if token:
                    if token not in self._acl:
                        raise ConsulHTTPError(403, "ACL not found", meta=True)
                    rules = self._acl[token]
                else:
                    rules = self._anonymous
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
        )

    def _endpoint_index(self, q: _Query) -> int:
        if q.endpoint == "catalog.services":
            return self._tables.get((q.dc, q.partition, "services"), 0)
        assert q.service is not None
        return self._service_index(q.dc, q.partition, q.namespace, q.service)

    def _serve_read(
        self, h: _Handler, q: _Query, epoch: int, base: dict[str, Any]
    ) -> tuple[int, bytes, list[tuple[str, str]], int | None, str]:
        outcome = "immediate"
        with self._cond:
            if not self._known_leader and q.consistency != "stale":
                raise ConsulHTTPError(500, "No cluster leader")
            index = self._endpoint_index(q)
            if q.min_index > 0 and max(index, 1) <= q.min_index:
                outcome = self._block(h, q, epoch, base)
                if outcome in ("cut", "gone"):
                    return 0, b"", [], None, outcome
                if outcome == "fault":
                    fault = self._take_fault(q.path)
                    assert fault is not None
                    return (
                        fault.status,
                        fault.body.encode(),
                        _text_headers(),
                        None,
                        "fault",
                    )
                if not self._known_leader and q.consistency != "stale":
                    raise ConsulHTTPError(500, "No cluster leader")
                index = self._endpoint_index(q)
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
        if "pretty" in q.params:
            body = (json.dumps(payload, indent=4) + "\n").encode()
        else:
            body = json.dumps(payload, separators=(",", ":")).encode()
        return 200, body, headers, max(index, 1), outcome

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
        abandon, empty_epoch = self._abandon, self._empty_epoch
        self._blocked.append(entry)
        self._cond.notify_all()
        try:
            while True:
                if self._epoch != epoch:
                    return "cut"
                if self._abandon != abandon:
                    return "abandoned"
                if max(self._endpoint_index(q), 1) > q.min_index:
                    return "changed"
                if self._fast_unchanged > 0:
                    self._fast_unchanged -= 1
                    self._changed()
                    return "fast"
                if any(
                    f.path_prefix is None or q.path.startswith(f.path_prefix) for f in self._faults
                ):
                    return "fault"
                if q.endpoint != "catalog.services" and (
                    self._empty_once.get(q.service or "", 0) > 0
                    or (self._empty_all and self._empty_epoch != empty_epoch)
                ):
                    return "changed"
                if (
                    q.endpoint == "catalog.services"
                    and self._empty_all_catalog
                    and self._empty_epoch != empty_epoch
                ):
                    return "changed"
                if not self._known_leader and q.consistency != "stale":
                    return "changed"
                entry.seen_generation = self._generation
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return "timeout"
                self._cond.wait(min(remaining, _POLL))
                if _peer_closed(h.connection):
                    return "gone"
        finally:
            self._blocked.remove(entry)
            self._cond.notify_all()

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


def _check_status(status: str) -> None:
    if status not in co.STATUSES:
        raise ValueError(f"status must be one of {co.STATUSES}, not {status!r}")


def _allowed(rules: Rules, service: str) -> bool:
    return rules is None or any(service.startswith(prefix) for prefix in rules)


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


def _route(path: str) -> tuple[str, str | None]:
    if path == "/v1/catalog/services":
        return "catalog.services", None
    if path == "/v1/status/leader":
        return "status.leader", None
    for prefix, endpoint in (
        ("/v1/health/service/", "health.service"),
        ("/v1/catalog/service/", "catalog.service"),
    ):
        if path.startswith(prefix) and len(path) > len(prefix):
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
    "DEFAULT_QUERY_TIME",
    "FAULT_BODIES",
    "HEALTH_SELECTORS",
    "MAX_QUERY_TIME",
    "SERVICE_NODE_SELECTORS",
    "BlockingQuery",
    "ConsulHTTPError",
    "FakeConsulAgent",
    "FilterError",
    "RecordedRequest",
    "compile_filter",
    "parse_go_duration",
]
