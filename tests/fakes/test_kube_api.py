"""The fake Kubernetes API server, proven against the official client, unmodified.

Every test talks to `FakeKubeAPI` through `kubernetes.client` (typed APIs, default
`_preload_content`) and `kubernetes.watch.Watch`, or through raw HTTP where the wire
format itself is the point. Tests wait on conditions (`api.wait_for`), never sleep.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import urllib3
from kubernetes import client, watch
from kubernetes.client.rest import ApiException

from tests.fakes import kube_objects as ko
from tests.fakes.kube_api import (
    BOOKMARK,
    INITIAL_EVENTS_END,
    ApiError,
    FakeKubeAPI,
    parse_label_selector,
)

WAIT = 5.0


@pytest.fixture
def api() -> Iterator[FakeKubeAPI]:
    with FakeKubeAPI(bookmark_interval=None) as fake:
        yield fake


@pytest.fixture
def api_client(api: FakeKubeAPI) -> Iterator[client.ApiClient]:
    with client.ApiClient(client.Configuration(host=api.url)) as c:
        yield c


def slice_of(name: str, *ips: str, service: str = "web", ns: str = "default") -> dict[str, Any]:
    return ko.endpoint_slice(
        ns,
        name,
        service=service,
        endpoints=[ko.endpoint(ip, pod=f"{service}-{ip}", node_name="node-a") for ip in ips],
        ports=[ko.endpoint_port(8080, name="http")],
    )


class Collector:
    """Runs `Watch().stream(func, **kwargs)` in a thread, keeping events and the error."""

    def __init__(
        self,
        func: Callable[..., Any],
        *,
        stop_when: Callable[[list[dict[str, Any]]], bool] | None = None,
        **kwargs: Any,
    ) -> None:
        self.watch = watch.Watch()
        self.events: list[dict[str, Any]] = []
        self.error: BaseException | None = None
        self._stop_when = stop_when
        self._thread = threading.Thread(target=self._run, args=(func, kwargs), daemon=True)
        self._thread.start()

    def _run(self, func: Callable[..., Any], kwargs: dict[str, Any]) -> None:
        try:
            for event in self.watch.stream(func, **kwargs):
                self.events.append(event)
                if self._stop_when is not None and self._stop_when(self.events):
                    self.watch.stop()
        except BaseException as exc:
            self.error = exc

    @property
    def done(self) -> bool:
        return not self._thread.is_alive()

    def types(self) -> list[str]:
        return [e["type"] for e in self.events]

    def rvs(self) -> list[str]:
        return [e["raw_object"]["metadata"]["resourceVersion"] for e in self.events]

    def join(self) -> None:
        self._thread.join(WAIT)
        assert not self._thread.is_alive(), "watch did not end"


# --- lists -----------------------------------------------------------------------------


def test_typed_lists_of_services_slices_and_pods(
    api: FakeKubeAPI, api_client: client.ApiClient
) -> None:
    api.create(
        ko.service(
            "shop",
            "web",
            ports=[ko.service_port(80, name="http", target_port=8080)],
            annotations={"dyups/upstream": "web_be"},
            labels={"app": "web"},
        )
    )
    api.create(ko.service("other", "db", ports=[{"name": "pg", "port": 5432}]))
    api.create(
        ko.endpoint_slice(
            "shop",
            "web-x1",
            service="web",
            endpoints=[
                ko.endpoint("10.0.0.1", pod="web-1", node_name="n1", zone="z1", for_zones=["z1"]),
                ko.endpoint("10.0.0.2", ready=False, serving=True, terminating=True, pod="web-2"),
            ],
            ports=[ko.endpoint_port(8080, name="http")],
        )
    )
    api.create(ko.pod("shop", "web-1", ip="10.0.0.1", labels={"app": "web"}, node="n1"))
    api.create(ko.pod("shop", "web-2", ip="10.0.0.2", labels={"app": "web"}, ready=False))

    core = client.CoreV1Api(api_client)
    services = core.list_service_for_all_namespaces()
    assert isinstance(services, client.V1ServiceList)
    assert services.metadata.resource_version == api.resource_version
    assert [(s.metadata.namespace, s.metadata.name) for s in services.items] == [
        ("other", "db"),
        ("shop", "web"),
    ]
    web = services.items[1]
    assert web.metadata.annotations == {"dyups/upstream": "web_be"}
    assert web.metadata.uid and web.metadata.generation == 1
    assert (
        web.metadata.resource_version
        == api.get("services", "shop", "web")["metadata"]["resourceVersion"]
    )
    port = web.spec.ports[0]
    assert (port.name, port.port, port.target_port, port.protocol) == ("http", 80, 8080, "TCP")
    assert services.items[0].spec.ports[0].target_port == 5432  # defaulted like the server

    slices = client.DiscoveryV1Api(api_client).list_namespaced_endpoint_slice("shop")
    assert isinstance(slices, client.V1EndpointSliceList)
    (s,) = slices.items
    assert s.address_type == "IPv4"
    assert s.metadata.labels == {
        "kubernetes.io/service-name": "web",
        "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io",
    }
    first, second = s.endpoints
    assert first.addresses == ["10.0.0.1"]
    assert (first.conditions.ready, first.conditions.serving, first.conditions.terminating) == (
        True,
        True,
        False,
    )
    assert (first.node_name, first.zone) == ("n1", "z1")
    assert (first.target_ref.kind, first.target_ref.namespace, first.target_ref.name) == (
        "Pod",
        "shop",
        "web-1",
    )
    assert [z.name for z in first.hints.for_zones] == ["z1"]
    assert (second.conditions.ready, second.conditions.terminating) == (False, True)
    assert [(p.name, p.port, p.protocol) for p in s.ports] == [("http", 8080, "TCP")]

    pods = core.list_namespaced_pod("shop", label_selector="app=web")
    by_name = {p.metadata.name: p for p in pods.items}
    assert by_name["web-1"].status.pod_ip == "10.0.0.1"
    assert [i.ip for i in by_name["web-1"].status.pod_ips] == ["10.0.0.1"]
    assert by_name["web-1"].spec.node_name == "n1"
    ready = {
        p: next(c.status for c in by_name[p].status.conditions if c.type == "Ready")
        for p in by_name
    }
    assert ready == {"web-1": "True", "web-2": "False"}

    assert api.count("list") == 3
    assert api.request_counts[("list", "endpointslices")] == 1


def test_list_wire_shape_matches_the_api_concepts_doc(api: FakeKubeAPI) -> None:
    api.create(ko.service("default", "web"))
    http = urllib3.PoolManager()
    resp = http.request("GET", f"{api.url}/api/v1/services")
    assert resp.status == 200
    assert resp.headers["Content-Type"] == "application/json"
    body = json.loads(resp.data)
    assert (body["kind"], body["apiVersion"]) == ("ServiceList", "v1")
    assert body["metadata"] == {"resourceVersion": api.resource_version}
    (item,) = body["items"]
    assert "kind" not in item and "apiVersion" not in item  # items of a list carry no type
    single = json.loads(
        http.request("GET", f"{api.url}/api/v1/namespaces/default/services/web").data
    )
    assert (single["kind"], single["apiVersion"]) == ("Service", "v1")

    missing = http.request("GET", f"{api.url}/apis/discovery.k8s.io/v1/nodes")
    assert missing.status == 404
    assert json.loads(missing.data)["reason"] == "NotFound"


def test_pagination_serves_a_consistent_snapshot(
    api: FakeKubeAPI, api_client: client.ApiClient
) -> None:
    for i in range(5):
        api.create(ko.service("default", f"svc-{i}"))
    core = client.CoreV1Api(api_client)

    page1 = core.list_namespaced_service("default", limit=2)
    snapshot_rv = page1.metadata.resource_version
    assert [s.metadata.name for s in page1.items] == ["svc-0", "svc-1"]
    assert page1.metadata.remaining_item_count == 3
    token = page1.metadata._continue
    assert token

    # Changes after the first page do not show in the following pages.
    api.delete("services", "default", "svc-3")
    api.create(ko.service("default", "svc-9"))
    api.patch_labels("services", "default", "svc-2", {"changed": "yes"})

    page2 = core.list_namespaced_service("default", limit=2, _continue=token)
    assert page2.metadata.resource_version == snapshot_rv
    assert [s.metadata.name for s in page2.items] == ["svc-2", "svc-3"]
    assert page2.items[0].metadata.labels is None  # the version at the snapshot
    page3 = core.list_namespaced_service("default", limit=2, _continue=page2.metadata._continue)
    assert [s.metadata.name for s in page3.items] == ["svc-4"]
    assert page3.metadata._continue is None
    assert page3.metadata.remaining_item_count is None

    fresh = core.list_namespaced_service("default")
    assert [s.metadata.name for s in fresh.items] == ["svc-0", "svc-1", "svc-2", "svc-4", "svc-9"]
    assert fresh.metadata.resource_version == api.resource_version != snapshot_rv


def test_expired_continue_token_is_410_with_an_inconsistent_continue(
    api: FakeKubeAPI, api_client: client.ApiClient
) -> None:
    for i in range(3):
        api.create(ko.service("default", f"svc-{i}"))
    core = client.CoreV1Api(api_client)
    page1 = core.list_service_for_all_namespaces(limit=1)
    api.compact()

    with pytest.raises(ApiException) as info:
        core.list_service_for_all_namespaces(limit=1, _continue=page1.metadata._continue)
    assert info.value.status == 410
    status = json.loads(info.value.body)
    assert (status["kind"], status["reason"], status["code"]) == ("Status", "Expired", 410)
    # As the apiserver: the Status carries a token that continues from the latest state.
    rest = core.list_service_for_all_namespaces(limit=5, _continue=status["metadata"]["continue"])
    assert [s.metadata.name for s in rest.items] == ["svc-1", "svc-2"]


def test_list_resource_version_semantics(api: FakeKubeAPI, api_client: client.ApiClient) -> None:
    api.create(ko.service("default", "a"))
    old_rv = api.resource_version
    api.create(ko.service("default", "b"))
    core = client.CoreV1Api(api_client)

    exact = core.list_namespaced_service(
        "default", resource_version=old_rv, resource_version_match="Exact"
    )
    assert exact.metadata.resource_version == old_rv
    assert [s.metadata.name for s in exact.items] == ["a"]
    not_older = core.list_namespaced_service("default", resource_version=old_rv)
    assert not_older.metadata.resource_version == api.resource_version
    assert len(not_older.items) == 2

    with pytest.raises(ApiException) as info:
        core.list_namespaced_service("default", resource_version=str(int(api.resource_version) + 5))
    assert info.value.status == 504
    assert "Too large resource version" in json.loads(info.value.body)["message"]

    api.compact()
    with pytest.raises(ApiException) as info:
        core.list_namespaced_service(
            "default", resource_version=old_rv, resource_version_match="Exact"
        )
    assert info.value.status == 410


def test_label_and_field_selectors_on_lists(api: FakeKubeAPI, api_client: client.ApiClient) -> None:
    api.create(ko.service("default", "web", labels={"app": "web", "tier": "front"}))
    api.create(ko.service("default", "api", labels={"app": "api", "tier": "back", "canary": "1"}))
    api.create(ko.service("default", "db", labels={"app": "db"}))
    api.create(ko.service("other", "web", labels={"app": "web", "tier": "front"}))
    core = client.CoreV1Api(api_client)

    def names(selector: str | None = None, fields: str | None = None) -> list[str]:
        result = core.list_service_for_all_namespaces(
            label_selector=selector, field_selector=fields
        )
        return [f"{s.metadata.namespace}/{s.metadata.name}" for s in result.items]

    assert names("app=web") == ["default/web", "other/web"]
    assert names("app==web,tier=front") == ["default/web", "other/web"]
    assert names("app!=web") == ["default/api", "default/db"]
    assert names("tier") == ["default/api", "default/web", "other/web"]
    assert names("!tier") == ["default/db"]
    assert names("tier in (back, front),!canary") == ["default/web", "other/web"]
    assert names("tier notin (front)") == ["default/api", "default/db"]
    assert names(fields="metadata.namespace=other") == ["other/web"]
    assert names("app=web", "metadata.namespace!=other") == ["default/web"]
    assert names(fields="metadata.name==db") == ["default/db"]

    assert names("app=") == []  # an empty value is valid
    for bad in ("app in ()", "a b", "app=web=x", "-bad-=x", "tier in (a"):
        with pytest.raises(ApiException) as info:
            names(bad)
        assert info.value.status == 400, bad
        assert json.loads(info.value.body)["reason"] == "BadRequest"
    with pytest.raises(ApiException) as info:
        names(fields="spec.nope=1")
    assert info.value.status == 400


def test_label_selector_parser() -> None:
    reqs = parse_label_selector("a=b, c!=d, e in (f,g), h notin (i), j, !k")
    labels = {"a": "b", "e": "g", "j": "1"}
    assert all(r.matches(labels) for r in reqs)
    assert not all(r.matches({**labels, "k": "x"}) for r in reqs)
    assert not all(r.matches({**labels, "c": "d"}) for r in reqs)
    with pytest.raises(ApiError):
        parse_label_selector("a in (b")


# --- watches ---------------------------------------------------------------------------


def test_watch_from_resource_version_streams_changes_then_bookmark(
    api: FakeKubeAPI, api_client: client.ApiClient
) -> None:
    api.create(slice_of("web-old", "10.0.0.9"))
    discovery = client.DiscoveryV1Api(api_client)
    rv = discovery.list_endpoint_slice_for_all_namespaces().metadata.resource_version

    w = Collector(
        discovery.list_endpoint_slice_for_all_namespaces,
        resource_version=rv,
        allow_watch_bookmarks=True,
        timeout_seconds=5,
    )
    assert api.wait_for(lambda: api.open_watches == 1)
    api.create(slice_of("web-a", "10.0.0.1"))
    updated = slice_of("web-a", "10.0.0.1", "10.0.0.2")
    api.update(updated)
    deleted = api.delete("endpointslices", "default", "web-a")
    assert api.wait_for(lambda: len(w.events) == 3)

    api.set_bookmark_interval(0.2)  # only now: keeps the order above free of bookmarks
    assert api.wait_for(lambda: len(w.events) == 4)
    api.close_watches(abrupt=False)  # a clean end, as on timeoutSeconds
    w.join()
    assert w.error is None

    assert w.types() == ["ADDED", "MODIFIED", "DELETED", "BOOKMARK"]
    added, modified, gone, bookmark = w.events
    assert isinstance(added["object"], client.V1EndpointSlice)
    assert added["object"].kind == "EndpointSlice"  # watch objects carry their type
    assert added["object"].endpoints[0].addresses == ["10.0.0.1"]
    assert [e.addresses[0] for e in modified["object"].endpoints] == ["10.0.0.1", "10.0.0.2"]
    assert modified["object"].metadata.generation == 2
    # DELETED carries the last state, stamped with the deleting write's resourceVersion.
    assert len(gone["object"].endpoints) == 2
    assert gone["object"].metadata.resource_version == deleted["metadata"]["resourceVersion"]
    assert [int(v) for v in w.rvs()[:3]] == sorted(int(v) for v in w.rvs()[:3])
    assert bookmark["raw_object"] == {
        "kind": "EndpointSlice",
        "apiVersion": "discovery.k8s.io/v1",
        "metadata": {"resourceVersion": api.resource_version},
    }
    assert w.watch.resource_version == api.resource_version  # the client tracked the bookmark
    assert api.count("watch", "endpointslices") == 1


def test_watch_timeout_ends_the_stream_cleanly(
    api: FakeKubeAPI, api_client: client.ApiClient
) -> None:
    discovery = client.DiscoveryV1Api(api_client)
    rv = discovery.list_endpoint_slice_for_all_namespaces().metadata.resource_version
    w = Collector(
        discovery.list_endpoint_slice_for_all_namespaces, resource_version=rv, timeout_seconds=1
    )
    w.join()
    assert (w.error, w.events) == (None, [])
    assert api.open_watches == 0


def test_watch_without_resource_version_starts_with_the_current_state(
    api: FakeKubeAPI, api_client: client.ApiClient
) -> None:
    api.create(slice_of("web-b", "10.0.0.2"))
    api.create(slice_of("web-a", "10.0.0.1"))
    api.create(slice_of("db-a", "10.0.1.1", service="db", ns="data"))
    discovery = client.DiscoveryV1Api(api_client)

    w = Collector(discovery.list_namespaced_endpoint_slice, namespace="default", timeout_seconds=5)
    assert api.wait_for(lambda: len(w.events) == 2)
    api.create(slice_of("web-c", "10.0.0.3"))
    assert api.wait_for(lambda: len(w.events) == 3)
    api.close_watches(abrupt=False)
    w.join()
    assert w.types() == ["ADDED", "ADDED", "ADDED"]
    assert [e["object"].metadata.name for e in w.events] == ["web-a", "web-b", "web-c"]


def test_watch_with_a_label_selector_sees_objects_enter_and_leave(
    api: FakeKubeAPI, api_client: client.ApiClient
) -> None:
    api.create(ko.service("default", "web", labels={"sync": "yes"}))
    api.create(ko.service("default", "db"))
    core = client.CoreV1Api(api_client)
    rv = core.list_namespaced_service(
        "default", label_selector="sync=yes"
    ).metadata.resource_version

    w = Collector(
        core.list_namespaced_service,
        namespace="default",
        label_selector="sync=yes",
        resource_version=rv,
        timeout_seconds=5,
    )
    assert api.wait_for(lambda: api.open_watches == 1)
    api.patch_annotations("services", "default", "db", {"x": "1"})  # never matches: nothing
    api.patch_annotations("services", "default", "web", {"x": "1"})  # MODIFIED
    left = api.patch_labels("services", "default", "web", {"sync": None})  # DELETED
    api.patch_labels("services", "default", "db", {"sync": "yes"})  # ADDED
    assert api.wait_for(lambda: len(w.events) == 3)
    api.close_watches(abrupt=False)
    w.join()

    assert [(e["type"], e["object"].metadata.name) for e in w.events] == [
        ("MODIFIED", "web"),
        ("DELETED", "web"),
        ("ADDED", "db"),
    ]
    # The apiserver's watch cache sends the previous state (which matched) at the new RV.
    gone = w.events[1]["object"]
    assert gone.metadata.labels == {"sync": "yes"}
    assert gone.metadata.resource_version == left["metadata"]["resourceVersion"]


def test_send_initial_events_ends_with_an_annotated_bookmark(api: FakeKubeAPI) -> None:
    api.create(ko.pod("default", "p1", ip="10.0.0.1"))
    http = urllib3.PoolManager()
    base = f"{api.url}/api/v1/namespaces/default/pods?watch=1&sendInitialEvents=true"
    bad = http.request("GET", base + "&allowWatchBookmarks=true")
    assert bad.status == 422  # resourceVersionMatch=NotOlderThan is required

    resp = http.request(
        "GET",
        base + "&allowWatchBookmarks=true&resourceVersionMatch=NotOlderThan&timeoutSeconds=5",
        preload_content=False,
    )
    lines = resp.stream()
    added = json.loads(next(lines))
    end = json.loads(next(lines))
    api.close_watches(abrupt=False)
    resp.drain_conn()
    assert (added["type"], added["object"]["metadata"]["name"]) == ("ADDED", "p1")
    assert end["type"] == BOOKMARK
    assert end["object"]["metadata"] == {
        "resourceVersion": api.resource_version,
        "annotations": {INITIAL_EVENTS_END: "true"},
    }


def test_watch_wire_format_is_chunked_json_lines(api: FakeKubeAPI) -> None:
    api.set_bookmark_interval(0.2)
    http = urllib3.PoolManager()
    rv = api.resource_version
    api.create(slice_of("web-a", "10.0.0.1"))
    resp = http.request(
        "GET",
        f"{api.url}/apis/discovery.k8s.io/v1/endpointslices?watch=true&resourceVersion={rv}"
        "&allowWatchBookmarks=true&timeoutSeconds=5",
        preload_content=False,
    )
    assert resp.status == 200
    assert resp.headers["Content-Type"] == "application/json"
    assert resp.headers["Transfer-Encoding"] == "chunked"
    chunks = resp.stream()
    first = next(chunks)
    second = next(chunks)
    api.close_watches(abrupt=False)
    resp.drain_conn()
    # One event per chunk, each one JSON document ending in a newline.
    assert first.endswith(b"\n") and first.count(b"\n") == 1
    assert json.loads(first)["type"] == "ADDED"
    assert json.loads(second)["type"] == "BOOKMARK"


def test_expired_watch_with_timeout_seconds_raises_410_at_once(
    api: FakeKubeAPI, api_client: client.ApiClient
) -> None:
    api.create(slice_of("web-a", "10.0.0.1"))
    discovery = client.DiscoveryV1Api(api_client)
    rv = discovery.list_endpoint_slice_for_all_namespaces().metadata.resource_version
    api.update(slice_of("web-a", "10.0.0.2"))
    oldest = api.compact()

    w = Collector(
        discovery.list_endpoint_slice_for_all_namespaces,
        resource_version=rv,
        allow_watch_bookmarks=True,
        timeout_seconds=5,
    )
    w.join()
    # The server answered 200 with one ERROR event; the client turns it into an exception.
    # With timeout_seconds the client does not retry (kubernetes.watch disables retries).
    assert isinstance(w.error, ApiException)
    assert w.error.status == 410
    assert w.error.reason == f"Expired: too old resource version: {rv} ({oldest})"
    assert api.count("watch") == 1
    assert api.events_sent["ERROR"] == 1

    # A fresh list gives a version that can be watched from.
    relist_rv = discovery.list_endpoint_slice_for_all_namespaces().metadata.resource_version
    w2 = Collector(
        discovery.list_endpoint_slice_for_all_namespaces,
        resource_version=relist_rv,
        timeout_seconds=5,
    )
    assert api.wait_for(lambda: api.open_watches == 1)
    api.delete("endpointslices", "default", "web-a")
    assert api.wait_for(lambda: len(w2.events) == 1)
    api.close_watches(abrupt=False)
    w2.join()
    assert w2.types() == ["DELETED"]


def test_expired_watch_without_timeout_is_retried_once_with_the_same_version(
    api: FakeKubeAPI, api_client: client.ApiClient
) -> None:
    discovery = client.DiscoveryV1Api(api_client)
    rv = discovery.list_endpoint_slice_for_all_namespaces().metadata.resource_version
    api.create(slice_of("web-a", "10.0.0.1"))
    api.compact()

    # Really too old: the retry (same resourceVersion) fails too, then the client raises.
    w = Collector(discovery.list_endpoint_slice_for_all_namespaces, resource_version=rv)
    w.join()
    assert isinstance(w.error, ApiException) and w.error.status == 410
    watches = [r for r in api.requests if r.verb == "watch"]
    assert [r.query["resourceVersion"] for r in watches] == [rv, rv]

    # Expired once (expire_next_watch): the retry with the same version succeeds.
    api.clear_requests()
    fresh = api.resource_version
    api.expire_next_watch()
    w2 = Collector(
        discovery.list_endpoint_slice_for_all_namespaces,
        resource_version=fresh,
        stop_when=lambda events: len(events) == 1,
    )
    assert api.wait_for(lambda: api.open_watches == 1)
    api.create(slice_of("web-b", "10.0.0.2"))
    w2.join()
    assert w2.error is None
    assert w2.types() == ["ADDED"]
    assert [r.status for r in api.requests if r.verb == "watch"] == [200, 200]
    assert api.events_sent["ERROR"] == 3  # two above, one here


def test_expired_watch_as_http_410(api: FakeKubeAPI, api_client: client.ApiClient) -> None:
    discovery = client.DiscoveryV1Api(api_client)
    rv = api.resource_version
    api.expire_next_watch(as_http=True)
    # No timeout_seconds: still no retry, the watch call itself raises.
    w = Collector(discovery.list_endpoint_slice_for_all_namespaces, resource_version=rv)
    w.join()
    assert isinstance(w.error, ApiException) and w.error.status == 410
    assert json.loads(w.error.body)["reason"] == "Expired"
    assert [r.status for r in api.requests if r.verb == "watch"] == [410]

    api.expired_watch_as_http = True
    api.create(slice_of("web-a", "10.0.0.1"))
    api.compact()
    http = urllib3.PoolManager()
    resp = http.request(
        "GET", f"{api.url}/apis/discovery.k8s.io/v1/endpointslices?watch=1&resourceVersion={rv}"
    )
    assert resp.status == 410
    assert json.loads(resp.data)["message"].startswith(f"too old resource version: {rv} (")


def test_abruptly_closed_watch_surfaces_as_a_protocol_error(
    api: FakeKubeAPI, api_client: client.ApiClient
) -> None:
    discovery = client.DiscoveryV1Api(api_client)
    w = Collector(
        discovery.list_endpoint_slice_for_all_namespaces,
        resource_version=api.resource_version,
        timeout_seconds=5,
    )
    assert api.wait_for(lambda: api.open_watches == 1)
    assert api.close_watches() == 1
    w.join()
    assert isinstance(w.error, urllib3.exceptions.ProtocolError)
    assert api.wait_for(lambda: api.open_watches == 0)


def test_watch_stopped_by_the_client_is_noticed(
    api: FakeKubeAPI, api_client: client.ApiClient
) -> None:
    discovery = client.DiscoveryV1Api(api_client)
    w = Collector(
        discovery.list_endpoint_slice_for_all_namespaces,
        resource_version=api.resource_version,
        timeout_seconds=5,
        stop_when=lambda events: True,
    )
    assert api.wait_for(lambda: api.open_watches == 1)
    api.create(slice_of("web-a", "10.0.0.1"))
    w.join()
    assert api.wait_for(lambda: api.open_watches == 0)


def test_raw_writes_patch_delete_and_the_legacy_watch_path(api: FakeKubeAPI) -> None:
    http = urllib3.PoolManager()
    base = f"{api.url}/api/v1/namespaces/default/services"
    body = ko.service("default", "")
    body["metadata"] = {"generateName": "web-"}
    created = http.request("POST", base, json=body)
    assert created.status == 201
    name = json.loads(created.data)["metadata"]["name"]
    assert name.startswith("web-") and len(name) == len("web-") + 5

    watch_resp = http.request(
        "GET",
        f"{api.url}/api/v1/watch/namespaces/default/services?resourceVersion={api.resource_version}"
        "&timeoutSeconds=5",
        preload_content=False,
    )
    patched = http.request(
        "PATCH",
        f"{base}/{name}",
        body=json.dumps({"metadata": {"labels": {"a": "b"}}}),
        headers={"Content-Type": "application/merge-patch+json"},
    )
    assert patched.status == 200
    assert json.loads(patched.data)["metadata"]["labels"] == {"a": "b"}
    assert http.request("DELETE", f"{base}/{name}").status == 200
    again = http.request("DELETE", f"{base}/{name}")
    assert (again.status, json.loads(again.data)["reason"]) == (404, "NotFound")

    lines = watch_resp.stream()
    assert [json.loads(next(lines))["type"] for _ in range(2)] == ["MODIFIED", "DELETED"]
    api.close_watches(abrupt=False)
    watch_resp.drain_conn()
    assert api.request_counts[("watch", "services")] == 1
    assert [r.verb for r in api.requests] == ["create", "watch", "patch", "delete", "delete"]


# --- leases ------------------------------------------------------------------------------


def test_injected_failures_answer_a_status_until_healed(
    api: FakeKubeAPI, api_client: client.ApiClient
) -> None:
    coordination = client.CoordinationV1Api(api_client)
    coordination.create_namespaced_lease(
        "kube-system", client.V1Lease.from_dict(ko.lease("kube-system", "syncer", "pod-a"))
    )
    api.fail("get", "leases", "syncer")
    with pytest.raises(ApiException) as info:
        coordination.read_namespaced_lease("syncer", "kube-system")
    assert info.value.status == 500
    assert json.loads(info.value.body)["reason"] == "InternalError"
    # other verbs and other objects are served
    assert [
        lease.metadata.name for lease in coordination.list_namespaced_lease("kube-system").items
    ] == ["syncer"]
    api.fail("list", "leases", code=503)
    with pytest.raises(ApiException) as info:
        coordination.list_namespaced_lease("kube-system")
    assert info.value.status == 503
    api.heal()
    assert (
        coordination.read_namespaced_lease("syncer", "kube-system").spec.holder_identity == "pod-a"
    )
    assert coordination.list_namespaced_lease("kube-system").items


def test_lease_create_read_replace_and_conflicts(
    api: FakeKubeAPI, api_client: client.ApiClient
) -> None:
    coordination = client.CoordinationV1Api(api_client)
    with pytest.raises(ApiException) as info:
        coordination.read_namespaced_lease("syncer", "kube-system")
    assert info.value.status == 404
    assert json.loads(info.value.body)["message"] == (
        'leases.coordination.k8s.io "syncer" not found'
    )

    body = client.V1Lease.from_dict(ko.lease("kube-system", "syncer", "pod-a"))
    created = coordination.create_namespaced_lease("kube-system", body)
    assert created.spec.holder_identity == "pod-a"
    assert created.metadata.resource_version == api.resource_version
    assert api.request_counts[("create", "leases")] == 1
    with pytest.raises(ApiException) as info:
        coordination.create_namespaced_lease("kube-system", body)
    assert info.value.status == 409
    assert json.loads(info.value.body)["reason"] == "AlreadyExists"

    current = coordination.read_namespaced_lease("syncer", "kube-system")
    current.spec.holder_identity = "pod-b"
    current.spec.lease_transitions = 1
    replaced = coordination.replace_namespaced_lease("syncer", "kube-system", current)
    assert replaced.spec.holder_identity == "pod-b"
    assert int(replaced.metadata.resource_version) > int(current.metadata.resource_version)
    assert api.get("leases", "kube-system", "syncer")["spec"]["holderIdentity"] == "pod-b"

    stale = current  # still carries the resourceVersion replaced above
    stale.spec.holder_identity = "pod-c"
    with pytest.raises(ApiException) as info:
        coordination.replace_namespaced_lease("syncer", "kube-system", stale)
    assert info.value.status == 409
    status = json.loads(info.value.body)
    assert status["reason"] == "Conflict"
    assert "the object has been modified" in status["message"]
    assert api.get("leases", "kube-system", "syncer")["spec"]["holderIdentity"] == "pod-b"

    no_rv = client.V1Lease.from_dict(ko.lease("kube-system", "syncer", "pod-d"))
    with pytest.raises(ApiException) as info:
        coordination.replace_namespaced_lease("syncer", "kube-system", no_rv)
    assert info.value.status == 422
    assert [r.status for r in api.requests if r.verb == "update"] == [200, 409, 422]


def test_leases_listed_by_label_created_once_and_deleted_with_preconditions(
    api: FakeKubeAPI, api_client: client.ApiClient
) -> None:
    """What the sharded election uses: list a group of Leases by label, create each
    once (409 AlreadyExists after), delete only while unchanged (preconditions)."""
    coordination = client.CoordinationV1Api(api_client)
    group = {"dyups-syncer.io/lease-group": "syncer"}
    for name, labels in (
        ("syncer-0", {**group, "dyups-syncer.io/lease-role": "shard"}),
        ("syncer-member-a", {**group, "dyups-syncer.io/lease-role": "member"}),
        ("other", {"dyups-syncer.io/lease-group": "other"}),
    ):
        lease = client.V1Lease.from_dict(ko.lease("edge", name, "pod-a", labels=labels))
        coordination.create_namespaced_lease("edge", lease)
    api.create(ko.lease("default", "syncer-1", "pod-b", labels=group))  # another namespace

    listed = coordination.list_namespaced_lease(
        "edge", label_selector="dyups-syncer.io/lease-group=syncer"
    )
    assert [item.metadata.name for item in listed.items] == ["syncer-0", "syncer-member-a"]
    members = coordination.list_namespaced_lease(
        "edge",
        label_selector="dyups-syncer.io/lease-group=syncer,dyups-syncer.io/lease-role=member",
    )
    assert [item.metadata.name for item in members.items] == ["syncer-member-a"]

    again = client.V1Lease.from_dict(ko.lease("edge", "syncer-0", "pod-b", labels=group))
    with pytest.raises(ApiException) as info:
        coordination.create_namespaced_lease("edge", again)
    status = json.loads(info.value.body)
    assert (info.value.status, status["kind"], status["reason"]) == (409, "Status", "AlreadyExists")
    assert status["details"] == {
        "name": "syncer-0",
        "group": "coordination.k8s.io",
        "kind": "leases",
    }

    member = coordination.read_namespaced_lease("syncer-member-a", "edge")
    stale_rv = member.metadata.resource_version
    member.spec.renew_time = member.spec.renew_time  # a renewal: a new resourceVersion
    member.spec.lease_transitions = 1
    coordination.replace_namespaced_lease("syncer-member-a", "edge", member)
    options = client.V1DeleteOptions(
        preconditions=client.V1Preconditions(resource_version=stale_rv)
    )
    with pytest.raises(ApiException) as info:
        coordination.delete_namespaced_lease("syncer-member-a", "edge", body=options)
    status = json.loads(info.value.body)
    assert (info.value.status, status["reason"]) == (409, "Conflict")
    assert status["message"].startswith(
        'Operation cannot be fulfilled on leases.coordination.k8s.io "syncer-member-a": '
    )
    assert f"Precondition failed: ResourceVersion in precondition: {stale_rv}," in status["message"]
    assert api.get("leases", "edge", "syncer-member-a") is not None  # renewed: kept

    wrong_uid = client.V1DeleteOptions(preconditions=client.V1Preconditions(uid="not-its-uid"))
    with pytest.raises(ApiException) as info:
        coordination.delete_namespaced_lease("syncer-member-a", "edge", body=wrong_uid)
    assert info.value.status == 409
    assert (
        "Precondition failed: UID in precondition: not-its-uid"
        in json.loads(info.value.body)["message"]
    )

    current = api.get("leases", "edge", "syncer-member-a")
    assert current is not None
    fresh = client.V1DeleteOptions(
        preconditions=client.V1Preconditions(
            resource_version=current["metadata"]["resourceVersion"],
            uid=current["metadata"]["uid"],
        )
    )
    deleted = coordination.delete_namespaced_lease("syncer-member-a", "edge", body=fresh)
    # The Lease registry answers a Status naming what went, not the object (the client
    # hands it over undecoded: its schema says `object`).
    assert deleted == {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Success",
        "details": {
            "name": "syncer-member-a",
            "group": "coordination.k8s.io",
            "kind": "leases",
            "uid": current["metadata"]["uid"],
        },
    }
    assert api.get("leases", "edge", "syncer-member-a") is None
    coordination.delete_namespaced_lease("syncer-0", "edge")  # no options: unconditional

    with pytest.raises(ApiException) as info:
        coordination.delete_namespaced_lease("syncer-0", "edge")
    status = json.loads(info.value.body)
    assert (info.value.status, status["kind"], status["reason"]) == (404, "Status", "NotFound")
    assert status["message"] == 'leases.coordination.k8s.io "syncer-0" not found'
    assert [r.status for r in api.requests if r.verb == "delete"] == [409, 409, 200, 200, 404]


# --- outages -------------------------------------------------------------------------------


def test_go_down_refuses_connections_and_come_up_restores_them(
    api: FakeKubeAPI, api_client: client.ApiClient
) -> None:
    api.create(ko.service("default", "web"))
    core = client.CoreV1Api(api_client)
    discovery = client.DiscoveryV1Api(api_client)
    assert len(core.list_service_for_all_namespaces().items) == 1
    port = api.port
    w = Collector(
        discovery.list_endpoint_slice_for_all_namespaces,
        resource_version=api.resource_version,
        timeout_seconds=5,
    )
    assert api.wait_for(lambda: api.open_watches == 1)

    api.go_down()
    assert not api.is_up
    w.join()
    assert isinstance(w.error, urllib3.exceptions.ProtocolError)  # the open watch was cut
    with pytest.raises(urllib3.exceptions.MaxRetryError) as info:
        core.list_service_for_all_namespaces()  # the pooled keep-alive connection is gone too
    assert isinstance(info.value.reason, urllib3.exceptions.NewConnectionError)

    api.come_up()
    assert api.port == port
    services = core.list_service_for_all_namespaces()
    assert [s.metadata.name for s in services.items] == ["web"]


# --- nodes (cluster-scoped) ------------------------------------------------------------

ZONE = "topology.kubernetes.io/zone"


def node(name: str, *, zone: str | None = None, ip: str = "10.0.0.10") -> dict[str, Any]:
    """A core/v1 Node as the kubelet registers it (API reference: Node v1 core): the
    well-known labels, spec.podCIDR(s) and providerID, and the status the kubelet
    reports (addresses, capacity, Ready condition, daemonEndpoints, nodeInfo)."""
    labels = {
        "kubernetes.io/arch": "amd64",
        "kubernetes.io/hostname": name,
        "kubernetes.io/os": "linux",
    }
    if zone is not None:
        labels[ZONE] = zone
    now = ko.rfc3339()
    resources = {"cpu": "4", "ephemeral-storage": "100Gi", "memory": "16Gi", "pods": "110"}
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": labels},
        "spec": {
            "podCIDR": "10.244.1.0/24",
            "podCIDRs": ["10.244.1.0/24"],
            "providerID": f"kind://docker/kind/{name}",
        },
        "status": {
            "addresses": [
                {"type": "InternalIP", "address": ip},
                {"type": "Hostname", "address": name},
            ],
            "allocatable": resources,
            "capacity": resources,
            "conditions": [
                {
                    "type": "Ready",
                    "status": "True",
                    "reason": "KubeletReady",
                    "message": "kubelet is posting ready status",
                    "lastHeartbeatTime": now,
                    "lastTransitionTime": now,
                }
            ],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}},
            "nodeInfo": {
                "architecture": "amd64",
                "bootID": "5b0c8c2c-2f43-4b8e-9a54-3f4d2f0a8f11",
                "containerRuntimeVersion": "containerd://1.7.13",
                "kernelVersion": "6.1.0-18-amd64",
                "kubeProxyVersion": "v1.30.0",
                "kubeletVersion": "v1.30.0",
                "machineID": "0b4d3e6a1c9f4b0e8a2d7c5f9e3b1a60",
                "operatingSystem": "linux",
                "osImage": "Debian GNU/Linux 12 (bookworm)",
                "systemUUID": "9c2a1f3e-7d4b-4c8a-b6e5-0f1d2c3b4a59",
            },
        },
    }


def test_nodes_are_cluster_scoped(api: FakeKubeAPI, api_client: client.ApiClient) -> None:
    api.create(node("node-b", zone="b"))
    sent = node("node-a", zone="a")
    sent["metadata"]["namespace"] = "default"  # cleared, as the apiserver does
    created = api.create(sent)
    assert "namespace" not in created["metadata"] and created["metadata"]["uid"]
    api.create(node("node-c"))
    core = client.CoreV1Api(api_client)

    nodes = core.list_node()
    assert isinstance(nodes, client.V1NodeList)
    assert nodes.metadata.resource_version == api.resource_version
    assert [n.metadata.name for n in nodes.items] == ["node-a", "node-b", "node-c"]
    first = nodes.items[0]
    assert first.metadata.namespace is None and first.metadata.labels[ZONE] == "a"
    assert first.status.node_info.kubelet_version == "v1.30.0"
    assert first.status.daemon_endpoints.kubelet_endpoint.port == 10250
    assert first.spec.pod_cidrs == ["10.244.1.0/24"]
    assert [n.metadata.name for n in core.list_node(label_selector=ZONE).items] == [
        "node-a",
        "node-b",
    ]
    by_name = core.list_node(field_selector="metadata.name=node-b")
    assert [n.metadata.name for n in by_name.items] == ["node-b"]
    assert core.read_node("node-c").metadata.labels["kubernetes.io/hostname"] == "node-c"

    page = core.list_node(limit=2)
    assert [n.metadata.name for n in page.items] == ["node-a", "node-b"]
    assert page.metadata.remaining_item_count == 1
    rest = core.list_node(limit=2, _continue=page.metadata._continue)
    assert [n.metadata.name for n in rest.items] == ["node-c"]

    with pytest.raises(ApiException) as info:
        core.list_node(field_selector="metadata.namespace=default")  # none for cluster scope
    assert info.value.status == 400
    with pytest.raises(ApiException) as info:
        core.read_node("node-x")
    assert (info.value.status, json.loads(info.value.body)["message"]) == (
        404,
        'nodes "node-x" not found',
    )
    http = urllib3.PoolManager()
    for path in ("/api/v1/namespaces/default/nodes", "/api/v1/namespaces/default/nodes/node-a"):
        assert http.request("GET", api.url + path).status == 404, path
    # ... and a namespaced resource has no cluster-scoped object path.
    assert http.request("GET", f"{api.url}/api/v1/pods/web-1").status == 404

    # The test controls name a node with namespace "".
    assert api.get("nodes", "", "node-a") == created
    assert [n["metadata"]["name"] for n in api.objects("nodes")] == ["node-a", "node-b", "node-c"]
    with pytest.raises(ValueError, match="cluster-scoped"):
        api.get("nodes", "default", "node-a")


def test_node_watch_follows_label_changes_and_resource_versions(
    api: FakeKubeAPI, api_client: client.ApiClient
) -> None:
    api.create(node("node-a", zone="a"))
    api.create(node("node-b"))
    core = client.CoreV1Api(api_client)
    listed = core.list_node(label_selector=ZONE)
    rv = listed.metadata.resource_version
    assert [n.metadata.name for n in listed.items] == ["node-a"]

    w = Collector(
        core.list_node,
        resource_version=rv,
        label_selector=ZONE,
        allow_watch_bookmarks=True,
        timeout_seconds=5,
    )
    assert api.wait_for(lambda: api.open_watches == 1)
    api.patch_labels("nodes", "", "node-a", {ZONE: "c"})
    api.patch_labels("nodes", "", "node-b", {ZONE: "b"})  # enters the selection
    api.patch_labels("nodes", "", "node-a", {ZONE: None})  # leaves it
    api.patch_labels("nodes", "", "node-b", {"other": "x"})  # no zone change, still a change
    deleted = api.delete("nodes", "", "node-b")
    assert api.wait_for(lambda: len(w.events) == 5)
    api.close_watches(abrupt=False)
    w.join()
    assert w.error is None
    assert w.types() == ["MODIFIED", "ADDED", "DELETED", "MODIFIED", "DELETED"]
    assert [e["object"].metadata.name for e in w.events] == [
        "node-a",
        "node-b",
        "node-a",
        "node-b",
        "node-b",
    ]
    assert isinstance(w.events[0]["object"], client.V1Node)
    assert w.events[0]["object"].metadata.labels[ZONE] == "c"
    assert w.events[0]["object"].metadata.generation == 1  # labels are metadata
    last_rv = w.events[4]["raw_object"]["metadata"]["resourceVersion"]
    assert last_rv == deleted["metadata"]["resourceVersion"]
    assert [int(v) for v in w.rvs()] == sorted(int(v) for v in w.rvs())
    assert api.count("watch", "nodes") == 1
    assert all(r.namespace is None for r in api.requests if r.resource == "nodes")

    # A compacted resourceVersion is a 410 on nodes too.
    api.compact()
    w2 = Collector(core.list_node, resource_version=rv, timeout_seconds=5)
    w2.join()
    assert isinstance(w2.error, ApiException) and w2.error.status == 410


def test_raw_node_writes_and_the_legacy_watch_path(api: FakeKubeAPI) -> None:
    http = urllib3.PoolManager()
    base = f"{api.url}/api/v1/nodes"
    created = http.request("POST", base, json=node("node-a", zone="a"))
    assert created.status == 201
    assert "namespace" not in json.loads(created.data)["metadata"]
    again = http.request("POST", base, json=node("node-a"))
    assert (again.status, json.loads(again.data)["reason"]) == (409, "AlreadyExists")

    watch_resp = http.request(
        "GET",
        f"{api.url}/api/v1/watch/nodes?resourceVersion={api.resource_version}&timeoutSeconds=5",
        preload_content=False,
    )
    patched = http.request(
        "PATCH",
        f"{base}/node-a",
        body=json.dumps({"metadata": {"labels": {ZONE: "b"}}}),
        headers={"Content-Type": "application/merge-patch+json"},
    )
    assert patched.status == 200
    assert json.loads(patched.data)["metadata"]["labels"][ZONE] == "b"
    current = json.loads(http.request("GET", f"{base}/node-a").data)
    current["spec"]["unschedulable"] = True
    replaced = http.request("PUT", f"{base}/node-a", json=current)
    assert replaced.status == 200
    assert json.loads(replaced.data)["metadata"]["generation"] == 2
    http.request("POST", base, json=node("node-b"))
    for selector, names in (("true", ["node-a"]), ("false", ["node-b"])):
        listed = http.request("GET", f"{base}?fieldSelector=spec.unschedulable%3D{selector}")
        assert [n["metadata"]["name"] for n in json.loads(listed.data)["items"]] == names
    assert http.request("DELETE", f"{base}/node-a").status == 200

    lines = watch_resp.stream()
    events = [json.loads(next(lines)) for _ in range(4)]
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in events] == [
        ("MODIFIED", "node-a"),
        ("MODIFIED", "node-a"),
        ("ADDED", "node-b"),
        ("DELETED", "node-a"),
    ]
    assert all(e["object"]["kind"] == "Node" for e in events)
    api.close_watches(abrupt=False)
    watch_resp.drain_conn()
    assert api.request_counts[("watch", "nodes")] == 1
