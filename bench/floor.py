"""The streaming floor of the Python stack: uvicorn answering a stream itself, with no upstream hop at all.

A raw ASGI app under uvicorn (same settings as portway: httptools, uvloop, 1 worker) that reads the body and
sends the canned stream's events at once. Its TTFT minus nginx's is what uvicorn's own request and
response handling adds before any gateway work; `bench.ab --ttft` prints it beside the others.

    python -m bench.floor --port 9001
"""

from __future__ import annotations

import argparse
from typing import Any

import uvicorn

from bench import canned

_EVENTS = [e.encode() for e in canned.stream_events()]
_HEADERS = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    if scope["method"] != "POST":
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})
        return
    more = True
    while more:
        more = (await receive()).get("more_body", False)
    await send({"type": "http.response.start", "status": 200, "headers": _HEADERS})
    for event in _EVENTS:
        await send({"type": "http.response.body", "body": event, "more_body": True})
    await send({"type": "http.response.body", "body": b"", "more_body": False})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    uvicorn.run(app, host="127.0.0.1", port=args.port, access_log=False, log_level="warning", backlog=4096)


if __name__ == "__main__":
    main()
