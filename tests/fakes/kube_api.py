"""A fake Kubernetes API server that speaks the real wire protocol, for tests.

No API server runs on these machines, so code that uses the official `kubernetes`
client unmodified (`ApiClient(Configuration(host=api.url))`, the typed list calls,
`kubernetes.watch.Watch().stream(...)`, the Lease calls) is tested against this.

It serves, over plain HTTP/1.1 on 127.0.0.1 (keep-alive, chunked watch streams):

* core v1 `services` and `pods`, discovery.k8s.io/v1 `endpointslices`,
  coordination.k8s.io/v1 `leases`, at the paths of the API concepts doc:
  `/api/v1/{resource}`, `/api/v1/namespaces/{ns}/{resource}[/{name}]`,
  `/apis/{group}/{version}/...` likewise; and the cluster-scoped core v1 `nodes` at
  `/api/v1/nodes[/{name}]` only (a namespaced path is a 404, as on the apiserver; a
  Node's `metadata` has no `namespace`, and one sent is cleared, as the apiserver's
  `EnsureObjectNamespaceMatchesRequestNamespace` does). GET (list, get, and watch with
  `?watch=true` or `watch=1`, also the legacy `/watch/` path segment), POST (create),
  PUT (replace), DELETE, and PATCH with a JSON merge patch (a strategic merge patch is
  applied as a merge patch).
* one global `resourceVersion` counter, as etcd's revision: every write bumps it and
  stamps the written object; lists report the counter; it is a string on the wire.

Semantics follow https://kubernetes.io/docs/reference/using-api/api-concepts/
("Efficient detection of changes", "Watch bookmarks", "Retrieving large results sets
in chunks", "Resource versions", "410 Gone responses"):

* **list**: `kind: <Kind>List` with `metadata.resourceVersion` and items that carry no
  `kind`/`apiVersion` (as the doc's Collections example shows). `labelSelector` (`=`,
  `==`, `!=`, `in`, `notin`, `key`, `!key`), `fieldSelector` (`metadata.name`,
  `metadata.namespace` and a few per-resource fields; `=`, `==`, `!=`), `limit` +
  `continue` serving a consistent snapshot at the first page's resourceVersion
  ("Continue Token, Exact"), `remainingItemCount` when there are no selectors. A continue
  token older than the compaction point gets 410 `Expired` (with a fresh "inconsistent"
  continue token in the Status metadata, as the apiserver does). `resourceVersion` on a
  list: unset or "0" = now; a value with `limit` or `resourceVersionMatch=Exact` = that
  exact snapshot (410 if compacted); otherwise "not older than" = now; a value newer
  than the counter = 504 "Too large resource version" (at once, where the apiserver
  would first wait up to 3 s).
* **watch**: `resourceVersion` unset ("Get State and Start at Most Recent") or "0" ("Get
  State and Start at Any") start with synthetic ADDED events for the current objects,
  then every change after that; any other value ("Start at Exact") streams every change
  after it, with no synthetic events. Objects in events carry `kind`/`apiVersion`; a
  DELETED event carries the last state stamped with the deleting write's
  resourceVersion. With a selector, an object that starts matching is ADDED and one that
  stops matching is DELETED (its previous state at the new resourceVersion), as the
  apiserver's watch cache does (`cacheWatcher.convertToWatchEvent`). With
  `allowWatchBookmarks=true` a `BOOKMARK` carrying only `kind`, `apiVersion` and
  `metadata.resourceVersion` is sent whenever nothing was sent for the bookmark
  interval. `sendInitialEvents=true` (with `resourceVersionMatch=NotOlderThan`, else 422)
  ends the synthetic events with a bookmark annotated `k8s.io/initial-events-end`.
  `timeoutSeconds` ends the stream cleanly (terminating chunk). A `resourceVersion`
  older than the compaction point is answered as the apiserver does: HTTP 200 and one
  `ERROR` event holding a 410 `Expired` Status ("too old resource version: X (Y)"),
  then the end of the stream; optionally (`expired_watch_as_http`) an HTTP 410 with the
  Status as body instead. A `resourceVersion` newer than the counter waits for it (the
  doc: the server "may wait indefinitely").
* **errors** are `Status` objects with the HTTP code: 400 BadRequest (bad selector,
  continue token, resourceVersion), 404 NotFound, 405 MethodNotAllowed, 409
  AlreadyExists / Conflict, 410 Expired, 422 Invalid, 504 Timeout.
* **writes** over HTTP: POST 201 (409 AlreadyExists if present; `generateName`
  honoured), PUT 200 (404 if absent; 409 Conflict if `metadata.resourceVersion` is not
  the current one; 422 if it is missing, as for Leases, whose strategy forbids
  unconditional updates), DELETE 200 with the last state (for Leases, whose registry
  does not return the deleted object, a Success Status with name, group, kind and
  uid), 404 if absent, 409 Conflict if the `preconditions` of its DeleteOptions body
  (`uid`, `resourceVersion`) do not hold. An update that changes nothing writes
  nothing (no new resourceVersion, no event), as etcd's GuaranteedUpdate.

Departures from a real server, on purpose: no authentication, no admission or
validation of object contents beyond name/namespace/kind, deletion is immediate (no
graceful `deletionTimestamp` phase for pods), `generation` is set on every resource
(1 on create, +1 when anything outside `metadata`/`status` changes), PUT never creates,
no protobuf, tables or compression, the watch history is never trimmed (only
`compact()` makes resourceVersions too old), `resourceVersionMatch` on watches other
than with `sendInitialEvents` is ignored.

Test controls (all thread-safe; every request and state change notifies `wait_for`):
`create`, `update`, `apply`, `patch_labels`, `patch_annotations`, `delete`, `get`,
`objects`, `compact`, `expire_next_watch`, `close_watches`, `go_down`, `come_up`,
`set_bookmark_interval`, `requests`, `count`, `request_counts`, `open_watches`,
`events_sent`, `wait_for`. Those that take a namespace take "" for a Node.
"""

from __future__ import annotations

import base64
import binascii
import bisect
import contextlib
import copy
import json
import re
import select
import socket
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, TypeVar
from urllib.parse import parse_qs, urlsplit

JSON = dict[str, Any]
Key = tuple[str, str, str]  # (resource, namespace, name)
T = TypeVar("T")

ADDED, MODIFIED, DELETED, BOOKMARK, ERROR = "ADDED", "MODIFIED", "DELETED", "BOOKMARK", "ERROR"
INITIAL_EVENTS_END = "k8s.io/initial-events-end"

_POLL = 0.05  # how often an idle watch checks whether its client went away


