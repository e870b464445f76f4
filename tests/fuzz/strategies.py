"""Hypothesis strategies for hostile inputs to every parser and adapter.

Three kinds of input:
* hostile text: arbitrary unicode, bytes read as latin-1, nginx's special characters
  (`;{}#$"'`), every kind of whitespace and control character, digits that are not
  ASCII (`²`, `١٦`) and numbers too long for `int()`;
* near-valid text: what a well-behaved proxy or operator writes (a /detail answer, a
  head /list, an upstreams file), then mutated a few times (a token inserted, a span
  dropped or repeated, a number replaced);
* documents in the API reference shapes (Kubernetes Service and EndpointSlice,
  Consul health entries, the configuration file) whose values are hostile, first
  with the types the API guarantees, then with any type at all.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
import string
from typing import Any

import yaml
from hypothesis import strategies as st

from syncer.model import (
    NO_BACKUP_BALANCERS,
    SANDBOX_NAME,
    Directive,
    Server,
    Upstream,
)

# ---------------------------------------------------------------- characters and text
NGINX_SPECIAL = list(";{}#$\"'\\")
WHITESPACE = list(" \t\n\r\x0b\x0c\x1c\x1d\x1e\x1f\x85\xa0\u1680\u2000\u2028\u2029\u3000")
CONTROL = [chr(c) for c in range(32)] + ["\x7f", "\x80", "\x9f"]
# str.isdigit() is true for all of these; int() reads the first five and refuses `²`.
ODD_DIGITS = list("١٦۳०௫²³¹")
ADDRESS_PUNCT = list("%=[]:/.-_@+,")

hostile_chars = st.one_of(
    st.sampled_from(NGINX_SPECIAL + WHITESPACE + CONTROL + ODD_DIGITS + ADDRESS_PUNCT),
    st.characters(codec="ascii"),
    st.characters(),
)
hostile_text = st.text(hostile_chars, max_size=30)
# Bytes off the wire, decoded the way a lenient reader would: latin-1, or UTF-8 with
# undecodable bytes kept as lone surrogates (written back out, they are not UTF-8).
bytes_text = st.one_of(
    st.binary(max_size=80).map(lambda b: b.decode("latin-1")),
    st.binary(max_size=80).map(lambda b: b.decode("utf-8", "surrogateescape")),
)
any_text = st.one_of(st.text(max_size=80), hostile_text, bytes_text)

# What a number field receives: in range, out of range, signed, padded, in other
# scripts, with units, or longer than int() accepts (4300 digits).
numberish = st.one_of(
    st.integers(-10, 70_000).map(str),
    st.integers(-(2**70), 2**70).map(str),
    st.sampled_from(
        ["", "0", "00", "-1", "+1", "1_000", "1e3", "0x10", " 7 ", "1.5", "inf", "nan", "65536"]
    ),
    st.text(st.characters(categories=["Nd", "No"]), min_size=1, max_size=6),
    st.sampled_from(["9" * 4301, "1" + "0" * 4400]),
)

json_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(), st.text(hostile_chars, max_size=12)
)
# Any JSON/YAML value, for fields whose type the source is supposed to guarantee.
wrong_values: st.SearchStrategy[Any] = st.one_of(
    json_scalars,
    st.lists(json_scalars, max_size=3),
    st.dictionaries(st.text(max_size=6), json_scalars, max_size=3),
)

# Inputs are mostly valid, with a few hostile fields: a hostile value only reaches
# the renderer if everything around it is acceptable.
HOSTILE_ONE_IN = 5


@st.composite
def mostly(draw: st.DrawFn, valid: st.SearchStrategy[Any], hostile: st.SearchStrategy[Any]) -> Any:
    """A valid value, or one time in HOSTILE_ONE_IN a hostile one (shrinks to valid)."""
    return draw(hostile if draw(st.integers(1, HOSTILE_ONE_IN)) == HOSTILE_ONE_IN else valid)


# ---------------------------------------------------------------- model values
# Built from integers and small alphabets rather than st.ip_addresses/st.from_regex:
# several times faster, which is what makes 100k examples per target affordable.
ipv4 = st.one_of(
    st.integers(0, 2**32 - 1), st.sampled_from([0, 2**32 - 1, 0x7F000001, 0x0A000001])
).map(lambda n: str(ipaddress.IPv4Address(n)))
ipv6 = st.one_of(
    st.integers(0, 2**128 - 1),
    st.integers(0, 2**32),  # ::a.b.c.d and ::1 style
    st.integers(0, 2**32 - 1).map(lambda n: (0xFFFF << 32) | n),  # IPv4-mapped
    st.integers(0, 2**64).map(lambda n: (0xFD00 << 112) | n),  # long runs of zeros
).map(lambda n: str(ipaddress.IPv6Address(n)))
_ALNUM = string.ascii_lowercase + string.digits
_alnum = st.text(_ALNUM, min_size=1, max_size=6)
_labels = st.one_of(_alnum, st.builds(lambda a, b: f"{a}-{b}", _alnum, _alnum))
hostnames = st.builds(
    lambda labels, dot: ".".join(labels) + dot,
    st.lists(_labels, min_size=1, max_size=4),
    st.sampled_from(["", "", "", "."]),
).filter(lambda h: not h.replace(".", "").isdigit())
# How a valid host may be written: compressed or not, bracketed, upper case.
host_spellings = st.one_of(
    ipv4,
    ipv6,
    ipv6.map(lambda h: ipaddress.ip_address(h).exploded.upper()),
    ipv6.map(lambda h: f"[{h}]"),
    hostnames.map(str.upper),
)
# A host written by someone hostile: valid ones, and near misses of every kind.
hostile_hosts = st.one_of(
    host_spellings,
    hostnames,
    st.builds(lambda ip, scope: f"{ip}%{scope}", ipv6, hostile_text),  # scoped IPv6
    st.builds(lambda ip, junk: f"{ip}{junk}", st.one_of(ipv4, ipv6), hostile_text),
    st.builds(lambda ip, port: f"{ip}:{port}", ipv4, numberish),
    st.sampled_from(["", " ", "010.0.0.1", "1.2.3", "::", "[::1", "unix:/tmp/s.sock", "*"]),
    hostile_text,
)

_NAME_REST = _ALNUM + "_.-"
names = st.builds(
    lambda first, rest: first + rest,
    st.sampled_from(_ALNUM + _ALNUM.upper()),
    st.text(_NAME_REST + string.ascii_uppercase, max_size=30),
).filter(lambda n: n.lower() != SANDBOX_NAME)
# At the length limit (200): a short name repeated, cut to 199 or 200 characters.
long_names = st.builds(
    lambda name, size: (name.lower() * 200)[:size], names, st.sampled_from([199, 200])
)
upstream_names = st.one_of(names, long_names)

servers = st.builds(
    Server,
    host=st.one_of(host_spellings, hostnames),
    port=st.integers(1, 65535),
    weight=st.one_of(st.just(1), st.integers(1, 1_000_000)),
    max_fails=st.one_of(st.just(1), st.integers(0, 1_000_000)),
    fail_timeout=st.one_of(st.just(10), st.integers(0, 365 * 24 * 3600)),
    backup=st.booleans(),
    down=st.booleans(),
    max_conns=st.one_of(st.just(0), st.integers(0, 1_000_000_000)),
    allow_hostname=st.just(True),
)

balancer_texts = st.sampled_from(
    ["least_conn", "ip_hash", "random", "random two", "random two least_conn"]
)
counts = st.integers(1, 1_000_000).map(str)
times = st.builds(
    lambda n, unit: f"{n}{unit}",
    st.integers(0, 9_999_999),
    st.sampled_from(["", "ms", "s", "m", "h"]),
)


keepalive_texts = st.one_of(
    counts.map(lambda n: f"keepalive {n}"),
    counts.map(lambda n: f"keepalive_requests {n}"),
    times.map(lambda t: f"keepalive_timeout {t}"),
)


@st.composite
def directive_sets(draw: st.DrawFn) -> tuple[Directive, ...]:
    """Allowlisted directives an upstream may carry together (one balancer at most)."""
    texts: list[str] = []
    if draw(st.booleans()):
        texts.append(draw(balancer_texts))
    if draw(st.booleans()):
        texts.append(f"keepalive {draw(counts)}")
    if draw(st.booleans()):
        texts.append(f"keepalive_requests {draw(counts)}")
    if draw(st.booleans()):
        texts.append(f"keepalive_timeout {draw(times)}")
    return tuple(Directive.parse(t) for t in draw(st.permutations(texts)))


@st.composite
def upstreams(draw: st.DrawFn, max_servers: int = 5) -> Upstream:
    """A valid upstream: every kind of host, parameter and directive."""
    directives = draw(directive_sets())
    srv = draw(st.lists(servers, min_size=1, max_size=max_servers, unique_by=lambda s: s.address))
    if any(d.name in NO_BACKUP_BALANCERS for d in directives):
        srv = [dataclasses.replace(s, backup=False) for s in srv]
    elif all(s.backup for s in srv):
        srv[0] = dataclasses.replace(srv[0], backup=False)
    return Upstream(draw(upstream_names), tuple(srv), directives)


def upstream_lists(max_size: int = 3) -> st.SearchStrategy[list[Upstream]]:
    return st.lists(upstreams(), max_size=max_size, unique_by=lambda u: u.name)


directive_names = st.sampled_from(
    [
        "least_conn",
        "ip_hash",
        "random",
        "keepalive",
        "keepalive_requests",
        "keepalive_timeout",
        "zone",
        "hash",
        "server",
        "check",
        "sticky",
    ]
)
# Directive text as an operator or an annotation might write it.
hostile_directive_texts = st.one_of(
    balancer_texts,
    st.builds(lambda n, c: f"{n} {c}", directive_names, numberish),
    st.builds(lambda n, t: f"{n} {t}", directive_names, times),
    st.builds(lambda n, t: f"{n} {t}", directive_names, hostile_text),
    st.sampled_from(
        ["zone shared 64k", "hash $request_uri consistent", "keepalive $x", "random two two", ""]
    ),
    hostile_text,
)

# ---------------------------------------------------------------- proxy answers
_DETAIL_KEYS = ["weight", "max_conns", "max_fails", "fail_timeout", "backup", "down"]


@st.composite
def detail_line(draw: st.DrawFn, server: Server) -> str:
    """A /detail server line, keys in any order, max_conns missing on older modules."""
    values = {
        "weight": server.weight,
        "max_conns": server.max_conns,
        "max_fails": server.max_fails,
        "fail_timeout": server.fail_timeout,
        "backup": int(server.backup),
        "down": int(server.down),
    }
    keys = draw(st.permutations(_DETAIL_KEYS))
    if server.max_conns == 0 and draw(st.booleans()):
        keys = [k for k in keys if k != "max_conns"]
    return " ".join(["server", server.address, *(f"{k}={values[k]}" for k in keys)])


@st.composite
def detail_answers(draw: st.DrawFn) -> tuple[list[Upstream], str]:
    """A `GET /detail` answer for some upstreams (names in any case), and the upstreams."""
    ups = draw(upstream_lists())
    blocks = []
    for up in ups:
        name = draw(st.sampled_from([up.name, up.name.upper()]))
        lines = [draw(detail_line(s)) for s in draw(st.permutations(up.servers))]
        blocks.append("\n".join([name, *lines]) + "\n\n")
    return ups, "".join(blocks)


def head_list_text(ups: list[Upstream]) -> str:
    return "".join(f"upstream {u.name} {{\n{u.render()}\n}}\n" for u in ups)


def classic_list_text(ups: list[Upstream]) -> str:
    return "".join(f"{u.name}\n" for u in ups)


def upstream_addresses_text(up: Upstream) -> str:
    return "".join(f"server {s.address}\n" for s in up.servers)


WIRE_TOKENS = [
    "server",
    "server ",
    " ",
    "\n",
    "\n\n",
    "\r\n",
    "\t",
    ";",
    "{",
    "}",
    "=",
    "weight=",
    "backup=1",
    "down",
    "max_conns=",
    "fail_timeout=10s",
    "[",
    "]",
    ":",
    "::",
    "%eth0",
    "unix:/tmp/s.sock",
    "upstream x {\n",
    "\n}\n",
    "zone z 64k;",
    "keepalive ",
    "$host",
    "#",
    "'",
    '"',
    "\x00",
    "\x85",
    "\u2028",
]
_NUMBER_RE = re.compile(r"\d+")


@st.composite
def mutated(draw: st.DrawFn, text: str, max_mutations: int = 3) -> str:
    """`text` after a few insertions, deletions, repeats or replaced numbers."""
    for _ in range(draw(st.integers(0, max_mutations))):
        i = draw(st.integers(0, len(text)))
        j = draw(st.integers(i, min(len(text), i + 12)))
        op = draw(st.sampled_from(["insert", "delete", "repeat", "replace", "number"]))
        if op == "insert":
            token = draw(st.one_of(st.sampled_from(WIRE_TOKENS), hostile_text, numberish))
            text = text[:i] + token + text[i:]
        elif op == "delete":
            text = text[:i] + text[j:]
        elif op == "repeat":
            text = text[:j] + text[i:j] + text[j:]
        elif op == "replace":
            text = text[:i] + draw(st.sampled_from(WIRE_TOKENS)) + text[j:]
        else:
            numbers = list(_NUMBER_RE.finditer(text))
            if numbers:
                m = draw(st.sampled_from(numbers))
                text = text[: m.start()] + draw(numberish) + text[m.end() :]
    return text


def near(valid: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    """Valid texts, and mutations of them."""
    return valid.flatmap(lambda text: mutated(text))


detail_texts = st.one_of(any_text, near(detail_answers().map(lambda pair: pair[1])))
classic_list_texts = st.one_of(any_text, near(upstream_lists().map(classic_list_text)))
head_list_texts = st.one_of(any_text, near(upstream_lists().map(head_list_text)))
upstream_addresses_texts = st.one_of(any_text, near(upstreams().map(upstream_addresses_text)))
bodies = st.one_of(any_text, near(upstreams().map(Upstream.render)))


# ---------------------------------------------------------------- Kubernetes and Consul
def value_of(
    valid: st.SearchStrategy[Any], hostile: st.SearchStrategy[Any], wrong_types: bool
) -> st.SearchStrategy[Any]:
    """A field's value: hostile content of the right type, or with `wrong_types`, any type."""
    return mostly(valid, st.one_of(hostile, wrong_values) if wrong_types else hostile)


