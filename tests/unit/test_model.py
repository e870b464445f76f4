import ipaddress
import string

import pytest
from hypothesis import given
from hypothesis import strategies as st

from syncer.model import (
    Directive,
    ModelError,
    ObservedUpstream,
    ParseError,
    Server,
    Upstream,
    canonical_host,
    check_unique,
    normalize_name,
    parse_detail,
    parse_list_classic,
    parse_list_head,
    parse_upstream_addresses,
    upstream_from_body,
)

# ';' may appear only as a statement terminator (checked separately).
FORBIDDEN = set("{}#$\"'") | (set(string.whitespace) - {" "}) | {chr(c) for c in range(32)}


def test_render_canonical_body():
    up = Upstream(
        "Web",
        (
            Server("10.0.0.7", 8080, weight=3, max_fails=2, fail_timeout=5),
            Server("fd00::9", 8080, backup=True),
        ),
        (Directive.parse("keepalive 16"), Directive.parse("least_conn")),
    )
    assert up.name == "web"
    assert up.render() == (
        "server 10.0.0.7:8080 weight=3 max_fails=2 fail_timeout=5s; "
        "server [fd00::9]:8080 backup; least_conn; keepalive 16;"
    )


def test_ipv6_is_bracketed_and_compressed():
    assert Server("[FD00:0::9]", 80).address == "[fd00::9]:80"


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"host": "10.0.0.1;", "port": 80}, "host"),
        ({"host": "a b", "port": 80}, "host"),
        ({"host": "$host", "port": 80}, "host"),
        ({"host": "::%;", "port": 80}, "host"),  # Python parses IPv6 scope ids of any text
        ({"host": "fe80::1%eth0", "port": 80}, "host"),
        ({"host": "10.0.0.1", "port": 0}, "port"),
        ({"host": "10.0.0.1", "port": 65536}, "port"),
        ({"host": "10.0.0.1", "port": 80, "weight": 0}, "weight"),
        ({"host": "10.0.0.1", "port": 80, "weight": True}, "weight"),
        ({"host": "10.0.0.1", "port": 80, "max_fails": -1}, "max_fails"),
        ({"host": "10.0.0.1", "port": 80, "backup": "yes"}, "backup"),
    ],
)
def test_bad_server_values_are_rejected_naming_the_field(kwargs, field):
    with pytest.raises(ModelError, match=field):
        Server(**kwargs)


def test_hostnames_only_where_allowed():
    with pytest.raises(ModelError, match="only IP literals"):
        Server("backend.svc.local", 80)
    assert Server("Backend.svc.local", 80, allow_hostname=True).host == "backend.svc.local"
    with pytest.raises(ModelError):
        Server("bad_host!", 80, allow_hostname=True)


@pytest.mark.parametrize(
    "name", ["", "-x", "a b", "a/b", "a:b", "a$b", "_dyups_upstream_sandbox_", "x" * 201]
)
def test_bad_names(name):
    with pytest.raises(ModelError):
        normalize_name(name)


def test_names_are_lowercased_and_collisions_are_errors():
    a = Upstream("Api", (Server("10.0.0.1", 80),))
    b = Upstream("api", (Server("10.0.0.2", 80),))
    with pytest.raises(ModelError, match="two upstreams"):
        check_unique([a, b])


def test_upstream_rules():
    with pytest.raises(ModelError, match="no server"):
        Upstream("a", ())
    with pytest.raises(ModelError, match="only backup"):
        Upstream("a", (Server("10.0.0.1", 80, backup=True),))
    with pytest.raises(ModelError, match="twice"):
        Upstream("a", (Server("10.0.0.1", 80), Server("10.0.0.1", 80, weight=2)))
    with pytest.raises(ModelError, match="backup"):
        Upstream(
            "a",
            (Server("10.0.0.1", 80), Server("10.0.0.2", 80, backup=True)),
            (Directive("ip_hash"),),
        )
    # all-down is accepted by the module; keep it possible
    assert Upstream("a", (Server("10.0.0.1", 80, down=True),))


