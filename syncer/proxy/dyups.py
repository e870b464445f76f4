"""Client of one dyups HTTP interface (see shared/dyups-interface.md).

One attempt per call: retries, backoff and pacing live in the worker. Writes map
every status/body pair the module can give to an `Outcome`; reads raise
`ProxyUnavailable` (cannot talk to it) or `ProxyProtocolError` (it answered
something that is not dyups).

Built on `http.client` because the module joins only the first two buffers of a
request body: the whole request must leave in one write, which `http.client`
does for a bytes body (headers and body in one `sendall`), and because the
module's quirks (a DELETE answered by closing the connection) need the raw
exceptions that higher-level clients hide behind their own retries.
"""

from __future__ import annotations

import base64
import http.client
import socket
import ssl
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, TypeVar
from urllib.parse import quote, urlsplit

from syncer.model import (
    ObservedUpstream,
    ParseError,
    Upstream,
    detail_blocks,
    normalize_address,
    parse_detail_block,
    parse_list_classic,
    parse_list_head,
    parse_upstream_addresses,
)

_T = TypeVar("_T")
FIX_TRUNCATION = "add `client_body_in_file_only clean;` to the dyups_interface location"


class Flavour(StrEnum):
    CLASSIC = "classic"  # Tengine, yzprofile up to 2020-03: /detail, /upstream/NAME, trylock
    HEAD = "head"  # yzprofile since 2020-04: only /list, which echoes bodies


_READ_BACK_MISSING = "read back: upstream missing (the proxy reloaded?)"


class Outcome(StrEnum):
    APPLIED = "applied"
    GONE = "gone"  # DELETE of an upstream the proxy does not have
    CONFLICT = "conflict"  # 409, or a DELETE answered by a closed connection (trylock busy)
    REJECTED = "rejected"  # `add server failed`, 413, 414: never resend the same body
    DEGRADED = "degraded"  # `alert: ... not sync ...`: one worker has it, the others never will
    UNSYNCED = (
        "unsynced"  # head: DELETE 404 from a worker that has not synced, upstream still listed
    )
    VERIFY_FAILED = "verify_failed"  # 200, but the read-back differs (body truncated)
    UNAVAILABLE = "unavailable"  # connection refused/reset, timeout
    UNEXPECTED = "unexpected"  # any other answer: state unknown

    @property
    def retryable(self) -> bool:
        return self not in (Outcome.APPLIED, Outcome.GONE, Outcome.REJECTED)

    @property
    def done(self) -> bool:
        return self in (Outcome.APPLIED, Outcome.GONE)


@dataclass(frozen=True, slots=True)
class WriteResult:
    outcome: Outcome
    status: int | None
    body: str
    duration: float
    detail: str = ""


class ProxyError(Exception):
    """A read that did not give a usable answer."""


class ProxyUnavailable(ProxyError):
    """Connection refused, reset or timed out."""


class ProxyProtocolError(ProxyError):
    """The proxy answered, but not as a dyups interface does."""


@dataclass(frozen=True, slots=True)
class ClientSettings:
    url: str
    connect_timeout: float = 2.0
    read_timeout: float = 5.0
    headers: tuple[tuple[str, str], ...] = ()
    basic_auth: tuple[str, str] | None = None
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    insecure_skip_verify: bool = False
    flavour: Flavour | None = None  # None: detect
    verify_after_write: bool = True
    # Requests at or under this size are not read back (see upsert).
    verify_min_bytes: int = 0
    max_idle_connections: int = 4


@dataclass(slots=True)
class _Answer:
    status: int
    body: str


@dataclass
class _Endpoint:  # where and how to connect, resolved once from the settings
    scheme: str
    host: str
    port: int
    base_path: str
    ssl_context: ssl.SSLContext | None = None
    headers: dict[str, str] = field(default_factory=dict)