@dataclass(frozen=True)
class ResourceType:
    resource: str
    group: str
    version: str
    kind: str
    field_labels: tuple[str, ...] = ()
    namespaced: bool = True
    # DELETE answers with the object's last state, or (the generic registry's default,
    # `ReturnDeletedObject` unset) with a Success Status naming it.
    returns_deleted_object: bool = True

    @property
    def api_version(self) -> str:
        return self.version if not self.group else f"{self.group}/{self.version}"

    @property
    def qualified(self) -> str:
        """The name errors use: `services`, `leases.coordination.k8s.io`."""
        return self.resource if not self.group else f"{self.resource}.{self.group}"

    def details(self, name: str) -> JSON:
        out: JSON = {"name": name}
        if self.group:
            out["group"] = self.group
        out["kind"] = self.resource
        return out


_META_FIELDS = ("metadata.name", "metadata.namespace")
RESOURCES: dict[str, ResourceType] = {
    rt.resource: rt
    for rt in (
        ResourceType("services", "", "v1", "Service", ("spec.clusterIP", "spec.type")),
        ResourceType("pods", "", "v1", "Pod", ("spec.nodeName", "status.phase", "status.podIP")),
        ResourceType("endpointslices", "discovery.k8s.io", "v1", "EndpointSlice", ("addressType",)),
        ResourceType("leases", "coordination.k8s.io", "v1", "Lease", returns_deleted_object=False),
        # Cluster-scoped; `spec.unschedulable` is the field selector the apiserver adds.
        ResourceType("nodes", "", "v1", "Node", ("spec.unschedulable",), namespaced=False),
    )
}
_BY_KIND = {rt.kind: rt for rt in RESOURCES.values()}


# --- Status objects ------------------------------------------------------------------


def status_object(
    code: int,
    reason: str,
    message: str,
    *,
    details: JSON | None = None,
    metadata: JSON | None = None,
) -> JSON:
    """A meta/v1 Status as the apiserver sends it for a failure."""
    out: JSON = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": metadata or {},
        "status": "Failure",
        "message": message,
        "reason": reason,
    }
    if details is not None:
        out["details"] = details
    out["code"] = code
    return out


class ApiError(Exception):
    """Raised inside the server (and by the test controls) to answer with a Status."""

    def __init__(self, status: JSON) -> None:
        super().__init__(status["message"])
        self.status = status

    @property
    def code(self) -> int:
        return int(self.status["code"])


def _bad_request(message: str) -> ApiError:
    return ApiError(status_object(400, "BadRequest", message))


def _not_found(rt: ResourceType, name: str) -> ApiError:
    return ApiError(
        status_object(
            404, "NotFound", f'{rt.qualified} "{name}" not found', details=rt.details(name)
        )
    )


def _already_exists(rt: ResourceType, name: str) -> ApiError:
    return ApiError(
        status_object(
            409,
            "AlreadyExists",
            f'{rt.qualified} "{name}" already exists',
            details=rt.details(name),
        )
    )


def _conflict(rt: ResourceType, name: str, cause: str | None = None) -> ApiError:
    cause = cause or (
        "the object has been modified; please apply your changes to the latest version "
        "and try again"
    )
    message = f'Operation cannot be fulfilled on {rt.qualified} "{name}": {cause}'
    return ApiError(status_object(409, "Conflict", message, details=rt.details(name)))


def _precondition_failed(rt: ResourceType, namespace: str, name: str, what: str) -> ApiError:
    """A DELETE whose preconditions do not hold: the storage layer's invalid-object
    error, which the registry turns into a 409 Conflict (`InterpretDeleteError`).
    The key is etcd's `/registry/<resource>/<namespace>/<name>` (exact for leases)."""
    key = "/".join(p for p in ("/registry", rt.resource, namespace, name) if p)
    cause = (
        f"StorageError: invalid object, Code: 4, Key: {key}, ResourceVersion: 0, "
        f"AdditionalErrorMsg: Precondition failed: {what}"
    )
    return _conflict(rt, name, cause)


def _deleted_status(rt: ResourceType, obj: JSON) -> JSON:
    """What a DELETE of a resource that does not return the object answers."""
    details: JSON = rt.details(obj["metadata"]["name"])
    details["uid"] = obj["metadata"]["uid"]
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Success",
        "details": details,
    }


def _invalid(kind: str, name: str, field_path: str, message: str) -> ApiError:
    return ApiError(
        status_object(
            422,
            "Invalid",
            f'{kind} "{name}" is invalid: {field_path}: {message}',
            details={
                "name": name,
                "kind": kind,
                "causes": [
                    {"reason": "FieldValueInvalid", "message": message, "field": field_path}
                ],
            },
        )
    )


def _too_old(requested: str, oldest: int) -> JSON:
    return status_object(410, "Expired", f"too old resource version: {requested} ({oldest})")


# --- selectors -----------------------------------------------------------------------

_NAME = r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?"
_KEY_RE = re.compile(rf"^([a-z0-9]([-a-z0-9.]{{0,251}}[a-z0-9])?/)?{_NAME}$")
_VALUE_RE = re.compile(rf"^({_NAME})?$")
_SET_RE = re.compile(r"^(?P<key>\S+)\s+(?P<op>in|notin)\s*\((?P<values>[^()]*)\)$")
_OP_RE = re.compile(r"^(?P<key>[^=!\s]+)\s*(?P<op>==|=|!=)\s*(?P<value>\S*)$")


@dataclass(frozen=True)
class Requirement:
    """One term of a label selector."""

    key: str
    op: str  # "in" (also = and ==), "notin" (also !=), "exists", "!"
    values: frozenset[str] = frozenset()

    def matches(self, labels: Mapping[str, str]) -> bool:
        if self.op == "in":
            return self.key in labels and labels[self.key] in self.values
        if self.op == "notin":
            return self.key not in labels or labels[self.key] not in self.values
        if self.op == "exists":
            return self.key in labels
        return self.key not in labels


def _split_terms(selector: str) -> list[str]:
    """Split on the commas that are not inside a `( ... )` value set."""
    terms: list[str] = []
    depth = 0
    start = 0
    for i, ch in enumerate(selector):
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        elif ch == "," and depth == 0:
            terms.append(selector[start:i])
            start = i + 1
    terms.append(selector[start:])
    return [t.strip() for t in terms]


def parse_label_selector(selector: str | None) -> tuple[Requirement, ...]:
    """Parse a label selector as the apiserver does; raise `ApiError` (400) if invalid."""
    if selector is None or not selector.strip():
        return ()
    out: list[Requirement] = []
    for term in _split_terms(selector):
        req = _parse_requirement(term)
        if req is None:
            raise _bad_request(
                f"unable to parse requirement: found '{term}', expected: requirement"
            )
        if not _KEY_RE.match(req.key):
            raise _bad_request(
                f'unable to parse requirement: invalid label key "{req.key}": name part must '
                "consist of alphanumeric characters, '-', '_' or '.', and must start and end "
                "with an alphanumeric character"
            )
        for value in req.values:
            if not _VALUE_RE.match(value):
                raise _bad_request(
                    f'unable to parse requirement: invalid label value: "{value}": a valid label '
                    "must be an empty string or consist of alphanumeric characters, '-', '_' or "
                    "'.', and must start and end with an alphanumeric character"
                )
        out.append(req)
    return tuple(out)


