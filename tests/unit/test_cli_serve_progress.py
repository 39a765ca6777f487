"""The start-up spinner of `portway serve` against a server whose /ready lists a provider still loading."""

from __future__ import annotations

import io
import json
import re
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from rich.console import Console

from portway.cli.serve import _watch_start
from portway.settings import Settings


class _Starting(BaseHTTPRequestHandler):
    """/health fails twice, then answers; /ready lists `local` as loading for its first three answers."""

    calls = {"/health": 0, "/ready": 0}

    def do_GET(self) -> None:
        n = self.calls[self.path] = self.calls.get(self.path, 0) + 1
        if self.path == "/health":
            status, body = (503, {}) if n <= 2 else (200, {"status": "healthy"})
        else:
            status, body = 200, {"ready": True, "loading": ["local"] if n <= 3 else []}
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Starting)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def test_waits_for_the_workers_then_for_the_local_model(server: str) -> None:
    out = io.StringIO()
    err = Console(file=out, force_terminal=True, width=120, highlight=False)
    _watch_start(err, server, Settings(host="127.0.0.1", port=8080))
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", out.getvalue())
    assert "starting workers" in text and "loading local" in text
    assert text.index("starting workers") < text.index("loading local")
    assert _Starting.calls["/health"] == 3 and _Starting.calls["/ready"] == 4
    assert "ready on http://127.0.0.1:8080; local models loaded in" in text
