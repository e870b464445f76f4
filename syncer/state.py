"""The store: desired state, which source owns which upstream, and per-proxy records.

Sources publish complete results (never deltas); the store merges them into
immutable `DesiredState` versions that proxy workers wait on. Invariants:

* not `ready` until every source has either completed its first read or been
  restored from the snapshot: nothing is planned before, so an empty start can
  never delete anything;
* while any source is only restored (not yet read live), `restoring` is set and
  the planner deletes nothing;
* a source that suddenly publishes nothing keeps its last known upstreams
  (unless `allow_empty`), and a failing source keeps them too;
* an upstream name belongs to one source; another source publishing the same
  name is refused for that name.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from syncer.model import ModelError, Upstream, upstream_from_body
from syncer.snapshot import SnapshotData
from syncer.traffic import (
    History,
    advance_history,
    policy_meta,
    topology_changed,
    with_policy_meta,
)

_REMOVED_KEEP = 10_000  # how many removal times to remember for lag of deletes
_PUBLISHED_KEEP = 4096  # how many version publication times to remember


@dataclass(frozen=True, slots=True)
class DesiredState:
    version: int
    upstreams: Mapping[str, Upstream]
    # Wall-clock time each upstream last changed at its origin (for sync lag);
    # also holds removed names, with the time of their removal.
    changed_at: Mapping[str, float]
    ready: bool
    restoring: bool
    override_breaker: bool = False
    # For traffic policies: when each server of a policy-bearing upstream was first
    # seen (and since when it drains), and the upstreams holding their last known
    # servers because their service has no usable endpoint.
    history: History = field(default_factory=dict)
    held_empty: frozenset[str] = frozenset()

    @property
    def servers(self) -> int:
        return sum(len(u.servers) for u in self.upstreams.values())


@dataclass(frozen=True, slots=True)
class PublishResult:
    changed: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    collisions: tuple[str, ...] = ()
    held_empty: bool = False


@dataclass
class ProxyRecord:
    """What the syncer knows of one proxy across restarts."""

    owned: set[str] = field(default_factory=set)
    applied: dict[str, str] = field(default_factory=dict)  # name → body hash last accepted
    # Names found on the proxy that are not ours (nginx.conf, other tools).
    foreign: set[str] = field(default_factory=set)


class Store:
    def __init__(
        self,
        sources: Iterable[str],
        *,
        allow_empty: bool = False,
        clock: Callable[[], float] = time.time,
        on_change: Callable[[], None] = lambda: None,
    ) -> None:
        self._sources = list(sources)
        self._allow_empty = allow_empty
        self._clock = clock
        self._on_change = on_change  # the snapshot writer's mark_dirty
        self._cond = threading.Condition()
        self._by_source: dict[str, dict[str, Upstream]] = {s: {} for s in self._sources}
        self._owner: dict[str, str] = {}
        self._changed_at: dict[str, float] = {}
        self._removed_at: OrderedDict[str, float] = OrderedDict()
        self._synced: set[str] = set()
        self._restored: set[str] = set()
        self._held_empty: set[str] = set()
        self._held_names: dict[str, frozenset[str]] = {}  # per source: services held empty
        self._history: History = {}
        # What the snapshot restored, until every source has answered: its servers
        # were already serving, so they must not ramp up as if new.
        self._restored_upstreams: dict[str, Upstream] = {}
        self._proxies: dict[str, ProxyRecord] = {}
        self._override_version: int | None = None
        # Ownership learnt from the leader (leader election): names the fleet of
        # syncers created, minus those found foreign on a given proxy.
        self._shared_owned: frozenset[str] = frozenset()
        self._shared_foreign: dict[str, frozenset[str]] = {}
        # With shards, one record per Lease (by name): the shared sets are their union.
        self._imported: dict[str, tuple[frozenset[str], dict[str, frozenset[str]]]] = {}
        self._version = 0
        # When each recent version appeared (monotonic), so a worker that was busy
        # while changes arrived can tell how long they have already waited.
        self._published: deque[tuple[int, float]] = deque(maxlen=_PUBLISHED_KEEP)
        self._current = self._build()

    # ----------------------------------------------------------- snapshot I/O
    def restore(self, data: SnapshotData) -> list[str]:
        """Load a snapshot before sources start; returns problems (skipped entries)."""
        problems: list[str] = []
        with self._cond:
            for source, upstreams in data.sources.items():
                if not isinstance(upstreams, dict):
                    problems.append(f"source {source!r}: not a mapping of upstreams")
                    continue
                if source not in self._by_source:
                    problems.append(
                        f"source {source!r} is no longer configured; its entries are dropped"
                    )
                    continue
                restored: dict[str, Upstream] = {}
                for name, raw in upstreams.items():
                    try:
                        restored[name] = _restore_upstream(name, raw)
                    except ModelError as e:
                        problems.append(f"upstream {name!r} of {source!r}: {e}")
                self._by_source[source] = restored
                self._restored_upstreams.update(restored)
                for name in restored:
                    self._owner.setdefault(name, source)
                self._restored.add(source)
            for url, raw in data.proxies.items():
                if not isinstance(raw, dict):
                    problems.append(f"proxy {url!r}: malformed record")
                    continue
                owned = raw.get("owned", [])
                applied = raw.get("applied", {})
                if isinstance(owned, list) and isinstance(applied, dict):
                    self._proxies[url] = ProxyRecord(set(map(str, owned)), dict(applied))
                else:
                    problems.append(f"proxy {url!r}: malformed record")
            self._bump()
        return problems

    def snapshot(self) -> SnapshotData:
        # Copy references under the lock; render outside it (workers need the lock).
        with self._cond:
            sources = {src: dict(ups) for src, ups in self._by_source.items()}
            proxies = {
                url: {"owned": sorted(rec.owned), "applied": dict(rec.applied)}
                for url, rec in self._proxies.items()
            }
        return SnapshotData(
            sources={
                src: {n: _snapshot_entry(u) for n, u in ups.items()} for src, ups in sources.items()
            },
            proxies=proxies,
        )

    # ---------------------------------------------------------------- sources
    def publish(
        self,
        source: str,
        upstreams: Mapping[str, Upstream],
        *,
        changed_at: float | None = None,
        changed_at_by_name: Mapping[str, float] | None = None,
        held_empty: Collection[str] = (),
    ) -> PublishResult:
        """Replace everything `source` provides. `changed_at`: when the change happened
        at the origin (defaults to now); `changed_at_by_name` refines it per upstream.
        `held_empty`: upstreams kept with their last known servers because their
        service has no usable endpoint now (their empty policy applies)."""
        if source not in self._by_source:
            raise KeyError(f"unknown source {source!r}")
        when = self._clock() if changed_at is None else changed_at
        by_name = changed_at_by_name or {}
        with self._cond:
            previous = self._by_source[source]
            first_live = source not in self._synced
            self._synced.add(source)
            if not upstreams and previous and not self._allow_empty:
                self._held_empty.add(source)
                if first_live:
                    self._bump()
                return PublishResult(held_empty=True)
            self._held_empty.discard(source)
            accepted: dict[str, Upstream] = {}
            collisions: list[str] = []
            for name, upstream in upstreams.items():
                owner = self._owner.get(name)
                if owner is not None and owner != source and name in self._by_source[owner]:
                    collisions.append(name)
                    continue
                accepted[name] = upstream
            changed = []
            for name, upstream in accepted.items():
                before = previous.get(name)
                if before is upstream:
                    continue  # the common case: a source republishes what it holds
                if before != upstream or topology_changed(before, upstream):
                    changed.append(name)
                else:
                    # Keep the object already handed out: per-proxy policy decisions
                    # are memoised on its identity.
                    accepted[name] = before
            held = frozenset(held_empty)
            held_changed = held != self._held_names.get(source, frozenset())
            self._held_names[source] = held
            removed = [n for n in previous if n not in accepted]
            for name in changed:
                self._owner[name] = source
                self._changed_at[name] = by_name.get(name, when)
                self._removed_at.pop(name, None)
            for name in removed:
                self._owner.pop(name, None)
                self._changed_at.pop(name, None)
                self._removed_at[name] = when
            while len(self._removed_at) > _REMOVED_KEEP:
                self._removed_at.popitem(last=False)
            self._by_source[source] = accepted
            if changed or removed or first_live or held_changed:
                self._bump()
            return PublishResult(tuple(changed), tuple(removed), tuple(sorted(collisions)))

    @property
    def held_empty(self) -> frozenset[str]:
        with self._cond:
            return frozenset(self._held_empty)

    def synced(self, source: str) -> bool:
        with self._cond:
            return source in self._synced

    # ------------------------------------------------------------- versions
    def _build(self) -> DesiredState:
        merged: dict[str, Upstream] = {}
        for source, ups in self._by_source.items():
            for name, upstream in ups.items():
                if self._owner.get(name, source) == source:
                    merged[name] = upstream
        changed_at = {**self._removed_at, **self._changed_at}
        known = self._synced | self._restored
        restoring = not all(s in self._synced for s in self._sources)
        self._history = advance_history(
            self._history, merged, self._clock(), known=self._restored_upstreams
        )
        if not restoring:
            self._restored_upstreams = {}
        held: set[str] = set()
        for source in self._sources:
            if source in self._held_empty:
                held.update(self._by_source[source])  # the whole source answered nothing
            held.update(self._held_names.get(source, ()))
        return DesiredState(
            version=self._version,
            upstreams=MappingProxyType(merged),
            changed_at=MappingProxyType(changed_at),
            ready=all(s in known for s in self._sources),
            restoring=restoring,
            override_breaker=self._override_version == self._version,
            history=MappingProxyType(dict(self._history)),
            held_empty=frozenset(held & merged.keys()),
        )

    def _bump(self) -> None:
        self._version += 1
        self._published.append((self._version, time.monotonic()))
        self._current = self._build()
        self._cond.notify_all()
        self._on_change()

    def current(self) -> DesiredState:
        # No lock: `_current` is an immutable snapshot whose reference is replaced
        # whole (under the lock) and read atomically. Every worker asks for it before
        # each write; with 200 proxies most worker threads were queued on this lock.
        return self._current

    def wait_newer(
        self, version: int, timeout: float, stop: threading.Event | None = None
    ) -> DesiredState:
        """Block until a version newer than `version` exists, `stop` is set (call
        `wake` after setting it), or `timeout` passes."""
        with self._cond:
            self._cond.wait_for(
                lambda: self._current.version > version or (stop is not None and stop.is_set()),
                timeout=timeout,
            )
            return self._current

    def first_published_after(self, version: int) -> float | None:
        """Monotonic time the first version newer than `version` appeared, or None
        if none did (or it is too old to remember: then it has waited long enough)."""
        with self._cond:
            if not self._published:
                return None
            # Versions are appended one by one, so the deque is indexed by number.
            index = version + 1 - self._published[0][0]
            if not 0 <= index < len(self._published):
                return None
            return self._published[index][1]

    def wake(self) -> None:
        """Wake every waiter (shutdown)."""
        with self._cond:
            self._cond.notify_all()

    def override_breaker(self) -> int:
        """An operator allows the mass deletion the current desired version implies.
        The override ends with the next change of desired state."""
        with self._cond:
            self._version += 1
            self._published.append((self._version, time.monotonic()))
            self._override_version = self._version
            self._current = self._build()
            self._cond.notify_all()
            return self._version

    # ---------------------------------------------------------------- proxies
    def proxy_record(self, url: str) -> ProxyRecord:
        with self._cond:
            rec = self._proxies.get(url, ProxyRecord())
            shared = self._shared_owned - self._shared_foreign.get(url, frozenset()) - rec.foreign
            return ProxyRecord(rec.owned | shared, dict(rec.applied), set(rec.foreign))

    def record_foreign(self, url: str, names: Iterable[str]) -> None:
        with self._cond:
            self._proxies.setdefault(url, ProxyRecord()).foreign = set(names)

    def export_ownership(self) -> dict[str, Any]:
        """What a leader hands to its followers: every name it owns anywhere, and per
        proxy the names that are not ours there."""
        with self._cond:
            owned: set[str] = set(self._shared_owned)
            for rec in self._proxies.values():
                owned |= rec.owned
            foreign = {
                url: sorted(rec.foreign) for url, rec in self._proxies.items() if rec.foreign
            }
            return {"owned": sorted(owned), "foreign": foreign}

    def import_ownership(self, data: Mapping[str, Any], origin: str = "") -> None:
        """A follower learns what the leader owns, so that it can take over. With
        shards, each Lease's holder publishes its own record: a record replaces the
        last one from the same `origin` (Lease), and the records are merged (a name
        owned in any is shared; one foreign on a proxy in any stays foreign there)."""
        owned, foreign = data.get("owned", []), data.get("foreign", {})
        if not isinstance(owned, list) or not isinstance(foreign, dict):
            raise ValueError("ownership record must be {owned: [...], foreign: {...}}")
        record = (
            frozenset(map(str, owned)),
            {str(url): frozenset(map(str, names)) for url, names in foreign.items()},
        )
        with self._cond:
            self._imported[origin] = record
            if len(self._imported) == 1:  # the single Lease: as before, no merging
                self._shared_owned, self._shared_foreign = record
                return
            self._shared_owned = frozenset().union(*(o for o, _ in self._imported.values()))
            merged: dict[str, frozenset[str]] = {}
            for _, per_proxy in self._imported.values():
                for url, names in per_proxy.items():
                    merged[url] = merged.get(url, frozenset()) | names
            self._shared_foreign = merged

    def claim(self, url: str, names: Iterable[str]) -> None:
        with self._cond:
            self._proxies.setdefault(url, ProxyRecord()).owned.update(names)

    def release(self, url: str, names: Iterable[str]) -> None:
        with self._cond:
            rec = self._proxies.setdefault(url, ProxyRecord())
            for name in names:
                rec.owned.discard(name)
                rec.applied.pop(name, None)
        self._on_change()

    def record_applied(self, url: str, name: str, digest: str | None) -> None:
        with self._cond:
            rec = self._proxies.setdefault(url, ProxyRecord())
            if digest is None:
                rec.applied.pop(name, None)
            else:
                rec.applied[name] = digest
        self._on_change()

    def forget_proxy(self, url: str) -> None:
        """A discovered proxy left for good: its record goes with it."""
        with self._cond:
            self._proxies.pop(url, None)
        self._on_change()

    def forget_applied(self, url: str) -> None:
        """The proxy lost its dynamic state (reload): our record of bodies is void."""
        with self._cond:
            self._proxies.setdefault(url, ProxyRecord()).applied.clear()
        self._on_change()

    def status(self) -> dict[str, Any]:
        with self._cond:
            return {
                "version": self._current.version,
                "ready": self._current.ready,
                "restoring": self._current.restoring,
                "sources": {
                    s: {
                        "synced": s in self._synced,
                        "restored_from_snapshot": s in self._restored,
                        "holding_last_known_because_empty": s in self._held_empty,
                        "upstreams": len(self._by_source[s]),
                    }
                    for s in self._sources
                },
            }


def _snapshot_entry(upstream: Upstream) -> str | dict[str, object]:
    """The body; with what traffic policies read beside it, for an upstream under one."""
    meta = policy_meta(upstream)
    return upstream.body if meta is None else {"body": upstream.body, **meta}


def _restore_upstream(name: str, raw: object) -> Upstream:
    if isinstance(raw, dict):
        upstream = upstream_from_body(name, raw.get("body"))  # type: ignore[arg-type]
        return with_policy_meta(upstream, raw)
    return upstream_from_body(name, raw)  # type: ignore[arg-type]