@pytest.mark.parametrize(
    "text",
    [
        "zone shared 64k",
        "hash $request_uri consistent",
        "keepalive $x",
        "keepalive 0",
        "least_conn extra",
        "random three",
        "keepalive_timeout 1d",
        "server 1.2.3.4:80",
        "check",
    ],
)
def test_directives_outside_the_allowlist_are_refused(text):
    with pytest.raises(ModelError):
        Directive.parse(text)


def test_balancer_is_rendered_after_backup_servers():
    up = Upstream(
        "a",
        (Server("10.0.0.2", 80, backup=True), Server("10.0.0.1", 80)),
        (Directive("least_conn"),),
    )
    body = up.render()
    assert body.index("least_conn") > body.index("backup")


DETAIL = (
    "static_be\nserver 127.0.0.1:18091 weight=1 max_conns=0 max_fails=1 fail_timeout=10 backup=0 down=0\n\n"
    "web\nserver 10.0.0.7:8080 weight=3 max_conns=0 max_fails=2 fail_timeout=5 backup=0 down=0\n"
    "server [fd00::9]:8080 weight=1 max_conns=0 max_fails=1 fail_timeout=10 backup=1 down=0\n\n"
)


def test_parse_detail_matches_what_we_render():
    observed = parse_detail(DETAIL)
    want = Upstream(
        "web",
        (
            Server("10.0.0.7", 8080, weight=3, max_fails=2, fail_timeout=5),
            Server("fd00::9", 8080, backup=True),
        ),
    )
    assert observed["web"].servers == want.servers
    assert set(observed) == {"static_be", "web"}


def test_parse_detail_tolerates_missing_max_conns_and_any_order():
    text = "web\nserver 10.0.0.7:8080 down=1 backup=0 fail_timeout=5 max_fails=2 weight=3\n\n"
    (server,) = parse_detail(text)["web"].servers
    assert server == Server("10.0.0.7", 8080, weight=3, max_fails=2, fail_timeout=5, down=True)


@pytest.mark.parametrize(
    "text",
    [
        "server 1.2.3.4:80 weight=1\n\n",
        "web\nserver nonsense\n\n",
        "web\nserver 1.2.3.4:80 weight=x\n\n",
        "web\nserver 1.2.3.4:\u0668\u0660\n\n",  # a port in ARABIC-INDIC digits
    ],
)
def test_parse_detail_rejects_garbage_with_parse_error(text):
    with pytest.raises(ParseError):
        parse_detail(text)


def test_parse_list_both_flavours_and_get_upstream():
    assert parse_list_classic("static_be\nv6\nWeb\n") == {"static_be", "v6", "web"}
    head = "upstream web {\nserver 127.0.0.1:18092 weight=3;\n}\nupstream api {\nleast_conn; server 127.0.0.1:18093;\n}\n"
    parsed = parse_list_head(head)
    assert parsed["web"].body == "server 127.0.0.1:18092 weight=3;"
    assert parsed["web"].servers == (Server("127.0.0.1", 18092, weight=3),)
    assert parsed["api"].body == "least_conn; server 127.0.0.1:18093;"
    assert parse_upstream_addresses("server 127.0.0.1:18092\nserver [::1]:18091\n") == [
        "127.0.0.1:18092",
        "[::1]:18091",
    ]
    with pytest.raises(ParseError):
        parse_list_head("garbage")


# ---------------------------------------------------------------- properties
ipv4 = st.ip_addresses(v=4).map(str)
ipv6 = st.ip_addresses(v=6).map(str)
servers = st.builds(
    Server,
    host=st.one_of(ipv4, ipv6),
    port=st.integers(1, 65535),
    weight=st.integers(1, 100),
    max_fails=st.integers(0, 10),
    fail_timeout=st.integers(0, 3600),
    backup=st.booleans(),
    down=st.booleans(),
    max_conns=st.integers(0, 100),
)
names = st.from_regex(r"[a-z0-9][a-z0-9_.-]{0,30}", fullmatch=True).filter(
    lambda n: n != "_dyups_upstream_sandbox_"
)
directives = st.lists(
    st.sampled_from(
        ["least_conn", "keepalive 16", "keepalive_requests 100", "keepalive_timeout 60s"]
    ),
    unique=True,
).map(lambda ds: tuple(Directive.parse(d) for d in ds))


