"""Configuration: one YAML file plus `DYUPS_SYNCER_…` environment overrides.

Validated with pydantic; every error names the field and the reason. An
environment variable `DYUPS_SYNCER_A__B__0__C=value` sets `a.b[0].c`; the value
is read as YAML, so `0.5`, `true`, `10s` and `[...]` all work.
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from syncer.model import ModelError, TrafficPolicy, label_value, normalize_name
from syncer.traffic import policy_from_fields

ENV_PREFIX = "DYUPS_SYNCER_"
# Bounded runs of ASCII digits (`\d` also matches other scripts' digits).
_DURATION_RE = re.compile(r"([0-9]{1,12}(?:\.[0-9]{1,9})?)(ms|s|m|h)?")
_DURATION_UNIT = {"ms": 0.001, "s": 1.0, None: 1.0, "m": 60.0, "h": 3600.0}
_SIZE_RE = re.compile(r"([0-9]{1,15})([kKmMgG])?")
# A Kubernetes label value that is not empty (apimachinery's IsValidLabelValue).
_LABEL_VALUE_RE = re.compile(r"[A-Za-z0-9](?:[-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?")
# The longest wait Python can make (`Event.wait` raises OverflowError beyond it).
MAX_DURATION = threading.TIMEOUT_MAX
_SIZE_UNIT = {None: 1, "k": 1024, "m": 1024**2, "g": 1024**3}


class ConfigError(Exception):
    def __init__(self, errors: list[str]) -> None:
        super().__init__("\n".join(errors))
        self.errors = errors


def _duration(value: object) -> float:
    if isinstance(value, bool):
        raise ValueError("expected a duration like 100ms, 10s or 5m")
    if isinstance(value, int) and value.bit_length() >= 64:
        # `0x` and 4,000 digits is a YAML integer: too large for a float, and for repr().
        raise ValueError(f"a duration must be between 0 and {MAX_DURATION:.0f} s")
    if isinstance(value, int | float):
        seconds = float(value)  # `.inf` and `.nan` are YAML floats
    elif isinstance(value, str) and (m := _DURATION_RE.fullmatch(value.strip())):
        seconds = float(m.group(1)) * _DURATION_UNIT[m.group(2)]
    else:
        raise ValueError(f"expected a duration like 100ms, 10s or 5m, got {value!r}")
    if seconds < 0:
        raise ValueError("a duration cannot be negative")
    if not seconds <= MAX_DURATION:  # also refuses NaN
        raise ValueError(f"a duration must be at most {MAX_DURATION:.0f} s, got {value!r}")
    return seconds


def _size(value: object) -> int:
    if isinstance(value, bool):
        raise ValueError("expected a size like 2m or 512k")
    if isinstance(value, int):
        return value
    if isinstance(value, str) and (m := _SIZE_RE.fullmatch(value.strip())):
        unit = m.group(2).lower() if m.group(2) else None
        return int(m.group(1)) * _SIZE_UNIT[unit]
    raise ValueError(f"expected a size in bytes like 2m or 512k, got {value!r}")


Duration = Annotated[float, BeforeValidator(_duration)]
Size = Annotated[int, BeforeValidator(_size), Field(gt=0)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class BasicAuth(_Strict):
    username: str
    password: str = Field(repr=False)


class TLSConfig(_Strict):
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    insecure_skip_verify: bool = False


class FileSourceConfig(_Strict):
    type: Literal["file"]
    path: Path
    name: str | None = None
    poll_interval: Duration = 1.0
    allow_hostnames: bool = False

    @property
    def source_name(self) -> str:
        return self.name or f"file:{self.path}"


class KubernetesClientConfig(_Strict):
    """Where the Kubernetes API is: in-cluster by default, else kubeconfig; `api_url`
    for a plain URL (kubectl proxy, tests)."""

    kubeconfig: Path | None = None
    context: str | None = None
    api_url: str | None = None


class KubernetesSourceConfig(_Strict):
    type: Literal["kubernetes"]
    name: str | None = None
    namespaces: list[str] = []  # empty: every namespace
    label_selector: str = ""  # limits the Services watched
    annotation_prefix: str = "dyups-syncer.io"
    # `namespace/service:port` → upstream name ("" for `<namespace>-<service>`)
    static: dict[str, str] = {}
    terminating_fallback: bool = True
    allow_fqdn: bool = False
    client: KubernetesClientConfig = KubernetesClientConfig()
    watch_timeout: Duration = 300.0

    @field_validator("static")
    @classmethod
    def _static(cls, value: dict[str, str]) -> dict[str, str]:
        for source in value:
            if not re.fullmatch(r"[a-z0-9.-]+/[a-z0-9.-]+:[A-Za-z0-9_-]+", source):
                raise ValueError(f"{source!r} must be namespace/service:port")
        return value

    @property
    def source_name(self) -> str:
        return self.name or "kubernetes"


class ConsulSourceConfig(_Strict):
    type: Literal["consul"]
    name: str | None = None
    address: str = "127.0.0.1:8500"
    scheme: Literal["http", "https"] = "http"
    token: str | None = Field(default=None, repr=False)  # default: $CONSUL_HTTP_TOKEN
    datacenter: str | None = None
    namespace: str | None = None  # Consul Enterprise
    partition: str | None = None  # Consul Enterprise
    tag: str = "dyups"  # services with this tag opt in (or with meta dyups-upstream)
    meta_prefix: str = "dyups-"
    statuses: list[Literal["passing", "warning"]] = ["passing"]
    health_tag: str | None = None  # only instances with this tag
    use_consul_weights: bool = True  # Weights.Passing / Weights.Warning
    zone_meta: str | None = (
        "zone"  # Node.Meta key holding an instance's zone, for zone-aware upstreams (null: none)
    )
    consistency: Literal["default", "consistent", "stale"] = "default"
    wait: Duration = 300.0
    min_interval: Duration = 1.0  # rate limit for queries that return unchanged quickly
    connect_timeout: Duration = 5.0
    tls: TLSConfig | None = None

    @field_validator("wait")
    @classmethod
    def _wait(cls, value: float) -> float:
        if not 1 <= value <= 600:
            raise ValueError("must be between 1s and 10m (Consul caps blocking queries at 10m)")
        return value

    @field_validator("statuses")
    @classmethod
    def _statuses(cls, value: list[str]) -> list[str]:
        if "passing" not in value:
            raise ValueError("must include passing")
        return value

    @property
    def source_name(self) -> str:
        return self.name or "consul"


SourceConfig = Annotated[
    FileSourceConfig | KubernetesSourceConfig | ConsulSourceConfig, Field(discriminator="type")
]


class ProxySettings(_Strict):
    """How to talk to a proxy and what its module can take (everything but where it is)."""

    headers: dict[str, str] = {}
    basic_auth: BasicAuth | None = None
    tls: TLSConfig | None = None
    flavour: Literal["auto", "classic", "head"] = "auto"
    # An nginx include with the upstreams last applied to this proxy, so that a
    # restarted nginx serves them before the syncer re-posts (sidecar mode: on a
    # volume shared with nginx).
    dump_path: Path | None = None
    # The module's settings on this proxy: they bound how fast it may be written.
    shm_zone_size: Size = 2 * 1024 * 1024
    read_msg_timeout: Duration = 1.0
    write_budget: Size | None = None  # bytes/s; default derived from the two above
    nginx_workers: int = Field(default=2, ge=1, le=1024)
    kick: bool = True
    kick_gets: int | None = Field(default=None, ge=0, le=1024)
    connect_timeout: Duration = 2.0
    read_timeout: Duration = 5.0
    # The proxy's client_max_body_size: a larger body is refused here (nginx would
    # answer 413), logged and counted, never sent.
    max_body_size: Size = 1024 * 1024
    # The proxy's zone, for zone-aware upstreams (traffic policies). Discovery can
    # read it instead: `zone_label` of the pod's node, `zone_meta` of the Consul node.
    zone: str = ""

    @field_validator("zone")
    @classmethod
    def _zone(cls, value: str) -> str:
        if label_value(value) != value:
            raise ValueError("must be a label value ([A-Za-z0-9._-], at most 63 characters)")
        return value

    @field_validator("headers")
    @classmethod
    def _headers(cls, value: dict[str, str]) -> dict[str, str]:
        for key, val in value.items():
            if not re.fullmatch(r"[A-Za-z0-9-]+", key) or any(c in val for c in "\r\n"):
                raise ValueError(f"header {key!r} is not a valid HTTP header")
        return value


class ProxyConfig(ProxySettings):
    url: str
    name: str | None = None

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must be http(s)://host:port of a dyups_interface server")
        if parts.query or parts.fragment:
            raise ValueError("must not have a query or fragment")
        return value.rstrip("/")

    @property
    def label(self) -> str:
        if self.name:
            return self.name
        parts = urlsplit(self.url)
        return parts.netloc + parts.path


class ConsulClientConfig(_Strict):
    """Where a Consul agent is and how to reach it."""

    address: str = "127.0.0.1:8500"
    scheme: Literal["http", "https"] = "http"
    token: str | None = Field(default=None, repr=False)  # default: $CONSUL_HTTP_TOKEN
    datacenter: str | None = None
    tls: TLSConfig | None = None
    connect_timeout: Duration = 5.0


class ConsulProxiesConfig(ProxySettings):
    """Discover the proxy fleet: every passing instance of a Consul service is a proxy."""

    service: str = Field(min_length=1)
    tag: str | None = None
    # Instance meta holding the dyups_interface port; else the service's own port.
    port_meta: str | None = "dyups-port"
    scheme: Literal["http", "https"] = "http"
    client: ConsulClientConfig = ConsulClientConfig()
    wait: Duration = 300.0
    zone_meta: str | None = "zone"  # Node.Meta key holding the zone (null: none); a set `zone` wins

    @field_validator("zone_meta")
    @classmethod
    def _zone_meta(cls, value: str | None) -> str | None:
        # Consul refuses other node meta keys.
        if value is not None and not re.fullmatch(r"[A-Za-z0-9_-]{1,128}", value):
            raise ValueError("must be a Consul node meta key ([A-Za-z0-9_-], at most 128) or null")
        return value


class KubernetesProxiesConfig(ProxySettings):
    """Discover the proxy fleet: every ready Pod matching the selector is a proxy."""

    namespace: str
    label_selector: str = Field(min_length=1)
    port: int = Field(ge=1, le=65535)  # the dyups_interface port in the pod
    scheme: Literal["http", "https"] = "http"
    client: KubernetesClientConfig = KubernetesClientConfig()
    zone_label: str = "topology.kubernetes.io/zone"  # the label of the pod's Node holding the zone ("": none, Nodes are not watched); a set `zone` wins

    @field_validator("zone_label")
    @classmethod
    def _zone_label(cls, value: str) -> str:
        # An optional DNS-subdomain prefix and `/`, then a name (a label key).
        prefix = r"(?:[a-z0-9](?:[-a-z0-9.]{0,251}[a-z0-9])?/)?"
        if value and not re.fullmatch(
            prefix + r"[A-Za-z0-9](?:[-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?", value
        ):
            raise ValueError("must be a label key like topology.kubernetes.io/zone, or empty")
        return value


class ProxiesConfig(_Strict):
    static: list[ProxyConfig] = []
    kubernetes: KubernetesProxiesConfig | None = None
    consul: ConsulProxiesConfig | None = None

    @model_validator(mode="after")
    def _unique(self) -> ProxiesConfig:
        if not self.static and self.kubernetes is None and self.consul is None:
            raise ValueError(
                "give at least one proxy: `static` URLs, `kubernetes` or `consul` discovery"
            )
        labels = [p.label for p in self.static]
        dupes = sorted({x for x in labels if labels.count(x) > 1})
        if dupes:
            raise ValueError(f"two proxies share the name/url {dupes}")
        return self


class ConsulLockConfig(_Strict):
    """Consul's leader-election recipe: a session-held lock on a KV key."""

    key: str = "service/dyups-syncer/leader"
    lock_delay: Duration = 15.0  # Consul's default; the key cannot be re-taken for this long
    client: ConsulClientConfig = ConsulClientConfig()

    @field_validator("key")
    @classmethod
    def _key(cls, value: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9_./-]+", value) or value.startswith("/"):
            raise ValueError("must be a KV path like service/dyups-syncer/leader")
        return value


