"""The daemon's own HTTP server: /metrics, /healthz, /readyz and a read-only /state."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

Check = Callable[[], tuple[bool, list[str]]]


class StatusServer:
    def __init__(
        self,
        address: tuple[str, int],
        *,
        registry: CollectorRegistry,
        healthy: Check,
        ready: Check,
        state: Callable[[], dict[str, Any]] | None,
    ) -> None:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    self._send(200, generate_latest(registry), CONTENT_TYPE_LATEST)
                elif path in ("/healthz", "/readyz"):
                    ok, reasons = (healthy if path == "/healthz" else ready)()
                    text = "ok\n" if ok else "".join(f"{r}\n" for r in reasons)
                    self._send(200 if ok else 503, text.encode(), "text/plain; charset=utf-8")
                elif path == "/state" and state is not None:
                    body = json.dumps(state(), indent=2, sort_keys=True, default=str)
                    self._send(200, body.encode(), "application/json")
                else:
                    self._send(404, b"not found\n", "text/plain; charset=utf-8")

            def _send(self, status: int, body: bytes, content_type: str) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass  # scrapes every few seconds would drown the useful log lines

        self._httpd = ThreadingHTTPServer(address, Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="http", daemon=True)
        _ = server

    @property
    def address(self) -> tuple[str, int]:
        host, port = self._httpd.server_address[:2]
        return str(host), int(port)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()
