"""The OpenAI-compatible surface (chat completions are the pure-ASGI api/chat_asgi.py; /v1/models is the
catalog's, api/catalog.py)."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter(tags=["openai"])
_STREAM_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