class LeaderElectionConfig(_Strict):
    """Only the leader writes to proxies: a coordination.k8s.io/v1 Lease (backend
    kubernetes) or a Consul session lock on a KV key (backend consul)."""

    enabled: bool = False
    backend: Literal["kubernetes", "consul"] = "kubernetes"
    consul: ConsulLockConfig = ConsulLockConfig()
    lease_name: str = "dyups-syncer"
    namespace: str = Field(default_factory=lambda: os.environ.get("POD_NAMESPACE", "default"))
    identity: str | None = None  # default: the pod's host name plus a random suffix
    lease_duration: Duration = 15.0
    renew_deadline: Duration = 10.0
    retry_period: Duration = 2.0
    shards: int = Field(default=1, ge=1, le=256)
    client: KubernetesClientConfig = KubernetesClientConfig()

    @model_validator(mode="after")
    def _timings(self) -> LeaderElectionConfig:
        if not self.retry_period < self.renew_deadline < self.lease_duration:
            raise ValueError("need retry_period < renew_deadline < lease_duration")
        return self

    @model_validator(mode="after")
    def _sharding(self) -> LeaderElectionConfig:
        if self.shards == 1:
            return self
        if self.backend == "consul":
            raise ValueError(
                "shards > 1 needs backend kubernetes (one Lease per shard); "
                "the consul backend holds a single lock: set shards: 1"
            )
        if not self.enabled:
            raise ValueError("shards > 1 needs enabled: true (the shards are Leases)")
        if not _LABEL_VALUE_RE.fullmatch(self.lease_name):
            # It becomes the value of the label that groups the shard and member Leases.
            raise ValueError(
                "with shards > 1, lease_name must also be a label value: at most 63 "
                "characters, alphanumeric, '-', '_' or '.'"
            )
        return self


