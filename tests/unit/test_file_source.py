import threading

import pytest

from syncer import log
from syncer.metrics import Metrics
from syncer.model import Server
from syncer.sources.file import FileSource, SourceDataError, parse_document
from syncer.state import Store

GOOD = """\
upstreams:
  web:
    servers:
      - 10.0.0.7:8080
      - {address: "[fd00::9]:8080", weight: 3, max_fails: 2, fail_timeout: 5s, backup: true}
    directives: [least_conn, keepalive 16]
  API:
    servers: [{host: 10.0.0.8, port: 80}]
"""


def test_parses_servers_parameters_and_directives():
    ups = parse_document(GOOD, origin="f.yaml")
    assert set(ups) == {"web", "api"}
    assert (
        Server("fd00::9", 8080, weight=3, max_fails=2, fail_timeout=5, backup=True)
        in ups["web"].servers
    )
    assert ups["web"].render().endswith("least_conn; keepalive 16;")


@pytest.mark.parametrize(
    "text, where",
    [
        (
            "upstreams:\n  web:\n    servers:\n      - 10.0.0.7:0\n",
            "f.yaml:4: upstreams.web.servers.0: port",
        ),
        (
            "upstreams:\n  web:\n    servers: [10.0.0.7:80]\n    directives: ['hash $x']\n",
            "f.yaml:4: upstreams.web.directives.0",
        ),
        (
            "upstreams:\n  web:\n    servers:\n      - {address: '10.0.0.7:80;evil'}\n",
            "f.yaml:4: upstreams.web.servers.0",
        ),
        ("upstreams:\n  'we b':\n    servers: [10.0.0.7:80]\n", "f.yaml:2: upstreams.we b"),
        (
            "upstreams:\n  Web:\n    servers: [10.0.0.7:80]\n  web:\n    servers: [10.0.0.8:80]\n",
            "f.yaml:4: upstreams.web: collides",
        ),
        (
            "upstreams:\n  web:\n    servers: [10.0.0.7:80]\n    zone: x\n",
            "f.yaml:4: upstreams.web.zone",
        ),
        ("upstreams: [\n", "f.yaml:2: not valid YAML"),
        ("upstreams:\n  web:\n    servers:\n      - backend.local:80\n", "only IP literals"),
    ],
)
def test_errors_name_file_line_and_field(text, where):
    with pytest.raises(SourceDataError) as e:
        parse_document(text, origin="f.yaml")
    assert where in str(e.value)


def test_a_fail_timeout_longer_than_int_accepts_is_a_clean_error():
    # Found by tests/fuzz: a quoted 4301-digit fail_timeout made int() raise
    # ValueError ("Exceeds the limit (4300 digits)") out of parse_document.
    text = (
        "upstreams:\n  a:\n    servers:\n"
        f"    - {{address: 0.0.0.0:1, fail_timeout: '{'9' * 4301}'}}\n"
    )
    with pytest.raises(SourceDataError) as e:
        parse_document(text, origin="f.yaml")
    assert str(e.value).startswith("f.yaml:4: upstreams.a.servers.0: expected whole seconds")


@pytest.mark.parametrize("value", ["١٦", "١٦s", "1234567890s"])
def test_fail_timeout_is_a_short_run_of_ascii_digits(value):
    text = f"upstreams:\n  a:\n    servers: [{{address: 0.0.0.0:1, fail_timeout: '{value}'}}]\n"
    with pytest.raises(SourceDataError, match="expected whole seconds"):
        parse_document(text, origin="f.yaml")


@pytest.mark.parametrize(
    "key, read_as",
    [
        ("no", "bool False"),
        ("010", "int 8"),
        ("1.5", "float 1.5"),
        ("null", "null"),
        ("~", "null"),
        ("2001-12-14", "date datetime.date(2001, 12, 14)"),
        ("1" * 30, "an integer"),  # beyond 64 bits: refused as it is read
    ],
)
def test_an_upstream_name_yaml_reads_as_another_type_is_refused(key, read_as):
    # Found by tests/fuzz: `no:` became the upstream "false", `010:` the upstream "8".
    text = f"upstreams:\n  web:\n    servers: [10.0.0.7:80]\n  {key}:\n    servers: [10.0.0.8:80]\n"
    with pytest.raises(SourceDataError) as e:
        parse_document(text, origin="f.yaml")
    assert str(e.value) == (
        f"f.yaml:4: upstreams.{key}: the upstream name {key!r} is read by YAML as {read_as},"
        f' not a string: quote it ("{key}": ...)'
    )
    if key != "~":  # quoted, a valid name is read as written
        quoted = text.replace(f"  {key}:", f'  "{key}":')
        assert set(parse_document(quoted, origin="f.yaml")) == {"web", key}


