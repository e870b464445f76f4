"""Leader election on a coordination.k8s.io/v1 Lease, as client-go's leaderelection does.

Only the holder writes to proxies. A follower watches the lease's record change
and takes over once it has seen no renewal for `lease_duration` on its OWN clock
(never comparing the record's timestamps with local time, so clock skew between
nodes cannot elect two leaders). A leader that cannot renew within
`renew_deadline` stops leading at once; on shutdown it releases the lease so a
follower takes over without waiting.
"""

from __future__ import annotations

import binascii
import time
import zlib
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException
from urllib3.exceptions import HTTPError

from syncer.config import LeaderElectionConfig
from syncer.leadership import Elector, decode_payload, encode_payload
from syncer.metrics import Metrics

OWNERSHIP_ANNOTATION = "dyups-syncer.io/ownership"


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
        self._api = k8s.CoordinationV1Api(api)
        self.log = log.bind(lease=f"{config.namespace}/{config.lease_name}", identity=self.identity)
        # What we last saw of the record, and when (on our clock).
        self._observed: tuple[str, str, str] | None = None  # holder, renewTime, resourceVersion
        self._observed_at = 0.0
        self.transitions = 0

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                if self._try_acquire_or_renew():
                    self._renewed()
                else:
                    self._lose("lease taken by another holder")
            except (ApiException, HTTPError, OSError) as e:
                self.log.warning("lease_request_failed", error=str(e))
            self._check_deadline()
            self._stop.wait(self.cfg.retry_period)

    def _now(self) -> datetime:
        return datetime.now(UTC)

    def _lease(
        self, holder: str, *, acquired: datetime | None, transitions: int, version: str | None
    ) -> k8s.V1Lease:
        now = self._now()
        # Also on release: the next leader must still learn what we own.
        annotations = {OWNERSHIP_ANNOTATION: encode_payload(self._payload())}
        return k8s.V1Lease(
            metadata=k8s.V1ObjectMeta(
                name=self.cfg.lease_name,
                namespace=self.cfg.namespace,
                resource_version=version,
                annotations=annotations,
            ),
            spec=k8s.V1LeaseSpec(
                holder_identity=holder,
                lease_duration_seconds=max(1, round(self.cfg.lease_duration)),
                acquire_time=acquired or now,
                renew_time=now,
                lease_transitions=transitions,
            ),
        )

    def _try_acquire_or_renew(self) -> bool:
        name, ns = self.cfg.lease_name, self.cfg.namespace
        try:
            current = self._api.read_namespaced_lease(name, ns)
        except ApiException as e:
            if e.status != 404:
                raise
            try:
                self._api.create_namespaced_lease(
                    ns, self._lease(self.identity, acquired=None, transitions=0, version=None)
                )
            except ApiException as create_error:
                if create_error.status == 409:  # someone created it first
                    return False
                raise
            return True
        spec = current.spec or k8s.V1LeaseSpec()
        meta = current.metadata or k8s.V1ObjectMeta()
        holder = spec.holder_identity or ""
        record = (holder, str(spec.renew_time), str(meta.resource_version))
        if holder != self.identity:
            self._read_payload(meta)
        now = self._clock()
        if record != self._observed:
            self._observed, self._observed_at = record, now
        duration = spec.lease_duration_seconds or self.cfg.lease_duration
        expired = now - self._observed_at > duration
        if holder and holder != self.identity and not expired:
            return False
        transitions = (spec.lease_transitions or 0) + (0 if holder == self.identity else 1)
        acquired = spec.acquire_time if holder == self.identity else None
        try:
            self._api.replace_namespaced_lease(
                name,
                ns,
                self._lease(
                    self.identity,
                    acquired=acquired,
                    transitions=transitions,
                    version=meta.resource_version,
                ),
            )
        except ApiException as e:
            if e.status == 409:  # the record changed under us: look again next round
                return False
            raise
        if holder != self.identity:
            self.transitions += 1
        return True

    def _read_payload(self, meta: k8s.V1ObjectMeta) -> None:
        raw = (meta.annotations or {}).get(OWNERSHIP_ANNOTATION)
        if not raw:
            return
        try:
            self._on_payload(decode_payload(raw))
        except (ValueError, zlib.error, binascii.Error) as e:
            self.log.warning("lease_ownership_unreadable", error=str(e))

    def _release(self) -> None:
        """Hand the lease over at once: an empty holder is free for the next candidate."""
        if not self._leading.is_set():
            return
        try:
            current = self._api.read_namespaced_lease(self.cfg.lease_name, self.cfg.namespace)
            spec, meta = current.spec, current.metadata
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
            self._api.replace_namespaced_lease(self.cfg.lease_name, self.cfg.namespace, lease)
            self.log.info("lease_released")
        except (ApiException, HTTPError, OSError) as e:
            self.log.warning("lease_release_failed", error=str(e))