class LogConfig(_Strict):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["auto", "json", "console"] = "auto"


class TrafficConfig(_Strict):
    """Default traffic policy of every upstream; a Service annotation, Consul meta or
    file source entry overrides it per upstream (see docs/traffic.md)."""

    zone_aware: bool = False
    min_local: int = Field(default=2, ge=1)
    min_local_fraction: float = Field(default=0.2, ge=0.0, le=1.0)
    local_weight_multiplier: int = Field(default=10, ge=1)
    slow_start: Duration = 0.0
    slow_start_steps: int = Field(default=3, ge=2, le=100)
    empty: Literal["keep", "fallback", "down"] = "keep"
    fallback: list[str] = []  # IP:port of a local maintenance backend
    drain_as_backup: bool = False
    drain_seconds: Duration = 30.0

    @model_validator(mode="after")
    def _policy(self) -> TrafficConfig:
        self.policy()  # raises ValueError with the field named
        return self

    def policy(self) -> TrafficPolicy:
        # `empty` and `fallback` through the annotation parser: it reads IP:port.
        fields: dict[str, str] = {"empty": self.empty}
        if self.fallback:
            fields["fallback"] = ",".join(self.fallback)
        try:
            base = TrafficPolicy(
                zone_aware=self.zone_aware,
                min_local=self.min_local,
                min_local_fraction=self.min_local_fraction,
                local_weight_multiplier=self.local_weight_multiplier,
                slow_start=self.slow_start,
                slow_start_steps=self.slow_start_steps,
                drain_as_backup=self.drain_as_backup,
                drain_seconds=self.drain_seconds,
            )
            return policy_from_fields(fields, base)
        except ModelError as e:
            raise ValueError(str(e)) from e


