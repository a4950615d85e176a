"""A real threaded HTTP server on 127.0.0.1 (ephemeral port) with per-path handlers, for the ingest tests."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

Handler = Callable[["Request"], tuple[int, dict[str, str], bytes] | None]


@dataclass
class Request:
    path: str  # with query
    headers: dict[str, str]
    handler: BaseHTTPRequestHandler


@dataclass
class FixtureServer:
    """Routes by path (query ignored for routing; handlers see it). Records every request."""

    routes: dict[str, Handler] = field(default_factory=dict)
    log: list[Request] = field(default_factory=list)
    base: str = ""
    lock: threading.Lock = field(default_factory=threading.Lock)

    def url(self, path: str) -> str:
        return self.base + path

    def route(self, path: str, handler: Handler | tuple[int, dict[str, str], bytes | str]) -> None:
        if not callable(handler):
            status, headers, body = handler
            body = body.encode("utf-8") if isinstance(body, str) else body
            handler = lambda _req, s=status, h=headers, b=body: (s, h, b)  # noqa: E731
        self.routes[path] = handler

    def hits(self, path: str) -> list[Request]:
        with self.lock:
            return [r for r in self.log if r.path.split("?")[0] == path]


def _make_handler(server: FixtureServer):
    class H(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args) -> None:  # keep pytest output clean
            pass

        def do_GET(self) -> None:
            request = Request(self.path, {k.lower(): v for k, v in self.headers.items()}, self)
            with server.lock:
                server.log.append(request)
            handler = server.routes.get(self.path.split("?")[0])
            if handler is None:
                self._send(404, {"Content-Type": "text/plain"}, b"not found")
                return
            try:
                response = handler(request)
            except (BrokenPipeError, ConnectionResetError):
                return
            if response is not None:  # None: the handler wrote the response itself
                self._send(*response)

        def _send(self, status: int, headers: dict[str, str], body: bytes) -> None:
            try:
                self.send_response(status)
                for key, value in headers.items():
                    self.send_header(key, value)
                if "Content-Length" not in headers:
                    self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
            except (BrokenPipeError, ConnectionResetError):
                pass

    return H




@contextlib.contextmanager
def serve() -> Iterator[FixtureServer]:
    state = FixtureServer()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _make_handler(state))
    httpd.daemon_threads = True
    httpd.block_on_close = False
    state.base = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        httpd.shutdown()
        httpd.server_close()


def hang(seconds: float) -> Handler:
    """A handler that accepts the request and says nothing for ``seconds``."""

    def handler(request: Request):
        time.sleep(seconds)
        return (200, {"Content-Type": "application/rss+xml"}, b"<rss/>")

    return handler


def stream_bytes(total: int, *, declare_length: bool) -> Handler:
    """A handler streaming ``total`` bytes in 64 KiB chunks (HTTP/1.0-style close-delimited if undeclared)."""

    def handler(request: Request):
        h = request.handler
        try:
            h.send_response(200)
            h.send_header("Content-Type", "application/rss+xml")
            if declare_length:
                h.send_header("Content-Length", str(total))
            else:
                h.send_header("Connection", "close")
                h.close_connection = True
            h.end_headers()
            chunk = b"<!-- " + b"x" * (64 * 1024 - 9) + b" -->"
            sent = 0
            while sent < total:
                h.wfile.write(chunk)
                sent += len(chunk)
        except (BrokenPipeError, ConnectionResetError, OSError):
            pass
        return None

    return handler
