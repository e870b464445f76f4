"""The client's mapping of every status/body pair in dyups-interface.md, on a scripted server."""

from __future__ import annotations

import socket
import ssl
import threading
from collections.abc import Iterator

import pytest

from syncer.model import ObservedUpstream, Server, Upstream
from syncer.proxy.dyups import (
    ClientSettings,
    DyupsClient,
    Flavour,
    Outcome,
    ProxyProtocolError,
    ProxyUnavailable,
)

CLOSE = object()  # answer by closing the connection without a byte


class Scripted:
    """Answers each request with the next scripted (status, body) or CLOSE; records requests."""

    def __init__(self, tls=None) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        if tls is not None:
            self.sock = tls.wrap_socket(self.sock, server_side=True)
        self.script: list = []
        self.requests: list[tuple[str, str, bytes]] = []
        self.recv_sizes: list[int] = []
        self.connections = 0
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.sock.getsockname()[1]}"

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except ssl.SSLError:
                continue  # a client that failed the handshake
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        buf = b""
        with conn:
            while True:
                while b"\r\n\r\n" not in buf:
                    chunk = conn.recv(65536)
                    if not chunk:
                        return
                    self.recv_sizes.append(len(chunk))
                    buf += chunk
                head, _, buf = buf.partition(b"\r\n\r\n")
                lines = head.decode().split("\r\n")
                method, path, _ = lines[0].split(" ")
                headers = {
                    k.lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])
                }
                length = int(headers.get("content-length", 0))
                while len(buf) < length:
                    buf += conn.recv(65536)
                body, buf = buf[:length], buf[length:]
                self.requests.append((method, path, body))
                answer = self.script.pop(0) if self.script else (404, "")
                if answer is CLOSE:
                    return
                status, text = answer
                data = text.encode()
                conn.sendall(
                    f"HTTP/1.1 {status} X\r\nContent-Length: {len(data)}\r\n\r\n".encode() + data
                )
                if headers.get("connection") == "close":
                    return


@pytest.fixture
def server() -> Iterator[Scripted]:
    s = Scripted()
    yield s
    s.sock.close()


def client(server: Scripted, **kw) -> DyupsClient:
    return DyupsClient(ClientSettings(url=server.url, read_timeout=2, **kw))


WEB = Upstream("web", (Server("127.0.0.1", 18092), Server("127.0.0.1", 18093)))


@pytest.mark.parametrize(
    "answer, outcome",
    [
        ((200, "success"), Outcome.APPLIED),
        ((409, "wait and try again\n"), Outcome.CONFLICT),
        ((500, "add server failed"), Outcome.REJECTED),
        ((500, "alert: update success but not sync to other process"), Outcome.DEGRADED),
        ((500, "init upstream failed"), Outcome.UNEXPECTED),
        ((500, "out of memory"), Outcome.UNEXPECTED),
        ((413, "<html>"), Outcome.REJECTED),
        ((404, "not support this interface"), Outcome.UNEXPECTED),
    ],
)
def test_post_outcomes(server, answer, outcome):
    server.script = [answer]
    result = client(server, verify_after_write=False).upsert(WEB)
    assert result.outcome is outcome
    method, path, body = server.requests[0]
    assert (method, path) == ("POST", "/upstream/web")
    assert body == WEB.render().encode() and body  # never an empty POST
    assert outcome.retryable is (outcome not in (Outcome.APPLIED, Outcome.REJECTED))


@pytest.mark.parametrize(
    "answer, outcome",
    [
        ((200, "success"), Outcome.APPLIED),
        ((404, "not found uptream"), Outcome.GONE),
        (CLOSE, Outcome.CONFLICT),
        ((500, "alert: delte success but not sync to other process"), Outcome.DEGRADED),
        ((405, "not support this interface"), Outcome.UNEXPECTED),
    ],
)
def test_delete_outcomes_on_classic(server, answer, outcome):
    server.script = [answer]
    assert client(server, flavour=Flavour.CLASSIC).delete("web").outcome is outcome


