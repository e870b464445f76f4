"""The dyups simulator beyond the recorded vectors: workers, queue, faults, parser.

Tests wait on the simulator's own conditions (wait_until), never on the clock.
"""

from __future__ import annotations

import http.client
import signal
import socket
import subprocess
import sys
import threading

import pytest

from syncer.testing.dyups import (
    BodyError,
    DyupsSimulator,
    PoisonError,
    RawResponse,
    SimServer,
    parse_body,
    queue_capacity,
    queue_cost,
    raw_request,
)

STATIC = {"static_be": "server 127.0.0.1:18091;"}
WEB = "server 127.0.0.1:18092;"
NEVER = 3600.0  # a worker timer that does not fire during a test
WAIT = 10.0


def sim(**options: object) -> DyupsSimulator:
    options.setdefault("static", STATIC)
    options.setdefault("seed", 1)
    return DyupsSimulator(**options)  # type: ignore[arg-type]


def on(
    s: DyupsSimulator, worker: int, method: str, path: str, body: str | None = None
) -> RawResponse:
    """One request on a new connection, which the simulator gives to `worker`."""
    s.route_next(worker)
    return raw_request(s.url, method, path, body)


def answer(response: RawResponse) -> tuple[int, str]:
    return response.status, response.text


def servers(*addrs: str) -> list[SimServer]:
    return [SimServer(addr) for addr in addrs]


# --------------------------------------------------------------------------- workers and queue


def test_the_answering_worker_applies_at_once_and_the_other_on_its_get() -> None:
    with sim(read_msg_timeout=NEVER) as s:
        assert answer(on(s, 0, "POST", "/upstream/web", WEB)) == (200, "success")
        assert [(e.worker, e.op, e.name) for e in s.applied] == [(0, "post", "web")]
        assert "web" not in s.upstreams(1)
        assert s.queue_length() == 1 and not s.converged()

        # A GET on the other worker applies the queue before it answers: never stale.
        assert answer(on(s, 1, "GET", "/upstream/web")) == (200, "server 127.0.0.1:18092\n")
        assert [(e.worker, e.op) for e in s.applied] == [(0, "post"), (1, "post")]
        assert s.queue_length() == 0 and s.queue_bytes() == 0 and s.converged()


def test_other_workers_apply_the_queue_on_their_timer() -> None:
    with sim(workers=3, read_msg_timeout=0.05) as s:
        on(s, 0, "POST", "/upstream/web", WEB)
        assert s.wait_until(lambda s: {e.worker for e in s.applied} == {0, 1, 2}, WAIT)
        assert s.stats.gets == 0
        assert s.wait_until(lambda s: s.queue_length() == 0, WAIT)
        assert all(s.upstreams(w)["web"] == servers("127.0.0.1:18092") for w in range(3))


def test_a_worker_applies_the_queue_before_its_own_write() -> None:
    with sim(read_msg_timeout=NEVER) as s:
        on(s, 0, "POST", "/upstream/a", WEB)
        on(s, 1, "POST", "/upstream/b", WEB)
        assert set(s.upstreams(1)) == {"static_be", "a", "b"}
        assert set(s.upstreams(0)) == {"static_be", "a"}
        assert [(e.worker, e.name) for e in s.applied] == [(0, "a"), (1, "a"), (1, "b")]


def test_connections_stay_with_one_worker_and_round_robin_spreads_them() -> None:
    with sim(read_msg_timeout=NEVER, assign="round_robin") as s:
        conn = http.client.HTTPConnection("127.0.0.1", s.port, timeout=WAIT)
        for name in ("a", "b", "c"):
            conn.request("POST", f"/upstream/{name}", body=WEB.encode())
            assert conn.getresponse().read() == b"success"
        conn.close()
        raw_request(s.url, "POST", "/upstream/d", WEB)
        # Worker 1 applies the queue (a, b, c) before answering its own write (d).
        events = [(e.worker, e.name) for e in s.applied]
        assert events == [(0, "a"), (0, "b"), (0, "c"), (1, "a"), (1, "b"), (1, "c"), (1, "d")]
        assert s.stats.connections == 2


