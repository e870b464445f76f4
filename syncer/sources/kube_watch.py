"""List + watch one Kubernetes resource with the official client, by the API's rules.

LIST (paginated), then WATCH from the list's resourceVersion with bookmarks; a
watch that ends resumes from the last seen resourceVersion; a 410 Gone (an ERROR
event or an HTTP status) re-LISTs, never resuming with the expired version (the
client's own `Watch` retries once with that same version, so it is not used: the
client's API call is, with `_preload_content=False`, and the lines are read here).
Objects are kept as raw dicts in the API reference shapes.
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from kubernetes.client.exceptions import ApiException
from kubernetes.watch.watch import iter_resp_lines
from urllib3.exceptions import HTTPError

Obj = Mapping[str, Any]
# Called with {key: object or None (deleted)} for every change, from this thread.
OnChange = Callable[[dict[str, Obj | None]], None]
LIST_PAGE = 500


class Gone(Exception):
    """The resourceVersion expired: re-list."""


def _key(obj: Obj) -> str:
    meta = obj.get("metadata") or {}
    return f"{meta.get('namespace', '')}/{meta.get('name', '')}"


class ListWatch:
    def __init__(
        self,
        *,
        kind: str,
        list_fn: Callable[..., Any],
        on_change: OnChange,
        log: Any,
        label_selector: str = "",
        watch_timeout: float = 300.0,
        connect_timeout: float = 5.0,
        backoff_max: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
        keep: Callable[[Obj], Obj] | None = None,
    ) -> None:
        self.kind = kind
        # What is held of each object (and handed to on_change): all of it by
        # default; a projection for objects of which little is read (Nodes).
        self._keep = keep
        self._list_fn = list_fn
        self._on_change = on_change
        self.log = log.bind(resource=kind)
        self._selector = label_selector
        self._watch_timeout = watch_timeout
        self._connect_timeout = connect_timeout
        self._backoff_max = backoff_max
        self._clock = clock
        self.objects: dict[str, Obj] = {}
        self.resource_version: str | None = None
        self.synced = threading.Event()
        self.healthy = False
        self.last_error = ""
        self.relists = 0
        self.gone = 0
        self._response: Any = None
        self._stop = threading.Event()

    # ------------------------------------------------------------------ loop
    def run(self, stop: threading.Event) -> None:
        self._stop = stop
        failures = 0
        while not stop.is_set():
            try:
                if self.resource_version is None:
                    self._relist()
                self._watch_once()
                failures = 0
            except Gone as e:
                self.gone += 1
                self.log.info("watch_expired", error=str(e), hint="re-listing")
                self.resource_version = None
            except (ApiException, HTTPError, OSError, ValueError) as e:
                if stop.is_set():
                    return
                failures += 1
                self.healthy = False
                self.last_error = _describe(e)
                delay = min(self._backoff_max, 0.25 * 2**failures) * random.uniform(0.5, 1.0)
                self.log.warning("watch_failed", error=self.last_error, retry_in=round(delay, 2))
                stop.wait(delay)

    def stop(self) -> None:
        """Unblock a watch in progress (its socket is closed under it)."""
        self._stop.set()
        response = self._response
        if response is not None:
            try:
                response.shutdown()
            # AttributeError: an urllib3 without shutdown(); ValueError, RuntimeError:
            # urllib3 2.x's shutdown() when the response has no socket to shut, or its
            # connection already went back to the pool (it logged `source_crashed`).
            except (AttributeError, OSError, ValueError, RuntimeError):
                response.close()

    # ------------------------------------------------------------------ list
    def _relist(self) -> None:
        items: dict[str, Obj] = {}
        token: str | None = None
        version = ""
        while True:
            kwargs: dict[str, Any] = {
                "limit": LIST_PAGE,
                "_preload_content": False,
                "_request_timeout": (self._connect_timeout, 60),
            }
            if token:
                kwargs["_continue"] = token
            if self._selector:
                kwargs["label_selector"] = self._selector
            try:
                response = self._list_fn(**kwargs)
            except ApiException as e:
                if e.status == 410:  # the continue token expired: start the list again
                    token, items = None, {}
                    continue
                raise
            page = json.loads(response.data)
            for obj in page.get("items") or []:
                items[_key(obj)] = obj if self._keep is None else self._keep(obj)
            meta = page.get("metadata") or {}
            version = str(meta.get("resourceVersion") or "")
            token = meta.get("continue") or None
            if not token:
                break
        changes: dict[str, Obj | None] = {k: None for k in self.objects if k not in items}
        for key, obj in items.items():
            if self.objects.get(key) != obj:
                changes[key] = obj
        self.objects = items
        self.resource_version = version
        self.relists += 1
        self.healthy = True
        self.last_error = ""
        self.log.info("listed", objects=len(items), resource_version=version, changed=len(changes))
        self.synced.set()
        if changes:
            self._on_change(changes)

    # ----------------------------------------------------------------- watch
    def _watch_once(self) -> None:
        kwargs: dict[str, Any] = {
            "watch": True,
            "resource_version": self.resource_version,
            "allow_watch_bookmarks": True,
            # Spread reconnections of many syncers like client-go's reflector.
            "timeout_seconds": int(self._watch_timeout * random.uniform(1.0, 1.2)),
            "_preload_content": False,
            "_request_timeout": (self._connect_timeout, self._watch_timeout * 1.2 + 30),
        }
        if self._selector:
            kwargs["label_selector"] = self._selector
        try:
            response = self._list_fn(**kwargs)
        except ApiException as e:
            if e.status == 410:
                raise Gone(f"HTTP 410: {e.reason}") from e
            raise
        self._response = response
        self.healthy = True
        try:
            for event in _events(response):
                if self._stop.is_set():
                    return
                self._apply(event)
        finally:
            self._response = None
            response.close()
            response.release_conn()

    def _apply(self, event: Mapping[str, Any]) -> None:
        kind = event.get("type")
        obj = event.get("object") or {}
        if kind == "ERROR":
            if obj.get("code") == 410:
                raise Gone(f"{obj.get('reason')}: {obj.get('message')}")
            raise ValueError(f"watch error {obj.get('code')}: {obj.get('message')}")
        version = (obj.get("metadata") or {}).get("resourceVersion")
        if kind == "BOOKMARK":
            if version:
                self.resource_version = str(version)
            return
        if kind not in ("ADDED", "MODIFIED", "DELETED"):
            raise ValueError(f"unknown watch event type {kind!r}")
        key = _key(obj)
        if kind == "DELETED":
            self.objects.pop(key, None)
            change: Obj | None = None
        else:
            change = obj if self._keep is None else self._keep(obj)
            self.objects[key] = change
        if version:
            self.resource_version = str(version)
        self._on_change({key: change})


def _events(response: Any) -> Iterator[Mapping[str, Any]]:
    for line in iter_resp_lines(response):
        if line:
            event = json.loads(line)
            if not isinstance(event, dict):
                raise ValueError("watch event is not a JSON object")
            yield event


def _describe(e: Exception) -> str:
    if isinstance(e, ApiException):
        return f"HTTP {e.status}: {e.reason}"
    return f"{e.__class__.__name__}: {e}"