def _parse_requirement(term: str) -> Requirement | None:
    if not term:
        return None
    if term.startswith("!"):
        key = term[1:].strip()
        return Requirement(key, "!") if key and re.fullmatch(r"\S+", key) else None
    m = _SET_RE.match(term)
    if m:
        values = [v.strip() for v in m["values"].split(",")]
        if values == [""]:
            return None  # "for 'in', 'notin' operators, values set can't be empty"
        return Requirement(m["key"], m["op"], frozenset(values))
    m = _OP_RE.match(term)
    if m:
        op = "notin" if m["op"] == "!=" else "in"
        return Requirement(m["key"], op, frozenset([m["value"]]))
    if re.fullmatch(r"[^\s=!(),]+", term):
        return Requirement(term, "exists")
    return None


@dataclass(frozen=True)
class FieldRequirement:
    path: str
    value: str
    equal: bool

    def matches(self, obj: JSON) -> bool:
        return (_field_value(obj, self.path) == self.value) == self.equal


# Fields whose Go zero value is not "" (the apiserver formats the typed struct).
_FIELD_ZERO = {"spec.unschedulable": "false"}


def _field_value(obj: JSON, path: str) -> str:
    node: Any = obj
    for part in path.split("."):
        if not isinstance(node, dict):
            node = None
            break
        node = node.get(part)
    if node is None:
        return _FIELD_ZERO.get(path, "")
    if isinstance(node, bool):
        return "true" if node else "false"  # as Go's fmt.Sprint
    return str(node)


def parse_field_selector(rt: ResourceType, selector: str | None) -> tuple[FieldRequirement, ...]:
    if selector is None or not selector.strip():
        return ()
    out: list[FieldRequirement] = []
    for term in (t.strip() for t in selector.split(",")):
        m = re.fullmatch(r"(?P<path>[^=!\s]+)\s*(?P<op>==|=|!=)\s*(?P<value>.*)", term)
        if m is None:
            raise _bad_request(f"invalid selector: '{selector}'; can't understand '{term}'")
        meta_fields = _META_FIELDS if rt.namespaced else ("metadata.name",)
        if m["path"] not in (*meta_fields, *rt.field_labels):
            raise _bad_request(f"field label not supported: {m['path']}")
        out.append(FieldRequirement(m["path"], m["value"], m["op"] != "!="))
    return tuple(out)


@dataclass(frozen=True)
class _Filter:
    """What a list or watch request selects: resource, namespace, name, selectors."""

    rt: ResourceType
    namespace: str | None
    name: str | None
    labels: tuple[Requirement, ...]
    fields: tuple[FieldRequirement, ...]

    @property
    def has_selectors(self) -> bool:
        return bool(self.labels or self.fields)

    def matches_key(self, key: Key) -> bool:
        resource, namespace, name = key
        return (
            resource == self.rt.resource
            and (self.namespace is None or namespace == self.namespace)
            and (self.name is None or name == self.name)
        )

    def matches(self, obj: JSON) -> bool:
        labels = obj.get("metadata", {}).get("labels") or {}
        return all(r.matches(labels) for r in self.labels) and all(
            f.matches(obj) for f in self.fields
        )


# --- the store -----------------------------------------------------------------------


@dataclass(frozen=True)
class _Change:
    rv: int
    type: str  # ADDED, MODIFIED, DELETED
    key: Key
    obj: JSON  # state after the write (DELETED: the last state at this rv)
    prev: JSON | None  # state before the write


@dataclass(frozen=True)
class RecordedRequest:
    """One request as the fake saw it. `verb` is the Kubernetes verb: list, watch, get,
    create, update, patch, delete (or "unknown" for a path the fake does not serve)."""

    verb: str
    resource: str | None
    namespace: str | None
    name: str | None
    method: str
    path: str
    query: Mapping[str, str]
    status: int


@dataclass(eq=False)
class _Watcher:
    filter: _Filter
    connection: socket.socket
    abort: str | None = None  # None, "clean" (terminating chunk) or "abrupt"

    def convert(self, change: _Change) -> JSON | None:
        """The event this watcher sees for a change, as cacheWatcher.convertToWatchEvent."""
        if not self.filter.matches_key(change.key):
            return None
        cur = change.type != DELETED and self.filter.matches(change.obj)
        old = change.prev is not None and self.filter.matches(change.prev)
        if cur and not old:
            return {"type": ADDED, "object": change.obj}
        if cur and old:
            return {"type": MODIFIED, "object": change.obj}
        if old and change.prev is not None:
            return {"type": DELETED, "object": _at_rv(change.prev, change.rv)}
        return None


def _at_rv(obj: JSON, rv: int) -> JSON:
    return {**obj, "metadata": {**obj["metadata"], "resourceVersion": str(rv)}}


def _without_type(obj: JSON) -> JSON:
    return {k: v for k, v in obj.items() if k not in ("kind", "apiVersion")}


def _content(obj: JSON) -> JSON:
    """What counts for `generation`: everything but metadata and status."""
    return {k: v for k, v in obj.items() if k not in ("metadata", "status", "kind", "apiVersion")}


def _parse_bool(value: str | None) -> bool | None:
    """strconv.ParseBool, as the apiserver decodes boolean query parameters."""
    if value is None:
        return None
    if value in ("1", "t", "T", "true", "TRUE", "True"):
        return True
    if value in ("0", "f", "F", "false", "FALSE", "False", ""):
        return False
    raise _bad_request(f'strconv.ParseBool: parsing "{value}": invalid syntax')


def _parse_rv(value: str) -> int:
    try:
        rv = int(value)
    except ValueError:
        rv = -1
    if rv < 0:
        raise _bad_request(f"invalid resource version: {value!r}")
    return rv


def _encode_continue(rv: int, start: str) -> str:
    raw = json.dumps({"v": "meta.k8s.io/v1", "rv": rv, "start": start + "\x00"})
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def _decode_continue(token: str) -> tuple[int, str]:
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        data = json.loads(raw)
        rv, start = int(data["rv"]), str(data["start"])
        if data.get("v") != "meta.k8s.io/v1" or not start.endswith("\x00"):
            raise ValueError(token)
    except (binascii.Error, ValueError, KeyError, TypeError) as exc:
        raise _bad_request(f"continue key is not valid: {exc}") from None
    return rv, start[:-1]


def _scope(rt: ResourceType, namespace: str) -> str:
    """The namespace part of a key given to a test control: "" for a cluster-scoped
    resource (another is refused: a test bug), the namespace as given otherwise."""
    if rt.namespaced:
        return namespace
    if namespace:
        raise ValueError(f'{rt.resource} are cluster-scoped: give namespace ""')
    return ""