def test_names_are_case_insensitive_and_the_latest_spelling_is_shown() -> None:
    with sim(workers=1) as s:
        raw_request(s.url, "POST", "/upstream/Web", WEB)
        raw_request(s.url, "POST", "/upstream/WEB", "server 127.0.0.1:18093;")
        assert s.upstreams() == {
            "static_be": servers("127.0.0.1:18091"),
            "WEB": servers("127.0.0.1:18093"),
        }
        assert answer(raw_request(s.url, "DELETE", "/upstream/web")) == (200, "success")
        assert s.bodies() == {}


# --------------------------------------------------------------------------- lifecycle


def test_classic_reload_brings_back_nginx_conf_and_nothing_else() -> None:
    with sim(read_msg_timeout=NEVER) as s:
        on(s, 0, "POST", "/upstream/web", WEB)
        on(s, 1, "POST", "/upstream/static_be", "server 127.0.0.1:18099;")
        on(s, 0, "DELETE", "/upstream/static_be")
        s.reload()
        for worker in (0, 1):
            assert s.upstreams(worker) == {"static_be": servers("127.0.0.1:18091")}
            assert s.bodies(worker) == {}
        assert s.queue_length() == 0
        assert answer(on(s, 1, "GET", "/list")) == (200, "static_be\n")


def test_head_reload_keeps_dynamic_upstreams_everywhere() -> None:
    with sim(flavour="head", read_msg_timeout=NEVER) as s:
        on(s, 0, "POST", "/upstream/web", WEB)
        s.reload()
        assert s.converged()
        expected = (200, f"upstream web {{\n{WEB}\n}}\n")
        assert answer(on(s, 1, "GET", "/list")) == expected
        assert set(s.upstreams(1)) == {"web"}  # head shows no nginx.conf upstream


@pytest.mark.parametrize("flavour", ["classic", "head"])
def test_restart_loses_every_dynamic_change(flavour: str) -> None:
    with sim(flavour=flavour, read_msg_timeout=NEVER) as s:
        on(s, 0, "POST", "/upstream/web", WEB)
        s.restart()
        static = {"static_be"} if flavour == "classic" else set()
        assert all(set(s.upstreams(w)) == static for w in (0, 1))
        assert s.bodies() == {} and s.queue_length() == 0
        assert raw_request(s.url, "GET", "/list").status == (200 if flavour == "classic" else 204)


def test_reload_and_restart_close_keep_alive_connections() -> None:
    with sim() as s:
        conn = socket.create_connection(("127.0.0.1", s.port), timeout=WAIT)
        assert s.wait_until(lambda s: s.connections() == 1, WAIT)
        s.reload()
        assert conn.recv(1) == b""  # closed by the old worker
        conn.close()
        conn = socket.create_connection(("127.0.0.1", s.port), timeout=WAIT)
        assert s.wait_until(lambda s: s.connections() == 1, WAIT)
        s.restart()
        assert conn.recv(1) == b""
        conn.close()


def test_classic_crashed_worker_comes_back_with_nginx_conf_only() -> None:
    with sim(read_msg_timeout=0.05) as s:
        on(s, 0, "POST", "/upstream/web", WEB)
        assert s.wait_until(lambda s: s.converged(), WAIT)
        s.route_next(0, 1)
        kept = socket.create_connection(("127.0.0.1", s.port), timeout=WAIT)
        assert s.wait_until(lambda s: s.connections() == 1, WAIT)  # accepted in this order
        doomed = socket.create_connection(("127.0.0.1", s.port), timeout=WAIT)
        assert s.wait_until(lambda s: s.connections() == 2, WAIT)

        s.crash_worker(1)
        assert doomed.recv(1) == b""  # its connections died with it
        assert s.upstreams(1) == {"static_be": servers("127.0.0.1:18091")}
        assert "web" in s.upstreams(0)
        assert not s.converged() and s.names_everywhere() == {"static_be"}
        # It answers after its pause, and from its own table: the workers disagree.
        assert answer(on(s, 1, "GET", "/list")) == (200, "static_be\n")
        assert set(on(s, 0, "GET", "/list").text.split()) == {"static_be", "web"}
        kept.sendall(b"GET /list HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert b"web" in b"".join(iter(lambda: kept.recv(65536), b""))
        kept.close()
        doomed.close()


def test_a_crashed_worker_gives_up_the_messages_it_had_not_applied() -> None:
    with sim(read_msg_timeout=NEVER) as s:
        on(s, 0, "POST", "/upstream/web", WEB)
        assert s.queue_length() == 1
        s.crash_worker(1)
        assert s.queue_length() == 0 and s.queue_bytes() == 0
        assert "web" not in s.upstreams(1)


def test_head_crashed_worker_restores_the_dynamic_upstreams() -> None:
    with sim(flavour="head", read_msg_timeout=NEVER) as s:
        on(s, 0, "POST", "/upstream/web", WEB)
        s.crash_worker(1)
        assert "web" in s.upstreams(1) and s.converged()


def test_go_down_refuses_connections_and_come_up_keeps_port_and_state() -> None:
    with sim() as s:
        raw_request(s.url, "POST", "/upstream/web", WEB)
        port, url = s.port, s.url
        s.go_down()
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=WAIT)
        s.come_up()
        assert s.port == port and s.url == url
        assert answer(raw_request(url, "GET", "/upstream/web")) == (200, "server 127.0.0.1:18092\n")


