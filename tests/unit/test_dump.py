"""The dump file is an nginx include that nginx itself accepts."""

import shutil
import subprocess
from pathlib import Path

import pytest

from syncer.model import Directive, Server, Upstream
from syncer.proxy.dump import DumpFile, render_dump

UPSTREAMS = [
    Upstream(
        "web",
        (
            Server("10.0.0.7", 8080, weight=3, max_fails=2, fail_timeout=5),
            Server("fd00::9", 8080, backup=True),
        ),
        (Directive.parse("least_conn"), Directive.parse("keepalive 16")),
    ),
    Upstream("api", (Server("10.0.1.1", 9000, down=True), Server("10.0.1.2", 9000, max_conns=10))),
    Upstream("h", (Server("10.0.2.1", 80),), (Directive.parse("ip_hash"),)),
]


def test_render_is_one_block_per_upstream_sorted():
    text = render_dump(UPSTREAMS)
    assert text.count("upstream ") == 3 and text.index("upstream api") < text.index("upstream web")
    assert "    server [fd00::9]:8080 backup;\n    least_conn;\n    keepalive 16;\n}" in text


def test_written_atomically_and_only_on_change(tmp_path):
    dump = DumpFile(tmp_path / "dyups" / "upstreams.conf")
    assert dump.update(UPSTREAMS) and not dump.update(UPSTREAMS)
    assert dump.update(UPSTREAMS[:1]) and dump.writes == 2
    assert (tmp_path / "dyups" / "upstreams.conf").read_text() == render_dump(UPSTREAMS[:1])
    assert [p.name for p in (tmp_path / "dyups").iterdir()] == ["upstreams.conf"]


def _nginx() -> str:
    path = shutil.which("nginx") or (
        "/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None
    )
    if path is None:
        pytest.fail("Debian's nginx is needed for `nginx -t`: run scripts/install-validators.sh")
    return path


@pytest.mark.parametrize("upstreams", [UPSTREAMS, []])
def test_nginx_accepts_the_include(tmp_path, upstreams):
    (tmp_path / "upstreams.conf").write_text(render_dump(upstreams))
    conf = tmp_path / "nginx.conf"
    conf.write_text(f"""
pid {tmp_path}/nginx.pid;
error_log {tmp_path}/error.log;
events {{}}
http {{
    access_log off;
    client_body_temp_path {tmp_path}/body;
    proxy_temp_path {tmp_path}/proxy;
    fastcgi_temp_path {tmp_path}/fastcgi;
    uwsgi_temp_path {tmp_path}/uwsgi;
    scgi_temp_path {tmp_path}/scgi;
    include {tmp_path}/upstreams.conf;
    server {{
        listen 127.0.0.1:1;
        location / {{ set $backend web; proxy_pass http://$backend; }}
    }}
}}
""")
    result = subprocess.run(
        [_nginx(), "-t", "-q", "-c", str(conf), "-p", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
