"""The OpenAI-compatible HTTP layer over a :class:`~lens_steer.serve.app.ServeApp`, standard library only
(``http.server.ThreadingHTTPServer``: one thread per connection, generation in the app's batcher).

Routes: ``POST /v1/completions``, ``POST /v1/chat/completions`` (``"stream": true``: server-sent events),
``GET /v1/models``, ``GET /v1/steering/vectors``, ``GET /health`` (no key needed). A refused request gets a
4xx with ``{"error": {"message", "type", "param", "code"}}``; a fault of the server a 500 of the same shape;
neither stops the server. The steering applied is in the body (``lens_steer``) and in the headers
``X-Lens-Steer-Steering`` (text grammar) and ``X-Lens-Steer-Steering-Source``.

Streaming sends the finished text, one event per generated token: the engine's ``generate`` returns whole
sequences, so the first event comes when the whole completion is done.
"""

from __future__ import annotations

import hmac
import json
import sys
import threading
import time
import traceback
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from lens_steer.serve.app import ServeApp
from lens_steer.serve.errors import RequestError
from lens_steer.serve.responses import completion_body, stream_chunks

__all__ = ["MAX_BODY_BYTES", "SteeringHTTPServer", "make_server", "serve_in_thread"]

MAX_BODY_BYTES = 8 * 1024 * 1024
"""Largest request body read."""

_POST = {"/v1/completions": False, "/v1/chat/completions": True}
_GET = ("/v1/models", "/v1/steering/vectors", "/health")


class SteeringHTTPServer(ThreadingHTTPServer):
    """A threading HTTP server holding the app, the API key and whether to log each request."""

    daemon_threads = True
    request_queue_size = 256  # many clients connect at once (a load test, lm-eval's num_concurrent)
    allow_reuse_address = True

    def __init__(self, address, app: ServeApp, *, api_key: str | None = None, log_requests: bool = True) -> None:
        self.app = app
        self.api_key = api_key
        self.log_requests = log_requests
        super().__init__(address, _Handler)

    @property
    def url(self) -> str:
        """``http://host:port`` it listens on."""
        host, port = self.server_address[:2]
        return f"http://{host}:{port}"


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "lens-steer"
    timeout = 300  # seconds a connection may sit idle between requests
    server: SteeringHTTPServer

    # ------------------------------------------------------------ plumbing
    def log_message(self, format, *args) -> None:  # noqa: A002 - BaseHTTPRequestHandler's signature
        if self.server.log_requests:
            super().log_message(format, *args)

    def _send_json(self, status: int, body: dict, headers: dict | None = None) -> None:
        data = json.dumps(body, allow_nan=False).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(data)

    def _send_error(self, exc: RequestError) -> None:
        self._send_json(exc.status, exc.body())

    def _guarded(self, work) -> None:
        """Run ``work``; a refusal becomes its 4xx, a fault a 500, a vanished client nothing."""
        try:
            work()
        except RequestError as exc:
            self._try(lambda: self._send_error(exc))
        except (BrokenPipeError, ConnectionResetError, TimeoutError):
            self.close_connection = True
        except Exception as exc:  # noqa: BLE001 - a fault of the server: answer 500, keep serving
            print(f"lens-steer serve: internal error on {self.command} {self.path}:", file=sys.stderr)
            traceback.print_exc()
            self.close_connection = True
            self._try(lambda: self._send_error(RequestError(500, f"internal server error: {type(exc).__name__}: {exc}",
                                                            code="internal_error", type="server_error")))

    def _try(self, send) -> None:
        try:
            send()
        except OSError:  # the client is gone
            self.close_connection = True

    def _authorise(self) -> None:
        key = self.server.api_key
        if not key:
            return
        given = self.headers.get("Authorization", "")
        scheme, _, token = given.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), key.encode()):
            self.close_connection = True  # a POST body is left unread
            raise RequestError(401, "missing or wrong API key (send 'Authorization: Bearer KEY')",
                               param="Authorization", code="invalid_api_key")

    def _read_json(self):
        length = self.headers.get("Content-Length")
        if length is None or not length.isdigit():
            self.close_connection = True
            raise RequestError(411, "a request body with Content-Length is required", code="length_required")
        if int(length) > MAX_BODY_BYTES:
            self.close_connection = True
            raise RequestError(413, f"request body of {length} bytes exceeds {MAX_BODY_BYTES}", code="too_large")
        raw = self.rfile.read(int(length))
        try:
            return json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise RequestError(400, f"the request body is not valid JSON: {exc}", code="invalid_json") from None

    # ------------------------------------------------------------ routes
    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        self._guarded(self._get)

    def do_POST(self) -> None:  # noqa: N802
        self._guarded(self._post)

    def _route(self) -> str:
        return self.path.split("?", 1)[0].rstrip("/") or "/"

    def _get(self) -> None:
        path = self._route()
        if path == "/health":
            return self._send_json(200, {"status": "ok"})
        if path in _POST:
            raise RequestError(405, f"{path} takes POST", code="method_not_allowed")
        if path not in _GET:
            raise RequestError(404, f"no route {path}", code="not_found")
        self._authorise()
        app = self.server.app
        self._send_json(200, app.models_body() if path == "/v1/models" else app.vectors_body())

    def _post(self) -> None:
        path = self._route()
        if path not in _POST:
            self.close_connection = True  # the body was not read
            raise RequestError(405 if path in _GET else 404, f"no POST route {path}",
                               code="method_not_allowed" if path in _GET else "not_found")
        self._authorise()
        body = self._read_json()
        app = self.server.app
        chat = _POST[path]
        request = app.parse(body, chat=chat)
        choices = app.complete(request)
        rid = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}"
        model = body.get("model") or app.settings.model_name
        created = int(time.time())
        headers = {"X-Lens-Steer-Steering": request.steering.text(),
                   "X-Lens-Steer-Steering-Source": request.steering.source}
        if not request.stream:
            return self._send_json(200, completion_body(request, choices, rid=rid, created=created, model=model),
                                   headers)
        self.close_connection = True  # the stream ends when the connection closes
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Connection", "close")
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        for chunk in stream_chunks(request, choices, rid=rid, created=created, model=model):
            self.wfile.write(b"data: " + json.dumps(chunk, allow_nan=False).encode() + b"\n\n")
            self.wfile.flush()
        self.wfile.write(b"data: [DONE]\n\n")
        self.wfile.flush()


def make_server(app: ServeApp, host: str = "127.0.0.1", port: int = 8000, *, api_key: str | None = None,
                log_requests: bool = True) -> SteeringHTTPServer:
    """Bind the server (the port opens here; ``port=0`` picks a free one: see ``server_address``)."""
    return SteeringHTTPServer((host, port), app, api_key=api_key, log_requests=log_requests)


def serve_in_thread(server: SteeringHTTPServer) -> threading.Thread:
    """Serve from a daemon thread (tests, notebooks); stop with ``server.shutdown(); server.server_close()``."""
    thread = threading.Thread(target=server.serve_forever, name="lens-steer-serve", daemon=True)
    thread.start()
    return thread
