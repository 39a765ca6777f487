"""A small client for a running portway server: JSON calls and chat streams, failures as `CliError`s.

A refusal (any 4xx/5xx answer) is exit 1 with the server's own message and code; a connection that cannot be
made (or times out) is exit 3; a URL that is not http(s) is exit 2. Never a stack trace, never the key.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson

from portway.cli.common import EXIT_REFUSED, EXIT_UNREACHABLE, EXIT_USAGE, CliError, settings
from portway.identity.auth import MASTER_KEY_FILE


def resolve_key(key: str | None) -> str | None:
    """--key / PORTWAY_API_KEY (Typer reads both), else PORTWAY_MASTER_KEY, else <data dir>/master.key."""
    if key:
        return key.strip()
    from_env = os.environ.get("PORTWAY_MASTER_KEY", "").strip()
    if from_env:
        return from_env
    path: Path = settings().data_dir / MASTER_KEY_FILE
    try:
        return path.read_text(encoding="utf-8").strip() or None
    except (OSError, UnicodeDecodeError):
        return None  # not readable by this user: the caller says what to do


def _refusal(response: httpx.Response) -> CliError:
    """The server's OpenAI-shaped error as one line: `the server refused (404 not_found): message`."""
    try:
        body = orjson.loads(response.read())
    except (orjson.JSONDecodeError, httpx.HTTPError):
        body = None
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict):
        code = error.get("code") or error.get("type") or ""
        message = str(error.get("message") or "").strip()
    elif isinstance(body, dict) and isinstance(body.get("detail"), str):
        code, message = "", body["detail"]
    else:
        code, message = "", response.reason_phrase
    status = f"{response.status_code} {code}".strip()
    hint = " (set --key or PORTWAY_API_KEY)" if response.status_code == 401 else ""
    return CliError(f"the server refused ({status}): {message or 'no message'}{hint}", EXIT_REFUSED)


class Server:
    """One running portway, at `url`, called with `key` (sent only when set)."""

    def __init__(self, url: str, key: str | None, *, timeout: float = 30.0) -> None:
        url = url.strip().rstrip("/")
        if not url.startswith(("http://", "https://")):
            raise CliError(f"--url must start with http:// or https:// (got {url!r})", EXIT_USAGE)
        self.url = url
        self.key = key
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        # Read timeout per chunk, not per answer: a streamed chat may run for minutes.
        self._client = httpx.Client(
            base_url=url, headers=headers, timeout=httpx.Timeout(timeout, connect=5.0)
        )

    @classmethod
    def connect(cls, url: str, key: str | None, *, need_key: bool = True) -> Server:
        found = resolve_key(key)
        if need_key and not found:
            raise CliError(
                "no API key: pass --key, set PORTWAY_API_KEY or PORTWAY_MASTER_KEY, or run where "
                "<data dir>/master.key is readable (PORTWAY_DATA_DIR)",
                EXIT_USAGE,
            )
        return cls(url, found)

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _unreachable(self, exc: httpx.HTTPError) -> CliError:
        reason = "timed out" if isinstance(exc, httpx.TimeoutException) else type(exc).__name__
        if isinstance(exc, httpx.ConnectError):
            reason = "connection failed"
        return CliError(
            f"cannot reach the server at {self.url} ({reason}): is `portway serve` running? "
            "(set --url or PORTWAY_URL)",
            EXIT_UNREACHABLE,
        )

    def call(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        params: dict[str, Any] | None = None,
        ok: tuple[int, ...] = (),
    ) -> Any:
        """The JSON answer of one call; statuses in `ok` count as answers too (e.g. /ready's 503)."""
        query = {k: v for k, v in (params or {}).items() if v is not None}
        try:
            response = self._client.request(method, path, json=body, params=query)
        except httpx.InvalidURL as exc:
            raise CliError(f"bad --url {self.url!r}: {exc}", EXIT_USAGE) from None
        except httpx.HTTPError as exc:
            raise self._unreachable(exc) from None
        if response.status_code >= 400 and response.status_code not in ok:
            raise _refusal(response)
        try:
            return orjson.loads(response.content)
        except orjson.JSONDecodeError:
            raise CliError(f"the server at {self.url} did not answer JSON", EXIT_REFUSED) from None

    def get(self, path: str, **params: Any) -> Any:
        return self.call("GET", path, params=params)

    def post(self, path: str, body: Any = None) -> Any:
        return self.call("POST", path, body=body)

    def patch(self, path: str, body: Any) -> Any:
        return self.call("PATCH", path, body=body)

    def stream_chat(self, body: dict[str, Any]) -> Iterator[str]:
        """The text deltas of a streamed chat completion, each as soon as its SSE event arrives."""
        try:
            with self._client.stream("POST", "/v1/chat/completions", json={**body, "stream": True}) as resp:
                if resp.status_code >= 400:
                    raise _refusal(resp)
                yield from _deltas(resp.iter_lines())
        except httpx.HTTPError as exc:
            raise self._unreachable(exc) from None


def _deltas(lines: Iterator[str]) -> Iterator[str]:
    for line in lines:
        if not line.startswith("data:"):
            continue
        data = line[5:].strip()
        if data == "[DONE]":
            return
        try:
            event = orjson.loads(data)
        except orjson.JSONDecodeError:
            continue
        if not isinstance(event, dict):
            continue
        if isinstance(event.get("error"), dict):  # a stream that broke after it started
            error = event["error"]
            raise CliError(
                f"the stream failed ({error.get('code') or error.get('type')}): {error.get('message')}",
                EXIT_REFUSED,
            )
        for choice in event.get("choices") or []:
            content = (choice.get("delta") or {}).get("content") if isinstance(choice, dict) else None
            if isinstance(content, str) and content:
                yield content
