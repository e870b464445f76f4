"""Upstreams and servers, and their dyups wire format.

Pure: no I/O. Every value is validated when it is constructed, so a `Server`,
`Directive` or `Upstream` that exists can only render characters from a small
safe alphabet (letters, digits, `.:-_[]/=`, single spaces, `;` as terminator).
Nothing that could break out of nginx syntax (`;{}#$"'`, other whitespace,
control characters) can reach a POST body: the types make it impossible.
"""

from __future__ import annotations

import functools
import hashlib
import ipaddress
import math
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, fields
from enum import StrEnum

NAME_RE = re.compile(r"[a-z0-9][a-z0-9_.-]*")
# RFC 1123 host names: labels of letters, digits and inner hyphens, 1-63 chars each.
_LABEL_RE = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
_IP_TEXT_RE = re.compile(r"[0-9a-fA-F:.]+")
# Numbers from outside: a bounded run of ASCII digits (str.isdigit() also accepts
# other scripts' digits, and int() refuses strings over 4,300 digits with ValueError).
_COUNT_RE = re.compile(r"[0-9]{1,12}")
_META_RE = re.compile(r"[A-Za-z0-9._/-]{0,253}")
NAME_MAX = 200
# A body of this many servers is ~250 KiB, well inside nginx's default 1 MiB
# client_max_body_size; more is a runaway source, not an upstream.
MAX_SERVERS = 10_000  # a URI segment; far below the module's 8 KiB URI limit.
SANDBOX_NAME = "_dyups_upstream_sandbox_"

DEFAULT_WEIGHT = 1
MAX_WEIGHT = 1_000_000
DEFAULT_MAX_FAILS = 1
DEFAULT_FAIL_TIMEOUT = 10


class ModelError(ValueError):
    """A value that cannot become part of an upstream; the message names the field."""


def label_value(text: str) -> str:
    """`text` if it can be kept as a zone or node label, else "" (metadata only:
    a strange value must not reject the endpoint it describes)."""
    return text if _META_RE.fullmatch(text) else ""


def normalize_name(raw: str) -> str:
    """Lower-case and validate an upstream name (dyups looks names up case-insensitively)."""
    if not isinstance(raw, str):
        raise ModelError(f"upstream name must be a string, got {type(raw).__name__}")
    name = raw.lower()
    if len(name) > NAME_MAX or not NAME_RE.fullmatch(name):
        raise ModelError(
            f"upstream name {raw!r} is invalid: use [a-z0-9][a-z0-9_.-]* (at most {NAME_MAX})"
        )
    if name == SANDBOX_NAME:
        raise ModelError(f"upstream name {raw!r} is reserved by the dyups module")
    return name


def _int_field(what: str, value: object, *, minimum: int, maximum: int | None = None) -> int:
    # bool is an int subclass; `weight: true` in YAML must not silently become 1.
    if isinstance(value, bool) or not isinstance(value, int):
        raise ModelError(f"{what} must be an integer, got {value!r}")
    if value < minimum or (maximum is not None and value > maximum):
        upper = "" if maximum is None else f" and <= {maximum}"
        # A value past Python's 4,300-digit str() limit must still give a ModelError.
        shown = str(value) if value.bit_length() < 10_000 else f"a {value.bit_length()}-bit number"
        raise ModelError(f"{what} must be >= {minimum}{upper}, got {shown}")
    return value


def _float_field(what: str, value: object, *, minimum: float, maximum: float) -> float:
    # Durations and fractions: YAML gives int or float; never bool, NaN or infinity.
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ModelError(f"{what} must be a number, got {value!r}")
    if not math.isfinite(value) or not minimum <= value <= maximum:
        raise ModelError(f"{what} must be >= {minimum} and <= {maximum}, got {value!r}")
    return float(value)


def _zone_list(value: object) -> tuple[str, ...]:
    """Zone names as label values, duplicates dropped, order kept."""
    if not isinstance(value, tuple | list) or not all(isinstance(z, str) for z in value):
        raise ModelError(f"for_zones must be a list of zone names, got {value!r}")
    for zone in value:
        if not zone or not _META_RE.fullmatch(zone):
            raise ModelError(f"for_zones: {zone!r} is not a valid label value")
    return tuple(dict.fromkeys(value))


