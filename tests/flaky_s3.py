"""A loopback HTTP proxy in front of an S3 endpoint that misbehaves like a real object store on a bad day.

Tests point a client (boto3, s3fs, the whole study) at `FlakyS3Proxy.endpoint` instead of the moto
server. For a seeded random share of requests the proxy fails: half of those get an S3-style 5xx answer
(503 SlowDown or 500 InternalError, XML body), the other half see the connection reset (the request is
read, then the socket is closed with SO_LINGER 0, so the client gets RST instead of a response). Another
share is only delayed before being forwarded. A failed request is never forwarded, so the store's state
changes only through requests that succeeded: what a client must survive is exactly its own retrying.

Everything else is forwarded byte for byte: method, path and query, the headers as sent (Host included,
because SigV4 signs it; only hop-by-hop headers are dropped), Content-Length or chunked / aws-chunked
bodies as raw bytes, and the upstream's status, headers and body. `stats` counts what happened so a test
can assert the faults really fired. Standard library only.
"""

from __future__ import annotations

import contextlib
import http.client
import random
import socket
import struct
import threading
import time
import urllib.parse
import uuid
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType

from typing_extensions import Self

#: Headers that describe one connection, not the message (RFC 9110 §7.6.1), plus Expect: the proxy answers
#: 100-continue itself. Transfer-Encoding is kept on requests: the body is forwarded raw, still chunked,
#: so the upstream must be told so. Headers named in a Connection header are dropped too.
_HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "proxy-connection", "proxy-authenticate", "proxy-authorization", "te",
     "trailer", "upgrade", "expect"}
)
#: outcome -> (status, reason, S3 error code, message) of the injected 5xx answers.
_FAULT_ANSWERS = {
    "slow_down": (503, "Slow Down", "SlowDown", "Please reduce your request rate."),
    "internal_error": (500, "Internal Server Error", "InternalError", "We encountered an internal error."),
}
#: The answer of a store without conditional requests (If-Match / If-None-Match) to one.
_NOT_IMPLEMENTED = (501, "Not Implemented", "NotImplemented",
                    "A header you provided implies functionality that is not implemented.")
_CONDITIONAL_HEADERS = ("If-Match", "If-None-Match")


@dataclass
class ProxyStats:
    """What the proxy did so far. Read it after the traffic is over (counters are updated under a lock)."""

    requests: int = 0  # requests received, faulted or not
    forwarded: int = 0  # requests sent upstream (delayed ones included)
    failures: int = 0  # answered with an S3 5xx without forwarding
    resets: int = 0  # connection reset without forwarding
    delays: int = 0  # forwarded after a pause
    upstream_errors: int = 0  # the upstream itself could not be reached (answered 502)
    faulted_methods: Counter[str] = field(default_factory=Counter)  # failures + resets, by HTTP method
    log: list[tuple[str, str, str]] = field(default_factory=list)  # (method, path, outcome) per request

    def forwarded_paths(self, method: str | None = None) -> list[str]:
        """The URL paths (no query) of the requests that reached the upstream, optionally of one method."""
        return [urllib.parse.urlsplit(path).path for verb, path, outcome in self.log
                if outcome in ("forward", "delay") and method in (None, verb)]


class FlakyS3Proxy:
    """Context manager: a threaded loopback proxy to `upstream` (e.g. 'http://127.0.0.1:5000').

    `failure_rate` of the requests fail (about half 5xx, half connection resets); a further `delay_rate`
    are forwarded after 50-200 ms. The choices come from one `random.Random(seed)`, drawn in arrival order,
    so a single-threaded client sees the same faults on every run.
    """

    def __init__(self, upstream: str, failure_rate: float = 0.1, delay_rate: float = 0.1, seed: int = 0,
                 delay_seconds: tuple[float, float] = (0.05, 0.2), refuse_conditional: bool = False) -> None:
        if not 0.0 <= failure_rate <= 1.0 or not 0.0 <= delay_rate <= 1.0 - failure_rate:
            raise ValueError("need 0 <= failure_rate, delay_rate and failure_rate + delay_rate <= 1")
        target = urllib.parse.urlsplit(upstream)
        if target.scheme != "http" or not target.hostname:
            raise ValueError(f"upstream must be an http:// URL, got {upstream!r}")
        self.upstream_host = target.hostname
        self.upstream_port = target.port or 80
        self.failure_rate = failure_rate
        self.delay_rate = delay_rate
        self.delay_seconds = delay_seconds
        self.refuse_conditional = refuse_conditional  # answer conditional writes 501, as some S3 stores do
        self.stats = ProxyStats()
        self._random = random.Random(seed)
        self._lock = threading.Lock()
        self._connections: set[socket.socket] = set()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def endpoint(self) -> str:
        if self._server is None:
            raise RuntimeError("the proxy is not running (use it as a context manager)")
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> Self:
        proxy = self

        class Handler(_ProxyHandler):
            owner = proxy

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="flaky-s3", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        """Stop serving and drop every open client connection (idle keep-alive ones would hold threads)."""
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        with self._lock:
            connections, self._connections = list(self._connections), set()
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self.close()

    def _decide(self) -> tuple[str, float]:
        """(outcome, pause) for the next request, from the seeded stream.

        The outcome is 'slow_down' or 'internal_error' (a 5xx), 'reset', 'delay' or 'forward'.
        """
        with self._lock:
            draw = self._random.random()
            if draw < self.failure_rate:
                kind = self._random.random()
                return ("reset" if kind < 0.5 else "slow_down" if kind < 0.75 else "internal_error"), 0.0
            if draw < self.failure_rate + self.delay_rate:
                return "delay", self._random.uniform(*self.delay_seconds)
            return "forward", 0.0

    def _record(self, method: str, path: str, outcome: str) -> None:
        with self._lock:
            stats = self.stats
            stats.log.append((method, path, outcome))
            if outcome in _FAULT_ANSWERS:
                stats.failures += 1
            elif outcome == "reset":
                stats.resets += 1
            elif outcome == "upstream_error":
                stats.upstream_errors += 1
            if outcome in _FAULT_ANSWERS or outcome == "reset":
                stats.faulted_methods[method] += 1

    def _count(self, name: str) -> None:
        with self._lock:
            setattr(self.stats, name, getattr(self.stats, name) + 1)


