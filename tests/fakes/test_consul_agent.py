"""The fake Consul agent, proven against the real client library, unmodified.

Every test talks to `FakeConsulAgent` through `consul.Consul` (py-consul, or
python-consul2: the few places where the two differ are handled by the helpers below
and listed in `LIB`), its `catalog`/`health` wrappers or its raw `http.get(callback,
path, params)`. Tests wait on conditions (`agent.wait_for`), never sleep; the few waits
that must elapse (a `wait` timeout) are a few hundred milliseconds.
"""

from __future__ import annotations

import importlib
import inspect
import json
import threading
from collections.abc import Callable, Iterator
from typing import Any

import consul
import pytest
import requests

from tests.fakes import consul_objects as co
from tests.fakes.consul_agent import (
    ANONYMOUS_ACCESSOR,
    HEALTH_SELECTORS,
    SERVICE_NODE_SELECTORS,
    ConsulHTTPError,
    FakeConsulAgent,
    FilterError,
    compile_filter,
    format_go_duration,
    parse_go_duration,
)

try:  # py-consul keeps the callbacks in consul.callback, python-consul2 in consul.base
    from consul.callback import CB

    LIB = "py-consul"
except ImportError:  # pragma: no cover - exercised with python-consul2 installed
    CB = importlib.import_module("consul.base").CB

    LIB = "python-consul2"

pytestmark = pytest.mark.consul

WAIT = 5.0
SHORT = "300ms"  # a wait that is let to elapse