def test_head_delete_404_is_confirmed_with_list(server):
    server.script = [(404, "not found uptream"), (200, "upstream web {\nserver 127.0.0.1:1;\n}\n")]
    assert client(server, flavour=Flavour.HEAD).delete("web").outcome is Outcome.UNSYNCED
    server.script = [(404, "not found uptream"), (204, "")]
    assert client(server, flavour=Flavour.HEAD).delete("web").outcome is Outcome.GONE


def test_request_leaves_in_one_write(server):
    big = Upstream("big", tuple(Server(f"10.0.{i // 250}.{i % 250 + 1}", 80) for i in range(300)))
    server.script = [(200, "success")]
    client(server, verify_after_write=False).upsert(big)
    # the first recv holds the headers and the whole body (loopback keeps one write whole)
    assert server.recv_sizes[0] > len(big.render())


def test_verify_after_write_detects_truncation(server):
    server.script = [(200, "success"), (200, "server 127.0.0.1:18092\n")]
    result = client(server, flavour=Flavour.CLASSIC).upsert(WEB)
    assert result.outcome is Outcome.VERIFY_FAILED
    assert "client_body_in_file_only clean" in result.detail
    assert server.requests[1][:2] == ("GET", "/upstream/web")
    server.script = [(200, "success"), (200, "server 127.0.0.1:18093\nserver 127.0.0.1:18092\n")]
    assert client(server, flavour=Flavour.CLASSIC).upsert(WEB).outcome is Outcome.APPLIED


def test_verify_reading_back_a_unix_socket_is_a_verify_failure(server):
    # Found by tests/fuzz: normalize_address raised ParseError out of upsert() when the
    # proxy reported a `unix:` server (which this syncer never writes).
    server.script = [(200, "success"), (200, "server unix:/tmp/s.sock\nserver 127.0.0.1:18092\n")]
    result = client(server, flavour=Flavour.CLASSIC).upsert(WEB)
    assert result.outcome is Outcome.VERIFY_FAILED
    assert "unix:/tmp/s.sock" in result.detail and "did not write" in result.detail


def test_flavour_detection(server):
    server.script = [(204, "")]
    c = client(server)
    assert c.observe() == {} and c.flavour is Flavour.CLASSIC
    server.script = [(404, ""), (200, "upstream web {\nserver 127.0.0.1:18092;\n}\n")]
    c = client(server)
    assert set(c.observe()) == {"web"} and c.flavour is Flavour.HEAD
    server.script = [(200, "<html>not dyups</html>")]
    with pytest.raises(ProxyProtocolError):
        client(server).observe()


def test_keep_alive_is_reused_and_a_stale_connection_is_retried_once(server):
    c = client(server, flavour=Flavour.CLASSIC)
    server.script = [(204, ""), (204, "")]
    c.observe()
    c.observe()
    assert server.connections == 1
    server.script = [CLOSE, (204, "")]  # the server dropped the idle connection
    assert c.observe() == {}
    assert server.connections == 2


def test_unreachable_proxy():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    c = DyupsClient(ClientSettings(url=f"http://127.0.0.1:{port}", connect_timeout=0.5))
    with pytest.raises(ProxyUnavailable):
        c.observe()
    assert c.upsert(WEB).outcome is Outcome.UNAVAILABLE
    assert c.kick(4) == 0  # best effort: nothing answered, nothing raised


def test_auth_headers_are_sent(server):
    server.script = [(204, "")]
    c = client(server, basic_auth=("u", "p"), headers=(("X-Token", "t"),), flavour=Flavour.CLASSIC)
    c.list_names()
    assert server.requests[0][:2] == ("GET", "/list")


def test_kick_keeps_its_connections_and_renews_the_oldest_quarter(server):
    server.script = [(200, "web\n")] * 24
    c = client(server)
    assert c.kick(8) == 8
    assert server.connections == 8  # one per GET: they spread over nginx's workers
    assert c.kick(8) == 8
    assert server.connections == 10  # 6 kept alive, 2 new ones re-spread the set
    assert c.kick(8) == 8
    assert server.connections == 12
    assert {r[:2] for r in server.requests} == {("GET", "/list")} and len(server.requests) == 24


def test_kick_replaces_a_connection_the_proxy_closed_meanwhile(server):
    c = client(server)
    server.script = [(200, "")] * 2
    assert c.kick(2) == 2
    # The proxy closed the first one (keepalive_timeout, a reload): nothing reached
    # the module on it, so the GET goes again on a new connection.
    server.script = [CLOSE, (200, ""), (200, "")]
    assert c.kick(2) == 2
    assert server.connections == 3 and len(server.requests) == 5


