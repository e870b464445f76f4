"""File source: a YAML file of upstreams, re-read when it changes.

    upstreams:
      web:
        servers:
          - 10.0.0.7:8080
          - {address: "[fd00::9]:8080", weight: 3, max_fails: 2, fail_timeout: 5s, backup: true}
          - {address: 10.0.1.7:8080, zone: eu-west-1b}
        directives: [least_conn, keepalive 16]
        traffic: {zone-aware: true, slow-start: 30s}

`traffic` sets the upstream's traffic policy over the configured default, with the
keys of docs/traffic.md (`zone-aware` or `zone_aware`); a server's `zone` is what
zone-aware proxies compare with their own.

A file that cannot be read, parsed or validated keeps the last good state; the
error names the file, the line and the field.
"""

from __future__ import annotations

import hashlib
import os
import re
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from syncer.metrics import Metrics
from syncer.model import (
    DEFAULT_TRAFFIC,
    Directive,
    ModelError,
    ParseError,
    Server,
    TrafficPolicy,
    Upstream,
    normalize_name,
    parse_address,
)
from syncer.sources.base import Source
from syncer.state import Store
from syncer.traffic import POLICY_KEYS, PolicyFieldError, policy_from_fields

SERVER_KEYS = {
    "address",
    "host",
    "port",
    "weight",
    "max_fails",
    "fail_timeout",
    "backup",
    "down",
    "max_conns",
    "zone",
}
UPSTREAM_KEYS = ("servers", "directives", "traffic")
# A bounded run of ASCII digits: `\d` also matches other scripts' digits, and int()
# refuses strings of more than 4,300 digits with ValueError.
_SECONDS_RE = re.compile(r"([0-9]{1,9})(s|m|h)?")
_UNIT = {None: 1, "s": 1, "m": 60, "h": 3600}


# libyaml's loader when PyYAML was built with it: about 6x faster on large files.
_BASE_LOADER: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
# Every number in the file fits in 64 bits: `0x` followed by 4,000 digits is a valid
# YAML integer, and formatting it in an error message raises ValueError (int() and
# str() refuse more than 4,300 decimal digits).
INT_BITS = 64


class _Loader(_BASE_LOADER):  # type: ignore[valid-type,misc]
    pass


class _OutOfRange(yaml.constructor.ConstructorError):
    def __init__(self, node: yaml.ScalarNode) -> None:
        text = node.value if len(node.value) <= 30 else node.value[:27] + "..."
        super().__init__(None, None, f"the integer {text} is out of range", node.start_mark)
        self.node = node