@pytest.fixture(autouse=True)
def _no_consul_env(monkeypatch: pytest.MonkeyPatch) -> None:
    # Both libraries read these; python-consul2 even lets CONSUL_HTTP_ADDR override an
    # explicit host/port, and both let CONSUL_HTTP_TOKEN override an explicit token.
    for name in ("CONSUL_HTTP_ADDR", "CONSUL_HTTP_TOKEN", "CONSUL_HTTP_SSL"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def agent() -> Iterator[FakeConsulAgent]:
    with FakeConsulAgent() as fake:
        yield fake


@pytest.fixture
def frozen() -> Iterator[FakeConsulAgent]:
    """An agent whose clock stands still: only `advance` moves TTLs and lock-delays."""
    with FakeConsulAgent(clock=lambda: 0.0) as fake:
        yield fake


# The per-request timeout: `connections_timeout` in recent py-consul (1.8; a blocking
# query's wait is added to it), `timeout` in python-consul2 (applied as is to every
# request, blocking or not), none at all in py-consul 1.5.
TIMEOUT_KWARG = (
    "connections_timeout"
    if "connections_timeout" in inspect.signature(consul.Consul.__init__).parameters
    else "timeout"
    if LIB == "python-consul2"
    else None
)


class _TimeoutSession(requests.Session):
    def __init__(self, timeout: float) -> None:
        super().__init__()
        self.timeout = timeout

    def request(self, *args: Any, **kwargs: Any) -> Any:
        kwargs["timeout"] = kwargs.get("timeout") or self.timeout
        return super().request(*args, **kwargs)


def client(agent: FakeConsulAgent, *, timeout: float | None = None, **kwargs: Any) -> Any:
    """`consul.Consul` on the fake, with a per-request timeout however the installed
    library takes one (a session with a default timeout if it takes none)."""
    if timeout is not None and TIMEOUT_KWARG is not None:
        kwargs[TIMEOUT_KWARG] = timeout
    c = consul.Consul(host=agent.host, port=agent.port, **kwargs)
    if timeout is not None and TIMEOUT_KWARG is None:
        c.http.session = _TimeoutSession(timeout)
    return c


def raw(c: Any, path: str, params: list[tuple[str, str]]) -> Any:
    """The raw call both libraries share: `http.get(callback, path, params=...)`."""
    return c.http.get(CB.json(index=True), path, params=params)


def raw_response(c: Any, path: str, params: list[tuple[str, str]]) -> Any:
    """The raw call with an identity callback: the library's Response (code, headers,
    body)."""
    return c.http.get(lambda response: response, path, params=params)


class Call:
    """Runs a (blocking) client call in a thread."""

    def __init__(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        self.result: Any = None
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(fn, args, kwargs), daemon=True)
        self._thread.start()

    def _run(self, fn: Callable[..., Any], args: Any, kwargs: Any) -> None:
        try:
            self.result = fn(*args, **kwargs)
        except BaseException as exc:
            self.error = exc

    @property
    def done(self) -> bool:
        return not self._thread.is_alive()

    def join(self, timeout: float = WAIT) -> Any:
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "the call did not return"
        if self.error is not None:
            raise self.error
        return self.result


def blocked(agent: FakeConsulAgent, endpoint: str, service: str | None = None, n: int = 1) -> None:
    assert agent.wait_for(lambda: agent.open_blocking_for(endpoint, service) == n, WAIT)


def still_blocked_after(
    agent: FakeConsulAgent, call: Call, endpoint: str, service: str | None
) -> None:
    """Proves a blocked query saw the latest state change and kept blocking."""
    gen = agent.generation
    assert agent.wait_for(
        lambda: all(q.seen_generation >= gen for q in agent.open_blocking_queries), WAIT
    )
    assert agent.open_blocking_for(endpoint, service) == 1
    assert not call.done


def web_cluster(agent: FakeConsulAgent) -> None:
    agent.register("node-a", "10.0.0.1", "web", "web-1", port=8080, tags=["http"])
    agent.register(
        "node-b",
        "10.0.0.2",
        "web",
        "web-2",
        port=8081,
        tags=["http", "canary"],
        meta={"version": "2"},
        service_address="10.1.0.2",
        weights={"Passing": 10, "Warning": 1},
    )


# --- shapes and indexes -------------------------------------------------------------------


def test_catalog_services_shape_and_index(agent: FakeConsulAgent) -> None:
    web_cluster(agent)
    last = agent.register("node-a", "10.0.0.1", "db", port=5432)
    c = client(agent)

    index, services = c.catalog.services()

    # A real cluster always has the `consul` service (consul_service=False drops it).
    assert services == {"consul": [], "web": ["canary", "http"], "db": []}
    assert index == str(last) == str(agent.services_index())
    record = agent.requests[-1]
    assert (record.endpoint, record.status, record.response_index) == (
        "catalog.services",
        200,
        last,
    )


def test_health_service_shape_passing_and_index(agent: FakeConsulAgent) -> None:
    web_cluster(agent)
    agent.register("node-c", "10.0.0.3", "web", "web-3", status="warning")
    web_write = agent.register("node-d", "10.0.0.4", "web", "web-4", status="critical")
    agent.register("node-a", "10.0.0.1", "db", port=5432)  # a later write, another service
    c = client(agent)

    index, entries = c.health.service("web")

    # Only writes that touched `web` move its index (Consul's service.<name> index).
    assert index == str(web_write) == str(agent.service_index("web"))
    assert int(index) < agent.index
    assert [e["Service"]["ID"] for e in entries] == ["web-1", "web-2", "web-3", "web-4"]
    first, second = entries[0], entries[1]
    assert set(first) == {"Node", "Service", "Checks"}
    assert first["Node"]["Node"] == "node-a"
    assert first["Node"]["Address"] == "10.0.0.1"
    assert first["Node"]["Datacenter"] == "dc1"
    assert first["Node"]["TaggedAddresses"]["lan"] == "10.0.0.1"
    assert first["Node"]["Meta"] == {"consul-network-segment": ""}
    # No service Address: the consumer must use the node's.
    assert first["Service"]["Address"] == ""
    assert "TaggedAddresses" not in first["Service"]
    assert first["Service"]["Port"] == 8080
    assert first["Service"]["Weights"] == {"Passing": 1, "Warning": 1}
    assert second["Service"]["Address"] == "10.1.0.2"
    assert second["Service"]["TaggedAddresses"]["lan_ipv4"] == {"Address": "10.1.0.2", "Port": 8081}
    assert second["Service"]["Tags"] == ["http", "canary"]
    assert second["Service"]["Meta"] == {"version": "2"}
    assert second["Service"]["Weights"] == {"Passing": 10, "Warning": 1}
    assert [ch["CheckID"] for ch in first["Checks"]] == ["serfHealth", "service:web-1"]
    assert {ch["Status"] for ch in entries[3]["Checks"]} == {"passing", "critical"}
    assert first["Checks"][1]["ServiceTags"] == ["http"]

    # passing=1: only entries whose every check passes (warning is not passing).
    index_p, passing = c.health.service("web", passing=True)
    assert index_p == index
    assert [e["Service"]["ID"] for e in passing] == ["web-1", "web-2"]
    assert agent.requests[-1].param("passing") == "1"

    # An unknown service is 200 [] with an index >= 1, never 404.
    index_x, nothing = c.health.service("nope")
    assert nothing == []
    assert int(index_x) >= 1


def test_tag_node_meta_and_catalog_service(agent: FakeConsulAgent) -> None:
    web_cluster(agent)
    agent.register("node-c", "10.0.0.3", "web", "web-3", tags=["HTTP"], node_meta={"zone": "b"})
    c = client(agent)

    # One tag through the wrapper (both libraries), several through raw params.
    _, tagged = c.health.service("web", tag="canary")
    assert [e["Service"]["ID"] for e in tagged] == ["web-2"]
    # Consul compares tags case-insensitively.
    _, http = raw(c, "/v1/health/service/web", [("tag", "http")])
    assert [e["Service"]["ID"] for e in http] == ["web-1", "web-2", "web-3"]
    _, both = raw(c, "/v1/health/service/web", [("tag", "http"), ("tag", "canary")])
    assert [e["Service"]["ID"] for e in both] == ["web-2"]
    _, zone_b = raw(c, "/v1/health/service/web", [("node-meta", "zone:b")])
    assert [e["Service"]["ID"] for e in zone_b] == ["web-3"]

    index, nodes = c.catalog.service("web")
    assert index == str(agent.service_index("web"))
    assert [n["ServiceID"] for n in nodes] == ["web-1", "web-2", "web-3"]
    assert nodes[1]["ServiceAddress"] == "10.1.0.2"
    assert nodes[1]["Address"] == "10.0.0.2"
    assert nodes[1]["ServiceMeta"] == {"version": "2"}
    assert nodes[2]["NodeMeta"] == {"consul-network-segment": "", "zone": "b"}


# --- blocking queries ---------------------------------------------------------------------


def test_blocking_health_wakes_on_its_service_only(agent: FakeConsulAgent) -> None:
    web_cluster(agent)
    c = client(agent)
    index, _ = c.health.service("web")
    call = Call(c.health.service, "web", index=index, wait="5s")
    blocked(agent, "health.service", "web")

    # Another service changes: the global index moves, web's does not, the query blocks.
    other = agent.register("node-c", "10.0.0.3", "db", port=5432)
    assert other > int(index)
    still_blocked_after(agent, call, "health.service", "web")
    assert agent.service_index("web") == int(index)

    # A status it already has is no write at all.
    assert agent.set_status("web-2", "passing") == agent.index
    still_blocked_after(agent, call, "health.service", "web")

    write = agent.set_status("web-2", "critical", output="HTTP GET: 503")
    new_index, entries = call.join()
    assert new_index == str(write)
    check = entries[1]["Checks"][1]
    assert (check["Status"], check["Output"], check["ModifyIndex"]) == (
        "critical",
        "HTTP GET: 503",
        write,
    )
    record = agent.requests[-1]
    assert (record.index, record.outcome, record.response_index) == (int(index), "changed", write)
    assert record.param("wait") == "5s"


def test_blocking_health_wakes_on_register_node_change_and_deregister(
    agent: FakeConsulAgent,
) -> None:
    web_cluster(agent)
    c = client(agent)

    index, _ = c.health.service("web")
    call = Call(c.health.service, "web", index=index, wait="5s")
    blocked(agent, "health.service", "web")
    write = agent.register("node-c", "10.0.0.3", "web", "web-3")
    index, entries = call.join()
    assert index == str(write) and len(entries) == 3

    # A node change (address, serfHealth) moves the index of every service on the node.
    call = Call(c.health.service, "web", index=index, wait="5s", passing=True)
    blocked(agent, "health.service", "web")
    write = agent.set_node_health("node-c", "critical")
    index, entries = call.join()
    assert index == str(write)
    assert [e["Service"]["ID"] for e in entries] == ["web-1", "web-2"]

    call = Call(c.health.service, "web", index=index, wait="5s")
    blocked(agent, "health.service", "web")
    write = agent.set_node_address("node-a", "10.0.0.11")
    index, entries = call.join()
    assert index == str(write) and entries[0]["Node"]["Address"] == "10.0.0.11"

    # Removing the last instances: the service.<name> index is gone, the query answers
    # with the extinction index, and stays there.
    agent.deregister("web-1")
    agent.deregister("web-2")
    call = Call(c.health.service, "web", index=str(agent.service_index("web")), wait="5s")
    blocked(agent, "health.service", "web")
    gone = agent.deregister("web-3")
    index, entries = call.join()
    assert (index, entries) == (str(gone), [])
    agent.register("node-x", "10.9.9.9", "db")
    assert agent.service_index("web") == gone


def test_catalog_services_blocks_until_the_services_table_changes(agent: FakeConsulAgent) -> None:
    web_cluster(agent)
    c = client(agent)
    index, _ = c.catalog.services()
    call = Call(c.catalog.services, index=index, wait="5s")
    blocked(agent, "catalog.services")

    # Health checks live in another table: catalog/services does not wake.
    agent.set_status("web-1", "critical")
    still_blocked_after(agent, call, "catalog.services", None)

    # Any service registration does, even one that leaves the name → tags map unchanged.
    write = agent.register("node-c", "10.0.0.3", "web", "web-3", tags=["http"])
    new_index, services = call.join()
    assert new_index == str(write)
    assert services["web"] == ["canary", "http"]


def test_wait_elapses_with_the_same_index(agent: FakeConsulAgent) -> None:
    web_cluster(agent)
    c = client(agent)
    index, entries = c.health.service("web")

    again, same = c.health.service("web", index=index, wait=SHORT)

    assert (again, same) == (index, entries)
    record = agent.requests[-1]
    assert (record.outcome, record.wait) == ("timeout", 0.3)


def test_wait_is_capped_and_defaulted() -> None:
    with FakeConsulAgent(max_query_time=0.3, default_query_time=0.2) as agent:
        c = client(agent)
        index, _ = c.catalog.services()
        assert c.catalog.services(index=index, wait="10m")[0] == index
        assert agent.requests[-1].wait == 0.3  # capped at max_query_time
        # No wait: the default query time (py-consul sends no `wait` without one).
        assert raw(c, "/v1/catalog/services", [("index", index)])[0] == index
        assert agent.requests[-1].wait == 0.2


def test_index_zero_and_future_index(agent: FakeConsulAgent) -> None:
    c = client(agent)
    index, _ = raw(c, "/v1/catalog/services", [("index", "0"), ("wait", "5s")])
    assert agent.requests[-1].outcome == "immediate"
    # An index from the future blocks until the index passes it (or the wait elapses).
    ahead = str(int(index) + 100)
    assert raw(c, "/v1/catalog/services", [("index", ahead), ("wait", SHORT)])[0] == index
    assert agent.requests[-1].outcome == "timeout"


def test_index_goes_backwards_after_a_snapshot_restore(agent: FakeConsulAgent) -> None:
    for i in range(5):
        agent.register(f"node-{i}", f"10.0.0.{i}", "web", f"web-{i}")
    c = client(agent)
    index, _ = c.health.service("web")
    assert int(index) > 3
    call = Call(c.health.service, "web", index=index, wait="5s")
    blocked(agent, "health.service", "web")

    agent.reset_index(3)

    # The store is abandoned: the blocked query answers at once, with a lower index.
    lower, entries = call.join()
    assert int(lower) <= 3 < int(index)
    assert len(entries) == 5
    assert agent.requests[-1].outcome == "abandoned"
    write = agent.set_status("web-0", "critical")
    assert write == 4

    # A client that does not reset its index misses that update until the index passes
    # its old value (here: the wait elapses with index 4, lower than what it asked for).
    stale_index, _ = c.health.service("web", index=index, wait=SHORT)
    assert stale_index == "4"
    assert agent.requests[-1].outcome == "timeout"
    # One that resets to 0 sees it at once.
    fresh_index, fresh = c.health.service("web")
    assert fresh_index == "4" and fresh[0]["Checks"][1]["Status"] == "critical"


# --- ACLs -------------------------------------------------------------------------------


def test_acl_tokens() -> None:
    tokens = {"mgmt": None, "web-reader": ["web"]}
    with FakeConsulAgent(acl_tokens=tokens) as agent:
        web_cluster(agent)
        agent.register("node-a", "10.0.0.1", "db", port=5432)

        _, services = client(agent, token="mgmt").catalog.services()
        assert services == {"consul": [], "db": [], "web": ["canary", "http"]}
        record = agent.requests[-1]
        # py-consul 1.8 and python-consul2 send X-Consul-Token, py-consul 1.5 ?token=.
        assert (record.token, record.token_source) in (("mgmt", "header"), ("mgmt", "query"))

        # Reads are filtered, not refused, for what the token may not read.
        reader = client(agent, token="web-reader")
        assert reader.catalog.services()[1] == {"web": ["canary", "http"]}
        assert reader.health.service("db")[1] == []
        assert len(reader.health.service("web")[1]) == 2
        response = raw_response(reader, "/v1/catalog/services", [("token", "web-reader")])
        assert response.headers["X-Consul-Results-Filtered-By-ACLs"] == "true"
        assert response.headers["X-Consul-Default-ACL-Policy"] == "deny"
        assert agent.requests[-1].token_source == "query"

        # No token: the anonymous token, which reads nothing by default.
        anonymous = client(agent)
        assert anonymous.catalog.services()[1] == {}
        assert anonymous.health.service("web")[1] == []
        assert agent.requests[-1].token is None

        # An unknown token is refused.
        with pytest.raises(consul.ACLPermissionDenied, match="ACL not found"):
            client(agent, token="bogus").health.service("web")
        assert agent.requests[-1].status == 403

        # The third way agent/http.go reads a token (not used by either library).
        bearer = requests.get(
            f"{agent.url}/v1/catalog/services", headers={"Authorization": "Bearer mgmt"}
        )
        assert "db" in bearer.json()
        assert agent.requests[-1].token_source == "bearer"


# --- raw http.get, namespaces, filters, consistency -------------------------------------------


def test_raw_get_with_namespace_filter_and_stale(agent: FakeConsulAgent) -> None:
    agent.register("node-a", "10.0.0.1", "web", "web-1", meta={"version": "1"}, namespace="team-a")
    agent.register("node-b", "10.0.0.2", "web", "web-2", meta={"version": "2"}, namespace="team-a")
    default_ns = agent.register("node-c", "10.0.0.3", "web", "web-3", meta={"version": "2"})
    c = client(agent)

    index, entries = raw(
        c,
        "/v1/health/service/web",
        [("ns", "team-a"), ("filter", 'Service.Meta.version == "2"'), ("stale", "1")],
    )

    assert [e["Service"]["ID"] for e in entries] == ["web-2"]
    assert entries[0]["Service"]["Namespace"] == "team-a"
    # Each namespace has its own service index.
    assert int(index) == agent.service_index("web", namespace="team-a") < default_ns
    record = agent.requests[-1]
    assert (record.namespace, record.consistency) == ("team-a", "stale")
    assert record.param("filter") == 'Service.Meta.version == "2"'

    response = raw_response(c, "/v1/health/service/web", [("ns", "team-a"), ("stale", "1")])
    assert response.code == 200
    assert response.headers["X-Consul-Effective-Consistency"] == "stale"
    assert response.headers["X-Consul-KnownLeader"] == "true"
    assert response.headers["X-Consul-LastContact"] == "0"
    assert response.headers["Content-Type"] == "application/json"
    assert response.headers["X-Consul-Index"] == index

    # The source's catalog filter: opted-in by tag or by a meta key.
    agent.register("node-a", "10.0.0.1", "api", tags=["dyups"])
    agent.register("node-a", "10.0.0.1", "admin", meta={"dyups-upstream": "admin"})
    agent.register("node-a", "10.0.0.1", "db")
    _, services = raw(
        c,
        "/v1/catalog/services",
        [("filter", '"dyups" in ServiceTags or "dyups-upstream" in ServiceMeta')],
    )
    assert services == {"admin": [], "api": ["dyups"]}
    _, everywhere = raw(c, "/v1/catalog/services", [("ns", "*")])
    assert set(everywhere) == {"admin", "api", "consul", "db", "web"}


def test_consistency_wait_and_filter_errors(agent: FakeConsulAgent) -> None:
    c = client(agent, consistency="consistent")
    c.catalog.services()
    assert agent.requests[-1].consistency == "consistent"

    with pytest.raises(consul.ConsulException, match=r"^400 Cannot specify"):
        raw(c, "/v1/catalog/services", [("stale", "1"), ("consistent", "1")])
    with pytest.raises(consul.ConsulException, match=r"^400 Invalid wait time"):
        raw(c, "/v1/catalog/services", [("index", "1"), ("wait", "5")])
    with pytest.raises(consul.ConsulException, match=r"^400 Invalid index"):
        raw(c, "/v1/catalog/services", [("index", "x")])
    with pytest.raises(consul.ConsulException, match=r'^500 .*Selector "Bogus" is not valid'):
        raw(c, "/v1/catalog/services", [("filter", 'Bogus == "x"')])
    with pytest.raises(consul.ConsulException, match=r"^500 No path to datacenter"):
        c.catalog.services(dc="dc9")
    agent.register("node-z", "10.9.0.1", "web", dc="dc2")
    _, remote = c.health.service("web", dc="dc2")
    assert [e["Node"]["Datacenter"] for e in remote] == ["dc2"]
    assert c.health.service("web")[1] == []


def test_consul_ce_refuses_namespaces() -> None:
    with FakeConsulAgent(enterprise=False) as agent:
        agent.register("node-a", "10.0.0.1", "web")
        c = client(agent)
        _, entries = c.health.service("web")
        assert "Namespace" not in entries[0]["Service"]
        with pytest.raises(
            consul.ConsulException, match=r'^400 Bad request: Invalid query parameter: "ns"'
        ):
            raw(c, "/v1/health/service/web", [("ns", "team-a")])


def test_nil_for_empty() -> None:
    with FakeConsulAgent(nil_for_empty=True, consul_service=False) as agent:
        agent.register("node-a", "10.0.0.1", "web")
        _, entries = client(agent).health.service("web")
        assert entries[0]["Service"]["Tags"] is None
        assert entries[0]["Service"]["Meta"] is None


# --- availability ---------------------------------------------------------------------------


def test_go_down_and_come_up(agent: FakeConsulAgent) -> None:
    web_cluster(agent)
    c = client(agent)
    index, _ = c.health.service("web")
    call = Call(c.health.service, "web", index=index, wait="5s")
    blocked(agent, "health.service", "web")
    port = agent.port

    agent.go_down()

    # The blocked query's connection is cut; new ones are refused. Neither library wraps
    # requests' exception.
    with pytest.raises(requests.exceptions.ConnectionError):
        call.join()
    with pytest.raises(requests.exceptions.ConnectionError):
        c.health.service("web")
    assert agent.requests[-1].outcome == "cut"

    agent.come_up()

    assert agent.port == port
    assert c.health.service("web")[0] == index


def test_a_client_that_gives_up_is_no_longer_blocked(agent: FakeConsulAgent) -> None:
    index = agent.services_index()
    with pytest.raises(requests.exceptions.ReadTimeout):
        requests.get(
            f"{agent.url}/v1/catalog/services",
            params={"index": str(index), "wait": "5s"},
            timeout=(1.0, 0.2),
        )
    assert agent.wait_for(lambda: agent.open_blocking == 0)
    assert agent.wait_for(lambda: agent.count("catalog.services", status=0) == 1)
    assert agent.requests[-1].outcome == "gone"


def test_hang_makes_the_client_time_out(agent: FakeConsulAgent) -> None:
    c = client(agent, timeout=0.3)
    agent.hang(True)
    with pytest.raises(requests.exceptions.ReadTimeout):
        c.catalog.services()
    assert agent.wait_for(lambda: agent.count("catalog.services", status=0) == 1)
    agent.hang(False)
    assert c.catalog.services()[1] == {"consul": []}


# --- fault injection --------------------------------------------------------------------------


def test_fail_next_answers_blocked_and_new_queries(agent: FakeConsulAgent) -> None:
    web_cluster(agent)
    c = client(agent)
    index, _ = c.health.service("web")
    call = Call(c.health.service, "web", index=index, wait="5s")
    blocked(agent, "health.service", "web")

    agent.fail_next(2)

    with pytest.raises(consul.ConsulException, match=r"^500 No cluster leader"):
        call.join()
    with pytest.raises(consul.ConsulException, match=r"^500 No cluster leader"):
        c.catalog.services()
    assert c.catalog.services()[1]["web"] == ["canary", "http"]

    agent.fail_next(1, 403, path_prefix="/v1/health/")
    c.catalog.services()
    with pytest.raises(consul.ACLPermissionDenied, match="Permission denied"):
        c.health.service("web")


def test_return_empty_once_and_empty_all(agent: FakeConsulAgent) -> None:
    web_cluster(agent)
    c = client(agent)
    index, _ = c.health.service("web")
    call = Call(c.health.service, "web", index=index, wait="5s")
    blocked(agent, "health.service", "web")

    agent.return_empty_once("web")

    assert call.join() == (index, [])
    assert len(c.health.service("web")[1]) == 2

    agent.empty_all(True)
    assert c.health.service("web") == (index, [])
    assert c.catalog.service("web") == (index, [])
    assert c.catalog.services()[1]["web"] == ["canary", "http"]
    agent.empty_all(False)
    assert len(c.health.service("web")[1]) == 2


def test_answer_unchanged_fast(agent: FakeConsulAgent) -> None:
    web_cluster(agent)
    c = client(agent)
    index, entries = c.health.service("web")
    call = Call(c.health.service, "web", index=index, wait="5s")
    blocked(agent, "health.service", "web")

    agent.answer_unchanged_fast(2)

    assert call.join() == (index, entries)
    assert c.health.service("web", index=index, wait="5s") == (index, entries)
    assert [r.outcome for r in agent.requests[-2:]] == ["fast", "fast"]
    # The budget is spent: the next one blocks again, until the index moves.
    call = Call(c.health.service, "web", index=index, wait="5s")
    blocked(agent, "health.service", "web")
    agent.touch("web")  # an idempotent write: new index, same result
    new_index, same = call.join()
    assert int(new_index) > int(index) and same == entries


def test_no_known_leader(agent: FakeConsulAgent) -> None:
    c = client(agent)
    agent.set_leader(False, last_contact_ms=1234)
    with pytest.raises(consul.ConsulException, match=r"^500 No cluster leader"):
        c.catalog.services()
    response = raw_response(c, "/v1/catalog/services", [("stale", "1")])
    assert response.code == 200
    assert response.headers["X-Consul-KnownLeader"] == "false"
    assert response.headers["X-Consul-LastContact"] == "1234"
    agent.set_leader(True)
    assert c.catalog.services()[1] == {"consul": []}


# --- KV and sessions: the leader-election recipe -------------------------------------------

KEY = "service/dyups/leader"


def test_session_create_info_renew_destroy(frozen: FakeConsulAgent) -> None:
    c = client(frozen)

    sid = c.session.create(name="syncer-a", ttl=15, behavior="release", lock_delay=0)

    record = frozen.requests[-1]
    assert (record.method, record.endpoint, record.status) == ("PUT", "session.create", 200)
    # Both libraries send lower-case keys (Consul decodes JSON case-insensitively) and
    # whole seconds as Go durations; the default behavior and lock-delay are left out.
    assert json.loads(record.body) == {"name": "syncer-a", "ttl": "15s", "lockdelay": "0s"}
    index, info = c.session.info(sid)
    assert info == {
        "ID": sid,
        "Name": "syncer-a",
        "Node": "consul-server-1",
        "LockDelay": 0,
        "Behavior": "release",
        "TTL": "15s",
        "NodeChecks": ["serfHealth"],
        "ServiceChecks": None,
        "Namespace": "default",
        "Partition": "default",
        "CreateIndex": int(index),
        "ModifyIndex": int(index),
    }
    # A renew answers the session and writes nothing.
    assert c.session.renew(sid) == info
    assert c.session.info(sid)[0] == index
    assert c.session.destroy(sid) is True
    gone_index, gone = c.session.info(sid)
    assert gone is None and int(gone_index) > int(index)
    with pytest.raises(consul.NotFound, match=f"Session id '{sid}' not found"):
        c.session.renew(sid)
    assert c.session.destroy(sid) is True  # idempotent

    # Without arguments: an empty body, Consul's defaults (15 s lock-delay, no TTL).
    plain = c.session.create()
    assert frozen.requests[-1].body == b""
    defaults = c.session.info(plain)[1]
    assert (defaults["LockDelay"], defaults["TTL"], defaults["Behavior"]) == (
        15_000_000_000,
        "",
        "release",
    )
    index, listed = c.session.list()
    assert [s["ID"] for s in listed] == [plain]
    assert c.session.node("consul-server-1")[1] == listed
    assert c.session.node("elsewhere")[1] == []


def test_acquire_and_release_between_two_sessions(frozen: FakeConsulAgent) -> None:
    c = client(frozen)
    a = c.session.create(name="a", ttl=15, lock_delay=0)
    b = c.session.create(name="b", ttl=15, lock_delay=0)

    assert c.kv.put(KEY, "a", acquire=a) is True
    assert c.kv.put(KEY, "b", acquire=b) is False

    index, entry = c.kv.get(KEY)
    assert entry["Session"] == a
    assert (entry["LockIndex"], entry["Value"], entry["Flags"]) == (1, b"a", 0)
    assert index == str(entry["ModifyIndex"]) == str(frozen.kv_index(KEY))
    # The holder updates the value without giving the lock up: LockIndex stays.
    assert c.kv.put(KEY, "a2", acquire=a) is True
    assert c.kv.get(KEY)[1]["LockIndex"] == 1
    # Only the holder releases; the release keeps LockIndex and stores its body.
    assert c.kv.put(KEY, "b", release=b) is False
    assert c.kv.put(KEY, "a-done", release=a) is True
    _, entry = c.kv.get(KEY)
    assert "Session" not in entry
    assert (entry["LockIndex"], entry["Value"]) == (1, b"a-done")
    # A release starts no lock-delay: the other session gets the lock at once.
    assert c.kv.put(KEY, "b", acquire=b) is True
    assert c.kv.get(KEY)[1]["LockIndex"] == 2
    # Locks are advisory: a plain write goes through and keeps the holder.
    assert c.kv.put(KEY, "plain") is True
    assert c.kv.get(KEY)[1]["Session"] == b
    # A release without a value empties it, as on a real agent.
    assert c.kv.put(KEY, None, release=b) is True
    assert c.kv.get(KEY)[1]["Value"] is None
    with pytest.raises(consul.ConsulException, match=r'^500 invalid session "nope"'):
        c.kv.put(KEY, "x", acquire="nope")


def test_ttl_expiry_releases_the_lock_and_starts_the_lock_delay(frozen: FakeConsulAgent) -> None:
    c = client(frozen)
    a = c.session.create(name="a", ttl=15, lock_delay=5)
    b = c.session.create(name="b", ttl=15, lock_delay=0)
    assert c.kv.put(KEY, "a", acquire=a)

    # The TTL is a lower bound: Consul's leader invalidates after twice the TTL.
    frozen.advance(29)
    assert c.kv.get(KEY)[1]["Session"] == a
    c.session.renew(a)  # t=29: a expires at 59
    c.session.renew(b)
    frozen.advance(29.5)
    c.session.renew(b)
    index, entry = c.kv.get(KEY)
    assert entry["Session"] == a
    call = Call(c.kv.get, KEY, index=index, wait="5s")
    blocked(frozen, "kv", KEY)

    frozen.advance(0.5)  # t=59: a's timer fires

    new_index, entry = call.join()
    assert "Session" not in entry and entry["LockIndex"] == 1
    assert int(new_index) == entry["ModifyIndex"] > int(index)
    assert c.session.info(a)[1] is None
    with pytest.raises(consul.NotFound):
        c.session.renew(a)
    # The lock-delay runs from the invalidation: acquire is refused even on a free key.
    assert frozen.lock_delay_remaining(KEY) == 5
    assert c.kv.put(KEY, "b", acquire=b) is False
    frozen.advance(4.5)
    assert c.kv.put(KEY, "b", acquire=b) is False
    frozen.advance(0.5)
    assert c.kv.put(KEY, "b", acquire=b) is True
    assert c.kv.get(KEY)[1]["LockIndex"] == 2


def test_delete_behavior_and_expire_session(frozen: FakeConsulAgent) -> None:
    c = client(frozen)
    a = c.session.create(name="a", behavior="delete", lock_delay=0)
    b = c.session.create(name="b", lock_delay=0)
    assert frozen.requests[-2].body and json.loads(frozen.requests[-2].body)["behavior"] == "delete"
    assert c.kv.put(KEY, "a", acquire=a)
    index = str(frozen.kv_index(KEY))
    call = Call(c.kv.get, KEY, index=index, wait="5s")
    blocked(frozen, "kv", KEY)

    write = frozen.expire_session(a)

    # The key is gone (404: no value, the KV table's index); no lock-delay with 0.
    assert call.join() == (str(write), None)
    assert frozen.requests[-1].status == 404
    assert c.kv.put(KEY, "b", acquire=b) is True
    assert c.kv.get(KEY)[1]["LockIndex"] == 1
    with pytest.raises(KeyError):
        frozen.expire_session(a)


def test_blocking_kv_get_wakes_on_its_key_only(agent: FakeConsulAgent) -> None:
    c = client(agent)
    sid = c.session.create(lock_delay=0)
    c.kv.put(KEY, "v")
    index, _ = c.kv.get(KEY)
    call = Call(c.kv.get, KEY, index=index, wait="5s")
    blocked(agent, "kv", KEY)

    # Another key: the KV table index moves, this key's ModifyIndex does not.
    c.kv.put("service/other", "x")
    still_blocked_after(agent, call, "kv", KEY)
    # Rewriting the same value writes nothing.
    c.kv.put(KEY, "v")
    still_blocked_after(agent, call, "kv", KEY)

    assert c.kv.put(KEY, "v", acquire=sid)
    index, entry = call.join()
    assert entry["Session"] == sid and index == str(entry["ModifyIndex"])
    record = agent.requests[-1]
    assert (record.endpoint, record.service, record.outcome) == ("kv", KEY, "changed")

    call = Call(c.kv.get, KEY, index=index, wait="5s")
    blocked(agent, "kv", KEY)
    assert c.kv.put(KEY, "v", release=sid)
    index, entry = call.join()
    assert "Session" not in entry and entry["Value"] == b"v"

    again = c.kv.get(KEY, index=index, wait=SHORT)
    assert again == (index, entry)
    assert agent.requests[-1].outcome == "timeout"

    # An absent key answers the KV table index, so any KV write wakes its watchers.
    absent_index, nothing = c.kv.get("service/absent")
    assert nothing is None and absent_index == str(agent.kv_index("service/absent"))
    call = Call(c.kv.get, "service/absent", index=absent_index, wait="5s")
    blocked(agent, "kv", "service/absent")
    c.kv.put("service/other", "y")
    assert call.join() == (str(agent.index), None)


def test_cas_flags_raw_and_delete(agent: FakeConsulAgent) -> None:
    c = client(agent)
    assert c.kv.put("cfg", "1", cas=0) is True  # only if absent
    assert c.kv.put("cfg", "2", cas=0) is False
    _, entry = c.kv.get("cfg")
    assert c.kv.put("cfg", "2", cas=entry["ModifyIndex"], flags=42) is True
    assert c.kv.put("cfg", "3", cas=entry["ModifyIndex"]) is False  # stale index
    index, entry = c.kv.get("cfg")
    assert (entry["Value"], entry["Flags"]) == (b"2", 42)

    response = c.http.get(lambda r: r, "/v1/kv/cfg", params=[("raw", "1")])
    assert (response.code, response.body) == (200, "2")
    assert response.headers["Content-Type"] == "text/plain"
    assert response.headers["X-Consul-Index"] == index

    with pytest.raises(consul.ConsulException, match=r"^400 Conflicting flags"):
        c.kv.put("cfg", "x", cas=1, acquire="s")
    assert c.kv.delete("cfg", cas=1) is False
    assert c.kv.delete("cfg", cas=entry["ModifyIndex"]) is True
    assert c.kv.get("cfg")[1] is None
    assert c.kv.delete("cfg") is True  # nothing to delete is fine too

    # Methods each endpoint takes (agent/http_register.go).
    wrong = requests.get(f"{agent.url}/v1/session/create")
    assert (wrong.status_code, wrong.headers["Allow"]) == (405, "OPTIONS,PUT")
    wrong = requests.post(f"{agent.url}/v1/kv/cfg")
    assert (wrong.status_code, wrong.headers["Allow"]) == (405, "OPTIONS,GET,PUT,DELETE")
    assert requests.get(f"{agent.url}/v1/kv/").text == "Missing key name"


def test_sessions_follow_their_node_and_checks() -> None:
    with FakeConsulAgent(clock=lambda: 0.0) as agent:
        agent.register("node-a", "10.0.0.1", "web", "web-1")
        c = client(agent)
        on_node = c.session.create(name="on-a", node="node-a", lock_delay=0)
        with_service = c.session.create(
            node="node-a", checks=["serfHealth", "service:web-1"], lock_delay=0
        )
        assert c.session.info(with_service)[1]["Checks"] == ["serfHealth", "service:web-1"]
        assert c.kv.put(KEY, "a", acquire=on_node)

        # A listed check going critical invalidates the sessions that list it...
        agent.set_status("web-1", "critical")
        assert c.session.info(with_service)[1] is None
        assert c.session.info(on_node)[1] is not None
        # ... and a failing node those on it, in the same write, releasing their locks.
        write = agent.set_node_health("node-a", "critical")
        _, entry = c.kv.get(KEY)
        assert "Session" not in entry and entry["ModifyIndex"] == write

        with pytest.raises(consul.ConsulException, match=r"^500 Check 'serfHealth' is in critical"):
            c.session.create(node="node-a")
        with pytest.raises(consul.ConsulException, match=r"^500 Missing node registration"):
            c.session.create(node="nowhere")
        with pytest.raises(consul.ConsulException, match=r"^500 Missing check 'service:x' regis"):
            c.session.create(checks=["service:x"])
        agent.set_node_health("node-a", "passing")
        doomed = agent.create_session("doomed", node="node-a")
        agent.deregister_node("node-a")
        assert agent.session_info(doomed) is None

        # What the libraries would not send: the raw API, as Consul answers it.
        def create(body: Any) -> tuple[int, str]:
            r = requests.put(f"{agent.url}/v1/session/create", data=json.dumps(body))
            return r.status_code, r.text

        assert create({"TTL": "5s"}) == (
            500,
            "Invalid Session TTL '5000000000', must be between [10s=24h0m0s]",
        )
        assert create({"Behavior": "keep"}) == (500, "Invalid Behavior setting 'keep'")
        assert create({"TTL": 15}) == (
            400,
            "Request decode failed: json: cannot unmarshal number into Go struct field "
            "Session.TTL of type string",
        )
        # A bare number under 1000 (ns) is taken as seconds (FixupLockDelay).
        status, text = create({"LockDelay": 7, "Name": "x"})
        assert status == 200
        assert agent.session_info(json.loads(text)["ID"])["LockDelay"] == 7_000_000_000
        with pytest.raises(ConsulHTTPError, match="Invalid Behavior"):
            agent.create_session(behavior="keep")


def test_kv_and_session_acls() -> None:
    tokens = {"mgmt": None, "web-reader": ["web"]}
    with FakeConsulAgent(acl_tokens=tokens, kv_rules={"elector": ["service/dyups/"]}) as agent:
        elector = client(agent, token="elector")
        sid = elector.session.create(name="elector", lock_delay=0)
        assert elector.kv.put(KEY, "me", acquire=sid) is True
        assert elector.kv.get(KEY)[1]["Session"] == sid
        with pytest.raises(
            consul.ACLPermissionDenied, match=r"lacks permission 'key:write' on \"other\""
        ):
            elector.kv.put("other", "x")

        # A management token may do everything; one with only service rules, nothing.
        mgmt = client(agent, token="mgmt")
        assert mgmt.kv.get(KEY)[1]["Session"] == sid
        assert mgmt.session.info(sid)[1]["ID"] == sid
        reader = client(agent, token="web-reader")
        with pytest.raises(consul.ACLPermissionDenied, match="'key:read'"):
            reader.kv.get(KEY)
        with pytest.raises(consul.ACLPermissionDenied, match="'session:write'"):
            reader.session.create()
        # Session reads are filtered, not refused.
        assert reader.session.info(sid)[1] is None
        response = raw_response(reader, f"/v1/session/info/{sid}", [("token", "web-reader")])
        assert response.headers["X-Consul-Results-Filtered-By-ACLs"] == "true"
        with pytest.raises(consul.ACLPermissionDenied, match=ANONYMOUS_ACCESSOR):
            client(agent).kv.put(KEY, "x", acquire=sid)

        bogus = client(agent, token="bogus")
        for call in (
            lambda: bogus.kv.get(KEY),
            bogus.session.create,
            lambda: bogus.kv.put(KEY, ""),
        ):
            with pytest.raises(consul.ACLPermissionDenied, match="ACL not found"):
                call()


def test_faults_reach_kv_and_session_endpoints(agent: FakeConsulAgent) -> None:
    c = client(agent)
    sid = c.session.create(lock_delay=0)
    c.kv.put(KEY, "v")
    index, _ = c.kv.get(KEY)
    call = Call(c.kv.get, KEY, index=index, wait="5s")
    blocked(agent, "kv", KEY)

    agent.fail_next(2, path_prefix="/v1/kv/")

    with pytest.raises(consul.ConsulException, match=r"^500 No cluster leader"):
        call.join()
    # A faulted acquire writes nothing.
    with pytest.raises(consul.ConsulException, match=r"^500 No cluster leader"):
        c.kv.put(KEY, "x", acquire=sid)
    assert "Session" not in agent.kv_entry(KEY)
    assert c.kv.put(KEY, "x", acquire=sid) is True

    # A hung agent: the renewal times out.
    agent.hang(True)
    with pytest.raises(requests.exceptions.ReadTimeout):
        client(agent, timeout=0.3).session.renew(sid)
    agent.hang(False)

    # Going down cuts a blocked watch; the state (session, lock) is kept.
    index, _ = c.kv.get(KEY)
    call = Call(c.kv.get, KEY, index=index, wait="5s")
    blocked(agent, "kv", KEY)
    agent.go_down()
    with pytest.raises(requests.exceptions.ConnectionError):
        call.join()
    with pytest.raises(requests.exceptions.ConnectionError):
        c.session.renew(sid)
    agent.come_up()
    assert c.session.renew(sid)["ID"] == sid
    assert c.kv.get(KEY)[1]["Session"] == sid


def test_without_a_leader_nothing_expires_and_writes_fail(frozen: FakeConsulAgent) -> None:
    c = client(frozen)
    sid = c.session.create(ttl=15, lock_delay=0)
    assert c.kv.put(KEY, "v", acquire=sid)

    frozen.set_leader(False)

    with pytest.raises(consul.ConsulException, match=r"^500 No cluster leader"):
        c.session.renew(sid)
    with pytest.raises(consul.ConsulException, match=r"^500 No cluster leader"):
        c.kv.put(KEY, "x")
    frozen.advance(100)
    assert c.kv.get(KEY, consistency="stale")[1]["Session"] == sid
    # A new leader restarts every TTL (t=100: expiry at 130).
    frozen.set_leader(True)
    frozen.advance(29)
    assert frozen.kv_entry(KEY)["Session"] == sid
    frozen.advance(1)
    assert "Session" not in frozen.kv_entry(KEY)
    assert frozen.sessions == []


def test_a_moving_clock_expires_sessions_by_itself() -> None:
    with FakeConsulAgent(session_ttl_min=0.1) as agent:
        c = client(agent)
        # Both libraries only send whole seconds, 10 and up: the raw API, 500 ms (× 2).
        created = requests.put(
            f"{agent.url}/v1/session/create", data=json.dumps({"TTL": "500ms", "LockDelay": "0s"})
        )
        sid = created.json()["ID"]
        assert c.kv.put(KEY, "v", acquire=sid)
        index, _ = c.kv.get(KEY)

        # A blocked watch notices the expiry without any other request.
        new_index, entry = c.kv.get(KEY, index=index, wait="5s")

        assert "Session" not in entry and int(new_index) > int(index)
        assert agent.requests[-1].outcome == "changed"
        assert c.session.info(sid)[1] is None


def test_kv_and_session_controls(frozen: FakeConsulAgent) -> None:
    sid = frozen.create_session("control", ttl=10, lock_delay=2)
    assert frozen.kv_put(KEY, "held", acquire=sid) is True
    assert frozen.kv_entry(KEY)["Session"] == sid
    assert [s["ID"] for s in frozen.sessions] == [sid]
    frozen.advance(20)  # 2 × 10 s
    assert frozen.session_info(sid) is None
    assert frozen.lock_delay_remaining(KEY) == 2
    other = frozen.create_session("other")
    assert frozen.kv_put(KEY, "x", acquire=other) is False
    frozen.advance(2)
    assert frozen.kv_put(KEY, "x", acquire=other) is True
    assert frozen.kv_delete(KEY) is True and frozen.kv_entry(KEY) is None
    with pytest.raises(ValueError):
        frozen.advance(-1)


# --- helpers -------------------------------------------------------------------------------------


def test_filter_subset() -> None:
    entry = co.health_entry(
        co.node("n1", "10.0.0.1", meta={"zone": "a"}),
        co.service("web", tags=["http", "v2"], meta={"version": "2"}, port=80),
        [co.serf_check("n1"), co.service_check("n1", "web", "web", "critical")],
    )

    def match(expr: str) -> bool:
        return compile_filter(expr, HEALTH_SELECTORS)(entry)

    assert match('Service.Meta.version == "2"')
    assert match('Service.Meta["version"] != "1"')
    assert match('"http" in Service.Tags and "v3" not in Service.Tags')
    assert match("Service.Port == 80")
    assert match('Checks.Status == "critical"')  # any element
    assert match('Node.Meta.zone matches "^a$" and not (Service.Service == "db")')
    assert match("Service.Meta is not empty or Service.Tags is empty")
    assert match('"version" in Service.Meta')
    assert not match('Service.Meta.missing == "x"')
    assert match('Service.Meta.missing != "x"')
    with pytest.raises(FilterError):
        compile_filter('Service.Meta.version = "2"', HEALTH_SELECTORS)
    with pytest.raises(FilterError, match='Selector "ServiceMeta" is not valid'):
        compile_filter('ServiceMeta.version == "2"', HEALTH_SELECTORS)
    assert compile_filter('ServiceMeta.version == "2"', SERVICE_NODE_SELECTORS)(
        co.catalog_service_node(entry["Node"], entry["Service"])
    )


def test_go_durations() -> None:
    assert parse_go_duration("5s") == 5.0
    assert parse_go_duration("10m") == 600.0
    assert parse_go_duration("1m30s") == 90.0
    assert parse_go_duration("300ms") == pytest.approx(0.3)
    assert parse_go_duration("0") == 0.0
    for bad in ("5", "", "s", "5x"):
        with pytest.raises(ValueError):
            parse_go_duration(bad)
    # As Go's time.Duration.String() writes them (Consul's TTL error messages use it).
    assert format_go_duration(10) == "10s"
    assert format_go_duration(86400) == "24h0m0s"
    assert format_go_duration(90) == "1m30s"
    assert format_go_duration(1.5) == "1.5s"
    assert format_go_duration(0.25) == "250ms"
    assert format_go_duration(0) == "0s"
