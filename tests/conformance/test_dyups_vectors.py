"""Replay the request -> response sequences recorded from a real nginx with dyups.

Each vector file is replayed in order on a fresh target, one request per
connection, sent in one write exactly as recorded. The targets are the
simulator (both flavours) and, when DYUPS_URL names one, a real nginx started
fresh with `upstream static_be { server 127.0.0.1:18091; }`.

The client here is deliberately separate from the simulator's code, so that it
checks the simulator rather than agreeing with it.
"""

from __future__ import annotations

import json
import os
import re
import socket
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from syncer.testing.dyups import DyupsSimulator

VECTORS = Path(__file__).parent / "vectors"
STATIC = {"static_be": "server 127.0.0.1:18091;"}
HTML = "<nginx html error page>"
HEAD_DELETE_ANSWERS = {(200, "success"), (404, "not found uptream")}
# One worker per request that makes a 2-worker head simulator answer exactly as
# recorded: `api` is created on worker 0 and never reaches worker 1 before the
# DELETEs that worker 1 answers (its timer is an hour away).
HEAD_RECORDED_ROUTE = (0, 0, 0, 0, 0, 1, 1, 0, 0, 1, 1, 1, 0)


def load(flavour: str) -> list[dict[str, Any]]:
    data = json.loads((VECTORS / f"{flavour}.json").read_text())
    assert data["flavour"] == flavour
    vectors: list[dict[str, Any]] = data["vectors"]
    return vectors


# --------------------------------------------------------------------------- raw client


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes
    after_head: bytes  # every byte after the blank line, whatever the framing says

    @property
    def text(self) -> str:
        return self.body.decode()


def send(url: str, method: str, path: str, body: str | None) -> Answer:
    """One connection, one write; Content-Length exactly when `body` is not None."""
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    head = f"{method} {path} HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\n"
    if body is not None:
        head += f"Content-Length: {len(body.encode())}\r\n"
    request = (head + "\r\n").encode() + (body or "").encode()
    with socket.create_connection((host, port), timeout=10) as sock:
        sock.sendall(request)
        raw = b"".join(iter(lambda: sock.recv(65536), b""))
    return parse(raw)


def parse(raw: bytes) -> Answer:
    head, sep, rest = raw.partition(b"\r\n\r\n")
    assert sep, f"no complete response: {raw!r}"
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    length = headers.get("content-length")
    body = rest[: int(length)] if length is not None else rest
    return Answer(int(lines[0].split()[1]), headers, body, rest)


# --------------------------------------------------------------------------- checking


def entries(text: str) -> Counter[tuple[str, ...]]:
    """A listing as a multiset: /detail blocks (name + sorted servers), else lines."""
    if "\n\n" in text:
        blocks = [b.split("\n") for b in text.split("\n\n") if b]
        return Counter((b[0], *sorted(b[1:])) for b in blocks)
    return Counter((line,) for line in text.splitlines())


def head_blocks(text: str) -> Counter[tuple[str, str]]:
    found = re.findall(r"upstream (\S+) \{\n(.*?)\n\}\n", text, flags=re.DOTALL)
    assert "".join(f"upstream {n} {{\n{b}\n}}\n" for n, b in found) == text, text
    return Counter(found)


@dataclass
class Expected:
    """What the sequence so far has done, to judge answers that depend on the worker."""

    upstreams: dict[str, tuple[str, str]] = field(default_factory=dict)  # folded -> (name, body)

    def record(self, vector: dict[str, Any], answer: Answer) -> None:
        name = vector["path"].rsplit("/", 1)[-1]
        if vector["method"] == "POST" and answer.status == 200:
            self.upstreams[name.lower()] = (name, vector["body"])
        if vector["method"] == "DELETE" and answer.status == 200:
            self.upstreams.pop(name.lower(), None)

    def head_list(self) -> Counter[tuple[str, str]]:
        return Counter(self.upstreams.values())


def check_framing(answer: Answer, vector: dict[str, Any]) -> None:
    if vector["response"] == HTML:
        return
    assert "content-type" not in answer.headers, "dyups answers carry no Content-Type"
    if answer.status == 204:
        assert answer.after_head == b""
    else:
        assert answer.headers.get("content-length") == str(len(answer.body))
        assert answer.after_head == answer.body


def check(vector: dict[str, Any], answer: Answer, expected: Expected, *, exact: bool) -> None:
    where = f"{vector['method']} {vector['path']} ({vector['note']})"
    check_framing(answer, vector)
    if "varies" in vector and not exact:
        check_varies(vector, answer, expected, where)
        return
    assert answer.status == vector["status"], where
    if vector["response"] == HTML:
        assert answer.text.startswith("<html>"), where
        assert f"<title>{answer.status} " in answer.text, where
    elif "order" in vector:
        assert entries(answer.text) == entries(vector["response"]), where
    else:
        assert answer.text == vector["response"], where


def check_varies(vector: dict[str, Any], answer: Answer, expected: Expected, where: str) -> None:
    if vector["method"] == "DELETE":
        assert (answer.status, answer.text) in HEAD_DELETE_ANSWERS, where
    elif vector["method"] == "GET" and vector["path"] == "/list":
        want = expected.head_list()
        assert answer.status == (200 if want else 204), where
        assert head_blocks(answer.text) == want, where
    else:
        pytest.fail(f"no rule for a varying answer to {where}")


def replay(url: str, vectors: list[dict[str, Any]], *, exact: bool = False) -> None:
    expected = Expected()
    for vector in vectors:
        answer = send(url, vector["method"], vector["path"], vector["body"])
        check(vector, answer, expected, exact=exact)
        expected.record(vector, answer)