def _is_hostname(host: str) -> bool:
    if len(host) > 253:
        return False
    labels = host.rstrip(".").split(".")
    return (
        all(_LABEL_RE.fullmatch(label) for label in labels) and not host.replace(".", "").isdigit()
    )


@functools.lru_cache(maxsize=65536)  # hosts repeat across upstreams and every resync
def canonical_host(raw: str, *, allow_hostname: bool) -> str:
    """Return the host in canonical form: compressed IP literal, or lower-cased hostname."""
    if not isinstance(raw, str) or not raw:
        raise ModelError(f"host must be a non-empty string, got {raw!r}")
    text = raw[1:-1] if raw.startswith("[") and raw.endswith("]") else raw
    if "%" in text:
        # Python accepts IPv6 scope ids ("fe80::1%eth0") with ANY characters after the
        # "%" ("::%;" parses): a scope id could carry nginx syntax into a body.
        raise ModelError(f"host {raw!r}: scoped IPv6 addresses are not supported")
    try:
        canonical = str(ipaddress.ip_address(text))
    except ValueError:
        pass
    else:
        if not _IP_TEXT_RE.fullmatch(canonical):  # belt and braces: nothing but IP text
            raise ModelError(f"host {raw!r} is not a plain IP literal")
        return canonical
    name = text.lower()
    if "%" in text or not _is_hostname(name):
        raise ModelError(f"host {raw!r} is not an IPv4/IPv6 literal or an RFC 1123 host name")
    if not allow_hostname:
        raise ModelError(f"host {raw!r} is a host name; only IP literals are allowed here")
    return name


def body_hash(body: str) -> str:
    """Short stable fingerprint of a POST body, kept in the snapshot per proxy."""
    return hashlib.sha256(body.encode()).hexdigest()[:16]


