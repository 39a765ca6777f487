"""The one exception hierarchy. Every error a client sees is a PortwayError rendered as OpenAI error JSON:
{"error": {"message": ..., "type": ..., "code": ..., "param": ...}} with a fitting HTTP status.

Messages are written for clients: they never carry a secret, an upstream key or a stack trace.
"""

from __future__ import annotations

from typing import Any, ClassVar

import orjson


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


class ValidationError(PortwayError):
    status = 400
    type = "invalid_request_error"
    code = "validation_error"


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
