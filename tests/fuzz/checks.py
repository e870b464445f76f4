"""What every upstream that comes out of a parser or adapter must satisfy.

The body grammar, written independently of the renderer:

    body      = statement *(" " statement)
    statement = (server / directive) ";"
    server    = "server " address *(" " parameter)
    address   = ipv4 ":" port / "[" ipv6 "]" ":" port / hostname ":" port
    parameter = "weight=" n / "max_conns=" n / "max_fails=" n / "fail_timeout=" n "s"
              / "backup" / "down"
    directive = "least_conn" / "ip_hash" / "random" [" two" [" least_conn"]]
              / "keepalive " n / "keepalive_requests " n / "keepalive_timeout " n [unit]

ASCII only; never `{}#$"'`, control characters or other whitespace; `;` only as
the terminator of a statement; never `zone`, `hash` or a variable.
"""

from __future__ import annotations

import dataclasses
import re
import string

from syncer.model import NAME_RE, Server, Upstream, upstream_from_body

SAFE_ALPHABET = frozenset(string.ascii_letters + string.digits + ".:-_[]/=; ")
FORBIDDEN = frozenset("{}#$\"'") | {chr(c) for c in range(32)} | {"\x7f"}

_N = r"[0-9]+"
_ADDRESS = rf"(?:[0-9]{{1,3}}(?:\.[0-9]{{1,3}}){{3}}|\[[0-9a-f:.]+\]|[a-z0-9][a-z0-9.-]*):{_N}"
SERVER_RE = re.compile(
    rf"server {_ADDRESS}(?: weight={_N})?(?: max_conns={_N})?(?: max_fails={_N})?"
    rf"(?: fail_timeout={_N}s)?(?: backup)?(?: down)?",
    re.ASCII,
)
DIRECTIVE_RE = re.compile(
    rf"least_conn|ip_hash|random(?: two(?: least_conn)?)?"
    rf"|keepalive {_N}|keepalive_requests {_N}|keepalive_timeout {_N}(?:ms|s|m|h)?",
    re.ASCII,
)


def check_body(body: str) -> list[str]:
    """Assert `body` is in the grammar; returns its statements (without `;`)."""
    outside = sorted(set(body) - SAFE_ALPHABET)
    assert not outside, f"characters outside the grammar {outside!r} in {body!r}"
    assert not (set(body) & FORBIDDEN), body
    assert body.endswith(";") and body == body.strip() and "  " not in body, repr(body)
    statements = body[:-1].split("; ")
    for statement in statements:
        assert ";" not in statement, f"';' inside a statement of {body!r}"
        assert SERVER_RE.fullmatch(statement) or DIRECTIVE_RE.fullmatch(statement), (
            f"statement {statement!r} is not in the grammar (body {body!r})"
        )
    return statements


def check_server(server: Server) -> None:
    """A server out of a parser renders one statement in the grammar."""
    (statement,) = check_body(server.render())
    assert statement.startswith("server "), statement


def check_upstream(up: Upstream) -> None:
    """Safe name and body, one statement per server and directive, and the body reads
    back (`upstream_from_body`) to an equal upstream with the same body (but for the
    traffic policy and draining, which are never rendered)."""
    assert NAME_RE.fullmatch(up.name) and up.name.isascii(), repr(up.name)
    body = up.render()
    statements = check_body(body)
    assert len(statements) == len(up.servers) + len(up.directives), body
    assert sum(s.startswith("server ") for s in statements) == len(up.servers), body
    back = upstream_from_body(up.name, body)
    # What is never rendered (the traffic policy, draining) cannot read back.
    rendered = Upstream(
        up.name, tuple(dataclasses.replace(s, draining=False) for s in up.servers), up.directives
    )
    assert back == rendered, f"{body!r} read back as {back!r}, not {rendered!r}"
    assert back.render() == body, (back.render(), body)
