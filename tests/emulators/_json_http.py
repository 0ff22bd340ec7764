"""The HTTP plumbing the cloud emulators and test servers share: a threaded server on 127.0.0.1
(optionally TLS) that hands each request's method, path (with its query), decoded body and headers
to a route function and writes back its answer. A route returns `(status, payload)` or
`(status, payload, headers)`; a payload that is `bytes` or `str` is sent as text, anything else as
JSON, `None` as an empty body; a `Content-Type` among the headers replaces the one chosen so.

The body reaches the route as JSON (`json_body`, the default: None when empty), as a submitted form
(`form_body`) or as the bytes sent (`raw_body`, for a server that answers malformed JSON itself).
`keep_alive` answers in HTTP/1.1 with persistent connections, as SDKs that pool them expect."""

from __future__ import annotations

import json
import ssl
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs

Route = Callable[[str, str, Any, Any], tuple]


def json_body(raw: bytes) -> Any:
    return json.loads(raw) if raw.strip() else None


def form_body(raw: bytes) -> dict[str, list[str]]:
    return parse_qs(raw.decode())


def raw_body(raw: bytes) -> bytes:
    return raw


class JsonHttpServer:
    def __init__(self, route: Route, cert_file: str | None = None, *, body: Callable[[bytes], Any] = json_body,
                 keep_alive: bool = False, port: int = 0) -> None:
        self.route = route
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1" if keep_alive else "HTTP/1.0"

            def log_message(self, *args: Any) -> None:
                pass

            def _reply(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                status, payload, *rest = outer.route(self.command, self.path, body(raw), self.headers)
                headers = dict(rest[0]) if rest else {}
                if payload is None:
                    data, kind = b"", "application/json"
                elif isinstance(payload, (bytes, str)):
                    data = payload.encode() if isinstance(payload, str) else payload
                    kind = "text/plain"
                else:
                    data, kind = json.dumps(payload).encode(), "application/json"
                self.send_response(status)
                self.send_header("Content-Type", headers.pop("Content-Type", kind))
                for key, value in headers.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_PUT = do_POST = do_PATCH = do_DELETE = _reply

        self._http = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        scheme = "http"
        if cert_file:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(cert_file)
            self._http.socket = context.wrap_socket(self._http.socket, server_side=True)
            scheme = "https"
        self.port = self._http.server_address[1]
        self.host = f"127.0.0.1:{self.port}"
        self.url = f"{scheme}://{self.host}"
        threading.Thread(target=self._http.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self._http.shutdown()
        self._http.server_close()
