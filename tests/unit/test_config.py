import textwrap
from pathlib import Path

import pytest

from syncer.cli import main
from syncer.config import ConfigError, load

GOOD = """
sources:
  - type: file
    path: upstreams.yaml
proxies:
  static:
    - url: http://127.0.0.1:8081
      basic_auth: {username: u, password: p}
snapshot_path: state/snapshot.json
resync_interval: 10s
debounce: 100ms
policy: sync
max_delete_fraction: 0.5
listen: 127.0.0.1:9105
"""


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "config.yaml"
    p.write_text(textwrap.dedent(text))
    return p


def test_good_config_loads_with_units_and_relative_paths(tmp_path):
    cfg = load(write(tmp_path, GOOD), env={})
    assert cfg.debounce == pytest.approx(0.1) and cfg.resync_interval == 10
    assert cfg.sources[0].path == tmp_path / "upstreams.yaml"
    assert cfg.snapshot_path == tmp_path / "state/snapshot.json"
    assert cfg.proxies.static[0].shm_zone_size == 2 * 1024 * 1024


@pytest.mark.parametrize(
    "change, field",
    [
        ({"debounce": "soon"}, "debounce"),
        ({"policy": "yolo"}, "policy"),
        ({"max_delete_fraction": 2}, "max_delete_fraction"),
        ({"listen": "nowhere"}, "listen"),
        ({"surprise": 1}, "surprise"),
        ({"proxies": {"static": [{"url": "ftp://x"}]}}, "proxies.static.0.url"),
        ({"proxies": {"static": []}}, "proxies"),
        ({"sources": [{"type": "zookeeper"}]}, "sources.0"),
        ({"adopt": ["Bad Name"]}, "adopt"),
    ],
)
def test_errors_name_the_field(tmp_path, change, field):
    import yaml

    data = yaml.safe_load(GOOD)
    data.update(change)
    with pytest.raises(ConfigError) as e:
        load(write(tmp_path, yaml.safe_dump(data)), env={})
    assert any(f": {field}" in line for line in e.value.errors), e.value.errors


def test_missing_required_keys_are_listed(tmp_path):
    with pytest.raises(ConfigError) as e:
        load(write(tmp_path, "{}"), env={})
    text = "\n".join(e.value.errors)
    for key in ("sources", "proxies", "snapshot_path"):
        assert key in text


def test_environment_overrides(tmp_path):
    env = {
        "DYUPS_SYNCER_DEBOUNCE": "0",
        "DYUPS_SYNCER_PROXIES__STATIC__0__BASIC_AUTH__PASSWORD": "yes",
        "DYUPS_SYNCER_ADOPT": "[a, b]",
        "DYUPS_SYNCER_VERIFY_AFTER_WRITE": "false",
        "OTHER": "x",
    }
    cfg = load(write(tmp_path, GOOD), env=env)
    assert cfg.debounce == 0 and cfg.adopt == ["a", "b"] and cfg.verify_after_write is False
    assert cfg.proxies.static[0].basic_auth.password == "yes"


def test_check_config_exit_codes(tmp_path, capsys):
    good = write(tmp_path, GOOD)
    assert main(["check-config", "-c", str(good)]) == 0
    bad = tmp_path / "bad.yaml"
    bad.write_text(GOOD.replace("policy: sync", "policy: nope"))
    assert main(["check-config", "-c", str(bad)]) == 2
    assert "policy" in capsys.readouterr().err
    assert main(["check-config", "-c", str(tmp_path / "missing.yaml")]) == 2


def test_a_file_that_is_not_utf8_is_a_config_error(tmp_path):
    # Found by tests/fuzz: a lone surrogate written out (b"\xed\xa0\x80") raised
    # UnicodeDecodeError out of load().
    p = tmp_path / "config.yaml"
    p.write_bytes(b"policy: sync\n\xed\xa0\x80\n")
    with pytest.raises(ConfigError) as e:
        load(p, env={})
    (error,) = e.value.errors
    assert error.startswith(f"{p}: not UTF-8")
    assert "byte 0xed at offset 13 (line 2)" in error, error


@pytest.mark.parametrize(
    "value, message",
    [
        (".inf", "a duration must be at most"),
        (".nan", "a duration must be at most"),
        ("0x" + "f" * 3600, "a duration must be between 0 and"),
        ("'١٠s'", "expected a duration like"),
        ("'" + "9" * 400 + "s'", "expected a duration like"),
    ],
    ids=["inf", "nan", "huge-hex", "arabic-digits", "400-digits"],
)
def test_durations_are_finite_and_waitable(tmp_path, value, message):
    # Found by tests/fuzz: a 4,000-digit hex integer raised OverflowError out of load();
    # `.inf` and `.nan` were accepted (Event.wait(inf) raises OverflowError).
    with pytest.raises(ConfigError) as e:
        load(write(tmp_path, GOOD.replace("debounce: 100ms", f"debounce: {value}")), env={})
    (error,) = e.value.errors
    assert error.startswith(f"{tmp_path / 'config.yaml'}: debounce: {message}"), error


@pytest.mark.parametrize(
    "leader_election, message",
    [
        ({"enabled": True, "shards": 0}, "greater than or equal to 1"),
        ({"enabled": True, "shards": 257}, "less than or equal to 256"),
        (
            {"enabled": True, "backend": "consul", "shards": 4},
            "shards > 1 needs backend kubernetes",
        ),
        ({"shards": 4}, "shards > 1 needs enabled: true"),
        ({"enabled": True, "shards": 4, "lease_name": "x" * 64}, "lease_name must also be a label"),
    ],
)
def test_shards_need_kubernetes_leases(tmp_path, leader_election, message):
    import yaml

    data = {**yaml.safe_load(GOOD), "leader_election": leader_election}
    with pytest.raises(ConfigError) as e:
        load(write(tmp_path, yaml.safe_dump(data)), env={})
    (error,) = e.value.errors
    assert ": leader_election" in error and message in error, error


def test_shards_from_the_environment(tmp_path):
    env = {
        "DYUPS_SYNCER_LEADER_ELECTION__ENABLED": "true",
        "DYUPS_SYNCER_LEADER_ELECTION__SHARDS": "4",
    }
    cfg = load(write(tmp_path, GOOD), env=env)
    assert cfg.leader_election.shards == 4
    assert load(write(tmp_path, GOOD), env={}).leader_election.shards == 1