def test_kick_does_not_reuse_connections_idle_for_too_long(server, monkeypatch):
    import syncer.proxy.dyups as dyups

    monkeypatch.setattr(dyups, "IDLE_TIMEOUT", 0.0)
    server.script = [(200, "")] * 6
    c = client(server)
    assert c.kick(3) == 3 and c.kick(3) == 3
    assert server.connections == 6


def _make_pki(tmp_path):
    """A CA, a server certificate for 127.0.0.1 and a client certificate (openssl CLI)."""
    import subprocess

    def run(*args):
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=tmp_path)

    run(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "1",
        "-subj",
        "/CN=test-ca",
    )
    for name, ext in (
        ("server", "subjectAltName=IP:127.0.0.1"),
        ("client", "extendedKeyUsage=clientAuth"),
    ):
        run(
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            f"{name}.key",
            "-out",
            f"{name}.csr",
            "-subj",
            f"/CN={name}",
        )
        (tmp_path / f"{name}.ext").write_text(ext + "\n")
        run(
            "x509",
            "-req",
            "-in",
            f"{name}.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            f"{name}.pem",
            "-days",
            "1",
            "-extfile",
            f"{name}.ext",
        )
    return tmp_path


def test_tls_with_ca_and_client_certificate(tmp_path):
    import shutil

    if shutil.which("openssl") is None:  # pragma: no cover - openssl ships with every Debian
        pytest.fail("the openssl command is needed to make test certificates")
    pki = _make_pki(tmp_path)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(pki / "ca.pem"))
    context.load_cert_chain(str(pki / "server.pem"), str(pki / "server.key"))
    context.verify_mode = ssl.CERT_REQUIRED  # the proxy demands a client certificate
    server = Scripted(tls=context)
    url = server.url.replace("http://", "https://")
    server.script = [(204, "")]
    good = DyupsClient(
        ClientSettings(
            url=url,
            ca_file=str(pki / "ca.pem"),
            cert_file=str(pki / "client.pem"),
            key_file=str(pki / "client.key"),
            flavour=Flavour.CLASSIC,
        )
    )
    assert good.list_names() == set()
    no_cert = DyupsClient(
        ClientSettings(url=url, ca_file=str(pki / "ca.pem"), flavour=Flavour.CLASSIC)
    )
    with pytest.raises(ProxyUnavailable):
        no_cert.list_names()
    untrusted = DyupsClient(ClientSettings(url=url, flavour=Flavour.CLASSIC))
    with pytest.raises(ProxyUnavailable):
        untrusted.list_names()
    server.sock.close()


@pytest.mark.parametrize(
    "raw, status, body, closes",
    [
        (b"HTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\nsuccess", 200, b"success", False),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nsuc\r\n4;x=y\r\ncess\r\n0\r\n\r\n",
            200,
            b"success",
            False,
        ),
        (
            b"HTTP/1.1 404 Not Found\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
            404,
            b"",
            True,
        ),
        (b"HTTP/1.0 200 OK\r\n\r\nuntil the end", 200, b"until the end", True),
        (
            b"HTTP/1.1 204 No Content\r\n\r\nno content\n",
            204,
            b"",
            False,
        ),  # the stray body stays unread
    ],
)
def test_response_reader(raw, status, body, closes):
    import io

    from syncer.proxy.dyups import _read_response

    assert _read_response(io.BufferedReader(io.BytesIO(raw))) == (status, body, closes)