PREFIX = "dyups-syncer.io"
SERVICE_NAME_LABEL = "kubernetes.io/service-name"
TRIGGER_TIME = "endpoints.kubernetes.io/last-change-trigger-time"
k8s_names = _labels
port_names = st.one_of(st.sampled_from(["", "http", "https", "grpc"]), k8s_names, hostile_text)
small_counts = st.integers(0, 100).map(str)
valid_directive_texts = directive_sets().map(lambda ds: [d.render()[:-1] for d in ds])
directive_separators = st.sampled_from([";", ",", "; ", ", ", "\n"])


def directive_annotations(wrong_types: bool) -> st.SearchStrategy[Any]:
    """`least_conn; keepalive 16`: allowlisted texts, with hostile ones mixed in."""
    texts = st.one_of(
        valid_directive_texts,
        st.lists(mostly(balancer_texts, hostile_directive_texts), min_size=1, max_size=3),
    )
    joined = st.builds(lambda ts, sep: sep.join(ts), texts, directive_separators)
    return value_of(joined, st.one_of(hostile_text, numberish), wrong_types)


def number_annotations(wrong_types: bool, unit: str = "") -> st.SearchStrategy[Any]:
    valid = st.one_of(small_counts, small_counts.map(lambda n: n + unit))
    hostile = st.one_of(numberish, numberish.map(lambda n: n + "s"), hostile_text)
    return value_of(valid, hostile, wrong_types)