class Config(_Strict):
    sources: list[SourceConfig] = Field(min_length=1)
    proxies: ProxiesConfig
    snapshot_path: Path
    resync_interval: Duration = 10.0
    probe_interval: Duration = 1.0
    debounce: Duration = 0.1
    policy: Literal["sync", "upsert-only"] = "sync"
    max_delete_fraction: float = Field(default=0.5, ge=0.0, le=1.0)
    owned_prefix: str = ""
    adopt: list[str] = []
    allow_empty: bool = False
    verify_after_write: bool = True
    # A request (headers and body) this small arrives in at most two reads, and the
    # module only cuts bodies read in three or more: reading it back finds nothing.
    verify_min_bytes: int = Field(
        default=1024, ge=0, le=1024 * 1024
    )  # requests at or under this many bytes are not read back (0: read back every write)
    listen: str = "127.0.0.1:9105"
    # /state shows desired upstreams and proxy addresses; turn it off where the
    # metrics port is reachable by more than operators.
    state_endpoint: bool = True
    log: LogConfig = LogConfig()
    leader_election: LeaderElectionConfig = LeaderElectionConfig()
    traffic: TrafficConfig = TrafficConfig()

    @field_validator("resync_interval", "probe_interval")
    @classmethod
    def _positive(cls, value: float) -> float:
        if value <= 0:
            raise ValueError("must be greater than 0")
        return value

    @field_validator("adopt")
    @classmethod
    def _adopt(cls, value: list[str]) -> list[str]:
        try:
            return [normalize_name(v) for v in value]
        except ModelError as e:
            raise ValueError(str(e)) from e

    @field_validator("owned_prefix")
    @classmethod
    def _prefix(cls, value: str) -> str:
        if value and not re.fullmatch(r"[a-z0-9_.-]+", value.lower()):
            raise ValueError("must use [a-z0-9_.-]")
        return value.lower()

    @field_validator("listen")
    @classmethod
    def _listen(cls, value: str) -> str:
        _host, sep, port = value.rpartition(":")
        if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
            raise ValueError("must be host:port, e.g. 0.0.0.0:9105")
        return value

    @model_validator(mode="after")
    def _unique_sources(self) -> Config:
        names = [s.source_name for s in self.sources]
        dupes = sorted({x for x in names if names.count(x) > 1})
        if dupes:
            raise ValueError(f"two sources share the name {dupes}; give each a distinct 'name'")
        return self

    @property
    def listen_address(self) -> tuple[str, int]:
        host, _, port = self.listen.rpartition(":")
        return host.strip("[]") or "0.0.0.0", int(port)


