"""A fake SearxNG instance: `GET /search?q=…&format=json` on a real HTTP server on 127.0.0.1 (a thread).

Answers depend only on the query: `results(q)` lists RESULTS_PER_QUERY results in SearxNG's JSON shape
(`title`, `url`, `content`, plus fields portway ignores), so a test can compare what portway hands out.
Words in the query inject faults: `fail500` (a 500), `garbage` (a 200 that is not JSON), `slow` (answers
after SLOW_SECONDS). Every request is journalled (`queries`), so a test can tell a cached answer from a
backend call.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any
from urllib.parse import parse_qs, urlsplit

RESULTS_PER_QUERY = 8
SLOW_SECONDS = 3.0


def results(query: str) -> list[dict[str, Any]]:
    slug = "-".join(query.lower().split())
    found = [
        {
            "title": f"{query} - result {i}",
            "url": f"https://example.org/{slug}/{i}",
            "content": f"Snippet {i} about {query}.",
            "engine": "fake",
            "score": 1.0 / (i + 1),
        }
        for i in range(RESULTS_PER_QUERY)
    ]
    # Entries portway must skip: no URL, and a URL that is not http(s).
    found.insert(2, {"title": "no url", "content": "x"})
    found.insert(3, {"title": "js", "url": "javascript:alert(1)", "content": "x"})
    return found


class FakeSearxng:
    def __init__(self) -> None:
        self.queries: list[dict[str, list[str]]] = []
        self._lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:  # quiet
                return

            def do_GET(self) -> None:
                parts = urlsplit(self.path)
                params = parse_qs(parts.query)
                with fake._lock:
                    fake.queries.append(params)
                if parts.path != "/search" or params.get("format") != ["json"]:
                    self._send(404, b'{"error": "not found"}')
                    return
                query = params.get("q", [""])[0]
                if "fail500" in query:
                    self._send(500, b"Internal Server Error", "text/plain")
                elif "garbage" in query:
                    self._send(200, b"<html>not json</html>", "text/html")
                else:
                    if "slow" in query:
                        time.sleep(SLOW_SECONDS)
                    body = {"query": query, "number_of_results": 0, "results": results(query)}
                    self._send(200, json.dumps(body).encode())

            def _send(self, status: int, body: bytes, content_type: str = "application/json") -> None:
                try:
                    self.send_response(status)
                    self.send_header("content-type", content_type)
                    self.send_header("content-length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (a timeout test)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def calls(self, query: str) -> int:
        with self._lock:
            return sum(1 for q in self.queries if q.get("q") == [query])

    def start(self) -> FakeSearxng:
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True, name="fake-searxng")
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(5)

    def __enter__(self) -> FakeSearxng:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
