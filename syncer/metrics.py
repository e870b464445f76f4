"""Prometheus metrics, all prefixed `dyups_syncer_`, on a registry of their own
(so tests and the demo can run several daemons in one process)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LAG_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)
REQUEST_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        p = "dyups_syncer_"
        self.sync_lag = Histogram(
            p + "sync_lag_seconds",
            "From the change at the source to the proxy accepting it.",
            ["proxy"],
            buckets=LAG_BUCKETS,
            registry=r,
        )
        self.conflicts = Counter(
            p + "conflicts_total",
            "Writes refused because the module's lock was busy (409, or a DELETE closed without answer).",
            ["proxy"],
            registry=r,
        )
        self.requests = Counter(
            p + "requests_total",
            "Requests to dyups interfaces by outcome.",
            ["proxy", "method", "outcome"],
            registry=r,
        )
        self.request_duration = Histogram(
            p + "request_duration_seconds",
            "Duration of requests to dyups interfaces.",
            ["proxy", "method"],
            buckets=REQUEST_BUCKETS,
            registry=r,
        )
        self.drift_repairs = Counter(
            p + "drift_repairs_total",
            "Upstreams re-posted because the proxy no longer held what it should.",
            ["proxy", "reason"],
            registry=r,
        )
        self.verify_failures = Counter(
            p + "verify_failures_total",
            "Writes answered 200 whose read-back differed (truncated body).",
            ["proxy"],
            registry=r,
        )
        self.degraded = Counter(
            p + "proxy_degraded_total",
            "'alert: ... not sync to other process' answers: the module's queue was full.",
            ["proxy"],
            registry=r,
        )
        self.superseded = Counter(
            p + "changes_superseded_total",
            "Planned writes skipped because the upstream changed again before they were sent.",
            ["proxy"],
            registry=r,
        )
        self.rejected = Counter(
            p + "rejected_bodies_total",
            "Bodies the module refused ('add server failed'); not resent until desired state changes.",
            ["proxy"],
            registry=r,
        )
        self.proxy_up = Gauge(
            p + "proxy_up",
            "1 when the proxy's interface answered the last read.",
            ["proxy"],
            registry=r,
        )
        self.last_sync = Gauge(
            p + "last_sync_timestamp_seconds",
            "When the proxy was last seen holding the desired state.",
            ["proxy"],
            registry=r,
        )
        self.ownership_conflicts = Gauge(
            p + "ownership_conflicts",
            "Desired upstreams present on the proxy but not owned by the syncer (not written).",
            ["proxy"],
            registry=r,
        )
        self.upstreams_desired = Gauge(
            p + "upstreams_desired", "Upstreams in the desired state.", registry=r
        )
        self.servers_desired = Gauge(
            p + "servers_desired", "Servers in the desired state.", registry=r
        )
        self.plan_refused_total = Counter(
            p + "plan_refused_total",
            "Plans whose deletes the mass-delete breaker refused.",
            ["proxy"],
            registry=r,
        )
        self.plan_refused = Gauge(
            p + "breaker_open",
            "1 while the mass-delete breaker holds back deletes for this proxy.",
            ["proxy"],
            registry=r,
        )
        self.source_up = Gauge(
            p + "source_up", "1 when the source's last read succeeded.", ["source"], registry=r
        )
        self.source_errors = Counter(
            p + "source_errors_total",
            "Source read or validation errors.",
            ["source", "reason"],
            registry=r,
        )
        self.source_rejected = Counter(
            p + "source_rejected_total",
            "Source objects rejected for invalid data (the last good upstream is kept).",
            ["source", "reason"],
            registry=r,
        )
        self.source_empty_held = Gauge(
            p + "source_empty_held",
            "1 while a source's empty answer is ignored and its last known upstreams are kept.",
            ["source"],
            registry=r,
        )
        self.per_proxy: list[Counter | Gauge | Histogram] = [
            self.sync_lag,
            self.conflicts,
            self.requests,
            self.request_duration,
            self.drift_repairs,
            self.verify_failures,
            self.degraded,
            self.superseded,
            self.rejected,
            self.proxy_up,
            self.last_sync,
            self.ownership_conflicts,
            self.plan_refused_total,
            self.plan_refused,
        ]
        self.leader = Gauge(
            p + "leader",
            "1 while this replica holds the lease (with shards: at least one) and writes to proxies.",
            registry=r,
        )
        self.shards = Gauge(
            p + "shards", "Shards the proxies are split into (1 without sharding).", registry=r
        )
        self.shards_held = Gauge(
            p + "shards_held", "Shards this replica holds, whose proxies it writes.", registry=r
        )
        self.shard_members = Gauge(
            p + "shard_members",
            "Live syncer replicas this replica sees sharing the shards (sharding only).",
            registry=r,
        )
        self.shards_unheld = Gauge(
            p + "shards_unheld",
            "Shards this replica sees without a live holder: nobody writes their proxies (sharding only).",
            registry=r,
        )
        self.shard_changes = Counter(
            p + "shard_changes",
            "Shards this replica acquired, released (balance, shutdown) or lost (renewal failed).",
            ["change"],
            registry=r,
        )
        self.shards_blocked = Gauge(
            p + "shards_blocked",
            "1 while this replica holds shards but does not write, because another "
            "configuration is live (a single-Lease leader, or replicas with another shard count).",
            registry=r,
        )
        self.snapshot_errors = Counter(
            p + "snapshot_errors_total", "Snapshot reads or writes that failed.", ["op"], registry=r
        )

    def forget_proxy(self, proxy: str) -> None:
        """Drop every series of a proxy that left the fleet."""
        for collector in self.per_proxy:
            names: list[str] = []
            stale: set[tuple[str, ...]] = set()
            for metric in collector.collect():
                for sample in metric.samples:
                    if sample.labels.get("proxy") != proxy:
                        continue
                    # Histogram buckets add `le`; the series is keyed by the rest.
                    names = [n for n in sample.labels if n != "le"]
                    stale.add(tuple(sample.labels[n] for n in names))
            for values in stale:
                collector.remove(*values)