# Traffic-policy values (docs/traffic.md), as annotations and meta carry them.
_flag_words = st.sampled_from(["true", "false", "yes", "no", "on", "off", "1", "0", " TRUE "])
_durations = st.builds(
    lambda n, frac, unit: f"{n}{frac}{unit}",
    st.integers(0, 200),
    st.sampled_from(["", "", ".5", ".25"]),
    st.sampled_from(["", "s", "ms", "m"]),
)
_fallbacks = st.lists(
    st.builds(
        lambda host, port: f"{host}:{port}",
        st.one_of(ipv4, ipv6.map(lambda h: f"[{h}]")),
        st.integers(1, 65535),
    ),
    min_size=1,
    max_size=3,
).map(",".join)
_POLICY_VALUES: dict[str, st.SearchStrategy[str]] = {
    "zone-aware": _flag_words,
    "min-local": small_counts,
    "min-local-fraction": st.sampled_from(["0", "0.2", ".5", "1", "1.0", "0.999"]),
    "local-weight-multiplier": small_counts,
    "slow-start": _durations,
    "slow-start-steps": small_counts,
    "empty": st.sampled_from(["keep", "fallback", "down", "KEEP"]),
    "fallback": _fallbacks,
    "drain-as-backup": _flag_words,
    "drain-seconds": _durations,
}
POLICY_KEYS = list(_POLICY_VALUES)


