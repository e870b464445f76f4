"""Proxy discovery through Consul: every passing instance of the proxy fleet's service
becomes a proxy worker (a new instance gets a full reconcile at once, like a new pod)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from typing import Any

from syncer.config import ConsulProxiesConfig, ProxyConfig
from syncer.model import label_value
from syncer.sources.consul import BlockingQuery, cb_json, client_from
from syncer.sources.consul_translate import entry_status

FLEET_GROUP = "consul"


def node_zone(node: Any, key: str | None) -> str:
    """The zone a health entry's `Node.Meta[key]` gives, or "" (absent, or not a label
    value: the instance is still a proxy, without a zone)."""
    meta = node.get("Meta") if isinstance(node, Mapping) else None
    value = meta.get(key) if isinstance(meta, Mapping) and key else None
    return label_value(value) if isinstance(value, str) else ""


def targets_from_entries(entries: list[Any], cfg: ConsulProxiesConfig) -> dict[str, ProxyConfig]:
    """The passing instances as proxies; a proxy's zone is `zone` if set, else its
    node's `zone_meta` meta value."""
    settings = cfg.model_dump(
        exclude={"service", "tag", "port_meta", "scheme", "client", "wait", "zone_meta"}
    )
    out: dict[str, ProxyConfig] = {}
    for entry in entries:
        if entry_status(entry) != "passing":
            continue
        svc, node = entry.get("Service") or {}, entry.get("Node") or {}
        address = str(svc.get("Address") or node.get("Address") or "")
        meta = svc.get("Meta") or {}
        port = meta.get(cfg.port_meta) if cfg.port_meta else None
        port = port if port is not None else svc.get("Port")
        if not address or not str(port).isdigit():
            continue
        host = f"[{address}]" if ":" in address else address
        label = str(svc.get("ID") or f"{node.get('Node')}-{port}")
        zone = cfg.zone or node_zone(node, cfg.zone_meta)
        out[label] = ProxyConfig(
            url=f"{cfg.scheme}://{host}:{port}", name=label, **{**settings, "zone": zone}
        )
    return out


class ConsulProxyDiscovery:
    def __init__(
        self,
        *,
        cfg: ConsulProxiesConfig,
        update: Callable[[str, dict[str, ProxyConfig]], None],
        log: Any,
    ) -> None:
        self.cfg = cfg
        self._update = update
        self._client = client_from(cfg.client)
        self.log = log.bind(discovery="consul", service=cfg.service)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last: dict[str, ProxyConfig] | None = None
        self.query = BlockingQuery(
            fetch=self._fetch,
            on_change=self._changed,
            wait=cfg.wait,
            min_interval=1.0,
            backoff_max=30.0,
            log=self.log,
        )

    def _fetch(self, index: int, wait: str) -> tuple[int, Any]:
        params = [("passing", "1")]
        if self.cfg.tag:
            params.append(("tag", self.cfg.tag))
        if index:
            params += [("index", str(index)), ("wait", wait)]
        result: tuple[Any, Any] = self._client.http.get(
            cb_json(index=True), f"/v1/health/service/{self.cfg.service}", params=params
        )
        return int(result[0] or 0), result[1]

    def _changed(self, entries: Any, _: int) -> None:
        if not isinstance(entries, list):
            raise ValueError("health answer is not a list")
        targets = targets_from_entries(entries, self.cfg)
        if targets != self._last:
            self._last = targets
            self._update(FLEET_GROUP, targets)

    def start(self) -> None:
        self._thread = threading.Thread(
            target=self.query.run, args=(self._stop,), name="consul-proxies", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    @property
    def synced(self) -> bool:
        return self.query.synced.is_set()