class _Connection:
    """One keep-alive connection. The request is built here and sent with a single
    `sendall` (http.client writes headers and body separately); the answer is read
    by `_read_response` from one buffered reader kept for the connection's life
    (requests are never pipelined, so nothing of a next answer is ever buffered)."""

    def __init__(self, ep: _Endpoint, *, connect_timeout: float, read_timeout: float) -> None:
        sock = socket.create_connection((ep.host, ep.port), timeout=connect_timeout)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if ep.ssl_context is not None:
                sock = ep.ssl_context.wrap_socket(sock, server_hostname=ep.host)
            sock.settimeout(read_timeout)
        except BaseException:
            sock.close()
            raise
        self.sock = sock
        self.last_used = time.monotonic()
        self.rfile = sock.makefile("rb")
        self.host_header = ep.host if ep.port in (80, 443) else f"{ep.host}:{ep.port}"

    def exchange(
        self, method: str, path: str, headers: dict[str, str], body: bytes | None
    ) -> tuple[int, bytes, bool]:
        lines = [f"{method} {path} HTTP/1.1", f"Host: {self.host_header}"]
        lines += [f"{k}: {v}" for k, v in headers.items()]
        request = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (body or b"")
        self.sock.sendall(request)
        return _read_response(self.rfile)

    def close(self) -> None:
        self.rfile.close()
        self.sock.close()


_MAX_LINE = 65536
IDLE_TIMEOUT = 30.0  # seconds; below nginx's default keepalive_timeout (75 s)
KICK_RENEW_SHARE = 4  # at each kick, 1 / KICK_RENEW_SHARE of its connections are new