def policy_annotations(key: str, wrong_types: bool) -> st.SearchStrategy[Any]:
    """The value of one traffic-policy key: valid, near misses, hostile text."""
    hostile = st.one_of(
        numberish,
        hostile_text,
        st.builds(lambda v, junk: v + junk, _POLICY_VALUES[key], hostile_text),
        st.builds(lambda h, p: f"{h}:{p}", hostile_hosts, numberish),
        st.sampled_from(["1e3", "-1", "nan", "inf", "1h", "1.", ".", "10.0.0.1:80;", ""]),
    )
    return value_of(_POLICY_VALUES[key], hostile, wrong_types)


@st.composite
def k8s_services(draw: st.DrawFn, wrong_types: bool = False) -> dict[str, Any]:
    """A v1 Service in the API reference shape, opting in (mostly) with annotations."""
    port_list = []
    count = draw(mostly(st.just(1), st.integers(1, 3)))
    wanted_names = draw(
        st.lists(mostly(k8s_names, port_names), min_size=count, max_size=count, unique=True)
    )
    for name in wanted_names:
        port: dict[str, Any] = {
            "port": draw(value_of(st.integers(1, 65535), st.integers(), wrong_types)),
            "targetPort": draw(st.one_of(st.integers(1, 65535), k8s_names)),
            "protocol": "TCP",
        }
        if name or draw(st.booleans()):
            port["name"] = draw(value_of(st.just(name), port_names, wrong_types))
        port_list.append(port)
    wanted = st.sampled_from([str(p.get("name", "")) for p in port_list] + [""])
    candidates: dict[str, st.SearchStrategy[Any]] = {
        "upstream": value_of(
            st.one_of(st.sampled_from(["", "true"]), upstream_names),
            st.one_of(hostile_text, numberish),
            wrong_types,
        ),
        "port": value_of(wanted, st.one_of(port_names, numberish), wrong_types),
        "weight": number_annotations(wrong_types),
        "max-fails": number_annotations(wrong_types),
        "fail-timeout": number_annotations(wrong_types, unit="s"),
        "directives": directive_annotations(wrong_types),
    }
    chosen = draw(st.lists(st.sampled_from(sorted(candidates)), unique=True))
    # A few traffic-policy keys at most: each is hostile now and then, and one bad
    # value rejects the service (the endpoints would then go unexercised).
    for key in draw(st.lists(st.sampled_from(POLICY_KEYS), unique=True, max_size=3)):
        candidates[key] = policy_annotations(key, wrong_types)
        chosen.append(key)
    if draw(mostly(st.just(True), st.just(False))):
        chosen = ["upstream", *(c for c in chosen if c != "upstream")]  # opts in
    if len(port_list) > 1 and draw(mostly(st.just(True), st.just(False))):
        chosen = ["port", *(c for c in chosen if c != "port")]  # says which port
    # Names and namespaces are DNS labels (the API server checks them).
    labels = value_of(k8s_names, hostile_text, wrong_types) if wrong_types else k8s_names
    annotations = {f"{PREFIX}/{c}": draw(candidates[c]) for c in chosen}
    annotations.update(draw(st.dictionaries(st.text(max_size=12), hostile_text, max_size=1)))
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": draw(labels),
            "namespace": draw(labels),
            "annotations": annotations,
        },
        "spec": {"type": "ClusterIP", "ports": port_list},
    }


