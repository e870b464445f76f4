"""Leader election on a coordination.k8s.io/v1 Lease, as client-go's leaderelection does.

Only the holder writes to proxies. A follower watches the lease's record change
and takes over once it has seen no renewal for `lease_duration` on its OWN clock
(never comparing the record's timestamps with local time, so clock skew between
nodes cannot elect two leaders). A leader that cannot renew within
`renew_deadline` stops leading at once; on shutdown it releases the lease so a
follower takes over without waiting.

`LeaseContest` holds these rules for one Lease; `LeaderElector` contests one, and the
sharded election (`syncer.shard_election`) one per shard.
"""

from __future__ import annotations

import binascii
import time
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException
from urllib3.exceptions import HTTPError

from syncer.config import LeaderElectionConfig
from syncer.leadership import Elector, decode_payload, encode_payload
from syncer.metrics import Metrics

OWNERSHIP_ANNOTATION = "dyups-syncer.io/ownership"
# What a Lease request can fail with, short of a bug.
LEASE_ERRORS = (ApiException, HTTPError, OSError)


@dataclass(frozen=True, slots=True)
class Seen:
    """A Lease's record as last read: its holder ("" once released) and whether it
    has gone unrenewed for its duration, as measured on our own clock."""

    holder: str
    expired: bool

    @property
    def live_holder(self) -> str:
        return "" if self.expired else self.holder


class LeaseContest:
    """One Lease, contested by the rules of the module docstring. No thread of its
    own: the caller reads the Lease (or lists it with others) and calls `contend`
    to create, renew or take it over, or `observe` to follow it."""

    def __init__(
        self,
        *,
        api: k8s.CoordinationV1Api,
        name: str,
        namespace: str,
        identity: str,
        lease_duration: float,
        log: Any,
        clock: Callable[[], float] = time.monotonic,
        payload: Callable[[], str] | None = None,
        on_payload: Callable[[dict[str, Any]], None] = lambda _: None,
        labels: Mapping[str, str] | None = None,
        request_timeout: float | None = None,
    ) -> None:
        self.name, self.namespace, self.identity = name, namespace, identity
        self._api = api
        self._duration = lease_duration
        self.log = log
        self._clock = clock
        self._payload = payload  # the encoded annotation to write; None: no annotation
        self._on_payload = on_payload
        self._labels = dict(labels) if labels else None
        self._timeout: dict[str, Any] = (
            {} if request_timeout is None else {"_request_timeout": request_timeout}
        )
        # What we last saw of the record, and when (on our clock).
        self._observed: tuple[str, str, str] | None = None  # holder, renewTime, resourceVersion
        self._observed_at = 0.0
        self._raw_payload: str | None = None  # decoded again only when it changes
        self.seen = Seen("", expired=True)
        self.transitions = 0

    def read(self) -> k8s.V1Lease | None:
        try:
            return self._api.read_namespaced_lease(self.name, self.namespace, **self._timeout)
        except ApiException as e:
            if e.status == 404:
                return None
            raise

    def observe(self, current: k8s.V1Lease) -> Seen:
        """Note the record's state on our clock, and read the holder's payload."""
        spec = current.spec or k8s.V1LeaseSpec()
        meta = current.metadata or k8s.V1ObjectMeta()
        holder = spec.holder_identity or ""
        record = (holder, str(spec.renew_time), str(meta.resource_version))
        if holder != self.identity:
            self._read_payload(meta)
        now = self._clock()
        if record != self._observed:
            self._observed, self._observed_at = record, now
        duration = spec.lease_duration_seconds or self._duration
        self.seen = Seen(holder, expired=now - self._observed_at > duration)
        return self.seen

    def contend(self, current: k8s.V1Lease | None) -> bool:
        """Create the Lease (`current` None: absent), renew it, or take it over if it is
        free or expired. True if we hold it now; API errors other than a lost race
        (409) are raised."""
        if current is None:
            return self._create()
        seen = self.observe(current)
        if seen.holder and seen.holder != self.identity and not seen.expired:
            return False
        spec = current.spec or k8s.V1LeaseSpec()
        meta = current.metadata or k8s.V1ObjectMeta()
        ours = seen.holder == self.identity
        lease = self._lease(
            self.identity,
            acquired=spec.acquire_time if ours else None,
            transitions=(spec.lease_transitions or 0) + (0 if ours else 1),
            version=meta.resource_version,
        )
        try:
            self._api.replace_namespaced_lease(self.name, self.namespace, lease, **self._timeout)
        except ApiException as e:
            if e.status == 409:  # the record changed under us: look again next round
                return False
            raise
        if not ours:
            self.transitions += 1
        return True

    def release(self) -> None:
        """Hand the Lease over at once: an empty holder is free for the next candidate."""
        try:
            current = self.read()
            spec = current.spec if current is not None else None
            meta = current.metadata if current is not None else None
            if spec is None or meta is None or spec.holder_identity != self.identity:
                return
            lease = self._lease(
                "",
                acquired=None,
                transitions=spec.lease_transitions or 0,
                version=meta.resource_version,
            )
            assert lease.spec is not None
            lease.spec.lease_duration_seconds = 1
            self._api.replace_namespaced_lease(self.name, self.namespace, lease, **self._timeout)
            self.log.info("lease_released")
        except LEASE_ERRORS as e:
            self.log.warning("lease_release_failed", error=str(e))

    def delete(self, resource_version: str | None) -> None:
        """Delete the Lease if it is still at `resource_version` (so that a holder that
        renewed it meanwhile keeps it); gone already, or renewed: nothing to do."""
        options = k8s.V1DeleteOptions(
            preconditions=k8s.V1Preconditions(resource_version=resource_version)
        )
        try:
            self._api.delete_namespaced_lease(
                self.name, self.namespace, body=options, **self._timeout
            )
        except ApiException as e:
            if e.status not in (404, 409):
                raise

    def _create(self) -> bool:
        lease = self._lease(self.identity, acquired=None, transitions=0, version=None)
        try:
            self._api.create_namespaced_lease(self.namespace, lease, **self._timeout)
        except ApiException as e:
            if e.status == 409:  # someone created it first
                return False
            raise
        return True

    def _lease(
        self, holder: str, *, acquired: datetime | None, transitions: int, version: str | None
    ) -> k8s.V1Lease:
        now = datetime.now(UTC)
        # Also on release: the next holder must still learn what we own.
        annotations = None if self._payload is None else {OWNERSHIP_ANNOTATION: self._payload()}
        return k8s.V1Lease(
            metadata=k8s.V1ObjectMeta(
                name=self.name,
                namespace=self.namespace,
                resource_version=version,
                annotations=annotations,
                labels=self._labels,
            ),
            spec=k8s.V1LeaseSpec(
                holder_identity=holder,
                lease_duration_seconds=max(1, round(self._duration)),
                acquire_time=acquired or now,
                renew_time=now,
                lease_transitions=transitions,
            ),
        )

    def _read_payload(self, meta: k8s.V1ObjectMeta) -> None:
        raw = (meta.annotations or {}).get(OWNERSHIP_ANNOTATION)
        if not raw or raw == self._raw_payload:
            return
        self._raw_payload = raw
        try:
            self._on_payload(decode_payload(raw))
        except (ValueError, zlib.error, binascii.Error) as e:
            self.log.warning("lease_ownership_unreadable", error=str(e))