def _read_response(rfile: Any) -> tuple[int, bytes, bool]:
    """Status, body and whether the server will close, for one HTTP/1.x answer.

    A small reader of our own: `http.client` parses headers with the email package,
    which was the largest cost of a cold sync. Bodies are framed by Content-Length,
    chunked encoding, or the end of the connection, as RFC 9112 says."""
    line = rfile.readline(_MAX_LINE + 1)
    if not line:
        raise http.client.RemoteDisconnected("closed without an answer")
    parts = line.split(None, 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/") or not parts[1].isdigit():
        raise http.client.BadStatusLine(repr(line[:100]))
    version, status = parts[0], int(parts[1])
    headers: dict[bytes, bytes] = {}
    while True:
        line = rfile.readline(_MAX_LINE + 1)
        if not line:
            raise http.client.IncompleteRead(b"")
        if line in (b"\r\n", b"\n"):
            break
        if len(line) > _MAX_LINE:
            raise http.client.LineTooLong("header line")
        key, _, value = line.partition(b":")
        headers[key.strip().lower()] = value.strip()
    connection = headers.get(b"connection", b"").lower()
    will_close = connection == b"close" or (version == b"HTTP/1.0" and connection != b"keep-alive")
    if status in (204, 304) or 100 <= status < 200:
        return status, b"", will_close
    if headers.get(b"transfer-encoding", b"").lower() == b"chunked":
        return status, _read_chunked(rfile), will_close
    length = headers.get(b"content-length")
    if length is None:
        return status, rfile.read(), True
    if not length.isdigit():
        raise http.client.HTTPException(f"bad Content-Length {length!r}")
    body = rfile.read(int(length))
    if len(body) != int(length):
        raise http.client.IncompleteRead(body, int(length) - len(body))
    return status, body, will_close


def _read_chunked(rfile: Any) -> bytes:
    chunks: list[bytes] = []
    while True:
        size_line = rfile.readline(_MAX_LINE + 1).split(b";", 1)[0].strip()
        try:
            size = int(size_line, 16)
        except ValueError as e:
            raise http.client.HTTPException(f"bad chunk size {size_line!r}") from e
        if size == 0:
            while rfile.readline(_MAX_LINE + 1) not in (b"\r\n", b"\n", b""):
                pass  # trailers
            return b"".join(chunks)
        chunk = rfile.read(size)
        if len(chunk) != size:
            raise http.client.IncompleteRead(chunk, size - len(chunk))
        chunks.append(chunk)
        rfile.readline(_MAX_LINE + 1)  # the CRLF after each chunk


def _interned(
    parsed: dict[str, ObservedUpstream], known: Mapping[str, ObservedUpstream] | None
) -> dict[str, ObservedUpstream]:
    """`parsed`, with every entry equal to the one in `known` replaced by it."""
    if not known:
        return parsed
    for name, seen in parsed.items():
        mine = known.get(name)
        if mine is not None and mine == seen:
            parsed[name] = mine
    return parsed


_CLOSED_WITHOUT_ANSWER = (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError)
_STALE = (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError)


def _endpoint(settings: ClientSettings) -> _Endpoint:
    parts = urlsplit(settings.url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"proxy url {settings.url!r} must be http(s)://host[:port][/prefix]")
    headers = dict(settings.headers)
    if settings.basic_auth:
        user, password = settings.basic_auth
        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        headers["Authorization"] = f"Basic {token}"
    context = None
    if parts.scheme == "https":
        context = ssl.create_default_context(cafile=settings.ca_file)
        if settings.cert_file:
            context.load_cert_chain(settings.cert_file, settings.key_file)
        if settings.insecure_skip_verify:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
    default_port = 443 if parts.scheme == "https" else 80
    return _Endpoint(
        scheme=parts.scheme,
        host=parts.hostname,
        port=parts.port or default_port,
        base_path=parts.path.rstrip("/"),
        ssl_context=context,
        headers=headers,
    )


class DyupsClient:
    """Talks to one dyups interface over a small keep-alive connection pool."""

    def __init__(self, settings: ClientSettings) -> None:
        self.settings = settings
        self._endpoint = _endpoint(settings)
        self._idle: list[_Connection] = []
        self._kick_conns: list[_Connection] = []  # kept alive between kicks, oldest first
        self._closed = False
        self._lock = threading.Lock()
        self._flavour: Flavour | None = settings.flavour
        # The last /detail read, per upstream: its block of text's length and hash, and
        # what it parsed to. Not the text itself: at 100k endpoints that was ~9 MB per
        # proxy, held between resyncs for nothing but this comparison.
        self._last_blocks: dict[str, tuple[tuple[int, int], ObservedUpstream]] = {}

    # ------------------------------------------------------------- transport
    @property
    def url(self) -> str:
        return self.settings.url

    def _new_connection(self) -> _Connection:
        return _Connection(
            self._endpoint,
            connect_timeout=self.settings.connect_timeout,
            read_timeout=self.settings.read_timeout,
        )

    def _checkout(self, fresh: bool) -> tuple[_Connection, bool]:
        if not fresh:
            with self._lock:
                while self._idle:
                    conn = self._idle.pop()
                    # Drop connections idle for long enough that nginx may have closed
                    # them (keepalive_timeout, 75 s by default): a closed connection
                    # then almost always means trylock, not staleness.
                    if time.monotonic() - conn.last_used < IDLE_TIMEOUT:
                        return conn, True
                    conn.close()
        return self._new_connection(), False

    def _checkin(self, conn: _Connection) -> None:
        conn.last_used = time.monotonic()
        with self._lock:
            if len(self._idle) < self.settings.max_idle_connections:
                self._idle.append(conn)
                return
        conn.close()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle + self._kick_conns, []
            self._kick_conns = []
        for conn in idle:
            conn.close()

    def _request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        *,
        fresh: bool = False,
        retry_stale: bool = True,
    ) -> _Answer:
        """One request. A reused idle connection that the server had closed is retried
        once on a new connection (nothing reached the module); anything else raises.
        Not for DELETE (`retry_stale=False`): there a closed connection is also how a
        busy trylock answers, and that must be seen and counted as a conflict."""
        conn, reused = self._checkout(fresh)
        try:
            return self._exchange(conn, method, path, body, keep=not fresh)
        except _STALE:
            # A reset can also cut an answer the module already gave; Linux drops the
            # unread bytes, so the two look alike. Stale connections after an nginx
            # reload are by far the common case, and a resent POST only costs one more
            # balancer reset: resend.
            if not reused or not retry_stale:
                raise
        conn, _ = self._checkout(fresh=True)
        return self._exchange(conn, method, path, body, keep=not fresh)

    def _exchange(
        self, conn: _Connection, method: str, path: str, body: bytes | None, *, keep: bool
    ) -> _Answer:
        headers = dict(self._endpoint.headers)
        if not keep:
            headers["Connection"] = "close"
        if body is not None:
            headers["Content-Length"] = str(len(body))
        try:
            status, data, will_close = conn.exchange(
                method, self._endpoint.base_path + path, headers, body
            )
        except BaseException:
            conn.close()
            raise
        # A 204 to a POST carries a stray body (a module quirk): never reuse that connection.
        if keep and not will_close and not (method == "POST" and status == 204):
            self._checkin(conn)
        else:
            conn.close()
        return _Answer(status, data.decode("utf-8", errors="replace"))

    def _read(self, path: str, *, fresh: bool = False) -> _Answer:
        try:
            return self._request("GET", path, fresh=fresh)
        except (OSError, http.client.HTTPException) as e:
            self._flavour = self.settings.flavour  # a new connection epoch: detect again
            raise ProxyUnavailable(f"GET {path}: {e.__class__.__name__}: {e}") from e

    # ------------------------------------------------------------------ reads
    @property
    def flavour(self) -> Flavour | None:
        """The flavour detected in this connection epoch (None until the first read)."""
        return self._flavour

    def detect(self) -> Flavour:
        if self._flavour is None:
            self._classify_detail(self._read("/detail"))
        assert self._flavour is not None
        return self._flavour

    def _classify_detail(
        self, answer: _Answer, known: Mapping[str, ObservedUpstream] | None = None
    ) -> dict[str, ObservedUpstream] | None:
        if answer.status in (200, 204):
            self._flavour = Flavour.CLASSIC
            return self._detail_result(answer, known)
        if answer.status == 404 and not answer.body:
            self._flavour = Flavour.HEAD
            return None
        raise ProxyProtocolError(
            f"GET /detail answered {answer.status} {answer.body[:200]!r}: is {self.url} "
            "a dyups_interface mounted at location / ?"
        )

    def observe(
        self, known: Mapping[str, ObservedUpstream] | None = None
    ) -> dict[str, ObservedUpstream]:
        """Everything the proxy reports: `/detail` on classic, `/list` on head.

        `known`: what the caller believes the proxy holds. Entries read back equal to
        it are returned as the caller's objects, so a full read does not keep a second
        copy of every server (at 100k endpoints that copy was ~40 MB per proxy)."""
        if self._flavour is not Flavour.HEAD:
            answer = self._read("/detail")
            if self._flavour is None or answer.status == 404:
                self._flavour = None
                result = self._classify_detail(answer, known)
                if result is not None:
                    return result
            else:
                return self._detail_result(answer, known)
        return _interned(self.list_head(), known)

    def _detail_result(
        self, answer: _Answer, known: Mapping[str, ObservedUpstream] | None = None
    ) -> dict[str, ObservedUpstream]:
        if answer.status == 204:
            return {}
        if answer.status != 200:
            raise ProxyProtocolError(f"GET /detail answered {answer.status}")
        # In the steady state the proxy answers the same text every resync: parsing a
        # large /detail costs far more than comparing each block with the last read,
        # and parsing it whole held a second copy of every server at once (~50 MB at
        # 100k endpoints). Only blocks that changed are parsed, one at a time.
        try:
            return self._changed_blocks_parsed(answer.body, known or {})
        except ParseError as e:
            raise ProxyProtocolError(str(e)) from e

    def _changed_blocks_parsed(
        self, text: str, known: Mapping[str, ObservedUpstream]
    ) -> dict[str, ObservedUpstream]:
        blocks: dict[str, tuple[tuple[int, int], ObservedUpstream]] = {}
        for name, block in detail_blocks(text):
            key = (len(block), hash(block))
            last = self._last_blocks.get(name)
            if last is not None and last[0] == key:
                blocks[name] = last
                continue
            seen = parse_detail_block(name, block)
            mine = known.get(name)
            blocks[name] = (key, mine if mine is not None and mine == seen else seen)
        self._last_blocks = blocks
        return {name: entry for name, (_, entry) in blocks.items()}

    def list_head(self, *, fresh: bool = False) -> dict[str, ObservedUpstream]:
        answer = self._read("/list", fresh=fresh)
        if answer.status == 204:
            return {}
        if answer.status != 200:
            raise ProxyProtocolError(f"GET /list answered {answer.status}")
        return _parse(parse_list_head, answer.body)

    def list_names(self, *, fresh: bool = False) -> set[str]:
        """Names the answering worker holds (the cheap probe)."""
        flavour = self.detect()
        if flavour is Flavour.HEAD:
            return set(self.list_head(fresh=fresh))
        answer = self._read("/list", fresh=fresh)
        if answer.status == 204:
            return set()
        if answer.status != 200:
            raise ProxyProtocolError(f"GET /list answered {answer.status}")
        return parse_list_classic(answer.body)

    def addresses(self, name: str) -> list[str] | None:
        """Classic `GET /upstream/NAME`: the server addresses, or None if unknown."""
        answer = self._read(f"/upstream/{quote(name)}")
        if answer.status == 404:
            return None
        if answer.status != 200:
            raise ProxyProtocolError(f"GET /upstream/{name} answered {answer.status}")
        return _parse(parse_upstream_addresses, answer.body)

    def kick(self, count: int) -> int:
        """`GET /list` on `count` connections, so that every nginx worker applies the
        queued changes now instead of on its timer. Best effort: returns how many got
        an answer.

        Each connection belongs to the nginx worker that accepted it, and new
        connections spread over the workers (`reuseport`), so `count` of them reach
        every worker with high probability (`pacing.kick_count`). They are kept alive
        from one kick to the next while writes go on (the worker drops them when writes
        stop: `drop_kick_connections`): a new connection per GET cost the proxy an
        accept and the syncer a connect (with TLS, a handshake) each time, 800 a second
        at 10 proxies under a stream of writes. The oldest quarter is replaced at each
        kick, so that a worker none of them reached (or a worker nginx started since)
        is reached within a few kicks."""
        with self._lock:
            conns, self._kick_conns = self._kick_conns, []
        now = time.monotonic()
        reuse_at_most = count - count // KICK_RENEW_SHARE
        alive = [c for c in conns if now - c.last_used < IDLE_TIMEOUT]
        reuse = alive[len(alive) - reuse_at_most :] if reuse_at_most < len(alive) else alive
        for old in conns:
            if old not in reuse:
                old.close()
        kept: list[_Connection] = []
        answered = 0
        for i in range(count):
            reached, conn = self._kick_one(reuse[i] if i < len(reuse) else None)
            if not reached:
                for rest in reuse[i + 1 :]:
                    rest.close()
                break
            answered += 1
            if conn is not None:
                kept.append(conn)
        with self._lock:
            closed = self._closed
            if not closed:
                self._kick_conns = kept
        if closed:
            for conn in kept:
                conn.close()
        return answered

    def drop_kick_connections(self) -> None:
        """Close the connections kept for the next kick (called when writes stop)."""
        with self._lock:
            conns, self._kick_conns = self._kick_conns, []
        for conn in conns:
            conn.close()

    def _kick_one(self, reused: _Connection | None) -> tuple[bool, _Connection | None]:
        """One kick GET, on `reused` or a new connection: whether the proxy answered, and
        the connection to keep (None when the proxy closes it)."""
        conn = reused
        try:
            if conn is None:
                conn = self._new_connection()
            try:
                _, _, will_close = conn.exchange(
                    "GET", self._endpoint.base_path + "/list", dict(self._endpoint.headers), None
                )
            except _STALE:
                conn.close()
                if reused is None:
                    return False, None
                return self._kick_one(None)  # closed while idle (keepalive_timeout, a reload)
        except (OSError, http.client.HTTPException):
            if conn is not None:
                conn.close()
            return False, None
        if will_close:
            conn.close()
            return True, None
        conn.last_used = time.monotonic()
        return True, conn

    # ----------------------------------------------------------------- writes
    def upsert(self, upstream: Upstream) -> WriteResult:
        body = upstream.render().encode()
        # The model guarantees at least one server, so a body is never empty; an
        # empty POST would answer 204 with a stray body or 500 (dyups-interface.md).
        assert body, "refusing to POST an empty body"
        started = time.monotonic()
        path = f"/upstream/{quote(upstream.name)}"
        try:
            answer = self._request("POST", path, body)
        except TimeoutError as e:
            return _result(Outcome.UNAVAILABLE, None, f"timeout: {e}", started)
        except (OSError, http.client.HTTPException) as e:
            self._flavour = self.settings.flavour
            return _result(Outcome.UNAVAILABLE, None, f"{e.__class__.__name__}: {e}", started)
        outcome = _post_outcome(answer)
        if outcome is Outcome.APPLIED and self._needs_read_back(path, body):
            mismatch = self._verify(upstream)
            if mismatch == _READ_BACK_MISSING:
                # Not a cut body: the proxy lost the upstream after accepting it (a
                # reload between the POST and the read). State unknown: post again.
                return _result(Outcome.UNEXPECTED, answer.status, answer.body, started, mismatch)
            if mismatch:
                return _result(Outcome.VERIFY_FAILED, answer.status, answer.body, started, mismatch)
        return _result(outcome, answer.status, answer.body, started)

    def _needs_read_back(self, path: str, body: bytes) -> bool:
        """The module joins only the first two buffers of a body: a request cut
        into three or more reads loses servers silently (dyups-interface.md). We send
        each request in one write; one that fits nginx's 1 KiB header buffer arrives
        in at most two reads (one TCP segment, or two of the 536-byte minimum), so it
        cannot be cut and reading it back would only double the requests."""
        if not self.settings.verify_after_write:
            return False
        headers = sum(len(k) + len(v) + 4 for k, v in self._endpoint.headers.items())
        # Request line, Host, Content-Length and Connection, generously.
        size = len(body) + len(path) + len(self._endpoint.base_path) + headers + 160
        return size > self.settings.verify_min_bytes

    def _verify(self, upstream: Upstream) -> str:
        """Read the upstream back; describe any difference ('' when it matches)."""
        try:
            if self.detect() is Flavour.HEAD:
                held = self.list_head().get(upstream.name)
                if held is None or held.body != upstream.render():
                    got = None if held is None else held.body
                    return f"read back {got!r}; {FIX_TRUNCATION}"
                return ""
            reported = self.addresses(upstream.name)
        except ProxyError as e:
            return f"read-back failed: {e}"
        if reported is None:
            return _READ_BACK_MISSING
        want = Counter(s.address for s in upstream.servers)
        if upstream.has_hostnames:
            # Host names are reported resolved: only the count can be checked.
            ok = len(reported) >= len(want)
        elif Counter(reported) == want:
            ok = True  # nginx prints addresses as we render them
        else:
            # Normalise only if that differs. An address we cannot read (a `unix:`
            # socket, which we never write) is a mismatch to report, not an error.
            try:
                ok = Counter(map(normalize_address, reported)) == want
            except ParseError as e:
                return f"read back an address this syncer did not write ({e})"
        if ok:
            return ""
        return f"read back {len(reported)} of {sum(want.values())} servers; {FIX_TRUNCATION}"

    def delete(self, name: str, *, fresh: bool = False) -> WriteResult:
        started = time.monotonic()
        path = f"/upstream/{quote(name)}"
        try:
            answer = self._request("DELETE", path, retry_stale=False, fresh=fresh)
        except _CLOSED_WITHOUT_ANSWER as e:
            # With dyups_trylock on, a busy lock closes the connection: nothing deleted.
            return _result(Outcome.CONFLICT, None, f"closed without answer: {e}", started)
        except (OSError, http.client.HTTPException) as e:
            self._flavour = self.settings.flavour
            return _result(Outcome.UNAVAILABLE, None, f"{e.__class__.__name__}: {e}", started)
        outcome = _delete_outcome(answer)
        if outcome is Outcome.GONE and self._flavour is Flavour.HEAD:
            # On head, a worker that has not synced the upstream says 404 although it exists.
            try:
                still_there = name in self.list_head(fresh=True)
            except ProxyError as e:
                return _result(Outcome.UNSYNCED, answer.status, answer.body, started, str(e))
            if still_there:
                return _result(Outcome.UNSYNCED, answer.status, answer.body, started)
        return _result(outcome, answer.status, answer.body, started)