_ADDRESSES = {"IPv4": ipv4, "IPv6": ipv6, "FQDN": hostnames}


@st.composite
def k8s_endpoint(draw: st.DrawFn, address_type: str, wrong_types: bool) -> dict[str, Any]:
    valid_address = _ADDRESSES.get(address_type, ipv4)
    addresses = st.lists(value_of(valid_address, hostile_hosts, False), min_size=1, max_size=2)
    flags = st.one_of(st.booleans(), st.none())
    conditions = draw(
        mostly(
            st.just({"ready": True, "serving": True, "terminating": False}),
            st.fixed_dictionaries(
                {},
                optional={
                    k: value_of(flags, flags, wrong_types)
                    for k in ("ready", "serving", "terminating")
                },
            ),
        )
    )
    endpoint: dict[str, Any] = {
        "addresses": draw(value_of(addresses, st.just([]), wrong_types)),
        "conditions": conditions,
        "targetRef": {"kind": "Pod", "name": draw(k8s_names)},
    }
    if draw(st.booleans()):
        endpoint["zone"] = draw(value_of(k8s_names, hostile_text, wrong_types))
    if draw(st.booleans()):
        endpoint["nodeName"] = draw(value_of(k8s_names, hostile_text, wrong_types))
    if draw(st.booleans()):
        names_ = st.lists(value_of(k8s_names, hostile_text, wrong_types), max_size=3)
        for_zones = names_.map(lambda ns: [{"name": n} for n in ns])
        endpoint["hints"] = draw(
            value_of(st.fixed_dictionaries({"forZones": for_zones}), wrong_values, wrong_types)
        )
    return endpoint


@st.composite
def k8s_slices(
    draw: st.DrawFn, service: dict[str, Any], wrong_types: bool = False
) -> dict[str, Any]:
    """A discovery.k8s.io/v1 EndpointSlice of `service`, ports named like the Service's."""
    svc_ports = [p.get("name", "") for p in service["spec"]["ports"]]
    address_type = draw(
        mostly(st.sampled_from(["IPv4", "IPv6", "FQDN"]), st.sampled_from(["ipv4", "", "IP"]))
    )
    ports = []
    port_names_here = draw(mostly(st.just(svc_ports), st.lists(port_names, max_size=2)))
    for name in port_names_here:
        entry: dict[str, Any] = {
            "port": draw(
                value_of(st.integers(1, 65535), st.one_of(st.none(), st.integers()), wrong_types)
            ),
            "protocol": "TCP",
        }
        if name or draw(st.booleans()):
            entry["name"] = name
        ports.append(entry)
    meta = service["metadata"]
    annotations: dict[str, Any] = {}
    if draw(st.booleans()):
        annotations[TRIGGER_TIME] = draw(
            st.one_of(st.datetimes().map(lambda d: d.isoformat() + "Z"), hostile_text)
        )
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": f"{meta.get('name')}-{draw(k8s_names)}",
            "namespace": meta.get("namespace"),
            "labels": {SERVICE_NAME_LABEL: meta.get("name")},
            "annotations": annotations,
        },
        "addressType": address_type,
        "endpoints": draw(
            st.lists(
                k8s_endpoint(address_type, wrong_types),
                min_size=draw(mostly(st.just(1), st.just(0))),
                max_size=4,
            )
        ),
        "ports": ports,
    }


