"""The opt-in HTTP endpoint: GET /health, GET /metrics (Prometheus text), POST /trigger (software trigger).

Standard library only; it binds to 127.0.0.1 unless told otherwise, since it has no authentication.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse


def serve(port: int, health: Callable[[], dict], metrics: Callable[[], str],
          trigger: Callable[[str | None], None] | None = None, host: str = "127.0.0.1") -> ThreadingHTTPServer:
    """Start the server on a daemon thread; ``shutdown()`` the returned server to stop it."""

    class Handler(BaseHTTPRequestHandler):
        def _send(self, code: int, body: str, ctype: str) -> None:
            data = body.encode()
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):  # noqa: N802 - the http.server API
            path = urlparse(self.path).path
            if path == "/health":
                state = health()
                self._send(200 if state.get("ok") else 503, json.dumps(state), "application/json")
            elif path == "/metrics":
                self._send(200, metrics(), "text/plain; version=0.0.4")
            else:
                self._send(404, "not found\n", "text/plain")

        def do_POST(self):  # noqa: N802
            url = urlparse(self.path)
            if url.path != "/trigger" or trigger is None:
                self._send(404, "not found (POST /trigger needs source.trigger: software)\n", "text/plain")
                return
            part = parse_qs(url.query).get("part_id", [None])[0]
            length = int(self.headers.get("Content-Length") or 0)
            if length and part is None:
                try:
                    part = json.loads(self.rfile.read(min(length, 65536))).get("part_id")
                except (ValueError, AttributeError):
                    self._send(400, "body must be JSON like {\"part_id\": \"A17\"}\n", "text/plain")
                    return
            trigger(None if part is None else str(part))
            self._send(202, json.dumps({"triggered": True, "part_id": part}), "application/json")

        def log_message(self, *args):  # requests are not worth a stderr line each
            pass

    server = ThreadingHTTPServer((host, port), Handler)
    threading.Thread(target=server.serve_forever, name="promptdet-http", daemon=True).start()
    return server
