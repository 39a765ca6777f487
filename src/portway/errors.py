"""The one exception hierarchy. Every error a client sees is a PortwayError rendered as OpenAI error JSON:
{"error": {"message": ..., "type": ..., "code": ..., "param": ...}} with a fitting HTTP status.

Messages are written for clients: they never carry a secret, an upstream key or a stack trace.

`PortwayError.render()` is the one renderer (status, header pairs, body). The ways out are thin adapters
over it: `send_error` (ASGI: the hot route, the middleware, the server's own refusals), the server's raw
bytes (http/server.py) and FastAPI's handlers (app.py).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, ClassVar, NamedTuple

import orjson

Header = tuple[bytes, bytes]
_JSON: Header = (b"content-type", b"application/json")


class Rendered(NamedTuple):
    """An error answer, ready to send; a fixed answer (the 503 past capacity) is rendered once."""

    status: int
    headers: list[Header]  # content-type and content-length first, then the error's own
    body: bytes


class PortwayError(Exception):
    status: ClassVar[int] = 500
    type: ClassVar[str] = "server_error"
    code: ClassVar[str] = "internal_error"

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        headers: dict[str, str] | None = None,
        extra: dict[str, Any] | None = None,
        status: int | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.headers = headers or {}
        self.extra = extra or {}
        self.status_code = status or self.status

    def to_dict(self) -> dict[str, Any]:
        err: dict[str, Any] = {"message": self.message, "type": self.type, "code": self.code}
        err["param"] = self.param
        err.update(self.extra)
        return {"error": err}

    def body(self) -> bytes:
        return orjson.dumps(self.to_dict())

    def render(self) -> Rendered:
        body = self.body()
        headers = [_JSON, (b"content-length", b"%d" % len(body))]
        headers += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in self.headers.items()]
        return Rendered(self.status_code, headers, body)


class ValidationError(PortwayError):
    status = 400
    type = "invalid_request_error"
    code = "validation_error"


class UnsupportedParameter(ValidationError):
    """A parameter portway cannot honour here, refused rather than ignored (`param` names it)."""

    code = "unsupported_parameter"


class SessionLimitReached(ValidationError):
    """A new chat session past `history.max_sessions_per_owner` (a 400, so SDKs do not retry it)."""

    code = "session_limit_reached"


class ModelNotSupportedForEndpoint(PortwayError):
    """No target of the model can serve this endpoint's task (an embeddings model asked for speech)."""

    status = 400
    type = "invalid_request_error"
    code = "model_not_supported_for_endpoint"


class UnsupportedMediaType(PortwayError):
    """The request or an uploaded file has a content type this endpoint does not take."""

    status = 415
    type = "invalid_request_error"
    code = "unsupported_media_type"


class BadHttpRequest(PortwayError):
    status = 400
    type = "invalid_request_error"
    code = "invalid_http_request"


class HeadersTooLarge(PortwayError):
    status = 431
    type = "invalid_request_error"
    code = "request_headers_too_large"


class PayloadTooLarge(PortwayError):
    status = 413
    type = "invalid_request_error"
    code = "payload_too_large"


class InvalidApiKey(PortwayError):
    status = 401
    type = "authentication_error"
    code = "invalid_api_key"


class PermissionDenied(PortwayError):
    status = 403
    type = "permission_error"
    code = "permission_denied"


class ModelNotAllowed(PermissionDenied):
    code = "model_not_allowed"


class NotFound(PortwayError):
    status = 404
    type = "invalid_request_error"
    code = "not_found"


class ModelNotFound(NotFound):
    code = "model_not_found"


class MethodNotAllowed(PortwayError):
    status = 405
    type = "invalid_request_error"
    code = "method_not_allowed"


class RateLimited(PortwayError):
    status = 429
    type = "rate_limit_error"
    code = "rate_limit_exceeded"


class QuotaExceeded(RateLimited):
    code = "quota_exceeded"


class BudgetExceeded(RateLimited):
    code = "budget_exceeded"


class Overloaded(PortwayError):
    """Admission control refused the request: answer fast instead of queueing."""

    status = 503
    type = "server_error"
    code = "server_overloaded"


class UpstreamError(PortwayError):
    status = 502
    type = "upstream_error"
    code = "upstream_error"


class UpstreamUnavailable(UpstreamError):
    status = 503
    code = "upstream_unavailable"


class UpstreamTimeout(UpstreamError):
    status = 504
    code = "upstream_timeout"


class SearchError(UpstreamError):
    """The web search backend answered with something that is not a result list."""

    code = "search_error"


class SearchUnavailable(UpstreamError):
    """The web search backend could not be reached (or is not installed)."""

    status = 503
    code = "search_unavailable"


class SearchTimeout(UpstreamError):
    status = 504
    code = "search_timeout"


class UpstreamBadRequest(PortwayError):
    """The upstream said the request itself is wrong (400/422): the client's fault, returned as is."""

    type = "invalid_request_error"
    code = "upstream_bad_request"

    def __init__(self, message: str, *, status: int, code: str | None = None, param: str | None = None):
        super().__init__(message, status=status, param=param)
        self._code = code or self.code

    def to_dict(self) -> dict[str, Any]:
        body = super().to_dict()
        body["error"]["code"] = self._code
        return body


class ConfigError(Exception):
    """Raised at start-up for an invalid configuration; the message names the offending setting."""


# Past max_in_flight (api.middleware) or limit_concurrency (http.server): the same answer, rendered once.
OVERLOADED = Overloaded("Server is at capacity; retry shortly", headers={"Retry-After": "1"}).render()


async def send_error(
    send: Callable[[dict[str, Any]], Awaitable[None]], error: PortwayError | Rendered
) -> None:
    """Answer with an error over ASGI."""
    status, headers, body = error.render() if isinstance(error, PortwayError) else error
    # A fresh list each time: middleware (CORS) adds its headers to the one it is sent.
    await send({"type": "http.response.start", "status": status, "headers": list(headers)})
    await send({"type": "http.response.body", "body": body})