def _parse(parser: Callable[[str], _T], text: str) -> _T:
    try:
        return parser(text)
    except ParseError as e:
        raise ProxyProtocolError(str(e)) from e


def _result(
    outcome: Outcome, status: int | None, body: str, started: float, detail: str = ""
) -> WriteResult:
    return WriteResult(outcome, status, body, time.monotonic() - started, detail)


def _post_outcome(answer: _Answer) -> Outcome:
    if answer.status == 200 and answer.body == "success":
        return Outcome.APPLIED
    if answer.status == 409:
        return Outcome.CONFLICT
    if answer.status == 500 and answer.body.startswith("add server failed"):
        return Outcome.REJECTED
    if answer.status == 500 and answer.body.startswith("alert:"):
        return Outcome.DEGRADED
    if answer.status in (413, 414):
        return Outcome.REJECTED
    return Outcome.UNEXPECTED


def _delete_outcome(answer: _Answer) -> Outcome:
    if answer.status == 200 and answer.body == "success":
        return Outcome.APPLIED
    if answer.status == 404 and answer.body.startswith("not found"):
        return Outcome.GONE
    if answer.status == 409:
        return Outcome.CONFLICT
    if answer.status == 500 and answer.body.startswith("alert:"):
        return Outcome.DEGRADED
    return Outcome.UNEXPECTED
