"""Secrets never reach logs; oversized input never reaches a proxy."""

import io
import json

import pytest

from syncer import log
from syncer.model import MAX_SERVERS, ModelError, Server, Upstream


def test_secrets_are_redacted_from_logs(monkeypatch):
    out = io.StringIO()
    monkeypatch.setattr("sys.stderr", out)
    log.configure(level="info", fmt="json")
    log.get("t").info(
        "connecting",
        password="hunter2",
        token="t0k",
        headers={"Authorization": "Basic x"},
        url="http://p:8081",
    )
    line = json.loads(out.getvalue().strip().splitlines()[-1])
    assert (
        "hunter2" not in out.getvalue()
        and "t0k" not in out.getvalue()
        and "Basic x" not in out.getvalue()
    )
    assert line["password"] == log.REDACTED and line["headers"]["Authorization"] == log.REDACTED
    assert line["url"] == "http://p:8081"


def test_an_upstream_cannot_grow_without_bound():
    servers = tuple(
        Server(f"10.{i // 65536}.{i // 256 % 256}.{i % 256}", 80) for i in range(MAX_SERVERS + 1)
    )
    with pytest.raises(ModelError, match="at most"):
        Upstream("big", servers)
    assert Upstream("ok", servers[:MAX_SERVERS])


def test_secrets_are_not_in_config_repr(tmp_path):
    from syncer.config import BasicAuth, ConsulClientConfig

    assert "hunter2" not in repr(BasicAuth(username="u", password="hunter2"))
    assert "t0k" not in repr(ConsulClientConfig(token="t0k"))
