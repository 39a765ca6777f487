"""The baseline: a bare Starlette + uvicorn + aiohttp forwarder with no features at all.

It reads the body, POSTs it to the same path on the upstream over one shared keep-alive ClientSession and
returns the bytes; an SSE answer is passed through chunk by chunk as it arrives. No auth, no routing, no
limits, no records: what any Python gateway on this stack costs before it does anything.

    python -m bench.forwarder --port 9000 --upstream http://127.0.0.1:8000
"""

from __future__ import annotations

import argparse
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import aiohttp
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

_PASS_HEADERS = ("authorization", "content-type", "accept")


def create_app(upstream: str) -> Starlette:
    upstream = upstream.rstrip("/")
    state: dict[str, aiohttp.ClientSession] = {}

    @asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=60)
        async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(None)) as session:
            state["session"] = session
            yield

    async def forward(request: Request) -> Response:
        body = await request.body()
        headers = {k: v for k, v in request.headers.items() if k in _PASS_HEADERS}
        resp = await state["session"].post(upstream + request.url.path, data=body, headers=headers)
        media_type = resp.headers.get("content-type", "application/json")
        if media_type.startswith("text/event-stream"):

            async def relay() -> AsyncIterator[bytes]:
                try:
                    async for chunk in resp.content.iter_any():
                        yield chunk
                finally:
                    resp.release()

            return StreamingResponse(relay(), status_code=resp.status, media_type=media_type)
        async with resp:
            data = await resp.read()
        return Response(data, status_code=resp.status, media_type=media_type)

    async def health(_: Request) -> Response:
        return PlainTextResponse("ok")

    routes = [Route("/health", health), Route("/{path:path}", forward, methods=["POST"])]
    return Starlette(routes=routes, lifespan=lifespan)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True, help="base URL; the request path is appended")
    args = parser.parse_args()
    uvicorn.run(
        create_app(args.upstream),
        host="127.0.0.1",
        port=args.port,
        workers=1,
        access_log=False,
        log_level="warning",
        backlog=4096,
    )


if __name__ == "__main__":
    main()