@pytest.mark.parametrize(
    "raw", [b"", b"garbage\r\n\r\n", b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nshort"]
)
def test_response_reader_rejects_broken_answers(raw):
    import http.client
    import io

    from syncer.proxy.dyups import _read_response

    with pytest.raises(http.client.HTTPException):
        _read_response(io.BufferedReader(io.BytesIO(raw)))


def test_an_upstream_gone_at_read_back_is_not_reported_as_truncation():
    """A reload between the POST and its read-back loses the upstream: post again,
    without the truncation advice (the body was not cut)."""
    from syncer.model import Server, Upstream
    from syncer.proxy.dyups import ClientSettings, DyupsClient, Outcome
    from syncer.testing.dyups import DyupsSimulator

    class ReloadedBeforeReadBack(DyupsClient):
        def addresses(self, name):
            return None

    with DyupsSimulator() as sim:
        client = ReloadedBeforeReadBack(ClientSettings(url=sim.url, flavour=None))
        try:
            result = client.upsert(Upstream("web", (Server("10.0.0.1", 80),)))
        finally:
            client.close()
    assert result.outcome is Outcome.UNEXPECTED
    assert result.outcome.retryable
    assert "missing" in result.detail and "client_body_in_file_only" not in result.detail


def test_only_requests_large_enough_to_be_cut_are_read_back():
    """A request within nginx's 1 KiB header buffer arrives in at most two reads, and the
    module only cuts bodies read in three or more: no read-back for it by default."""
    from syncer.model import Server, Upstream
    from syncer.proxy.dyups import ClientSettings, DyupsClient, Outcome
    from syncer.testing.dyups import DyupsSimulator

    small = Upstream("web", (Server("10.0.0.1", 80),))
    large = Upstream("web", tuple(Server("10.0.0.1", port) for port in range(8000, 8060)))
    with DyupsSimulator() as sim:
        for threshold, upstream, read_back in [
            (1024, small, False),
            (1024, large, True),
            (0, small, True),
        ]:
            client = DyupsClient(
                ClientSettings(url=sim.url, flavour=None, verify_min_bytes=threshold)
            )
            try:
                client.detect()
                gets = sim.stats.gets
                assert client.upsert(upstream).outcome is Outcome.APPLIED
                assert sim.stats.gets - gets == (1 if read_back else 0), (threshold, read_back)
            finally:
                client.close()


def _detail(**upstreams: list[str]) -> str:
    return "".join(
        name
        + "\n"
        + "".join(f"server {a} weight=1 max_fails=1 fail_timeout=10\n" for a in addrs)
        + "\n"
        for name, addrs in upstreams.items()
    )


def test_detail_reads_reuse_unchanged_blocks_and_parse_only_the_changed_ones(server):
    c = client(server, flavour=Flavour.CLASSIC)
    server.script = [(200, _detail(a=["10.0.0.1:80"], b=["10.0.0.2:80"]))]
    first = c.observe()
    assert [s.address for s in first["a"].servers] == ["10.0.0.1:80"]
    server.script = [(200, _detail(a=["10.0.0.1:80"], b=["10.0.0.3:80"], c=["10.0.0.4:80"]))]
    second = c.observe()
    assert second["a"] is first["a"]  # same block: not parsed again
    assert [s.address for s in second["b"].servers] == ["10.0.0.3:80"]
    assert set(second) == {"a", "b", "c"}
    server.script = [(200, _detail(c=["10.0.0.4:80"]))]
    assert set(c.observe()) == {"c"}  # blocks gone from the answer are gone from the result


def test_a_detail_read_equal_to_what_the_caller_knows_returns_its_objects(server):
    c = client(server, flavour=Flavour.CLASSIC)
    known = {"a": ObservedUpstream("a", (Server("10.0.0.1", 80),))}
    server.script = [(200, _detail(a=["10.0.0.1:80"], b=["10.0.0.2:80"]))]
    seen = c.observe(known=known)
    assert seen["a"] is known["a"]  # no second copy of what the worker holds
    known_b = ObservedUpstream("b", (Server("10.0.0.9", 80),))
    server.script = [(200, _detail(a=["10.0.0.1:80"], b=["10.0.0.5:80"]))]
    seen = c.observe(known={**known, "b": known_b})
    assert seen["b"] is not known_b and seen["b"].servers == (Server("10.0.0.5", 80),)


def test_a_bad_detail_block_is_a_protocol_error_and_the_next_read_starts_over(server):
    c = client(server, flavour=Flavour.CLASSIC)
    server.script = [(200, _detail(a=["10.0.0.1:80"]) + "b\nserver nonsense\n\n")]
    with pytest.raises(ProxyProtocolError):
        c.observe()
    server.script = [(200, _detail(a=["10.0.0.1:80"]))]
    assert set(c.observe()) == {"a"}