def _stamp_namespace(rt: ResourceType, meta: JSON, namespace: str) -> None:
    if rt.namespaced:
        meta["namespace"] = namespace
    else:
        meta.pop("namespace", None)


def _sort_key(key: Key) -> str:
    """Objects are listed in etcd key order: `<namespace>/<name>` as bytes."""
    return f"{key[1]}/{key[2]}"


class FakeKubeAPI:
    """A threaded Kubernetes API server on 127.0.0.1 with in-memory objects.

    `with FakeKubeAPI(bookmark_interval=0.2) as api:` starts it; `api.url` is the host for
    `kubernetes.client.Configuration(host=api.url)`. `port` picks the port (0: any free);
    after `go_down()`/`come_up()` the same port serves again with the same state.
    """

    def __init__(
        self,
        *,
        port: int = 0,
        bookmark_interval: float | None = 1.0,
        expired_watch_as_http: bool = False,
        first_resource_version: int = 1,
    ) -> None:
        self._cond = threading.Condition(threading.RLock())
        self._objects: dict[Key, JSON] = {}
        self._changes: list[_Change] = []
        self._change_rvs: list[int] = []
        self._rv = first_resource_version
        self._compacted_rv = 0
        self._bookmark_interval = bookmark_interval
        self.expired_watch_as_http = expired_watch_as_http
        self._expiries: list[bool | None] = []
        self._watchers: list[_Watcher] = []
        self._requests: list[RecordedRequest] = []
        self._events_sent: Counter[str] = Counter()
        self._connections: set[socket.socket] = set()
        self._port = port
        self._httpd: _Server | None = None
        self._thread: threading.Thread | None = None
        self._epoch = 0
        self._started = False
        # (verb, resource, name or None) -> HTTP code answered instead (see `fail`).
        self._failing: dict[tuple[str, str, str | None], int] = {}

    # --- lifecycle ---------------------------------------------------------------------

    def start(self) -> FakeKubeAPI:
        with self._cond:
            if self._started:
                return self
            self._started = True
        self.come_up()
        return self

    def stop(self) -> None:
        with self._cond:
            if not self._started:
                return
            self._started = False
        self.go_down()

    def __enter__(self) -> FakeKubeAPI:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        return self._port

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._port}"

    @property
    def is_up(self) -> bool:
        with self._cond:
            return self._httpd is not None

    def go_down(self) -> None:
        """Stop listening (connections to the port are refused) and cut every open
        connection, watches and idle keep-alive ones alike. State is kept."""
        with self._cond:
            httpd, thread = self._httpd, self._thread
            if httpd is None:
                return
            self._httpd = self._thread = None
            self._epoch += 1
            for w in self._watchers:
                w.abort = "abrupt"
            connections = list(self._connections)
            self._cond.notify_all()
        httpd.shutdown()
        httpd.server_close()
        for conn in connections:
            _shutdown(conn)
        if thread is not None:
            thread.join(timeout=5)

    def come_up(self) -> None:
        """Listen again on the same port, with the same state."""
        with self._cond:
            if self._httpd is not None:
                return
            httpd = _Server(("127.0.0.1", self._port), _Handler)
            httpd.api = self
            httpd.epoch = self._epoch
            self._port = httpd.server_address[1]
            self._httpd = httpd
            self._thread = threading.Thread(
                target=httpd.serve_forever,
                kwargs={"poll_interval": 0.05},
                name=f"fake-kube-api:{self._port}",
                daemon=True,
            )
            self._thread.start()
            self._cond.notify_all()

    # --- state controls ----------------------------------------------------------------

    @property
    def resource_version(self) -> str:
        """The current value of the global counter (what a list now reports)."""
        with self._cond:
            return str(self._rv)

    def create(self, obj: Mapping[str, Any]) -> JSON:
        """Store a new object (its `kind` picks the resource; namespace defaults to
        "default"); return the stored copy. Raises `ApiError` (409) if it exists."""
        rt, namespace, name = self._identify(obj)
        with self._cond:
            return copy.deepcopy(self._create(rt, namespace, obj, name))

    def update(self, obj: Mapping[str, Any]) -> JSON:
        """Replace an existing object, whatever its `metadata.resourceVersion` says (the
        server keeps uid and creationTimestamp). Raises `ApiError` (404) if absent. An
        update that changes nothing writes nothing: no new resourceVersion, no event."""
        rt, namespace, name = self._identify(obj)
        with self._cond:
            return copy.deepcopy(self._replace(rt, namespace, name, obj, check_rv=False))

    def apply(self, obj: Mapping[str, Any]) -> JSON:
        """Create or replace."""
        rt, namespace, name = self._identify(obj)
        with self._cond:
            if (rt.resource, namespace, name) in self._objects:
                return copy.deepcopy(self._replace(rt, namespace, name, obj, check_rv=False))
            return copy.deepcopy(self._create(rt, namespace, obj, name))

    def patch_labels(
        self, resource: str, namespace: str, name: str, labels: Mapping[str, str | None]
    ) -> JSON:
        """Merge labels into an object (a None value removes the label)."""
        return self._patch_meta(resource, namespace, name, "labels", labels)

    def patch_annotations(
        self, resource: str, namespace: str, name: str, annotations: Mapping[str, str | None]
    ) -> JSON:
        """Merge annotations into an object (a None value removes the annotation)."""
        return self._patch_meta(resource, namespace, name, "annotations", annotations)

    def delete(self, resource: str, namespace: str, name: str) -> JSON:
        """Delete an object at once; return its last state (at the deleting write's RV)."""
        rt = _resource(resource)
        with self._cond:
            return copy.deepcopy(self._delete(rt, _scope(rt, namespace), name))

    def get(self, resource: str, namespace: str, name: str) -> JSON | None:
        """The stored object (a copy, with kind/apiVersion), or None."""
        rt = _resource(resource)
        with self._cond:
            obj = self._objects.get((rt.resource, _scope(rt, namespace), name))
            return copy.deepcopy(obj) if obj is not None else None

    def objects(self, resource: str, namespace: str | None = None) -> list[JSON]:
        """Copies of the stored objects of a resource, in list order."""
        rt = _resource(resource)
        with self._cond:
            keys = sorted(
                (k for k in self._objects if k[0] == rt.resource and namespace in (None, k[1])),
                key=_sort_key,
            )
            return [copy.deepcopy(self._objects[k]) for k in keys]

    def compact(self) -> str:
        """Make every resourceVersion handed out so far too old: watches from them and
        continue tokens taken at them get 410 Expired. Like a cluster where other writes
        happened and etcd then compacted, the counter moves on by one (with no visible
        change), so a list made after this returns a version that can be watched from.
        Returns the new oldest usable resourceVersion."""
        with self._cond:
            self._rv += 1
            self._compacted_rv = self._rv
            self._cond.notify_all()
            return str(self._rv)

    def fail(self, verb: str, resource: str, name: str | None = None, code: int = 500) -> None:
        """Answer every `verb` request on `resource` (on the object `name`, or on any)
        with a Status of `code` (500: InternalError), as a failing apiserver or etcd
        does, until `heal`."""
        with self._cond:
            self._failing[(verb, resource, name)] = code

    def heal(self) -> None:
        with self._cond:
            self._failing.clear()

    def _injected(self, verb: str, route: _Route) -> int | None:
        with self._cond:
            resource = route.rt.resource
            return self._failing.get((verb, resource, route.name)) or self._failing.get(
                (verb, resource, None)
            )

    def expire_next_watch(self, count: int = 1, *, as_http: bool | None = None) -> None:
        """The next `count` watch requests get 410 Expired whatever their resourceVersion:
        as an ERROR event on an HTTP 200 stream, or as an HTTP 410 if `as_http` (default:
        `expired_watch_as_http`)."""
        with self._cond:
            self._expiries.extend([as_http] * count)

    def close_watches(self, *, abrupt: bool = True) -> int:
        """End every open watch stream: abruptly (the connection is cut in the middle of
        the chunked body) or cleanly (terminating chunk, as on timeoutSeconds). Returns
        how many were open."""
        with self._cond:
            for w in self._watchers:
                w.abort = "abrupt" if abrupt else "clean"
            self._cond.notify_all()
            return len(self._watchers)

    def set_bookmark_interval(self, seconds: float | None) -> None:
        """How long a watch that asked for bookmarks may stay silent before it gets a
        BOOKMARK (None: never send bookmarks)."""
        with self._cond:
            self._bookmark_interval = seconds
            self._cond.notify_all()

    # --- observation -------------------------------------------------------------------

    @property
    def requests(self) -> list[RecordedRequest]:
        with self._cond:
            return list(self._requests)

    def clear_requests(self) -> None:
        with self._cond:
            self._requests.clear()

    @property
    def request_counts(self) -> Counter[tuple[str, str | None]]:
        """Requests so far by (verb, resource)."""
        with self._cond:
            return Counter((r.verb, r.resource) for r in self._requests)

    def count(self, verb: str, resource: str | None = None) -> int:
        """How many requests of a verb (optionally for one resource) arrived so far."""
        with self._cond:
            return sum(
                1
                for r in self._requests
                if r.verb == verb and (resource is None or r.resource == resource)
            )

    @property
    def open_watches(self) -> int:
        with self._cond:
            return len(self._watchers)

    @property
    def events_sent(self) -> Counter[str]:
        """Watch events written so far, by type (ADDED, ..., BOOKMARK, ERROR)."""
        with self._cond:
            return Counter(self._events_sent)

    def wait_for(self, predicate: Callable[[], T], timeout: float = 5.0) -> T:
        """Wait until `predicate()` is truthy and return its value (the last, falsy, value
        on timeout). Woken by every request and state change; also re-checked every 50 ms
        so that predicates over client-side state work too."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                result = predicate()
                remaining = deadline - time.monotonic()
                if result or remaining <= 0:
                    return result
                self._cond.wait(min(remaining, _POLL))

    # --- store internals (callers hold the lock) ---------------------------------------

    @staticmethod
    def _identify(obj: Mapping[str, Any]) -> tuple[ResourceType, str, str]:
        rt = _BY_KIND.get(str(obj.get("kind")))
        if rt is None:
            raise ValueError(f"unknown kind {obj.get('kind')!r}; known: {sorted(_BY_KIND)}")
        meta = obj.get("metadata") or {}
        namespace = (meta.get("namespace") or "default") if rt.namespaced else ""
        name = meta.get("name")
        if not name:
            raise ValueError("metadata.name is required")
        return rt, namespace, name

    def _write(self, type_: str, key: Key, obj: JSON, prev: JSON | None) -> None:
        change = _Change(self._rv, type_, key, obj, prev)
        self._changes.append(change)
        self._change_rvs.append(self._rv)
        if type_ == DELETED:
            del self._objects[key]
        else:
            self._objects[key] = obj
        self._cond.notify_all()

    def _create(self, rt: ResourceType, namespace: str, body: Mapping[str, Any], name: str) -> JSON:
        key = (rt.resource, namespace, name)
        if key in self._objects:
            raise _already_exists(rt, name)
        obj = copy.deepcopy(dict(body))
        obj["apiVersion"], obj["kind"] = rt.api_version, rt.kind
        meta = obj.setdefault("metadata", {})
        self._rv += 1
        _stamp_namespace(rt, meta, namespace)
        meta.update(
            name=name,
            uid=str(uuid.uuid4()),
            resourceVersion=str(self._rv),
            generation=1,
            creationTimestamp=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        )
        self._write(ADDED, key, obj, None)
        return obj

    def _replace(
        self,
        rt: ResourceType,
        namespace: str,
        name: str,
        body: Mapping[str, Any],
        *,
        check_rv: bool,
    ) -> JSON:
        key = (rt.resource, namespace, name)
        old = self._objects.get(key)
        if old is None:
            raise _not_found(rt, name)
        meta_in = body.get("metadata") or {}
        if check_rv:
            given = meta_in.get("resourceVersion")
            if not given:
                raise _invalid(
                    rt.kind, name, "metadata.resourceVersion", "must be specified for an update"
                )
            if given != old["metadata"]["resourceVersion"]:
                raise _conflict(rt, name)
        obj = copy.deepcopy(dict(body))
        obj["apiVersion"], obj["kind"] = rt.api_version, rt.kind
        meta = obj.setdefault("metadata", {})
        old_meta = old["metadata"]
        generation = old_meta.get("generation", 1)
        if _content(obj) != _content(old):
            generation += 1
        _stamp_namespace(rt, meta, namespace)
        meta.update(
            name=name,
            uid=old_meta["uid"],
            creationTimestamp=old_meta["creationTimestamp"],
            generation=generation,
            resourceVersion=old_meta["resourceVersion"],
        )
        if obj == old:
            return old  # a no-op update writes nothing
        self._rv += 1
        meta["resourceVersion"] = str(self._rv)
        self._write(MODIFIED, key, obj, old)
        return obj

    def _check_preconditions(
        self, rt: ResourceType, namespace: str, name: str, preconditions: Any
    ) -> None:
        """DeleteOptions.preconditions: the object must still have this uid and/or
        resourceVersion (checked against the stored object, as etcd3's store does)."""
        if preconditions is None:
            return
        if not isinstance(preconditions, dict):
            raise _bad_request("preconditions must be an object")
        old = self._objects.get((rt.resource, namespace, name))
        if old is None:
            raise _not_found(rt, name)
        meta = old["metadata"]
        uid, rv = preconditions.get("uid"), preconditions.get("resourceVersion")
        if uid is not None and uid != meta["uid"]:
            what = f"UID in precondition: {uid}, UID in object meta: {meta['uid']}"
            raise _precondition_failed(rt, namespace, name, what)
        if rv is not None and rv != meta["resourceVersion"]:
            what = (
                f"ResourceVersion in precondition: {rv}, "
                f"ResourceVersion in object meta: {meta['resourceVersion']}"
            )
            raise _precondition_failed(rt, namespace, name, what)

    def _delete(self, rt: ResourceType, namespace: str, name: str) -> JSON:
        key = (rt.resource, namespace, name)
        old = self._objects.get(key)
        if old is None:
            raise _not_found(rt, name)
        self._rv += 1
        last = _at_rv(old, self._rv)
        self._write(DELETED, key, last, old)
        return last

    def _patch_meta(
        self, resource: str, namespace: str, name: str, field_name: str, patch: Mapping[str, Any]
    ) -> JSON:
        rt = _resource(resource)
        namespace = _scope(rt, namespace)
        with self._cond:
            old = self._objects.get((rt.resource, namespace, name))
            if old is None:
                raise _not_found(rt, name)
            obj = copy.deepcopy(old)
            values = dict(obj["metadata"].get(field_name) or {})
            for k, v in patch.items():
                if v is None:
                    values.pop(k, None)
                else:
                    values[k] = v
            obj["metadata"][field_name] = values
            if not values:
                del obj["metadata"][field_name]
            return copy.deepcopy(self._replace(rt, namespace, name, obj, check_rv=False))

    def _state_at(self, rv: int) -> dict[Key, JSON]:
        """The objects as they were at `rv` (replaying the history)."""
        if rv >= self._rv:
            return self._objects
        state: dict[Key, JSON] = {}
        for change in self._changes:
            if change.rv > rv:
                break
            if change.type == DELETED:
                state.pop(change.key, None)
            else:
                state[change.key] = change.obj
        return state

    def _record(self, request: RecordedRequest) -> None:
        with self._cond:
            self._requests.append(request)
            self._cond.notify_all()

    # --- HTTP serving ------------------------------------------------------------------

    def _register(self, server: _Server, conn: socket.socket) -> bool:
        with self._cond:
            if server.epoch != self._epoch or self._httpd is None:
                return False
            self._connections.add(conn)
            return True

    def _unregister(self, conn: socket.socket) -> None:
        with self._cond:
            self._connections.discard(conn)

    def _handle(self, h: _Handler) -> None:
        parts = urlsplit(h.path)
        query = {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
        route = _route(parts.path)
        verb = "unknown"
        if route is not None:
            verb = _verb(h.command, route, query)
        record = RecordedRequest(
            verb=verb,
            resource=route.rt.resource if route else None,
            namespace=route.namespace if route else None,
            name=route.name if route else None,
            method=h.command,
            path=parts.path,
            query=query,
            status=0,
        )
        body = self._read_body(h)
        try:
            if route is None:
                raise ApiError(
                    status_object(
                        404, "NotFound", "the server could not find the requested resource"
                    )
                )
            injected = self._injected(verb, route)
            if injected is not None:
                raise ApiError(status_object(injected, "InternalError", "injected by the test"))
            if verb == "watch":
                self._serve_watch(h, route, query, record)
                return
            code, payload = self._dispatch(verb, route, query, body)
        except ApiError as exc:
            code, payload = exc.code, exc.status
        self._record(replace(record, status=code))
        _send_json(h, code, payload)

    @staticmethod
    def _read_body(h: _Handler) -> bytes:
        length = int(h.headers.get("Content-Length") or 0)
        return h.rfile.read(length) if length > 0 else b""

    def _dispatch(
        self, verb: str, route: _Route, query: Mapping[str, str], raw: bytes
    ) -> tuple[int, JSON]:
        rt = route.rt
        if verb == "list":
            return 200, self._list(route, query)
        namespace = route.namespace if rt.namespaced else ""
        if verb == "get":
            assert namespace is not None and route.name is not None
            with self._cond:
                obj = self._objects.get((rt.resource, namespace, route.name))
                if obj is None:
                    raise _not_found(rt, route.name)
                return 200, obj
        if verb not in ("create", "update", "patch", "delete"):
            raise ApiError(
                status_object(
                    405,
                    "MethodNotAllowed",
                    "the server does not allow this method on the requested resource",
                )
            )
        if namespace is None:
            raise _bad_request("the namespace of the object must be given in the URL")
        if verb == "delete":
            assert route.name is not None
            options = _parse_body(raw) if raw.strip() else {}
            with self._cond:
                self._check_preconditions(rt, namespace, route.name, options.get("preconditions"))
                last = self._delete(rt, namespace, route.name)
            return 200, last if rt.returns_deleted_object else _deleted_status(rt, last)
        body = _parse_body(raw)
        if verb == "patch":
            assert route.name is not None
            with self._cond:
                old = self._objects.get((rt.resource, namespace, route.name))
                if old is None:
                    raise _not_found(rt, route.name)
                merged = _merge_patch(old, body)
                if not isinstance(merged, dict):
                    raise _bad_request("the patch does not produce an object")
                rv_given = (body.get("metadata") or {}).get("resourceVersion")
                return 200, self._replace(
                    rt, namespace, route.name, merged, check_rv=rv_given is not None
                )
        _check_body(rt, route, body)
        meta = body.setdefault("metadata", {})
        with self._cond:
            if verb == "create":
                name = meta.get("name")
                if not name:
                    prefix = meta.get("generateName")
                    if not prefix:
                        raise _invalid(
                            rt.kind,
                            "",
                            "metadata.name",
                            "Required value: name or generateName is required",
                        )
                    name = prefix + uuid.uuid4().hex[:5]
                return 201, self._create(rt, namespace, body, name)
            assert route.name is not None
            return 200, self._replace(rt, namespace, route.name, body, check_rv=True)

    def _list(self, route: _Route, query: Mapping[str, str]) -> JSON:
        rt = route.rt
        flt = _Filter(
            rt,
            route.namespace,
            route.name,
            parse_label_selector(query.get("labelSelector")),
            parse_field_selector(rt, query.get("fieldSelector")),
        )
        limit = _parse_limit(query.get("limit"))
        token = query.get("continue") or None
        rv_param = query.get("resourceVersion")
        match = query.get("resourceVersionMatch") or None
        with self._cond:
            start = ""
            if match is not None and not rv_param:
                raise _invalid(
                    "ListOptions",
                    "",
                    "resourceVersionMatch",
                    "resourceVersionMatch is forbidden unless resourceVersion is provided",
                )
            if match not in (None, "Exact", "NotOlderThan"):
                raise _invalid(
                    "ListOptions", "", "resourceVersionMatch", f'Unsupported value: "{match}"'
                )
            if token is not None:
                if rv_param not in (None, "", "0"):
                    raise _bad_request(
                        "specifying resource version is not allowed when using continue"
                    )
                token_rv, start = _decode_continue(token)
                if token_rv == -1:
                    snapshot = self._rv  # the "inconsistent" token of a 410: latest state
                elif token_rv < self._compacted_rv:
                    message = (
                        "The provided continue parameter is too old to display a consistent list "
                        "result. Start a new list without it, or continue with the token in this "
                        "response to get the rest from the latest state (an inconsistent list)."
                    )
                    raise ApiError(
                        status_object(
                            410,
                            "Expired",
                            message,
                            metadata={"continue": _encode_continue(-1, start)},
                        )
                    )
                else:
                    snapshot = token_rv
            elif rv_param in (None, "", "0"):
                snapshot = self._rv
            else:
                wanted = _parse_rv(rv_param)
                if wanted > self._rv:
                    raise ApiError(
                        status_object(
                            504,
                            "Timeout",
                            f"Too large resource version: {wanted}, current: {self._rv}",
                            details={
                                "causes": [
                                    {
                                        "reason": "ResourceVersionTooLarge",
                                        "message": "Too large resource version",
                                    }
                                ],
                                "retryAfterSeconds": 1,
                            },
                        )
                    )
                exact = match == "Exact" or (match is None and limit is not None)
                if exact and wanted < self._compacted_rv:
                    raise ApiError(_too_old(rv_param, self._compacted_rv))
                snapshot = wanted if exact else self._rv
            state = self._state_at(snapshot)
            keys = sorted(
                (
                    k
                    for k in state
                    if flt.matches_key(k) and _sort_key(k) > start and flt.matches(state[k])
                ),
                key=_sort_key,
            )
            meta: JSON = {"resourceVersion": str(snapshot)}
            if limit is not None and len(keys) > limit:
                meta["continue"] = _encode_continue(snapshot, _sort_key(keys[limit - 1]))
                if not flt.has_selectors:
                    meta["remainingItemCount"] = len(keys) - limit
                keys = keys[:limit]
            return {
                "kind": f"{rt.kind}List",
                "apiVersion": rt.api_version,
                "metadata": meta,
                "items": [_without_type(state[k]) for k in keys],
            }

    def _serve_watch(
        self, h: _Handler, route: _Route, query: Mapping[str, str], record: RecordedRequest
    ) -> None:
        rt = route.rt
        flt = _Filter(
            rt,
            route.namespace,
            route.name,
            parse_label_selector(query.get("labelSelector")),
            parse_field_selector(rt, query.get("fieldSelector")),
        )
        rv_param = query.get("resourceVersion")
        bookmarks = bool(_parse_bool(query.get("allowWatchBookmarks")))
        send_initial = _parse_bool(query.get("sendInitialEvents"))
        timeout = query.get("timeoutSeconds")
        deadline = None
        if timeout:
            try:
                deadline = time.monotonic() + int(timeout)
            except ValueError:
                raise _bad_request(f"invalid timeoutSeconds: {timeout!r}") from None
        if send_initial and query.get("resourceVersionMatch") != "NotOlderThan":
            raise _invalid(
                "ListOptions",
                "",
                "resourceVersionMatch",
                "sendInitialEvents requires setting resourceVersionMatch to NotOlderThan",
            )
        start_rv = None if rv_param in (None, "", "0") else _parse_rv(rv_param)
        initial = start_rv is None or bool(send_initial)
        with self._cond:
            expired: bool | None = None  # None: not expired; else: answer as HTTP 410?
            oldest = self._compacted_rv
            if self._expiries:
                forced = self._expiries.pop(0)
                expired = self.expired_watch_as_http if forced is None else forced
                oldest = max(oldest, self._rv)
            elif start_rv is not None and start_rv < self._compacted_rv and not send_initial:
                expired = self.expired_watch_as_http
            if expired is not None:
                gone = _too_old(rv_param or "", oldest)
                if expired:
                    self._record(replace(record, status=410))
                    _send_json(h, 410, gone)
                    return
                self._record(replace(record, status=200))
                self._events_sent[ERROR] += 1
                _start_chunked(h)
                _write_event(h, {"type": ERROR, "object": gone})
                _end_chunked(h)
                return
            watcher = _Watcher(flt, h.connection)
            self._watchers.append(watcher)
            initial_events: list[JSON] = []
            if initial:
                for key in sorted(self._objects, key=_sort_key):
                    obj = self._objects[key]
                    if flt.matches_key(key) and flt.matches(obj):
                        initial_events.append({"type": ADDED, "object": obj})
                last_rv = self._rv
            else:
                assert start_rv is not None
                last_rv = start_rv
            self._record(replace(record, status=200))
        try:
            self._stream(
                h, watcher, initial_events, last_rv, bookmarks, bool(send_initial), deadline
            )
        finally:
            self._drop(watcher)

    def _drop(self, watcher: _Watcher) -> None:
        with self._cond:
            if watcher in self._watchers:
                self._watchers.remove(watcher)
                self._cond.notify_all()

    def _bookmark(self, rt: ResourceType, rv: int, *, initial_end: bool = False) -> JSON:
        meta: JSON = {"resourceVersion": str(rv)}
        if initial_end:
            meta["annotations"] = {INITIAL_EVENTS_END: "true"}
        return {
            "type": BOOKMARK,
            "object": {"kind": rt.kind, "apiVersion": rt.api_version, "metadata": meta},
        }

    def _stream(
        self,
        h: _Handler,
        w: _Watcher,
        initial_events: list[JSON],
        last_rv: int,
        bookmarks: bool,
        initial_end_bookmark: bool,
        deadline: float | None,
    ) -> None:
        rt = w.filter.rt
        end: str | None = None
        try:
            _start_chunked(h)
            first = list(initial_events)
            if initial_end_bookmark and bookmarks:
                first.append(self._bookmark(rt, last_rv, initial_end=True))
            self._send_events(h, first)
            last_sent = time.monotonic()
            while end is None:
                batch: list[JSON] = []
                with self._cond:
                    while True:
                        if w.abort is not None:
                            end = w.abort
                            break
                        if self._change_rvs and self._change_rvs[-1] > last_rv:
                            i = bisect.bisect_right(self._change_rvs, last_rv)
                            for change in self._changes[i:]:
                                event = w.convert(change)
                                if event is not None:
                                    batch.append(event)
                            last_rv = self._change_rvs[-1]
                            if batch:
                                break
                        now = time.monotonic()
                        if deadline is not None and now >= deadline:
                            end = "clean"
                            break
                        interval = self._bookmark_interval
                        if bookmarks and interval is not None and now - last_sent >= interval:
                            last_rv = max(last_rv, self._rv)  # every change up to now was seen
                            batch.append(self._bookmark(rt, last_rv))
                            break
                        if _peer_closed(w.connection):
                            end = "abrupt"
                            break
                        waits = [_POLL]
                        if deadline is not None:
                            waits.append(deadline - now)
                        if bookmarks and interval is not None:
                            waits.append(interval - (now - last_sent))
                        self._cond.wait(max(0.0, min(waits)))
                if batch:
                    self._send_events(h, batch)
                    last_sent = time.monotonic()
            # No longer counted as open once the client can see the end.
            self._drop(w)
            if end == "clean":
                _end_chunked(h)
                return
        except OSError:
            pass
        self._drop(w)
        h.close_connection = True
        _shutdown(h.connection)

    def _send_events(self, h: _Handler, events: Iterable[JSON]) -> None:
        for event in events:
            _write_event(h, event)
            with self._cond:
                self._events_sent[event["type"]] += 1
                self._cond.notify_all()


# --- routing and HTTP plumbing -------------------------------------------------------


@dataclass(frozen=True)
class _Route:
    rt: ResourceType
    namespace: str | None
    name: str | None
    legacy_watch: bool = False


def _route(path: str) -> _Route | None:
    parts = [p for p in path.split("/") if p]
    if len(parts) >= 2 and parts[0] == "api":
        group, version, rest = "", parts[1], parts[2:]
    elif len(parts) >= 3 and parts[0] == "apis":
        group, version, rest = parts[1], parts[2], parts[3:]
    else:
        return None
    legacy_watch = rest[:1] == ["watch"]
    if legacy_watch:
        rest = rest[1:]
    namespace = None
    if len(rest) >= 3 and rest[0] == "namespaces":
        namespace, rest = rest[1], rest[2:]
    if len(rest) not in (1, 2):
        return None
    rt = RESOURCES.get(rest[0])
    if rt is None or rt.group != group or rt.version != version:
        return None
    name = rest[1] if len(rest) == 2 else None
    if not rt.namespaced and namespace is not None:
        return None  # a cluster-scoped resource has no namespaced path
    if rt.namespaced and name is not None and namespace is None:
        return None  # a namespaced object is named within its namespace
    return _Route(rt, namespace, name, legacy_watch)


def _verb(method: str, route: _Route, query: Mapping[str, str]) -> str:
    if method == "GET":
        try:
            watching = route.legacy_watch or bool(_parse_bool(query.get("watch")))
        except ApiError:
            watching = False
        if watching:
            return "watch"
        return "get" if route.name is not None else "list"
    if route.legacy_watch:
        return "unknown"
    if method == "POST" and route.name is None:
        return "create"
    if route.name is not None:
        return {"PUT": "update", "PATCH": "patch", "DELETE": "delete"}.get(method, "unknown")
    return "unknown"


def _parse_limit(value: str | None) -> int | None:
    if not value:
        return None
    try:
        limit = int(value)
    except ValueError:
        raise _bad_request(f"invalid limit: {value!r}") from None
    return limit if limit > 0 else None


def _parse_body(raw: bytes) -> JSON:
    try:
        body = json.loads(raw or b"null")
    except ValueError as exc:
        raise _bad_request(f"the body of the request could not be decoded: {exc}") from None
    if not isinstance(body, dict):
        raise _bad_request("the body of the request must be an object")
    return body


def _check_body(rt: ResourceType, route: _Route, body: JSON) -> None:
    kind, api_version = body.get("kind"), body.get("apiVersion")
    if kind not in (None, rt.kind):
        raise _bad_request(
            f"the kind in the data ({kind}) does not match the expected kind ({rt.kind})"
        )
    if api_version not in (None, rt.api_version):
        raise _bad_request(
            f"the API version in the data ({api_version}) does not match the expected API version ({rt.api_version})"
        )
    meta = body.get("metadata")
    if meta is not None and not isinstance(meta, dict):
        raise _bad_request("metadata must be an object")
    meta = meta or {}
    if rt.namespaced and meta.get("namespace") not in (None, "", route.namespace):
        raise _bad_request(
            "the namespace of the provided object does not match the namespace sent on the request"
        )
    if route.name is not None and meta.get("name") not in (None, route.name):
        raise _bad_request(
            f"the name of the object ({meta.get('name')}) does not match the name on the URL ({route.name})"
        )
    if route.name is not None:
        body.setdefault("metadata", {})["name"] = route.name


def _merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = dict(target) if isinstance(target, dict) else {}
    for k, v in patch.items():
        if v is None:
            out.pop(k, None)
        else:
            out[k] = _merge_patch(out.get(k), v)
    return out


def _resource(resource: str) -> ResourceType:
    rt = RESOURCES.get(resource)
    if rt is None:
        raise ValueError(f"unknown resource {resource!r}; known: {sorted(RESOURCES)}")
    return rt


def _send_json(h: _Handler, code: int, payload: JSON) -> None:
    data = json.dumps(payload, separators=(",", ":")).encode()
    try:
        h.send_response(code)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        h.wfile.write(data)
    except OSError:
        h.close_connection = True


def _start_chunked(h: _Handler) -> None:
    h.send_response(200)
    h.send_header("Content-Type", "application/json")
    h.send_header("Cache-Control", "no-cache, private")
    h.send_header("Transfer-Encoding", "chunked")
    h.end_headers()


def _write_event(h: _Handler, event: JSON) -> None:
    line = json.dumps(event, separators=(",", ":")).encode() + b"\n"
    h.wfile.write(b"%x\r\n%s\r\n" % (len(line), line))


def _end_chunked(h: _Handler) -> None:
    h.wfile.write(b"0\r\n\r\n")


def _peer_closed(conn: socket.socket) -> bool:
    """True if the client closed its end (readable with nothing to read)."""
    try:
        readable, _, _ = select.select([conn], [], [], 0)
        if not readable:
            return False
        return conn.recv(1, socket.MSG_PEEK) == b""
    except (OSError, ValueError):
        return True


def _shutdown(conn: socket.socket) -> None:
    with contextlib.suppress(OSError):
        conn.shutdown(socket.SHUT_RDWR)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    api: FakeKubeAPI
    epoch: int

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # cut connections are part of the game


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def setup(self) -> None:
        super().setup()
        # As Go's net/http: no Nagle, else headers and body written apart wait for an ACK.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if not self.server.api._register(self.server, self.connection):
            _shutdown(self.connection)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.api._unregister(self.connection)

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _serve(self) -> None:
        self.server.api._handle(self)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _serve


__all__ = [
    "ADDED",
    "BOOKMARK",
    "DELETED",
    "ERROR",
    "INITIAL_EVENTS_END",
    "MODIFIED",
    "RESOURCES",
    "ApiError",
    "FakeKubeAPI",
    "RecordedRequest",
    "Requirement",
    "ResourceType",
    "parse_field_selector",
    "parse_label_selector",
    "status_object",
]
