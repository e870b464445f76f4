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
import threading
from collections.abc import Callable, Iterator
from typing import Any

import consul
import pytest
import requests

from tests.fakes import consul_objects as co
from tests.fakes.consul_agent import (
    HEALTH_SELECTORS,
    SERVICE_NODE_SELECTORS,
    FakeConsulAgent,
    FilterError,
    compile_filter,
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