def _set_path(data: dict[str, Any], path: list[str], value: Any, *, origin: str) -> None:
    """Set `value` at `path` (keys; list indexes as digits). A path that does not fit
    the document's shape is a ConfigError naming the environment variable."""
    node: Any = data
    for i, key in enumerate(path):
        last = i == len(path) - 1
        if isinstance(node, list):
            # An index may extend a list by one entry at most: no unbounded growth.
            if not key.isdigit() or int(key) > len(node):
                raise ConfigError([f"{origin}: {key!r} is not an index of a {len(node)}-item list"])
            index = int(key)
            if index == len(node):
                node.append({})
            if last:
                node[index] = value
            else:
                node = node[index]
            continue
        if not isinstance(node, dict):
            raise ConfigError([f"{origin}: {'.'.join(path[:i])} is not a mapping"])
        if last:
            node[key] = value
        else:
            nxt = path[i + 1]
            node = node.setdefault(key, [] if nxt.isdigit() else {})


def _yaml(text: str) -> Any:
    """PyYAML raises more than YAMLError on odd scalars (a bad `!!timestamp` gives
    ValueError or AttributeError, a bad `!!bool` KeyError): all are "not YAML"."""
    try:
        return yaml.safe_load(text)
    except Exception as e:
        raise ValueError(f"not valid YAML: {e}") from e