@pytest.mark.parametrize(
    "value",
    ["0x" + "f" * 3600, "-0x" + "f" * 3600, "18446744073709551616"],
    ids=["huge-hex", "huge-negative-hex", "2**64"],
)
def test_integers_beyond_64_bits_are_refused_when_read(value):
    # Found by tests/fuzz: a 3,600-digit hex weight is a valid YAML integer, and the
    # error message about it raised ValueError (str() refuses 4,300 digits).
    text = f"upstreams:\n  a:\n    servers:\n      - {{address: 10.0.0.1:80, weight: {value}}}\n"
    with pytest.raises(SourceDataError) as e:
        parse_document(text, origin="f.yaml")
    assert str(e.value).startswith("f.yaml:4: not valid YAML: the integer"), str(e.value)
    assert "is out of range" in str(e.value)


@pytest.mark.parametrize(
    "text, where",
    [
        ("upstreams:\n  a:\n    servers: [10.0.0.1:80]\n    1: x\n    z: 2\n", "upstreams.a.1"),
        (
            "upstreams:\n  a:\n    servers: [{address: 10.0.0.1:80, 1: x, z: 2}]\n",
            "upstreams.a.servers.0: unknown key(s) [1, 'z']",
        ),
    ],
)
def test_unknown_keys_of_mixed_types_are_a_clean_error(text, where):
    # sorted() of an int and a str raised TypeError (out of parse_document for the
    # keys of an upstream; as the message for the keys of a server).
    with pytest.raises(SourceDataError) as e:
        parse_document(text, origin="f.yaml")
    assert where in str(e.value)


def test_bad_file_keeps_last_good_state(tmp_path):
    path = tmp_path / "u.yaml"
    path.write_text(GOOD)
    metrics = Metrics()
    store = Store(["file"])
    src = FileSource(name="file", path=path, store=store, metrics=metrics, log=log.get("t"))
    src.poll()
    assert src.synced and set(store.current().upstreams) == {"web", "api"}
    v = store.current().version
    path.write_text("upstreams:\n  web:\n    servers: [10.0.0.7:0]\n")
    src.poll()
    assert not src.healthy and "port" in src.last_error
    assert store.current().version == v and set(store.current().upstreams) == {"web", "api"}
    assert metrics.registry.get_sample_value("dyups_syncer_source_up", {"source": "file"}) == 0
    assert (
        metrics.registry.get_sample_value(
            "dyups_syncer_source_errors_total", {"source": "file", "reason": "invalid"}
        )
        == 1
    )
    src.poll()  # the same bad content is counted once
    assert (
        metrics.registry.get_sample_value(
            "dyups_syncer_source_errors_total", {"source": "file", "reason": "invalid"}
        )
        == 1
    )
    path.unlink()
    src.poll()
    assert set(store.current().upstreams) == {"web", "api"}
    path.write_text(GOOD.replace("10.0.0.8", "10.0.0.9"))
    src.poll()
    assert src.healthy and store.current().upstreams["api"].servers[0].host == "10.0.0.9"


def test_empty_file_after_content_is_held(tmp_path):
    path = tmp_path / "u.yaml"
    path.write_text(GOOD)
    store = Store(["file"])
    src = FileSource(name="file", path=path, store=store, metrics=Metrics(), log=log.get("t"))
    src.poll()
    path.write_text("upstreams: {}\n")
    src.poll()
    assert set(store.current().upstreams) == {"web", "api"}
    assert store.held_empty == {"file"}