class LeaderElector(Elector):
    def __init__(
        self,
        *,
        config: LeaderElectionConfig,
        api: k8s.ApiClient,
        metrics: Metrics,
        log: Any,
        clock: Callable[[], float] = time.monotonic,
        payload: Callable[[], dict[str, Any]] = dict,
        on_payload: Callable[[dict[str, Any]], None] = lambda _: None,
    ) -> None:
        super().__init__(
            config=config,
            metrics=metrics,
            log=log,
            clock=clock,
            payload=payload,
            on_payload=on_payload,
        )
        self.log = log.bind(lease=f"{config.namespace}/{config.lease_name}", identity=self.identity)
        self._contest = LeaseContest(
            api=k8s.CoordinationV1Api(api),
            name=config.lease_name,
            namespace=config.namespace,
            identity=self.identity,
            lease_duration=config.lease_duration,
            log=self.log,
            clock=clock,
            payload=lambda: encode_payload(self._payload()),
            on_payload=self._on_payload,
            # As client-go: a renewal that hangs must not outlive the renew deadline.
            request_timeout=config.renew_deadline,
        )

    @property
    def transitions(self) -> int:
        return self._contest.transitions

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                if self._contest.contend(self._contest.read()):
                    self._renewed()
                else:
                    self._lose("lease taken by another holder")
            except LEASE_ERRORS as e:
                self.log.warning("lease_request_failed", error=str(e))
            self._check_deadline()
            self._stop.wait(self.cfg.retry_period)

    def _release(self) -> None:
        if self._tenure.active:
            self._contest.release()
