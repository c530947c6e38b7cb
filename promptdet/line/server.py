"""The opt-in HTTP endpoint: GET /health, GET /metrics (Prometheus text), POST /trigger (software trigger).

Standard library only; it binds to 127.0.0.1 unless told otherwise. POST /trigger can require a
token (``Authorization: Bearer <token>``). Every request is bounded (see ``promptdet.limits``): a
bad Content-Length gets 400, a body over HTTP_MAX_BODY 413, a client that stalls is dropped after
HTTP_READ_TIMEOUT_S, more than HTTP_MAX_CONNECTIONS at once get 503, and a full trigger queue 503.
A bad request costs one log line, never a traceback.
"""

from __future__ import annotations

import hmac
import json
import logging
import sys
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

from promptdet.errors import UsageError
from promptdet.limits import HTTP_MAX_BODY, HTTP_MAX_CONNECTIONS, HTTP_READ_TIMEOUT_S

log = logging.getLogger(__name__)


class _BoundedServer(ThreadingHTTPServer):
    """A thread per request, but at most ``max_connections`` at once; the rest get 503 at once."""

    daemon_threads = True

    def __init__(self, address, handler, max_connections: int):
        self._slots = threading.BoundedSemaphore(max_connections)
        super().__init__(address, handler)

    def process_request(self, request, client_address):
        if not self._slots.acquire(blocking=False):
            log.warning("http: %s refused: %d connections already open", client_address[0],
                        HTTP_MAX_CONNECTIONS)
            try:
                request.sendall(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            except OSError:
                pass
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except Exception:
            self._slots.release()
            raise

    def process_request_thread(self, request, client_address):
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def handle_error(self, request, client_address):  # one line, not socketserver's traceback
        exc = sys.exc_info()[1]
        log.warning("http: %s: %s: %s", client_address[0], type(exc).__name__, exc)


def serve(port: int, health: Callable[[], dict], metrics: Callable[[], str],
          trigger: Callable[[str | None], bool | None] | None = None, host: str = "127.0.0.1",
          token: str | None = None, max_connections: int = HTTP_MAX_CONNECTIONS) -> ThreadingHTTPServer:
    """Start the server on a daemon thread; ``shutdown()`` the returned server to stop it.
    ``trigger`` returns False when it cannot take another trigger (the answer is then 503)."""

    class Handler(BaseHTTPRequestHandler):
        timeout = HTTP_READ_TIMEOUT_S  # a socket timeout for every read: a stalled client is dropped

        def _send(self, code: int, body: str, ctype: str = "text/plain") -> None:
            data = body.encode()
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _refuse(self, code: int, why: str) -> None:
            log.warning("http: %s %s %s: %d %s", self.client_address[0], self.command, self.path[:100], code, why)
            self.close_connection = True
            self._send(code, why + "\n")

        def do_GET(self):
            path = urlparse(self.path).path
            if path == "/health":
                state = health()
                self._send(200 if state.get("ok") else 503, json.dumps(state), "application/json")
            elif path == "/metrics":
                self._send(200, metrics(), "text/plain; version=0.0.4")
            else:
                self._send(404, "not found\n")

        def _body(self) -> bytes | None:
            """The request body, or None after answering 400/413 for a bad or too long one."""
            text = self.headers.get("Content-Length")
            if text is None:
                return b""
            if not text.strip().isdigit():
                self._refuse(400, f"bad Content-Length {text[:20]!r}: expected a byte count")
                return None
            length = int(text)
            if length > HTTP_MAX_BODY:
                self._refuse(413, f"body of {length} bytes; the limit is {HTTP_MAX_BODY}")
                return None
            return self.rfile.read(length)

        def do_POST(self):
            url = urlparse(self.path)
            if url.path != "/trigger" or trigger is None:
                self._send(404, "not found (POST /trigger needs source.trigger: software)\n")
                return
            if token is not None:
                given = self.headers.get("Authorization", "")
                if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
                    self._refuse(401, "POST /trigger needs 'Authorization: Bearer <stats.token>'")
                    return
            body = self._body()
            if body is None:
                return
            part = parse_qs(url.query).get("part_id", [None])[0]
            if body and part is None:
                try:
                    part = json.loads(body).get("part_id")
                except (ValueError, AttributeError):
                    self._refuse(400, "body must be JSON like {\"part_id\": \"A17\"}")
                    return
            if part is not None and (len(str(part)) > 200 or "\0" in str(part)):
                self._refuse(400, "part_id must be at most 200 characters, without NUL")
                return
            if trigger(None if part is None else str(part)) is False:
                self._refuse(503, "trigger queue full: the line is behind; retry later")
                return
            self._send(202, json.dumps({"triggered": True, "part_id": part}), "application/json")

        def log_error(self, format, *args):
            log.warning("http: %s: %s", self.client_address[0], (format % args)[:200])

        def log_message(self, *args):  # successful requests are not worth a stderr line each
            pass

    try:
        server = _BoundedServer((host, port), Handler, max_connections)
    except OSError as exc:
        raise UsageError(f"stats.port {port}: cannot listen on {host}:{port} ({exc.strerror or exc}); "
                         "another process uses it? Choose another stats.port") from None
    threading.Thread(target=server.serve_forever, name="promptdet-http", daemon=True).start()
    return server