def test_hang_reads_requests_and_never_answers() -> None:
    with sim() as s:
        s.hang(True)
        conn = socket.create_connection(("127.0.0.1", s.port), timeout=WAIT)
        conn.sendall(b"GET /list HTTP/1.1\r\nHost: x\r\n\r\n")
        assert s.wait_until(lambda s: s.stats.hung == 1, WAIT)
        s.hang(False)
        assert conn.recv(65536) == b""  # the hung request is dropped without an answer
        conn.close()
        assert raw_request(s.url, "GET", "/list").status == 200


def test_delay_still_answers() -> None:
    with sim() as s:
        s.set_delay(0.01)
        assert answer(raw_request(s.url, "GET", "/list")) == (200, "static_be\n")


# --------------------------------------------------------------------------- conflicts


def test_trylock_conflicts_are_409_or_closed_and_counted() -> None:
    with sim(trylock=True, conflict_rate=1.0) as s:
        post = raw_request(s.url, "POST", "/upstream/web", WEB)
        assert answer(post) == (409, "wait and try again\n")
        with socket.create_connection(("127.0.0.1", s.port), timeout=WAIT) as conn:
            conn.sendall(b"DELETE /upstream/static_be HTTP/1.1\r\nHost: x\r\n\r\n")
            assert conn.recv(65536) == b""
        stats = s.stats
        assert stats.conflicts == 2
        assert stats.requests[("POST", 409)] == 1 and stats.requests[("DELETE", 0)] == 1
        assert set(s.upstreams()) == {"static_be"} and s.applied == []


def test_a_busy_lock_gives_409_with_trylock_and_makes_writers_wait_without() -> None:
    with sim(trylock=True) as s:
        with s.lock_busy():
            assert raw_request(s.url, "POST", "/upstream/web", WEB).status == 409
        assert raw_request(s.url, "POST", "/upstream/web", WEB).status == 200

    with sim(trylock=False) as s:
        results: list[int] = []
        with s.lock_busy():
            writer = threading.Thread(
                target=lambda: results.append(
                    raw_request(s.url, "POST", "/upstream/web", WEB).status
                )
            )
            writer.start()
            assert s.wait_until(lambda s: s.stats.posts == 1, WAIT)
            assert results == []  # it cannot finish while the lock is held
        writer.join(WAIT)
        assert results == [200] and s.stats.conflicts == 0


def test_head_has_no_trylock() -> None:
    with sim(flavour="head", trylock=True, conflict_rate=1.0) as s:
        assert raw_request(s.url, "POST", "/upstream/web", WEB).status == 200


def test_head_delete_on_a_worker_that_has_not_synced_is_404_and_keeps_it() -> None:
    with sim(flavour="head", read_msg_timeout=NEVER) as s:
        on(s, 0, "POST", "/upstream/api", WEB)
        assert answer(on(s, 1, "DELETE", "/upstream/api")) == (404, "not found uptream")
        assert "api" in on(s, 0, "GET", "/list").text
        assert answer(on(s, 0, "DELETE", "/upstream/api")) == (200, "success")
        assert on(s, 1, "GET", "/list").status == 204