@dataclass(frozen=True, order=True, slots=True)
class Server:
    """One `server` line. Defaults are the values dyups reports, so comparisons are plain."""

    host: str
    port: int
    weight: int = DEFAULT_WEIGHT
    max_fails: int = DEFAULT_MAX_FAILS
    fail_timeout: int = DEFAULT_FAIL_TIMEOUT
    backup: bool = False
    down: bool = False
    max_conns: int = 0
    allow_hostname: bool = field(default=False, compare=False, repr=False)
    # Where the endpoint runs, kept for traffic policies; never rendered, and not
    # part of equality (the proxy cannot report it).
    zone: str = field(default="", compare=False, repr=False)
    node: str = field(default="", compare=False, repr=False)
    # EndpointSlice `hints.forZones`: the zones whose proxies should prefer this
    # endpoint. Metadata like `zone`: never rendered, not part of equality.
    for_zones: tuple[str, ...] = field(default=(), compare=False, repr=False)
    # The endpoint is terminating (Kubernetes) and should leave rotation. Never
    # rendered: `syncer.traffic` turns it into a dropped or `backup` server before
    # planning. Part of equality, so the start of a drain is a change in the store.
    draining: bool = False

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        for what in ("zone", "node"):
            value = getattr(self, what)
            if not isinstance(value, str) or not _META_RE.fullmatch(value):
                raise ModelError(f"{what} {getattr(self, what)!r} is not a valid label value")
        set_(self, "for_zones", _zone_list(self.for_zones))
        if not isinstance(self.host, str) or not isinstance(self.allow_hostname, bool):
            raise ModelError(f"host must be a string, got {self.host!r}")  # before the cache
        set_(self, "host", canonical_host(self.host, allow_hostname=self.allow_hostname))
        _int_field("port", self.port, minimum=1, maximum=65535)
        _int_field("weight", self.weight, minimum=1, maximum=MAX_WEIGHT)
        _int_field("max_fails", self.max_fails, minimum=0, maximum=1_000_000)
        _int_field("fail_timeout", self.fail_timeout, minimum=0, maximum=365 * 24 * 3600)
        _int_field("max_conns", self.max_conns, minimum=0, maximum=1_000_000_000)
        for flag in ("backup", "down", "draining"):
            if not isinstance(getattr(self, flag), bool):
                raise ModelError(f"{flag} must be true or false, got {getattr(self, flag)!r}")

    def adjusted(
        self,
        *,
        weight: int | None = None,
        backup: bool | None = None,
        down: bool | None = None,
    ) -> Server:
        """A copy with what a traffic policy sets, no longer draining.

        Checks only the values that change (the others were checked when `self`
        was built): traffic policies copy servers per proxy and per plan, and a
        full re-validation there costs more than the rest of the policy.
        """
        new = object.__new__(Server)
        for name in _SERVER_FIELDS:
            object.__setattr__(new, name, getattr(self, name))
        if weight is not None:
            object.__setattr__(
                new, "weight", _int_field("weight", weight, minimum=1, maximum=MAX_WEIGHT)
            )
        for flag, value in (("backup", backup), ("down", down)):
            if value is not None:
                if not isinstance(value, bool):
                    raise ModelError(f"{flag} must be true or false, got {value!r}")
                object.__setattr__(new, flag, value)
        object.__setattr__(new, "draining", False)
        return new

    @property
    def is_ip(self) -> bool:
        return ":" in self.host or self.host.replace(".", "").isdigit()

    @property
    def address(self) -> str:
        """`IP:port`, `[v6]:port` or `host:port`: the form `/detail` reports."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    def render(self) -> str:
        parts = ["server", self.address]
        if self.weight != DEFAULT_WEIGHT:
            parts.append(f"weight={self.weight}")
        if self.max_conns:
            parts.append(f"max_conns={self.max_conns}")
        if self.max_fails != DEFAULT_MAX_FAILS:
            parts.append(f"max_fails={self.max_fails}")
        if self.fail_timeout != DEFAULT_FAIL_TIMEOUT:
            parts.append(f"fail_timeout={self.fail_timeout}s")
        if self.backup:
            parts.append("backup")
        if self.down:
            parts.append("down")
        return " ".join(parts) + ";"


_SERVER_FIELDS = tuple(f.name for f in fields(Server))

# Upstream-level directives we will ever send. No variables (a variable nginx.conf
# does not already use poisons the worker), never `zone` (cannot work at run time).
BALANCERS = {"least_conn": 0, "ip_hash": 0, "random": 0}
RANDOM_VARIANTS = {(), ("two",), ("two", "least_conn")}
KEEPALIVE = {"keepalive": "count", "keepalive_requests": "count", "keepalive_timeout": "time"}
# Balancers with which nginx refuses `backup` servers.
NO_BACKUP_BALANCERS = {"ip_hash", "random"}
_TIME_RE = re.compile(r"([0-9]{1,7})(ms|s|m|h)?")  # ASCII digits only: \d matches other scripts


@dataclass(frozen=True, slots=True)
class Directive:
    """One allowlisted upstream-level directive, e.g. `least_conn` or `keepalive 16`."""

    name: str
    args: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not all(isinstance(a, str) for a in self.args):
            raise ModelError(f"directive must be words, got {self.name!r} {self.args!r}")
        if self.name in BALANCERS:
            if self.name == "random":
                if tuple(self.args) not in RANDOM_VARIANTS:
                    raise ModelError(
                        f"directive 'random' takes no argument, 'two' or 'two least_conn', "
                        f"got {' '.join(self.args)!r}"
                    )
            elif self.args:
                raise ModelError(f"directive {self.name!r} takes no argument")
        elif self.name in KEEPALIVE:
            if len(self.args) != 1:
                raise ModelError(f"directive {self.name!r} takes exactly one argument")
            arg = self.args[0]
            if KEEPALIVE[self.name] == "count":
                if not _COUNT_RE.fullmatch(arg) or not 1 <= int(arg) <= 1_000_000:
                    raise ModelError(f"{self.name} needs a count 1-1000000, got {arg!r}")
            elif not _TIME_RE.fullmatch(arg):
                raise ModelError(f"{self.name} needs a time like 60s or 500ms, got {arg!r}")
        else:
            allowed = ", ".join(sorted([*BALANCERS, *KEEPALIVE]))
            raise ModelError(f"directive {self.name!r} is not allowed; allowed: {allowed}")
        object.__setattr__(self, "args", tuple(self.args))

    @property
    def is_balancer(self) -> bool:
        return self.name in BALANCERS

    def render(self) -> str:
        return " ".join((self.name, *self.args)) + ";"

    @classmethod
    def parse(cls, text: str) -> Directive:
        """Parse `keepalive 16` (an optional trailing `;` is allowed)."""
        if not isinstance(text, str):
            raise ModelError(f"directive must be a string, got {text!r}")
        words = text.strip().removesuffix(";").split()
        if not words:
            raise ModelError("empty directive")
        return cls(words[0], tuple(words[1:]))


class EmptyPolicy(StrEnum):
    """What a proxy gets while the service behind an upstream has no endpoint."""

    KEEP = "keep"  # the last known servers (the store holds them)
    FALLBACK = "fallback"  # the configured fallback servers instead
    DOWN = "down"  # the last known servers, all marked `down` (nginx answers 502)


@dataclass(frozen=True, slots=True)
class TrafficPolicy:
    """Per-upstream choices `syncer.traffic` applies per proxy; never rendered.

    Part of `Upstream` equality, so a policy change is a change of the upstream.
    The default changes nothing: what the source says is what every proxy gets.
    """

    zone_aware: bool = False
    # Keep everything primary unless the proxy's zone has at least this many
    # ready endpoints and at least this fraction of all of them.
    min_local: int = 2
    min_local_fraction: float = 0.2
    # ip_hash and random cannot have backup servers: local ones get weight × this.
    local_weight_multiplier: int = 10
    slow_start: float = 0.0  # seconds; 0 = off
    slow_start_steps: int = 3
    empty: EmptyPolicy = EmptyPolicy.KEEP
    fallback: tuple[Server, ...] = ()
    drain_as_backup: bool = False
    drain_seconds: float = 30.0

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        for flag in ("zone_aware", "drain_as_backup"):
            if not isinstance(getattr(self, flag), bool):
                raise ModelError(f"{flag} must be true or false, got {getattr(self, flag)!r}")
        _int_field("min_local", self.min_local, minimum=1, maximum=MAX_SERVERS)
        set_(
            self,
            "min_local_fraction",
            _float_field("min_local_fraction", self.min_local_fraction, minimum=0, maximum=1),
        )
        _int_field(
            "local_weight_multiplier", self.local_weight_multiplier, minimum=1, maximum=MAX_WEIGHT
        )
        day = 24 * 3600.0
        set_(
            self, "slow_start", _float_field("slow_start", self.slow_start, minimum=0, maximum=day)
        )
        # One step would enter at full weight: not a ramp.
        _int_field("slow_start_steps", self.slow_start_steps, minimum=2, maximum=100)
        set_(
            self,
            "drain_seconds",
            _float_field("drain_seconds", self.drain_seconds, minimum=0, maximum=day),
        )
        try:
            set_(self, "empty", EmptyPolicy(self.empty))
        except ValueError as e:
            allowed = ", ".join(p.value for p in EmptyPolicy)
            raise ModelError(f"empty must be one of {allowed}, got {self.empty!r}") from e
        set_(self, "fallback", self._check_fallback())

    def _check_fallback(self) -> tuple[Server, ...]:
        if not isinstance(self.fallback, tuple | list) or not all(
            isinstance(s, Server) for s in self.fallback
        ):
            raise ModelError(f"fallback must be a list of servers, got {self.fallback!r}")
        servers = tuple(sorted(self.fallback))  # canonical, so equal policies compare equal
        if (self.empty is EmptyPolicy.FALLBACK) != bool(servers):
            raise ModelError("fallback servers are required with empty: fallback, and only then")
        if len(servers) > MAX_SERVERS:
            raise ModelError(f"fallback has {len(servers)} servers; at most {MAX_SERVERS}")
        if len({s.address for s in servers}) != len(servers):
            raise ModelError("fallback lists a server twice")
        if any(s.backup or s.draining for s in servers):
            raise ModelError("fallback servers cannot be backup or draining")
        return servers

    @property
    def needs_history(self) -> bool:
        """Whether the policy reads when endpoints appeared or started draining."""
        return self.slow_start > 0 or self.drain_as_backup


DEFAULT_TRAFFIC = TrafficPolicy()


def _sort_directives(directives: Iterable[Directive]) -> tuple[Directive, ...]:
    # The balancer must precede keepalive (nginx docs); a fixed order also makes
    # rendering canonical, so equal upstreams always produce equal bodies.
    order = {name: i for i, name in enumerate([*BALANCERS, *KEEPALIVE])}
    return tuple(sorted(directives, key=lambda d: order[d.name]))


@dataclass(frozen=True, slots=True)
class Upstream:
    """A named set of servers plus allowlisted directives, in canonical order."""

    name: str
    servers: tuple[Server, ...]
    directives: tuple[Directive, ...] = ()
    # Applied per proxy by `syncer.traffic`; never rendered (body and digest do not
    # depend on it), but part of equality so that a policy change is a change.
    traffic: TrafficPolicy = DEFAULT_TRAFFIC
    # Computed once, since planning reads them for every upstream of every proxy:
    # the rendered body, and whether any server is a host name rather than an IP.
    body: str = field(init=False, repr=False, compare=False, default="")
    has_hostnames: bool = field(init=False, repr=False, compare=False, default=False)
    digest: str = field(init=False, repr=False, compare=False, default="")  # body_hash(body)
    # Whether any server is draining: lets `syncer.traffic` pass the common case
    # through without looking at each server.
    has_draining: bool = field(init=False, repr=False, compare=False, default=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "name", normalize_name(self.name))
        servers = tuple(sorted(self.servers))
        if not servers:
            raise ModelError(f"upstream {self.name!r} has no server")
        if len(servers) > MAX_SERVERS:
            raise ModelError(
                f"upstream {self.name!r} has {len(servers)} servers; at most {MAX_SERVERS}"
            )
        if all(s.backup for s in servers):
            raise ModelError(f"upstream {self.name!r} has only backup servers")
        if all(s.backup or s.draining for s in servers):
            # Draining servers leave rotation; one must stay. A source with only
            # terminating endpoints serves them as plain servers (kube-proxy's
            # terminating fallback) rather than marking them all draining.
            raise ModelError(
                f"upstream {self.name!r} has no server that is neither backup nor draining"
            )
        if not isinstance(self.traffic, TrafficPolicy):
            raise ModelError(f"upstream {self.name!r}: traffic must be a TrafficPolicy")
        seen: set[str] = set()
        for server in servers:
            if server.address in seen:
                raise ModelError(f"upstream {self.name!r} lists {server.address} twice")
            seen.add(server.address)
        directives = _sort_directives(self.directives)
        names = [d.name for d in directives]
        if len(set(names)) != len(names):
            raise ModelError(f"upstream {self.name!r} repeats a directive: {names}")
        balancers = [d for d in directives if d.is_balancer]
        if len(balancers) > 1:
            raise ModelError(f"upstream {self.name!r} has more than one balancing method")
        if (
            balancers
            and balancers[0].name in NO_BACKUP_BALANCERS
            and any(s.backup for s in servers)
        ):
            raise ModelError(
                f"upstream {self.name!r}: {balancers[0].name} cannot be used with backup servers"
            )
        object.__setattr__(self, "servers", servers)
        object.__setattr__(self, "directives", directives)
        object.__setattr__(self, "body", self._render())
        object.__setattr__(self, "has_hostnames", any(not s.is_ip for s in servers))
        object.__setattr__(self, "digest", body_hash(self.body))
        object.__setattr__(self, "has_draining", any(s.draining for s in servers))

    def render(self) -> str:
        """The canonical POST body (see `_render`)."""
        return self.body

    def _render(self) -> str:
        """The canonical POST body: servers first, then the balancer, then keepalive.

        Servers come before any balancer directive, so a balancer can never be
        written before a `backup` server (which makes the module's POST fail).
        """
        return " ".join(
            [*(s.render() for s in self.servers), *(d.render() for d in self.directives)]
        )


def check_unique(upstreams: Iterable[Upstream]) -> dict[str, Upstream]:
    """Index upstreams by name; two that collide (after lower-casing) are an error."""
    out: dict[str, Upstream] = {}
    for upstream in upstreams:
        if upstream.name in out:
            raise ModelError(
                f"two upstreams are named {upstream.name!r} (names are case-insensitive)"
            )
        out[upstream.name] = upstream
    return out


# ---------------------------------------------------------------- parsers
# What the proxy reports. Parsers are tolerant of order, of a missing max_conns and of
# unknown keys, and raise ParseError (never anything else) on text they cannot read.


class ParseError(ValueError):
    """A proxy answer that does not have the documented shape."""


@dataclass(frozen=True, slots=True)
class ObservedUpstream:
    """An upstream as a proxy reports it.

    `servers` is None when only addresses are known (`GET /upstream/NAME`);
    `body` is set only on the head flavour, whose `/list` returns the body as posted.
    """

    name: str
    servers: tuple[Server, ...] | None
    body: str | None = None


# ASCII digits in the port: `\d` also matches other scripts' digits, which int() reads.
_ADDR_RE = re.compile(r"(?:\[(?P<v6>[0-9a-fA-F:.]+)\]|(?P<host>[^\s:\[\]]+)):(?P<port>[0-9]{1,5})")


def parse_address(text: str) -> tuple[str, int]:
    match = _ADDR_RE.fullmatch(text)
    if not match:
        raise ParseError(f"unreadable server address {text!r}")
    host = match.group("v6") or match.group("host")
    return host, int(match.group("port"))


# A changed /detail block mostly repeats lines of its last read (the client reparses
# only changed blocks, see DyupsClient). Bounded: under endpoint churn every new pod
# IP is a new line. 65,536 entries cost up to ~35 MiB and, with a read cycling over
# more lines than that, hit nothing; 8,192 keep the recent lines.
@functools.lru_cache(maxsize=8192)
def _parse_detail_server(line: str) -> Server:
    words = line.split()
    if len(words) < 2 or words[0] != "server":
        raise ParseError(f"expected 'server ADDR ...', got {line!r}")
    if words[1].startswith("unix:"):
        raise ParseError(f"unix sockets are not managed by dyups-syncer: {line!r}")
    host, port = parse_address(words[1])
    params: dict[str, int] = {}
    for word in words[2:]:
        key, sep, value = word.partition("=")
        if not sep or not _COUNT_RE.fullmatch(value):
            raise ParseError(f"bad parameter {word!r} in {line!r}")
        params[key] = int(value)
    try:
        return Server(
            host=host,
            port=port,
            weight=params.get("weight", DEFAULT_WEIGHT),
            max_fails=params.get("max_fails", DEFAULT_MAX_FAILS),
            fail_timeout=params.get("fail_timeout", DEFAULT_FAIL_TIMEOUT),
            backup=bool(params.get("backup", 0)),
            down=bool(params.get("down", 0)),
            max_conns=params.get("max_conns", 0),
            allow_hostname=True,
        )
    except ModelError as e:
        raise ParseError(f"bad server line {line!r}: {e}") from e


def parse_detail(text: str) -> dict[str, ObservedUpstream]:
    """Parse `GET /detail`: blocks of `NAME` then `server ...` lines, separated by blank lines."""
    return {name: parse_detail_block(name, block) for name, block in detail_blocks(text)}


def detail_blocks(text: str) -> Iterator[tuple[str, str]]:
    """`GET /detail` cut into (name, block text) without parsing the servers, so that a
    reader can parse only the blocks that differ from its last read."""
    for block in text.split("\n\n"):
        head, _, _ = block.lstrip().partition("\n")
        if not head.strip():
            continue
        name = head.strip().lower()
        if name.startswith("server ") or len(name.split()) != 1:
            raise ParseError(f"expected an upstream name, got {head!r}")
        yield name, block


def parse_detail_block(name: str, block: str) -> ObservedUpstream:
    """One block of `GET /detail` (its first line is the name, see `detail_blocks`)."""
    lines = [line for line in block.split("\n") if line.strip()]
    if len(lines) < 2:
        raise ParseError(f"upstream {name!r} is listed without any server")
    servers = tuple(sorted(_parse_detail_server(line) for line in lines[1:]))
    return ObservedUpstream(name=name, servers=servers)


def parse_list_classic(text: str) -> set[str]:
    """Parse classic `GET /list`: one name per line."""
    return {line.strip().lower() for line in text.split("\n") if line.strip()}


_HEAD_BLOCK_RE = re.compile(r"upstream (?P<name>[^\s{]+) \{\n(?P<body>.*?)\n\}\n", re.S)


def parse_list_head(text: str) -> dict[str, ObservedUpstream]:
    """Parse head `GET /list`: `upstream NAME {\\n<body as posted>\\n}\\n` blocks."""
    out: dict[str, ObservedUpstream] = {}
    pos = 0
    for match in _HEAD_BLOCK_RE.finditer(text):
        if text[pos : match.start()].strip():
            raise ParseError(f"unexpected text in head /list at offset {pos}")
        pos = match.end()
        name = match.group("name").lower()
        body = match.group("body")
        out[name] = ObservedUpstream(name=name, servers=_servers_from_body(body), body=body)
    if text[pos:].strip():
        raise ParseError(f"unexpected text in head /list at offset {pos}")
    return out


def _servers_from_body(body: str) -> tuple[Server, ...] | None:
    """Servers of a body we rendered; None if it is not in our canonical form."""
    servers: list[Server] = []
    for statement in body.split(";"):
        words = statement.split()
        if not words or words[0] != "server":
            continue
        try:
            servers.append(_server_from_render(words[1:]))
        except (ModelError, ParseError, ValueError, IndexError):
            return None
    return tuple(sorted(servers))


_RENDER_FLAGS = {"backup", "down"}
_RENDER_INTS = {"weight", "max_conns", "max_fails", "fail_timeout"}


def _server_from_render(words: list[str]) -> Server:
    host, port = parse_address(words[0])
    kwargs: dict[str, int | bool] = {}
    for word in words[1:]:
        key, sep, value = word.partition("=")
        if (key in _RENDER_FLAGS) == bool(sep) or (sep and key not in _RENDER_INTS):
            raise ParseError(f"unknown server parameter {word!r}")
        if not sep:
            kwargs[key] = True
        elif not _COUNT_RE.fullmatch(value.removesuffix("s") if key == "fail_timeout" else value):
            raise ParseError(f"bad number in {word!r}")
        else:
            kwargs[key] = int(value.removesuffix("s"))
    return Server(host=host, port=port, allow_hostname=True, **kwargs)  # type: ignore[arg-type]


def parse_upstream_addresses(text: str) -> list[str]:
    """Parse `GET /upstream/NAME`: `server ADDR` per line, addresses only."""
    out: list[str] = []
    for line in text.split("\n"):
        if not line.strip():
            continue
        words = line.split()
        if len(words) != 2 or words[0] != "server":
            raise ParseError(f"expected 'server ADDR', got {line!r}")
        out.append(words[1])
    return out


def normalize_address(address: str) -> str:
    """Canonical `host:port` for comparing reported addresses with ours."""
    host, port = parse_address(address)
    try:
        host = str(ipaddress.ip_address(host))
    except ValueError:
        host = host.lower()
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


# ---------------------------------------------------------------- bodies back
# The snapshot keeps each upstream as its canonical body: compact, and read back
# through the same validating constructors.


def upstream_from_body(name: str, body: str) -> Upstream:
    """Rebuild an upstream from a body this module rendered (host names allowed: the
    body was validated when it was first built)."""
    if not isinstance(body, str):
        raise ModelError(f"upstream {name!r}: body must be a string")
    servers: list[Server] = []
    directives: list[Directive] = []
    statements = body.split(";")
    if statements[-1].strip():
        raise ModelError(f"upstream {name!r}: body does not end with ';'")
    for statement in statements[:-1]:
        words = statement.split()
        if not words:
            raise ModelError(f"upstream {name!r}: empty statement")
        if words[0] == "server":
            try:
                servers.append(_server_from_render(words[1:]))
            except (ParseError, ValueError, IndexError, TypeError) as e:
                raise ModelError(f"upstream {name!r}: bad server {statement.strip()!r}") from e
        else:
            directives.append(Directive(words[0], tuple(words[1:])))
    return Upstream(name, tuple(servers), tuple(directives))