def apply_env(data: dict[str, Any], env: Mapping[str, str], origin: str = "") -> dict[str, Any]:
    for key in sorted(env):
        if not key.startswith(ENV_PREFIX):
            continue
        path = key[len(ENV_PREFIX) :].lower().split("__")
        raw = env[key]
        # Scalars stay strings (pydantic reads "0.5", "true" or "10s" for typed
        # fields, and a password "yes" stays "yes"); lists and mappings are YAML.
        value: Any = raw
        if raw.lstrip().startswith(("[", "{")):
            try:
                value = _yaml(raw)
            except ValueError:
                value = raw  # pydantic then says what the field wanted
        _set_path(data, path, value, origin=f"{origin}: {key}" if origin else key)
    return data


def format_errors(error: ValidationError, origin: str) -> list[str]:
    out = []
    for item in error.errors():
        loc = ".".join(str(p) for p in item["loc"]) or "(top level)"
        msg = item["msg"].removeprefix("Value error, ")
        out.append(f"{origin}: {loc}: {msg}")
    return out


def load(path: Path, env: Mapping[str, str] | None = None) -> Config:
    env = os.environ if env is None else env
    origin = str(path)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise ConfigError([f"{origin}: cannot read: {e.strerror or e}"]) from e
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        raise ConfigError(
            [
                f"{origin}: not UTF-8: byte 0x{raw[e.start]:02x} at offset {e.start}"
                f" (line {line}): {e.reason}"
            ]
        ) from e
    try:
        data = _yaml(text)
    except ValueError as e:
        raise ConfigError([f"{origin}: {e}"]) from e
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError([f"{origin}: the configuration must be a mapping"])
    data = apply_env(data, env, origin)
    base = path.parent
    try:
        config = Config.model_validate(data)
    except ValidationError as e:
        raise ConfigError(format_errors(e, origin)) from e
    return _resolve_paths(config, base)


def _resolve_paths(config: Config, base: Path) -> Config:
    """Relative paths in the file are relative to the file, not to the working directory."""

    def rel(p: Path) -> Path:
        return p if p.is_absolute() else base / p

    sources: list[FileSourceConfig | KubernetesSourceConfig | ConsulSourceConfig] = []
    for source in config.sources:
        if isinstance(source, FileSourceConfig):
            source = source.model_copy(update={"path": rel(source.path)})
        elif isinstance(source, KubernetesSourceConfig) and source.client.kubeconfig is not None:
            client = source.client.model_copy(update={"kubeconfig": rel(source.client.kubeconfig)})
            source = source.model_copy(update={"client": client})
        sources.append(source)
    return config.model_copy(
        update={"sources": sources, "snapshot_path": rel(config.snapshot_path)}
    )


def with_kube_client(config: Config, *, kubeconfig: Path | None, context: str | None) -> Config:
    """`--kubeconfig` / `--context` on the command line: every Kubernetes part (sources,
    proxy discovery, leader election) uses them."""
    if kubeconfig is None and context is None:
        return config
    update: dict[str, Any] = {}
    if kubeconfig is not None:
        update["kubeconfig"] = kubeconfig
    if context is not None:
        update["context"] = context

    def client(c: KubernetesClientConfig) -> KubernetesClientConfig:
        return c.model_copy(update=update)

    sources = [
        s.model_copy(update={"client": client(s.client)})
        if isinstance(s, KubernetesSourceConfig)
        else s
        for s in config.sources
    ]
    proxies = config.proxies
    if proxies.kubernetes is not None:
        discovery = proxies.kubernetes.model_copy(
            update={"client": client(proxies.kubernetes.client)}
        )
        proxies = proxies.model_copy(update={"kubernetes": discovery})
    le = config.leader_election.model_copy(update={"client": client(config.leader_election.client)})
    return config.model_copy(update={"sources": sources, "proxies": proxies, "leader_election": le})
