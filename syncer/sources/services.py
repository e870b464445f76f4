"""Per-service results of a discovery source, merged into its complete set of upstreams.

Shared by the Kubernetes and Consul sources, so both apply the same rules:
* a service whose data is invalid is rejected alone (logged once with the field,
  counted by reason) and keeps its last good upstream;
* a service with no usable endpoint keeps its last known servers, unless
  `allow_empty` (an upstream with no server cannot be posted anyway);
* an upstream name belongs to the first service that claimed it; another service
  asking for it is rejected.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from syncer.metrics import Metrics
from syncer.model import Upstream
from syncer.traffic import topology_changed


@dataclass(frozen=True, slots=True)
class Rejection:
    """A service that cannot become an upstream; `field` names what is wrong."""

    service: str
    reason: str  # a short metric label: port_required, weight, name_collision, ...
    field: str
    message: str


class ServiceUpstreams:
    def __init__(self, *, source: str, metrics: Metrics, log: Any, allow_empty: bool) -> None:
        self._source = source
        self._metrics = metrics
        self.log = log
        self.allow_empty = allow_empty
        self.upstreams: dict[str, Upstream] = {}  # service → upstream
        self.rejected: dict[str, Rejection] = {}
        self.held_empty: set[str] = set()
        self._name_owner: dict[str, str] = {}  # upstream name → service

    def update(self, service: str, result: Upstream | Rejection | None) -> str | None:
        """Record a service's new result; returns the name of the upstream it now has."""
        if isinstance(result, Rejection):
            return self._reject(result)
        if result is None:
            return self._empty(service)
        owner = self._name_owner.get(result.name)
        if owner is not None and owner != service and owner in self.upstreams:
            return self._reject(
                Rejection(
                    service,
                    "name_collision",
                    "upstream name",
                    f"upstream name {result.name!r} is already used by service {owner}",
                )
            )
        previous = self.upstreams.get(service)
        if previous is not None and previous.name != result.name:
            self._name_owner.pop(previous.name, None)
        if previous is not None and previous == result and not topology_changed(previous, result):
            # Keep the object the store holds: it compares republished upstreams by
            # identity first, and a deep comparison of every upstream on every event
            # was a sixth of the syncer's CPU in a rollout.
            result = previous
        self.upstreams[service] = result
        self._name_owner[result.name] = service
        self.rejected.pop(service, None)
        self.held_empty.discard(service)
        return result.name

    def drop(self, service: str) -> None:
        """The service is gone or no longer opts in: its upstream goes."""
        previous = self.upstreams.pop(service, None)
        if previous is not None and self._name_owner.get(previous.name) == service:
            del self._name_owner[previous.name]
        self.rejected.pop(service, None)
        self.held_empty.discard(service)

    def by_name(self) -> dict[str, Upstream]:
        return {u.name: u for u in self.upstreams.values()}

    def held_names(self) -> frozenset[str]:
        """Upstreams holding their last known servers (their service has no endpoint)."""
        return frozenset(self.upstreams[s].name for s in self.held_empty if s in self.upstreams)

    def _empty(self, service: str) -> str | None:
        previous = self.upstreams.get(service)
        if previous is None:
            return None  # nothing known yet: there is nothing to post
        if self.allow_empty:
            self.drop(service)
            return None
        if service not in self.held_empty:
            self.held_empty.add(service)
            self._metrics.source_errors.labels(self._source, "empty_service").inc()
            self.log.warning(
                "service_empty_kept",
                service=service,
                upstream=previous.name,
                hint="no usable endpoint; keeping the last known servers",
            )
        self._metrics.source_empty_held.labels(self._source).set(len(self.held_empty))
        return previous.name

    def _reject(self, rejection: Rejection) -> str | None:
        if self.rejected.get(rejection.service) != rejection:
            self.rejected[rejection.service] = rejection
            self._metrics.source_rejected.labels(self._source, rejection.reason).inc()
            self.log.error(
                "service_rejected",
                service=rejection.service,
                reason=rejection.reason,
                field=rejection.field,
                error=rejection.message,
                hint="the last good upstream of this service is kept",
            )
        previous = self.upstreams.get(rejection.service)
        return previous.name if previous is not None else None

    def status(self) -> dict[str, Any]:
        return {
            "services": len(self.upstreams),
            "rejected": {k: f"{r.field}: {r.message}" for k, r in self.rejected.items()},
            "empty_kept": sorted(self.held_empty),
        }