@st.composite
def upstreams(draw):
    srv = draw(st.lists(servers, min_size=1, max_size=8, unique_by=lambda s: s.address))
    if all(s.backup for s in srv):
        srv[0] = Server(srv[0].host, srv[0].port)
    return Upstream(draw(names), tuple(srv), draw(directives))


def _as_detail(up: Upstream) -> str:
    lines = [up.name]
    for s in reversed(up.servers):  # the proxy's order is not ours
        lines.append(
            f"server {s.address} weight={s.weight} max_conns={s.max_conns} max_fails={s.max_fails} "
            f"fail_timeout={s.fail_timeout} backup={int(s.backup)} down={int(s.down)}"
        )
    return "\n".join(lines) + "\n\n"


@given(upstreams())
def test_render_then_parse_round_trips(up):
    assert parse_detail(_as_detail(up))[up.name].servers == up.servers
    head = parse_list_head(f"upstream {up.name} {{\n{up.render()}\n}}\n")[up.name]
    assert head.servers == up.servers and head.body == up.render()
    assert upstream_from_body(up.name, up.render()) == up


@given(upstreams())
def test_rendered_body_never_holds_a_forbidden_character(up):
    body = up.render()
    assert not (set(body) & FORBIDDEN)
    # `;` only as the terminator of each statement
    statements = body.split("; ")
    assert all(s.count(";") == 0 for s in statements[:-1]) and statements[-1].endswith(";")
    assert body.count(";") == len(up.servers) + len(up.directives)


@given(st.text(), st.integers(), st.text(), st.text())
def test_arbitrary_input_either_fails_or_renders_safely(host, port, name, directive):
    try:
        up = Upstream(
            name, (Server(host, port, allow_hostname=True),), (Directive.parse(directive),)
        )
    except ModelError:
        return
    body = up.render()
    assert not (set(body) & FORBIDDEN)
    assert body.count(";") == 2  # one server, one directive: no smuggled statement
    assert "zone" not in body


def test_observed_equality_ignores_server_order():
    a = parse_detail(DETAIL)["web"]
    b = ObservedUpstream("web", tuple(reversed(a.servers or ())))
    assert tuple(sorted(b.servers or ())) == a.servers


@pytest.mark.parametrize(
    "body",
    [
        "server 1.2.3.4:80",
        "server 1.2.3.4:80 bogus=1;",
        "zone x 1m; server 1.2.3.4:80;",
        "server 1.2.3.4:80;;",
        "server 1.2.3.4:80 weight;",
    ],
)
def test_bodies_that_are_not_ours_do_not_come_back(body):
    with pytest.raises(ModelError):
        upstream_from_body("x", body)


def test_a_number_past_the_int_to_str_limit_is_a_model_error():
    """Building the message must not hit Python's 4,300-digit str() limit."""
    import pytest

    from syncer.model import ModelError, Server

    with pytest.raises(ModelError, match="port must be"):
        Server("10.0.0.1", 10**5000)


@given(
    st.lists(st.integers(0, 999), min_size=4, max_size=4),
    st.lists(st.booleans(), min_size=4, max_size=4),
)
def test_ipv4_hosts_are_canonical_exactly_as_ipaddress_says(octets, zero_padded):
    """canonical_host agrees with ipaddress on dotted quads, zero-padded or not: the
    same canonical text, or a ModelError where ipaddress refuses (a padded octet
    could be read as octal elsewhere)."""
    text = ".".join(f"0{o}" if pad else str(o) for o, pad in zip(octets, zero_padded, strict=True))
    try:
        want: str | None = str(ipaddress.ip_address(text))
    except ValueError:
        want = None
    canonical_host.cache_clear()
    if want is None:
        with pytest.raises(ModelError):
            canonical_host(text, allow_hostname=False)
    else:
        assert canonical_host(text, allow_hostname=False) == want