def _bounded_int(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> int:
    value = loader.construct_yaml_int(node)
    if value.bit_length() > INT_BITS:
        raise _OutOfRange(node)
    return value


_Loader.add_constructor("tag:yaml.org,2002:int", _bounded_int)
_LOADER: type[yaml.SafeLoader] = _Loader


class SourceDataError(ValueError):
    """Bad content; the message is `file:line: field: reason`."""


def whole_seconds(value: object) -> int:
    """`10`, `"10"`, `"10s"`, `"1m"` → seconds. nginx reports fail_timeout in whole seconds."""
    if isinstance(value, bool):
        raise ModelError(f"expected a duration, got {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, str) and (m := _SECONDS_RE.fullmatch(value.strip())):
        return int(m.group(1)) * _UNIT[m.group(2)]
    raise ModelError(f"expected whole seconds like 10 or 10s or 1m, got {value!r}")


def _line_of(node: yaml.Node | None, path: tuple[str | int, ...]) -> int | None:
    """1-based line of the YAML node at `path` (or of its nearest existing parent)."""
    line = None if node is None else node.start_mark.line + 1
    for key in path:
        child, at = None, None
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                if k.value == key:
                    child, at = v, k  # a mapping entry is reported at its key
                    break
        elif isinstance(node, yaml.SequenceNode) and isinstance(key, int) and key < len(node.value):
            child = at = node.value[key]
        if child is None or at is None:
            break
        node, line = child, at.start_mark.line + 1
    return line


def _keys_of(text: str, parent: str) -> list[yaml.Node]:
    """The key nodes of the top-level mapping `parent` (none if the shape differs)."""
    root = yaml.compose(text, Loader=_LOADER)
    if not isinstance(root, yaml.MappingNode):
        return []
    for k, v in root.value:
        if k.value == parent and isinstance(v, yaml.MappingNode):
            return [node for node, _ in v.value]
    return []


def _written_key(text: str, parent: str, key: object) -> str | None:
    """How the key `key` of the mapping `parent` is written in the file, for a key
    YAML read as something other than a string (`no` → False, `010` → 8)."""
    constructor = yaml.SafeLoader("")
    for node in _keys_of(text, parent):
        if not isinstance(node, yaml.ScalarNode) or node.tag == "tag:yaml.org,2002:str":
            continue
        try:
            value = constructor.construct_object(node)
        except (yaml.YAMLError, ValueError):
            continue
        if type(value) is type(key) and (value == key or repr(value) == repr(key)):
            return str(node.value)
    return None


def _retyped_name(origin: str, line: int, written: str, read_as: str) -> SourceDataError:
    # YAML 1.1 reads `no:` as False, `010:` as 8, `1.5:` as a float and `null:` or
    # `~:` as None: refuse rather than guess what the operator meant.
    return SourceDataError(
        f"{origin}:{line}: upstreams.{written}: the upstream name {written!r} is read by YAML"
        f' as {read_as}, not a string: quote it ("{written}": ...)'
    )


def _server(raw: object, *, allow_hostnames: bool) -> Server:
    if isinstance(raw, str):
        raw = {"address": raw}
    if not isinstance(raw, dict):
        raise ModelError("a server is 'host:port' or a mapping with 'address'")
    unknown = set(raw) - SERVER_KEYS
    if unknown:
        raise ModelError(
            f"unknown key(s) {sorted(unknown, key=str)}; allowed: {sorted(SERVER_KEYS)}"
        )
    kwargs = dict(raw)
    if "address" in kwargs:
        if "host" in kwargs or "port" in kwargs:
            raise ModelError("give either 'address' or 'host' and 'port'")
        address = kwargs.pop("address")
        if not isinstance(address, str):
            raise ModelError(f"address must be 'host:port', got {address!r}")
        try:
            kwargs["host"], kwargs["port"] = parse_address(address.strip())
        except ParseError as e:
            raise ModelError(f"address {address!r} must be IP:port or [IPv6]:port") from e
    if "fail_timeout" in kwargs:
        kwargs["fail_timeout"] = whole_seconds(kwargs["fail_timeout"])
    if "zone" in kwargs and not isinstance(kwargs["zone"], str):
        raise ModelError(f"zone must be a zone name like eu-west-1a, got {kwargs['zone']!r}")
    return Server(**kwargs, allow_hostname=allow_hostnames)


def _policy_text(value: object) -> str:
    """A YAML scalar as the text an annotation would carry (`true`, `2`, `0.2`, `30s`)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float | str):
        return str(value)
    shown = "null" if value is None else f"a {type(value).__name__}"
    raise ModelError(f"must be a word or a number (like true, 2, 0.2, 30s), got {shown}")


def _traffic(raw: object, default: TrafficPolicy) -> TrafficPolicy:
    """The `traffic:` mapping of an upstream over `default`; errors carry the key."""
    if not isinstance(raw, dict):
        raise _At(("traffic",), "must be a mapping like {zone-aware: true, slow-start: 30s}")
    fields: dict[str, str] = {}
    written: dict[str, str] = {}  # policy key → the key as written (for the error path)
    for key, value in raw.items():
        if not isinstance(key, str) or key.replace("_", "-") not in POLICY_KEYS:
            allowed = ", ".join(POLICY_KEYS)
            raise _At(("traffic", key), f"unknown key; allowed: {allowed} (or with '_')")
        policy_key = key.replace("_", "-")
        if policy_key in written:
            raise _At(("traffic", key), f"{written[policy_key]!r} is given twice")
        written[policy_key] = key
        try:
            fields[policy_key] = _policy_text(value)
        except ModelError as e:
            raise _At(("traffic", key), str(e)) from e
    try:
        return policy_from_fields(fields, default)
    except PolicyFieldError as e:
        raise _At(("traffic", written.get(e.key, e.key)), e.detail) from e


def _upstream(
    name: str, raw: object, *, allow_hostnames: bool, traffic: TrafficPolicy = DEFAULT_TRAFFIC
) -> Upstream:
    """Build one upstream; an error carries the path of the offending field (`_At`)."""
    if not isinstance(raw, dict):
        raise _At((), "an upstream is a mapping with 'servers' (and optional 'directives')")
    unknown = set(raw) - set(UPSTREAM_KEYS)
    if unknown:
        raise _At(
            (sorted(unknown, key=str)[0],), f"unknown key; allowed: {', '.join(UPSTREAM_KEYS)}"
        )
    servers_raw = raw.get("servers")
    if not isinstance(servers_raw, list) or not servers_raw:
        raise _At(("servers",), "must be a non-empty list")
    servers = []
    for i, item in enumerate(servers_raw):
        try:
            servers.append(_server(item, allow_hostnames=allow_hostnames))
        except (ModelError, TypeError) as e:
            raise _At(("servers", i), str(e)) from e
    directives_raw = raw.get("directives") or []
    if not isinstance(directives_raw, list):
        raise _At(("directives",), "must be a list like [least_conn, keepalive 16]")
    directives = []
    for i, item in enumerate(directives_raw):
        try:
            directives.append(Directive.parse(item))
        except ModelError as e:
            raise _At(("directives", i), str(e)) from e
    if "traffic" in raw:
        traffic = _traffic(raw["traffic"], traffic)
    try:
        return Upstream(name, tuple(servers), tuple(directives), traffic)
    except ModelError as e:
        raise _At((), str(e)) from e


class _At(Exception):
    def __init__(self, path: tuple[str | int, ...], message: str) -> None:
        super().__init__(message)
        self.path = path
        self.message = message


def parse_document(
    text: str,
    *,
    origin: str,
    allow_hostnames: bool = False,
    traffic: TrafficPolicy = DEFAULT_TRAFFIC,
    reuse: Mapping[str, tuple[str, Upstream]] | None = None,
    remember: dict[str, tuple[str, Upstream]] | None = None,
) -> dict[str, Upstream]:
    """Parse and validate a whole file; SourceDataError names file, line and field.
    `traffic` is the policy of an upstream without a `traffic:` entry of its own.

    `reuse`: what a previous read of this file built, by name, with the repr of the
    entry it came from; an entry written again unchanged gives the same Upstream
    without validating its servers again (rebuilding every upstream of a large file
    on each small change was most of the syncer's CPU in bench limits). `repr`, not
    `==`, because YAML `true` == 1 and 1.0 == 1 in Python yet validate differently.
    `remember` (filled if given): the same for this read, to pass as the next `reuse`."""
    try:
        data = yaml.load(text, Loader=_LOADER)
    except _OutOfRange as e:
        at = (e.node.start_mark.line, e.node.start_mark.column)
        if any((k.start_mark.line, k.start_mark.column) == at for k in _keys_of(text, "upstreams")):
            raise _retyped_name(origin, at[0] + 1, e.node.value, "an integer") from e
        raise SourceDataError(f"{origin}:{at[0] + 1}: not valid YAML: {e.problem}") from e
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{origin}:{mark.line + 1}" if mark else origin
        raise SourceDataError(f"{where}: not valid YAML: {getattr(e, 'problem', e)}") from e
    except Exception as e:  # PyYAML: ValueError/KeyError/AttributeError on odd `!!` scalars
        raise SourceDataError(f"{origin}: not valid YAML: {e}") from e

    def fail(path: tuple[str | int, ...], message: str) -> SourceDataError:
        # The node tree (for line numbers) is built only when there is an error to place.
        line = _line_of(yaml.compose(text, Loader=_LOADER), path)
        field = ".".join(str(p) for p in path) or "(document)"
        return SourceDataError(f"{origin}:{line or 1}: {field}: {message}")

    if data is None:
        data = {"upstreams": {}}
    if not isinstance(data, dict) or set(data) - {"upstreams"}:
        raise fail((), "the file must be a mapping with one key, 'upstreams'")
    upstreams_raw = data.get("upstreams") or {}
    if not isinstance(upstreams_raw, dict):
        raise fail(("upstreams",), "must map upstream names to {servers: [...]}")
    out: dict[str, Upstream] = {}
    for raw_name, raw in upstreams_raw.items():
        if not isinstance(raw_name, str):
            written = _written_key(text, "upstreams", raw_name)
            shown = repr(raw_name) if written is None else written
            read_as = "null" if raw_name is None else f"{type(raw_name).__name__} {raw_name!r}"
            line = _line_of(yaml.compose(text, Loader=_LOADER), ("upstreams", shown))
            raise _retyped_name(origin, line or 1, shown, read_as)
        path: tuple[str | int, ...] = ("upstreams", raw_name)
        try:
            name = normalize_name(raw_name)
        except ModelError as e:
            raise fail(path, str(e)) from e
        if name in out:
            raise fail(
                path, f"collides with another upstream named {name!r} (names are case-insensitive)"
            )
        key = repr(raw)
        known = reuse.get(name) if reuse is not None else None
        if known is not None and known[0] == key:
            out[name] = known[1]
        else:
            try:
                out[name] = _upstream(name, raw, allow_hostnames=allow_hostnames, traffic=traffic)
            except _At as e:
                raise fail(path + e.path, e.message) from e
        if remember is not None:
            remember[name] = (key, out[name])
    return out


class FileSource(Source):
    def __init__(
        self,
        *,
        name: str,
        path: Path,
        store: Store,
        metrics: Metrics,
        log: Any,
        poll_interval: float = 1.0,
        allow_hostnames: bool = False,
        traffic: TrafficPolicy = DEFAULT_TRAFFIC,
    ) -> None:
        super().__init__(name=name, store=store, metrics=metrics, log=log)
        self.path = path
        self.poll_interval = poll_interval
        self.allow_hostnames = allow_hostnames
        self.traffic = traffic  # the policy of an upstream without `traffic:`
        self._last_stat: tuple[int, int, int] | None = None
        self._last_digest: str | None = None
        self._bad_digest: str | None = None
        # The last good read: each entry's repr and what it built (see parse_document).
        self._built: dict[str, tuple[str, Upstream]] = {}

    def read_once(self) -> Mapping[str, Upstream]:
        """Read and validate the file (used by `plan` and `check-config`); raises on error."""
        text = self.path.read_text(encoding="utf-8")
        return parse_document(
            text, origin=str(self.path), allow_hostnames=self.allow_hostnames, traffic=self.traffic
        )

    def run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            self.poll()
            stop.wait(self.poll_interval)

    def poll(self) -> None:
        """Re-read the file if it changed (stat first, then content, so touching it is free)."""
        try:
            st = os.stat(self.path)  # follows symlinks: ConfigMap volumes swap a symlink
            key = (st.st_mtime_ns, st.st_size, st.st_ino)
            if key == self._last_stat and self.healthy:
                return
            self._last_stat = key
            raw = self.path.read_bytes()
        except OSError as e:
            if self._last_stat is not None or not self.last_error:
                self.log.error(
                    "source_read_failed",
                    path=str(self.path),
                    error=str(e),
                    hint="keeping the last good upstreams",
                )
            self._last_stat = None
            self.failed("read", f"{self.path}: {e.strerror or e}")
            return
        digest = hashlib.sha256(raw).hexdigest()
        if (digest == self._last_digest and self.healthy) or digest == self._bad_digest:
            return
        remember: dict[str, tuple[str, Upstream]] = {}
        try:
            upstreams = parse_document(
                raw.decode("utf-8"),
                origin=str(self.path),
                allow_hostnames=self.allow_hostnames,
                traffic=self.traffic,
                reuse=self._built,
                remember=remember,
            )
        except (SourceDataError, UnicodeDecodeError) as e:
            self._bad_digest = digest  # counted and logged once per bad content
            self.log.error("source_invalid", error=str(e), hint="keeping the last good upstreams")
            self.failed("invalid", str(e))
            return
        self._last_digest, self._bad_digest = digest, None
        self._built = remember
        self.publish(upstreams)