# --------------------------------------------------------------------------- targets


def detect_flavour(url: str) -> str:
    """classic answers GET /detail with 200 or 204; head with 404."""
    status = send(url, "GET", "/detail", None).status
    assert status in (200, 204, 404), f"{url} does not look like dyups (GET /detail: {status})"
    return "head" if status == 404 else "classic"


@pytest.fixture(
    params=[
        "simulator-classic",
        "simulator-head",
        pytest.param("real", marks=pytest.mark.real_dyups),
    ]
)
def target(request: pytest.FixtureRequest) -> Iterator[tuple[str, str]]:
    """(url, flavour) of a fresh dyups interface."""
    if request.param == "real":
        url = os.environ.get("DYUPS_URL")
        if not url:
            pytest.skip("DYUPS_URL not set")
        yield url, detect_flavour(url)
        return
    flavour = request.param.removeprefix("simulator-")
    with DyupsSimulator(flavour=flavour, static=STATIC, seed=7) as sim:  # type: ignore[arg-type]
        yield sim.url, flavour


def test_replays_recorded_vectors(target: tuple[str, str]) -> None:
    url, flavour = target
    replay(url, load(flavour))


@pytest.mark.parametrize("seed", range(6))
def test_head_replay_holds_whichever_worker_answers(seed: int) -> None:
    with DyupsSimulator(flavour="head", static=STATIC, seed=seed, read_msg_timeout=3600) as sim:
        replay(sim.url, load("head"))


def test_head_replay_reproduces_the_recording_with_the_recorded_workers() -> None:
    vectors = load("head")
    assert len(vectors) == len(HEAD_RECORDED_ROUTE)
    with DyupsSimulator(flavour="head", static=STATIC, read_msg_timeout=3600) as sim:
        sim.route_next(*HEAD_RECORDED_ROUTE)
        replay(sim.url, vectors, exact=True)


def test_classic_list_order_is_the_module_slot_order() -> None:
    """Not asserted by the replay (order varies between workers), but exact on one worker."""
    with DyupsSimulator(flavour="classic", static=STATIC, workers=1) as sim:
        vectors = load("classic")
        last = next(i for i, v in enumerate(vectors) if v["note"] == "names as reported")
        for vector in vectors[:last]:
            send(sim.url, vector["method"], vector["path"], vector["body"])
        assert send(sim.url, "GET", "/list", None).text == vectors[last]["response"]


# --------------------------------------------------------------------------- quirks on the wire


def read_until(sock: socket.socket, data: bytes, marker: bytes, extra: int = 0) -> bytes:
    while marker not in data or len(data) < data.index(marker) + len(marker) + extra:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed early after {data!r}"
        data += chunk
    return data


@pytest.mark.parametrize("flavour", ["classic", "head"])
def test_post_without_body_says_204_yet_writes_no_content(flavour: str) -> None:
    with DyupsSimulator(flavour=flavour, static=STATIC) as sim:  # type: ignore[arg-type]
        with socket.create_connection(("127.0.0.1", sim.port), timeout=10) as sock:
            sock.sendall(b"POST /upstream/web HTTP/1.1\r\nHost: x\r\n\r\n")
            data = read_until(sock, b"", b"\r\n\r\n", extra=len(b"no content\n"))
            head, _, rest = data.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 204 No Content\r\n")
            assert b"content-length" not in head.lower()
            assert b"content-type" not in head.lower()
            assert rest == b"no content\n"
            # On the same keep-alive connection those bytes precede the next answer,
            # so a client that trusts the 204 reads `no content` as a status line.
            sock.sendall(b"GET /list HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            stream = rest + b"".join(iter(lambda: sock.recv(65536), b""))
        assert stream.startswith(b"no content\nHTTP/1.1 ")
        assert send(sim.url, "GET", "/list", None).status in (200, 204)


def test_busy_delete_closes_the_connection_without_a_byte() -> None:
    with DyupsSimulator(static=STATIC, trylock=True, conflict_rate=1.0) as sim:
        with socket.create_connection(("127.0.0.1", sim.port), timeout=10) as sock:
            sock.sendall(b"DELETE /upstream/static_be HTTP/1.1\r\nHost: x\r\n\r\n")
            assert sock.recv(65536) == b""
        sim.set_conflict_rate(0.0)
        assert send(sim.url, "GET", "/list", None).text == "static_be\n"
        assert sim.stats.conflicts == 1


def test_busy_post_is_409_and_changes_nothing() -> None:
    with DyupsSimulator(static=STATIC, trylock=True) as sim:
        with sim.lock_busy():
            answer = send(sim.url, "POST", "/upstream/web", "server 127.0.0.1:18092;")
        assert (answer.status, answer.text) == (409, "wait and try again\n")
        assert "content-type" not in answer.headers
        assert send(sim.url, "GET", "/upstream/web", None).status == 404


SHARED_VECTORS = Path(__file__).resolve().parents[3] / "shared" / "dyups-vectors"


@pytest.mark.skipif(
    not SHARED_VECTORS.is_dir(), reason="no shared/dyups-vectors beside this checkout"
)
def test_the_repository_copy_of_the_vectors_is_current() -> None:
    # The repository carries a copy so that a plain clone can run this suite;
    # where the recorded originals sit beside the checkout, the copy must match.
    for name in ("classic.json", "head.json"):
        assert (VECTORS / name).read_bytes() == (SHARED_VECTORS / name).read_bytes(), name