class _ProxyHandler(BaseHTTPRequestHandler):
    """One client connection: HTTP/1.1 keep-alive, one upstream connection per request."""

    protocol_version = "HTTP/1.1"  # keep-alive and chunked request bodies, like a real S3 endpoint
    owner: FlakyS3Proxy
    timeout = 120  # an idle client connection is closed after this many seconds

    def setup(self) -> None:
        super().setup()
        with self.owner._lock:
            self.owner._connections.add(self.connection)

    def finish(self) -> None:
        with self.owner._lock:
            self.owner._connections.discard(self.connection)
        super().finish()

    def log_message(self, format: str, *args: object) -> None:
        """Silent: a test run makes hundreds of requests."""

    def _read_body(self) -> bytes:
        """The request body exactly as it came on the wire (chunk framing and trailers included)."""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            raw = bytearray()
            while True:
                size_line = self.rfile.readline(65537)
                raw += size_line
                size = int(size_line.split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    while True:  # trailer fields, then the empty line that ends the message
                        line = self.rfile.readline(65537)
                        raw += line
                        if line in (b"\r\n", b"\n", b""):
                            return bytes(raw)
                raw += self.rfile.read(size + 2)  # the chunk and its CRLF
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _proxy(self) -> None:
        owner = self.owner
        owner._count("requests")
        body = self._read_body()  # always read in full: a fault must not leave bytes in the pipe
        if owner.refuse_conditional and self.command in ("PUT", "DELETE") and any(
                name in self.headers for name in _CONDITIONAL_HEADERS):
            owner._record(self.command, self.path, "not_implemented")
            self._answer_fault(*_NOT_IMPLEMENTED)
            return
        outcome, pause = owner._decide()
        owner._record(self.command, self.path, outcome)
        if outcome == "reset":
            self._reset()
            return
        if outcome in _FAULT_ANSWERS:
            self._answer_fault(*_FAULT_ANSWERS[outcome])
            return
        if outcome == "delay":
            owner._count("delays")
            time.sleep(pause)
        self._forward(body)

    do_GET = do_HEAD = do_PUT = do_POST = do_DELETE = do_PATCH = do_OPTIONS = _proxy

    def _reset(self) -> None:
        """Close with SO_LINGER 0: the kernel sends RST, so the client sees 'connection reset by peer'."""
        self.close_connection = True
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.rfile.close()  # the buffered reader holds a reference: the socket closes only once it is gone
        self.connection.close()  # the unbuffered writer holds none; the server's own close is then a no-op

    def _answer_fault(self, status: int, reason: str, code: str, message: str) -> None:
        request_id = f"flaky-{uuid.uuid4().hex[:16]}"
        body = (
            '<?xml version="1.0" encoding="UTF-8"?>\n'
            f"<Error><Code>{code}</Code><Message>{message}</Message>"
            f"<Resource>{self.path}</Resource><RequestId>{request_id}</RequestId></Error>"
        ).encode()
        payload = b"" if self.command == "HEAD" else body
        self.send_response_only(status, reason)
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", str(len(payload)))
        self.send_header("x-amz-request-id", request_id)
        self.end_headers()
        self.wfile.write(payload)

    def _forward(self, body: bytes) -> None:
        owner = self.owner
        upstream = http.client.HTTPConnection(owner.upstream_host, owner.upstream_port, timeout=120)
        try:
            upstream.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
            named = {token.strip().lower() for token in self.headers.get("Connection", "").split(",")}
            for name, value in self.headers.items():  # Host included, as the client signed it
                if name.lower() not in _HOP_BY_HOP and name.lower() not in named:
                    upstream.putheader(name, value)
            upstream.endheaders(body or None)
            response = upstream.getresponse()
            content = response.read()  # de-chunked by http.client; re-sent with a Content-Length
            headers = response.getheaders()
            owner._count("forwarded")
        except OSError as error:
            owner._record(self.command, self.path, "upstream_error")
            self.send_error(502, f"upstream unreachable: {error}")
            return
        finally:
            upstream.close()
        bodiless = self.command == "HEAD" or response.status in (204, 304) or response.status < 200
        self.send_response_only(response.status, response.reason)
        for name, value in headers:
            lowered = name.lower()
            if lowered in _HOP_BY_HOP or lowered == "transfer-encoding":
                continue
            if lowered == "content-length" and not bodiless:
                continue  # replaced below by the length of what is actually sent
            self.send_header(name, value)
        if not bodiless:
            self.send_header("Content-Length", str(len(content)))
        self.end_headers()
        if not bodiless:
            self.wfile.write(content)