# --------------------------------------------------------------------------- poisoning


def test_an_unknown_variable_poisons_the_worker_that_parsed_it() -> None:
    poison = "hash $request_uri consistent; server 127.0.0.1:18092;"
    with sim(read_msg_timeout=NEVER) as s:
        assert answer(on(s, 0, "POST", "/upstream/h", poison)) == (500, "add server failed")
        assert s.poisoned_workers() == {0}
        assert answer(on(s, 0, "POST", "/upstream/web", WEB)) == (500, "add server failed")
        assert answer(on(s, 1, "POST", "/upstream/web", WEB)) == (200, "success")
        # What worker 0 now picks up from the queue is half-built: no servers.
        assert answer(on(s, 0, "GET", "/upstream/web")) == (204, "")
        assert s.upstreams(0)["web"] == [] and s.stats.rejected == 2
        s.restart()
        assert s.poisoned_workers() == set()


def test_a_variable_nginx_conf_already_uses_is_safe() -> None:
    body = "hash $request_uri consistent; server 127.0.0.1:18092;"
    with sim(known_variables=["request_uri"]) as s:
        assert raw_request(s.url, "POST", "/upstream/h", body).status == 200
        assert s.poisoned_workers() == set()


# --------------------------------------------------------------------------- queue bounds

SMALL_ZONE = 64 * 1024
BODY_611 = " ".join(f"server 10.0.0.{i}:8080;" for i in range(1, 21)).ljust(611)


def test_queue_cost_follows_the_slab_allocator() -> None:
    assert queue_cost("u0001", BODY_611, 2) == 128 + 8 + 8 + 1024
    assert queue_cost("u0001", "x" * 3092, 2) == 128 + 8 + 8 + 4096
    assert queue_cost("u0001", None, 2) == 128 + 8 + 8
    assert queue_capacity(2 * 1024 * 1024) // 1168 == 1774  # measured: first alert at #1,772


def test_unpaced_writes_overflow_the_queue_with_alerts() -> None:
    fit = queue_capacity(SMALL_ZONE) // queue_cost("u00", BODY_611, 2)
    with sim(shm_zone_size=SMALL_ZONE, read_msg_timeout=NEVER) as s:
        conn = http.client.HTTPConnection("127.0.0.1", s.port, timeout=WAIT)
        s.route_next(0)
        answers = []
        for i in range(fit + 5):
            conn.request("POST", f"/upstream/u{i:02d}", body=BODY_611.encode())
            response = conn.getresponse()
            answers.append((response.status, response.read().decode()))
        conn.close()
        alert = (500, "alert: update success but not sync to other process")
        assert answers == [(200, "success")] * fit + [alert] * 5
        assert s.stats.alerts == 5 and s.stats.queue_high_water <= s.queue_capacity
        # The answering worker has every upstream; the other never gets the last five.
        on(s, 1, "GET", "/list")
        assert len(s.upstreams(0)) == fit + 6 and len(s.upstreams(1)) == fit + 1


def test_a_delete_that_finds_the_queue_full_has_its_own_alert() -> None:
    post_cost = queue_cost("u00", BODY_611, 2)
    delete_cost = queue_cost("u00", None, 2)
    fit = queue_capacity(SMALL_ZONE) // post_cost
    room = (queue_capacity(SMALL_ZONE) - fit * post_cost) // delete_cost
    with sim(shm_zone_size=SMALL_ZONE, read_msg_timeout=NEVER) as s:
        s.route_next(0)
        conn = http.client.HTTPConnection("127.0.0.1", s.port, timeout=WAIT)
        for i in range(fit):
            conn.request("POST", f"/upstream/u{i:02d}", body=BODY_611.encode())
            assert conn.getresponse().read() == b"success"
        answers = []
        for i in range(room + 2):
            conn.request("DELETE", f"/upstream/u{i:02d}")
            answers.append(conn.getresponse().read().decode())
        conn.close()
        alert = "alert: delte success but not sync to other process"
        assert answers == ["success"] * room + [alert] * 2
        assert "u00" not in s.upstreams(0)  # deleted on the answering worker all the same