@st.composite
def k8s_cases(
    draw: st.DrawFn, wrong_types: bool = False
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    service = draw(k8s_services(wrong_types))
    count = draw(mostly(st.integers(1, 3), st.just(0)))
    return service, draw(st.lists(k8s_slices(service, wrong_types), min_size=count, max_size=count))


META_PREFIX = "dyups-"
CONSUL_STATUSES = ["passing", "warning", "critical", "maintenance"]
backup_values = st.sampled_from(["true", "false", "1", "0", "yes", "no"])


@st.composite
def consul_entry(draw: st.DrawFn, shared_meta: dict[str, Any], wrong_types: bool) -> dict[str, Any]:
    """One entry of `/v1/health/service/<name>`: hostile Meta, Tags, Address, Port, Weights."""
    candidates: dict[str, st.SearchStrategy[Any]] = {
        "weight": number_annotations(wrong_types),
        "max-fails": number_annotations(wrong_types),
        "fail-timeout": number_annotations(wrong_types, unit="s"),
        "backup": value_of(backup_values, st.one_of(hostile_text, st.just(" TRUE ")), wrong_types),
    }
    meta = dict(shared_meta)
    for name in draw(st.lists(st.sampled_from(sorted(candidates)), unique=True)):
        meta[f"{META_PREFIX}{name}"] = draw(candidates[name])
    meta.update(draw(st.dictionaries(st.text(max_size=10), hostile_text, max_size=1)))
    node_name = draw(mostly(k8s_names, hostile_text))
    service_id = draw(st.text(max_size=8))
    weights = value_of(st.integers(1, 100), st.integers(), wrong_types)
    status = mostly(st.sampled_from(["passing", "warning"]), st.sampled_from(CONSUL_STATUSES))
    return {
        "Node": {
            "ID": "0e1f",
            "Node": node_name,
            "Address": draw(mostly(st.one_of(ipv4, ipv6), hostile_hosts)),
            "Datacenter": "dc1",
            "TaggedAddresses": {},
            "Meta": {"zone": draw(value_of(k8s_names, hostile_text, wrong_types))},
        },
        "Service": {
            "ID": service_id,
            "Service": "web",
            "Tags": draw(
                value_of(st.just(["dyups"]), st.lists(hostile_text, max_size=2), wrong_types)
            ),
            "Address": draw(
                value_of(st.one_of(st.just(""), ipv4, ipv6), hostile_hosts, wrong_types)
            ),
            "Port": draw(value_of(st.integers(1, 65535), st.integers(), wrong_types)),
            "Meta": meta,
            "Weights": {"Passing": draw(weights), "Warning": draw(weights)},
        },
        "Checks": [
            {"Node": node_name, "CheckID": "serfHealth", "Status": "passing", "ServiceID": ""},
            {
                "Node": node_name,
                "CheckID": f"service:{service_id}",
                "Status": draw(value_of(status, hostile_text, wrong_types)),
                "ServiceID": service_id,
            },
        ],
    }


@st.composite
def consul_cases(draw: st.DrawFn, wrong_types: bool = False) -> tuple[str, list[dict[str, Any]]]:
    """A service name and its health entries; instances mostly agree on name and directives."""
    candidates: dict[str, st.SearchStrategy[Any]] = {
        "upstream": value_of(upstream_names, st.one_of(hostile_text, st.just("")), wrong_types),
        "directives": directive_annotations(wrong_types),
    }
    chosen = draw(st.lists(st.sampled_from(sorted(candidates)), unique=True))
    for key in draw(st.lists(st.sampled_from(POLICY_KEYS), unique=True, max_size=3)):
        candidates[key] = policy_annotations(key, wrong_types)
        chosen.append(key)
    shared = {f"{META_PREFIX}{name}": draw(candidates[name]) for name in chosen}
    entries = []
    for _ in range(draw(st.integers(0, 4))):
        own = draw(mostly(st.just(shared), st.just({})))  # now and then an instance disagrees
        entries.append(draw(consul_entry(own, wrong_types)))
    return draw(mostly(names, hostile_text)), entries


# ---------------------------------------------------------------- YAML documents
# Plain scalars that YAML 1.1 (PyYAML) reads as something else than a string, or
# cannot read at all; an operator types them without quotes.
TRICKY_SCALARS = [
    "yes",
    "no",
    "on",
    "off",
    "null",
    "~",
    "010",
    "0x1f",
    "0b101",
    "1_000",
    "1:30",
    "1.50",
    ".inf",
    ".nan",
    "2001-12-14",
    "2001-13-01",
    "2001-02-30",
    "2001-12-14 25:00:00",
    "2001-12-14t21:59:43.10-05:00",
    "!!int x",
    "!!float x",
    "!!bool x",
    "!!timestamp x",
    "!!binary ###",
    "!!python/object:os.system x",
    "&a x",
    "*a",
    "<<",
    "=",
    "'unterminated",
    "[1, 2",
    "{a: 1}",
    "9" * 4400,
    "0x" + "f" * 3600,  # a valid YAML integer of 4,335 decimal digits: str() refuses it
    "-0x" + "f" * 3600,
]
plain_scalars = st.one_of(
    st.sampled_from(TRICKY_SCALARS),
    numberish.filter(lambda s: s.strip() == s and "\n" not in s),
    names,
    st.text(st.characters(codec="ascii", exclude_characters="\n\r"), max_size=20),
)


def dump(data: Any) -> str:
    return yaml.safe_dump(data, default_flow_style=False, allow_unicode=True, sort_keys=False)


def _leaf_paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every path in a document: mapping keys and list indexes, down to the leaves."""
    out = [prefix]
    if isinstance(node, dict):
        for key, value in node.items():
            out += _leaf_paths(value, (*prefix, key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            out += _leaf_paths(value, (*prefix, i))
    return out


def _replace(node: Any, path: tuple[Any, ...], value: Any) -> Any:
    if not path:
        return value
    head, rest = path[0], path[1:]
    if isinstance(node, dict):
        return {**node, head: _replace(node[head], rest, value) if rest else value}
    copy = list(node)
    copy[head] = _replace(copy[head], rest, value)
    return copy


def _delete(node: Any, path: tuple[Any, ...]) -> Any:
    if len(path) == 1:
        if isinstance(node, dict):
            return {k: v for k, v in node.items() if k != path[0]}
        return [v for i, v in enumerate(node) if i != path[0]]
    head = path[0]
    if isinstance(node, dict):
        return {**node, head: _delete(node[head], path[1:])}
    copy = list(node)
    copy[head] = _delete(copy[head], path[1:])
    return copy


# Values a typed field may meet: near misses of durations, sizes, URLs, names.
field_values: st.SearchStrategy[Any] = st.one_of(
    wrong_values,
    numberish,
    st.builds(lambda n, u: f"{n}{u}", numberish, st.sampled_from(["ms", "s", "m", "h", "k", "x"])),
    st.sampled_from(["http://", "ftp://x", "http://h:99999", "http://[::1", "127.0.0.1:", ":"]),
    hostile_text,
)


@st.composite
def mutated_document(draw: st.DrawFn, base: dict[str, Any]) -> Any:
    """`base` with a few fields replaced by hostile values, deleted, or unknown ones added."""
    doc: Any = base
    for _ in range(draw(st.integers(1, 3))):
        paths = _leaf_paths(doc)
        path = draw(st.sampled_from(paths))
        op = draw(st.sampled_from(["replace", "replace", "delete", "add"]))
        if op == "replace" or not path:
            doc = _replace(doc, path, draw(field_values))
        elif op == "delete":
            doc = _delete(doc, path)
        else:
            parent = path[:-1]
            node = doc
            for key in parent:
                node = node[key]
            if isinstance(node, dict):
                doc = _replace(doc, (*parent, draw(st.text(max_size=8))), draw(field_values))
            else:
                doc = _replace(doc, parent, [*node, draw(field_values)])
        if not isinstance(doc, dict):
            break
    return doc


# ---------------------------------------------------------------- configuration
CONFIG_BASE: dict[str, Any] = {
    "sources": [
        {"type": "file", "path": "upstreams.yaml", "poll_interval": "1s"},
        {
            "type": "kubernetes",
            "namespaces": ["shop"],
            "static": {"shop/web:http": "web"},
            "client": {"api_url": "http://127.0.0.1:8001"},
        },
        {"type": "consul", "address": "127.0.0.1:8500", "statuses": ["passing"], "wait": "5m"},
    ],
    "proxies": {
        "static": [
            {
                "url": "http://127.0.0.1:8081",
                "shm_zone_size": "2m",
                "read_msg_timeout": "1s",
                "nginx_workers": 2,
                "headers": {"X-Token": "t"},
                "basic_auth": {"username": "u", "password": "p"},
            }
        ],
        "kubernetes": {"namespace": "edge", "label_selector": "app=nginx", "port": 8081},
    },
    "snapshot_path": "state/snapshot.json",
    "resync_interval": "10s",
    "probe_interval": "1s",
    "debounce": "100ms",
    "policy": "sync",
    "max_delete_fraction": 0.5,
    "owned_prefix": "",
    "adopt": ["legacy"],
    "listen": "127.0.0.1:9105",
    "log": {"level": "info", "format": "json"},
    "leader_election": {"enabled": True, "lease_duration": "15s", "renew_deadline": "10s"},
}
CONFIG_KEYS = [
    "sources",
    "proxies",
    "snapshot_path",
    "resync_interval",
    "debounce",
    "policy",
    "max_delete_fraction",
    "owned_prefix",
    "adopt",
    "listen",
    "log",
    "leader_election",
]


@st.composite
def config_texts(draw: st.DrawFn) -> str:
    """A configuration file: mutated documents, plain tricky scalars, or any text."""
    kind = draw(st.sampled_from(["document", "scalar", "text"]))
    if kind == "document":
        return dump(draw(mutated_document(CONFIG_BASE)))
    if kind == "scalar":
        key = draw(st.sampled_from([*CONFIG_KEYS, "surprise"]))
        scalar = draw(plain_scalars)
        form = draw(st.sampled_from(["{k}: {v}\n", "{k}: [{v}]\n", "{k}:\n  - {v}\n", "{v}: 1\n"]))
        return dump(CONFIG_BASE) + form.format(k=key, v=scalar)
    return draw(st.one_of(any_text, near(st.just(dump(CONFIG_BASE)))))


_ENV_PATHS = [
    "DEBOUNCE",
    "SOURCES",
    "SOURCES__0",
    "SOURCES__0__PATH",
    "SOURCES__X",
    "SOURCES__-1",
    "SOURCES__3__TYPE",
    "PROXIES",
    "PROXIES__STATIC__0__URL",
    "PROXIES__STATIC__0__BASIC_AUTH__PASSWORD",
    "PROXIES__KUBERNETES__PORT",
    "SNAPSHOT_PATH__0",
    "ADOPT",
    "ADOPT__1",
    "LOG__LEVEL",
    "LEADER_ELECTION__LEASE_DURATION",
    "",
    "__",
]
env_values = st.one_of(
    hostile_text,
    numberish,
    st.sampled_from(
        ["[a, b]", "{x: 1}", "[", "{", "[!!timestamp x]", "[2001-13-01]", "[" + "9" * 4400 + "]"]
    ),
)
config_envs = st.dictionaries(
    st.one_of(
        st.sampled_from(_ENV_PATHS).map(lambda p: f"DYUPS_SYNCER_{p}"),
        st.text(max_size=20).map(lambda p: f"DYUPS_SYNCER_{p}"),
        st.just("UNRELATED"),
    ),
    env_values,
    max_size=3,
)


# ---------------------------------------------------------------- the file source
def readme_server(server: Server) -> Any:
    """A server the way the README writes one: `IP:port`, or a mapping."""
    fields: dict[str, Any] = {"address": server.address}
    if server.weight != 1:
        fields["weight"] = server.weight
    if server.max_fails != 1:
        fields["max_fails"] = server.max_fails
    if server.fail_timeout != 10:
        fields["fail_timeout"] = f"{server.fail_timeout}s"
    if server.max_conns:
        fields["max_conns"] = server.max_conns
    if server.backup:
        fields["backup"] = True
    if server.down:
        fields["down"] = True
    return server.address if len(fields) == 1 else fields


def _flow(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str) and value.startswith("["):
        return f'"{value}"'
    return str(value)


def yaml_retypes(name: str) -> bool:
    """Whether YAML reads the plain scalar `name` as something else than that string
    (`no`, `010`, `1.5`, `null`, `2001-12-14`): such an upstream name must be quoted."""
    return yaml.safe_load(f"{name}: 0") != {name: 0}


def readme_document(ups: list[Upstream], *, quote_names: bool = True) -> str:
    """An upstreams file written by hand as the README shows it (plain scalars; names
    that YAML would read as another type quoted, as the README asks, unless not
    `quote_names`)."""
    lines = ["upstreams:"]
    for up in ups:
        key = f'"{up.name}"' if quote_names and yaml_retypes(up.name) else up.name
        lines += [f"  {key}:", "    servers:"]
        for server in up.servers:
            item = readme_server(server)
            if isinstance(item, str):
                lines.append(f"      - {_flow(item)}")
            else:
                pairs = ", ".join(f"{k}: {_flow(v)}" for k, v in item.items())
                lines.append(f"      - {{{pairs}}}")
        if up.directives:
            lines.append(f"    directives: [{', '.join(d.render()[:-1] for d in up.directives)}]")
    return "\n".join(lines) + "\n"


def file_data(ups: list[Upstream]) -> dict[str, Any]:
    """The same document as data (for mutations and yaml.safe_dump)."""
    return {
        "upstreams": {
            up.name: {
                "servers": [readme_server(s) for s in up.servers],
                "directives": [d.render()[:-1] for d in up.directives],
            }
            for up in ups
        }
    }


@st.composite
def file_texts(draw: st.DrawFn) -> str:
    """An upstreams file: mutated data, hand-written with tricky scalars, or any text."""
    kind = draw(st.sampled_from(["document", "scalar", "text"]))
    ups = draw(upstream_lists(max_size=3))
    if kind == "document":
        return dump(draw(mutated_document(file_data(ups))))
    if kind == "scalar":
        scalar = draw(plain_scalars)
        form = draw(
            st.sampled_from(
                [
                    "  {v}:\n    servers: [10.0.0.1:80]\n",
                    "  u{n}:\n    servers: [{v}]\n",
                    "  u{n}:\n    servers:\n      - {{address: 10.0.0.1:80, weight: {v}}}\n",
                    "  u{n}:\n    servers:\n      - {{host: {v}, port: 80}}\n",
                    "  u{n}:\n    servers:\n      - {{address: 10.0.0.1:80, fail_timeout: {v}}}\n",
                    "  u{n}:\n    servers:\n      - {{address: 10.0.0.1:80, fail_timeout: {v}s}}\n",
                    "  u{n}:\n    servers: [10.0.0.1:80]\n    directives: [{v}]\n",
                ]
            )
        )
        text = readme_document(ups) if ups else "upstreams:\n"
        return text + form.format(v=scalar, n=len(ups))
    return draw(st.one_of(any_text, near(st.just(readme_document(ups)))))
