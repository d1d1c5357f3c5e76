"""A store that answers S3 listings (ListObjectsV2) in a fixed round trip, for the listing benchmark.

moto, the S3 server the tests use, spends server CPU on every page in proportion to the whole bucket, so
on one machine more pages at once only compete for that CPU, and its numbers cannot say what listing key
ranges at once gains on S3, where a page costs a round trip whatever the bucket holds. This store keeps the
bucket's keys sorted in memory, answers each page by bisection, and waits `latency` seconds per request
(the round trip), with a thread per connection. It answers listings only: the benchmark lists through it
exactly as storage does on S3 (s3fs, signed requests), and reads nothing else.
"""

from __future__ import annotations

import bisect
import threading
import time
import urllib.parse
from collections.abc import Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from xml.sax.saxutils import escape

_PAGE_LIMIT = 1000


class ListingStore:
    """Context manager: one bucket of `keys` (empty objects) served on 127.0.0.1; `endpoint` is its URL."""

    def __init__(self, bucket: str, keys: Iterable[str], latency: float) -> None:
        self.bucket = bucket
        self.keys = sorted(keys)
        self.latency = latency
        self.requests = 0
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None

    @property
    def endpoint(self) -> str:
        assert self._server is not None, "the store is not started"
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> ListingStore:
        store = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as S3 clients use it

            def do_GET(self) -> None:  # noqa: N802 - the http.server hook
                with store._lock:
                    store.requests += 1
                time.sleep(store.latency)
                url = urllib.parse.urlsplit(self.path)
                query = dict(urllib.parse.parse_qsl(url.query, keep_blank_values=True))
                if url.path.strip("/") != store.bucket or query.get("list-type") != "2":
                    self._answer(501, b"<Error><Code>NotImplemented</Code></Error>")
                    return
                self._answer(200, store.page(query).encode())

            def do_HEAD(self) -> None:  # noqa: N802 - the http.server hook
                self._answer(200 if self.path.strip("/") == store.bucket else 404, b"")

            def _answer(self, status: int, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/xml")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def page(self, query: dict[str, str]) -> str:
        """One ListObjectsV2 page as XML: the keys under `prefix` after `start-after` / the continuation token
        (the last key or common prefix of the page before), folders folded into common prefixes when a
        `delimiter` is given."""
        prefix, delimiter = query.get("prefix", ""), query.get("delimiter", "")
        limit = min(int(query.get("max-keys", _PAGE_LIMIT)), _PAGE_LIMIT)
        token = query.get("continuation-token", "")
        after = token or query.get("start-after", "")
        skipped = token if delimiter and token.endswith(delimiter) else None  # the folder the page before ended on
        position = bisect.bisect_right(self.keys, after) if after else bisect.bisect_left(self.keys, prefix)
        contents: list[str] = []
        folders: list[str] = []
        last = ""
        while position < len(self.keys) and len(contents) + len(folders) < limit:
            key = self.keys[position]
            if not key.startswith(prefix):
                break
            if skipped is not None and key.startswith(skipped):
                position += 1
                continue
            cut = key.find(delimiter, len(prefix)) if delimiter else -1
            if cut >= 0:
                folder = key[: cut + 1]
                folders.append(folder)
                last = folder
                while position < len(self.keys) and self.keys[position].startswith(folder):
                    position += 1
                continue
            contents.append(key)
            last = key
            position += 1
        truncated = position < len(self.keys) and self.keys[position].startswith(prefix)
        parts = [
            '<?xml version="1.0" encoding="UTF-8"?>',
            '<ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">',
            f"<Name>{self.bucket}</Name><Prefix>{escape(prefix)}</Prefix><MaxKeys>{limit}</MaxKeys>",
            f"<KeyCount>{len(contents) + len(folders)}</KeyCount><IsTruncated>{str(truncated).lower()}</IsTruncated>",
        ]
        if delimiter:
            parts.append(f"<Delimiter>{escape(delimiter)}</Delimiter>")
        if truncated:
            parts.append(f"<NextContinuationToken>{escape(last)}</NextContinuationToken>")
        parts += [f"<Contents><Key>{escape(key)}</Key><LastModified>2026-01-01T00:00:00.000Z</LastModified>"
                  f'<ETag>"d41d8cd98f00b204e9800998ecf8427e"</ETag><Size>0</Size>'
                  f"<StorageClass>STANDARD</StorageClass></Contents>" for key in contents]
        parts += [f"<CommonPrefixes><Prefix>{escape(folder)}</Prefix></CommonPrefixes>" for folder in folders]
        parts.append("</ListBucketResult>")
        return "".join(parts)