def test_writes_paced_below_the_drain_rate_never_alert() -> None:
    fit = queue_capacity(SMALL_ZONE) // queue_cost("u000", BODY_611, 2)
    with sim(shm_zone_size=SMALL_ZONE, read_msg_timeout=0.02) as s:
        conn = http.client.HTTPConnection("127.0.0.1", s.port, timeout=WAIT)
        for batch in range(3):
            for i in range(fit - 5):
                conn.request("POST", f"/upstream/u{batch}{i:02d}", body=BODY_611.encode())
                assert conn.getresponse().read() == b"success"
            assert s.wait_until(lambda s: s.queue_bytes() == 0, WAIT)
        conn.close()
        assert s.stats.alerts == 0 and s.converged()


# --------------------------------------------------------------------------- truncation

FIVE = " ".join(f"server 127.0.0.1:1809{i};" for i in range(5))


def test_truncate_next_body_keeps_the_first_servers_and_still_succeeds() -> None:
    with sim(workers=1) as s:
        s.truncate_next_body(keep_servers=2)
        assert answer(raw_request(s.url, "POST", "/upstream/web", FIVE)) == (200, "success")
        assert s.upstreams()["web"] == servers("127.0.0.1:18090", "127.0.0.1:18091")
        assert s.bodies()["web"] == "server 127.0.0.1:18090; server 127.0.0.1:18091;"
        assert s.stats.truncated == 1
        raw_request(s.url, "POST", "/upstream/web", FIVE)
        assert len(s.upstreams()["web"]) == 5 and s.stats.truncated == 1


def test_a_body_arriving_in_many_reads_keeps_only_the_first_two() -> None:
    pieces = [f"server 127.0.0.1:1809{i}; ".encode() for i in range(5)]
    head = (
        f"POST /upstream/web HTTP/1.1\r\nHost: x\r\nContent-Length: {sum(map(len, pieces))}\r\n\r\n"
    )
    with sim() as s, socket.create_connection(("127.0.0.1", s.port), timeout=WAIT) as conn:
        sent = 0
        for data in [head.encode(), *pieces]:
            conn.sendall(data)
            sent += len(data)
            # Each write must be a separate read on the server, as with a slow client.
            assert s.wait_until(lambda s, sent=sent: s.stats.bytes_received >= sent, WAIT)
        assert conn.recv(65536).endswith(b"\r\n\r\nsuccess")
        assert s.upstreams()["web"] == servers("127.0.0.1:18090", "127.0.0.1:18091")
        assert s.stats.truncated == 1


# --------------------------------------------------------------------------- HTTP surface


def test_keep_alive_serves_many_requests_on_one_connection() -> None:
    with sim() as s:
        conn = http.client.HTTPConnection("127.0.0.1", s.port, timeout=WAIT)
        for _ in range(3):
            conn.request("GET", "/list")
            response = conn.getresponse()
            assert response.read() == b"static_be\n"
            assert response.getheader("Connection") == "keep-alive"
            assert response.getheader("Content-Type") is None
        conn.close()
        assert s.stats.connections == 1 and s.stats.requests[("GET", 200)] == 3


