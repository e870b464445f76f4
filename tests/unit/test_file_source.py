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