def test_thread_publishes_changes(tmp_path):
    path = tmp_path / "u.yaml"
    path.write_text(GOOD)
    store = Store(["file"])
    src = FileSource(
        name="file", path=path, store=store, metrics=Metrics(), log=log.get("t"), poll_interval=0.01
    )
    src.start()
    try:
        first = store.wait_newer(0, timeout=10)
        assert "web" in first.upstreams
        path.write_text(GOOD.replace("10.0.0.8", "10.0.0.10"))
        changed = store.wait_newer(first.version, timeout=10)
        assert changed.upstreams["api"].servers[0].host == "10.0.0.10"
    finally:
        src.stop()
    assert not src.alive
    _ = threading


# ---------------------------------------------------------------- traffic policies
# docs/traffic.md: `traffic:` under an upstream (over the configured default) and a
# server's `zone`.

TRAFFIC = """\
upstreams:
  web:
    servers:
      - {address: 10.0.1.1:80, zone: eu-1a}
      - {address: 10.0.2.1:80, zone: eu-1b}
    traffic:
      zone-aware: true
      min_local: 1
      min-local-fraction: 0.5
      slow-start: 30s
      slow_start_steps: 4
      drain-as-backup: yes
      drain-seconds: 45
      empty: fallback
      fallback: 127.0.0.1:8999
  api:
    servers: [10.0.0.8:80]
"""


def test_a_traffic_block_sets_the_policy_and_servers_their_zone():
    from syncer.model import EmptyPolicy, TrafficPolicy

    default = TrafficPolicy(local_weight_multiplier=3)
    ups = parse_document(TRAFFIC, origin="f.yaml", traffic=default)
    assert ups["web"].traffic == TrafficPolicy(
        zone_aware=True,
        min_local=1,
        min_local_fraction=0.5,
        local_weight_multiplier=3,
        slow_start=30.0,
        slow_start_steps=4,
        drain_as_backup=True,
        drain_seconds=45.0,
        empty=EmptyPolicy.FALLBACK,
        fallback=(Server("127.0.0.1", 8999),),
    )
    assert {s.address: s.zone for s in ups["web"].servers} == {
        "10.0.1.1:80": "eu-1a",
        "10.0.2.1:80": "eu-1b",
    }
    assert ups["web"].render() == "server 10.0.1.1:80; server 10.0.2.1:80;"
    assert ups["api"].traffic == default  # no block: the configured default
    assert parse_document(TRAFFIC, origin="f.yaml")["api"].traffic == TrafficPolicy()


@pytest.mark.parametrize(
    "block, where",
    [
        (
            "{zone-aware: maybe}",
            "f.yaml:5: upstreams.web.traffic.zone-aware: must be true or false",
        ),
        ("{min_local: 0}", "f.yaml:5: upstreams.web.traffic.min_local: min_local must be >= 1"),
        (
            "{zone-aware: true, min-local: 0}",
            "f.yaml:5: upstreams.web.traffic.min-local: min_local must be >= 1",
        ),
        ("{slow-start: 1 hour}", "f.yaml:5: upstreams.web.traffic.slow-start: must be a duration"),
        ("{min-local-fraction: .inf}", "upstreams.web.traffic.min-local-fraction: must be a"),
        ("{empty: fallback}", "upstreams.web.traffic.empty: fallback servers are required"),
        (
            "{fallback: [10.0.0.1:80]}",
            "upstreams.web.traffic.fallback: must be a word or a number (like true, 2, 0.2, 30s),"
            " got a list",
        ),
        ("{zone-aware: {a: 1}}", "upstreams.web.traffic.zone-aware: must be a word or a number"),
        ("{zone-aware: null}", "upstreams.web.traffic.zone-aware: must be a word or a number"),
        ("{zone-aware: 2001-12-14}", "traffic.zone-aware: must be a word or a number (like"),
        ("{zone: a}", "f.yaml:5: upstreams.web.traffic.zone: unknown key; allowed: zone-aware,"),
        ("{1: true}", "upstreams.web.traffic.1: unknown key"),
        (
            "{zone-aware: true, zone_aware: false}",
            "traffic.zone_aware: 'zone-aware' is given twice",
        ),
        ("[zone-aware]", "f.yaml:5: upstreams.web.traffic: must be a mapping"),
    ],
)
def test_a_bad_traffic_block_names_file_line_and_key(block, where):
    text = f"upstreams:\n  web:\n    servers: [10.0.0.7:80]\n    directives: []\n    traffic: {block}\n"
    with pytest.raises(SourceDataError) as e:
        parse_document(text, origin="f.yaml")
    assert where in str(e.value), str(e.value)