def test_connection_close_is_honoured() -> None:
    with sim() as s, socket.create_connection(("127.0.0.1", s.port), timeout=WAIT) as conn:
        conn.sendall(b"GET /list HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        data = b"".join(iter(lambda: conn.recv(65536), b""))  # ends: the server closed
        assert b"Connection: close\r\n" in data and data.endswith(b"static_be\n")


def test_keywords_match_any_case_and_the_query_is_ignored() -> None:
    with sim() as s:
        assert raw_request(s.url, "GET", "/LIST?x=1").text == "static_be\n"
        assert raw_request(s.url, "GET", "/Upstream/static_be").status == 200
        assert raw_request(s.url, "POST", "/UPSTREAM/web?y", WEB).status == 200
        assert raw_request(s.url, "GET", "/list/").text == "static_be\nweb\n"
        assert raw_request(s.url, "GET", "/upstream/web/").status == 200


def test_path_errors_and_methods() -> None:
    with sim() as s:
        root = raw_request(s.url, "GET", "/")
        assert root.status == 404 and root.text.startswith("<html>")
        assert root.header("Content-Type") == "text/html"
        for method in ("PUT", "PATCH", "HEAD", "OPTIONS"):
            response = raw_request(s.url, method, "/upstream/web", WEB)
            assert (response.status, response.body) == (405, b"")
        assert answer(raw_request(s.url, "POST", "/", WEB)) == (404, "not support this interface")
        assert answer(raw_request(s.url, "DELETE", "/list")) == (405, "not support this interface")
        assert answer(raw_request(s.url, "DELETE", "/x/y")) == (405, "not support this api")
        assert raw_request(s.url, "GET", "/upstream/a/b").status == 404


def test_size_limits_give_nginx_pages() -> None:
    with sim(client_max_body_size=100) as s:
        too_big = raw_request(s.url, "POST", "/upstream/web", "server 127.0.0.1:1;" * 10)
        assert too_big.status == 413 and "413 Request Entity Too Large" in too_big.text
        long_uri = raw_request(s.url, "GET", "/upstream/" + "a" * 9000)
        assert long_uri.status == 414 and long_uri.text.startswith("<html>")
        chunked = raw_request(
            s.url, "POST", "/upstream/web", headers=[("Transfer-Encoding", "chunked")]
        )
        assert chunked.status == 411
        assert s.stats.posts == 0


def test_detail_and_upstream_formats() -> None:
    body = (
        "least_conn; keepalive 16;  # pooled\n"
        "server backend.local:8080 weight=3 max_fails=2 fail_timeout=1m30s;\n"
        'server "[fd00::9]:8080" backup; server unix:/run/app.sock down;'
    )
    with sim(workers=1, dns={"backend.local": "10.0.0.7"}) as s:
        assert raw_request(s.url, "POST", "/upstream/web", body).status == 200
        assert raw_request(s.url, "GET", "/detail").text == (
            "static_be\n"
            "server 127.0.0.1:18091 weight=1 max_conns=0 max_fails=1 fail_timeout=10 backup=0 down=0\n"
            "\n"
            "web\n"
            "server 10.0.0.7:8080 weight=3 max_conns=0 max_fails=2 fail_timeout=90 backup=0 down=0\n"
            "server [fd00::9]:8080 weight=1 max_conns=0 max_fails=1 fail_timeout=10 backup=1 down=0\n"
            "server unix:/run/app.sock weight=1 max_conns=0 max_fails=1 fail_timeout=10 backup=0 down=1\n"
            "\n"
        )
        assert raw_request(s.url, "GET", "/upstream/web").text == (
            "server 10.0.0.7:8080\nserver [fd00::9]:8080\nserver unix:/run/app.sock\n"
        )


def test_wait_until_gives_up_after_the_timeout() -> None:
    with sim() as s:
        assert s.wait_until(lambda s: False, 0.01) is False


def test_command_line_runs_one_simulator_in_the_foreground() -> None:
    command = [sys.executable, "-m", "syncer.testing.dyups", "--port", "0", "--flavour", "head"]
    with subprocess.Popen(command, stdout=subprocess.PIPE, text=True) as process:
        assert process.stdout is not None
        url = process.stdout.readline().split()[-1]
        assert raw_request(url, "GET", "/detail").status == 404  # head
        process.send_signal(signal.SIGTERM)
        assert process.wait(WAIT) == 0


# --------------------------------------------------------------------------- body parser

ACCEPTED = [
    ("server 10.0.0.1;", [SimServer("10.0.0.1:80")]),
    ("server 010.0.0.1:81;", [SimServer("10.0.0.1:81")]),
    ("server [::1];", [SimServer("[::1]:80")]),
    ("server [0:0::1]:81;", [SimServer("[::1]:81")]),
    ("server localhost:81;", [SimServer("127.0.0.1:81")]),
    (
        "server 10.0.0.1 max_conns=5 fail_timeout=0 down;",
        [SimServer("10.0.0.1:80", max_conns=5, fail_timeout=0, down=True)],
    ),
    ("server 10.0.0.1 weight=1 weight=4;", [SimServer("10.0.0.1:80", weight=4)]),
    (
        "server 10.0.0.1; server 10.0.0.2 backup;",
        [SimServer("10.0.0.1:80"), SimServer("10.0.0.2:80", backup=True)],
    ),
    (
        "server 10.0.0.1 backup; ip_hash; server 10.0.0.2;",
        [SimServer("10.0.0.1:80", backup=True), SimServer("10.0.0.2:80")],
    ),
    ("ip_hash; server 10.0.0.1 down;", [SimServer("10.0.0.1:80", down=True)]),
    ("hash $1 consistent; server 10.0.0.1;", [SimServer("10.0.0.1:80")]),
    ("random two least_conn; server 10.0.0.1;", [SimServer("10.0.0.1:80")]),
    (
        "keepalive 8; keepalive_requests 0; keepalive_time 1h; keepalive_timeout 500ms; server 10.0.0.1;",
        [SimServer("10.0.0.1:80")],
    ),
    ("zone z 64k; server 10.0.0.1;", [SimServer("10.0.0.1:80")]),
    ("# only a comment\n server\t10.0.0.1 ;\n", [SimServer("10.0.0.1:80")]),
    ("'server' \"10.0.0.1\";", [SimServer("10.0.0.1:80")]),
]

REJECTED = [
    "",
    "   # nothing\n",
    "server 10.0.0.1",
    "server 10.0.0.1;;",
    ";",
    "server 10.0.0.1; }",
    "server 10.0.0.1}",
    "{ server 10.0.0.1; }",
    "server 10.0.0.1 backup;",
    "ip_hash; server 10.0.0.1; server 10.0.0.2 backup;",
    "hash $1; server 10.0.0.2 backup; server 10.0.0.1;",
    "random; server 10.0.0.1 backup; server 10.0.0.2;",
    "Server 10.0.0.1;",
    "server 10.0.0.1 weight=0;",
    "server 10.0.0.1 weight=-1;",
    "server 10.0.0.1 weight=x;",
    "server 10.0.0.1 max_fails=;",
    "server 10.0.0.1 fail_timeout=500ms;",
    "server 10.0.0.1 fail_timeout=5s1m;",
    "server 10.0.0.1 slow_start=5s;",
    "server 10.0.0.1 backup=1;",
    "server 10.0.0.1:0;",
    "server 10.0.0.1:65536;",
    "server 10.0.0.1:80/path;",
    "server ::1;",
    "server [::1]x;",
    "server unknown.host:80;",
    "server unix:;",
    "server unix:/" + "p" * 107 + ";",
    "server;",
    "ip_hash 1; server 10.0.0.1;",
    "hash a b; server 10.0.0.1;",
    "random three; server 10.0.0.1;",
    "keepalive 0; server 10.0.0.1;",
    "keepalive 8; keepalive 9; server 10.0.0.1;",
    "keepalive_timeout 1y; server 10.0.0.1;",
    "zone z 4k; server 10.0.0.1;",
    "check interval=3000; server 10.0.0.1;",
    'server "10.0.0.1"x;',
    "hash ${request_uri; server 10.0.0.1;",
]


@pytest.mark.parametrize(("body", "expected"), ACCEPTED)
def test_parser_accepts(body: str, expected: list[SimServer]) -> None:
    assert list(parse_body(body)) == expected


@pytest.mark.parametrize("body", REJECTED)
def test_parser_rejects(body: str) -> None:
    with pytest.raises(BodyError) as raised:
        parse_body(body)
    assert not isinstance(raised.value, PoisonError)


def test_parser_poisoning_and_the_upstream_check_module() -> None:
    with pytest.raises(PoisonError):
        parse_body("hash $request_uri consistent; server 10.0.0.1;")
    with pytest.raises(PoisonError):
        parse_body("hash ${Cookie_x}; server 10.0.0.1;")
    assert parse_body("hash ${Cookie_x}; server 10.0.0.1;", known_variables=["cookie_X"])
    body = 'check interval=3000 rise=2 type=http; check_http_send "GET / HTTP/1.0\\r\\n\\r\\n"; server 10.0.0.1;'
    assert parse_body(body, upstream_check_module=True) == (SimServer("10.0.0.1:80"),)