def test_a_traffic_error_is_placed_on_the_line_of_its_key():
    text = "upstreams:\n  web:\n    servers: [10.0.0.7:80]\n    traffic:\n      zone-aware: true\n      slow_start: soon\n"
    with pytest.raises(SourceDataError) as e:
        parse_document(text, origin="f.yaml")
    assert str(e.value).startswith("f.yaml:6: upstreams.web.traffic.slow_start: must be a duration")


@pytest.mark.parametrize(
    "value, zone",
    [("eu-1a", "eu-1a"), ("'1'", "1")],
)
def test_a_server_zone(value, zone):
    text = f"upstreams:\n  web:\n    servers: [{{address: 10.0.0.7:80, zone: {value}}}]\n"
    (server,) = parse_document(text, origin="f.yaml")["web"].servers
    assert server.zone == zone


@pytest.mark.parametrize("value", ["a zone", "1", "[a]", "'z;'", "null"])
def test_a_bad_server_zone_names_the_server(value):
    text = f"upstreams:\n  web:\n    servers:\n      - {{address: 10.0.0.7:80, zone: {value}}}\n"
    with pytest.raises(SourceDataError) as e:
        parse_document(text, origin="f.yaml")
    assert str(e.value).startswith("f.yaml:4: upstreams.web.servers.0: zone "), str(e.value)


def test_the_file_source_applies_its_default_policy(tmp_path):
    from syncer.model import TrafficPolicy

    path = tmp_path / "u.yaml"
    path.write_text(TRAFFIC)
    default = TrafficPolicy(zone_aware=True, min_local=5)
    store = Store(["file"])
    src = FileSource(
        name="file", path=path, store=store, metrics=Metrics(), log=log.get("t"), traffic=default
    )
    assert src.read_once()["api"].traffic == default
    src.poll()
    assert store.current().upstreams["api"].traffic == default
    assert store.current().upstreams["web"].traffic.min_local == 1


@pytest.mark.parametrize(
    "source",
    [
        {"type": "file", "path": "u.yaml"},
        {"type": "kubernetes", "client": {"api_url": "http://127.0.0.1:1"}},
        {"type": "consul", "address": "127.0.0.1:1"},
    ],
)
def test_every_source_gets_the_configured_default_policy(tmp_path, source):
    from syncer.app import App
    from syncer.config import Config

    config = Config.model_validate(
        {
            "sources": [source],
            "proxies": {"static": [{"url": "http://127.0.0.1:1"}]},
            "snapshot_path": str(tmp_path / "s.json"),
            "traffic": {"zone_aware": True, "drain_as_backup": True, "slow_start": "10s"},
        }
    )
    (built,) = App(config).sources
    default = getattr(built, "traffic", None) or built.options.traffic
    assert default == config.traffic.policy()
    assert (default.zone_aware, default.drain_as_backup, default.slow_start) == (True, True, 10.0)


def test_an_entry_written_again_unchanged_reuses_what_the_last_read_built():
    first_text = (
        "upstreams:\n"
        "  a: {servers: ['10.0.0.1:80', '10.0.0.2:80']}\n"
        "  b: {servers: ['10.0.0.3:80']}\n"
    )
    built: dict = {}
    first = parse_document(first_text, origin="f.yaml", remember=built)
    again: dict = {}
    second_text = first_text.replace("10.0.0.3:80", "10.0.0.4:80")
    second = parse_document(second_text, origin="f.yaml", reuse=built, remember=again)
    assert second["a"] is first["a"]  # unchanged entry: not rebuilt
    assert second["b"] is not first["b"] and second["b"].servers == (Server("10.0.0.4", 80),)
    assert set(again) == {"a", "b"}


def test_reuse_never_accepts_a_value_that_only_compares_equal():
    # YAML `true` == 1 in Python, but a boolean weight is invalid: the entry's repr
    # differs, so it is validated again and refused.
    good = "upstreams:\n  a: {servers: [{address: '10.0.0.1:80', weight: 1}]}\n"
    built: dict = {}
    parse_document(good, origin="f.yaml", remember=built)
    with pytest.raises(SourceDataError):
        parse_document(good.replace("weight: 1", "weight: true"), origin="f.yaml", reuse=built)
