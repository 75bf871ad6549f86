"""Errors in OpenAI's shape: ``{"error": {"message", "type", "code"}}``.

Every error the proxy answers goes through :class:`ProxyError`, so clients (the official
``openai`` library included) map status codes to the exceptions they know: 400
``BadRequestError``, 401 ``AuthenticationError``, 404 ``NotFoundError``, 429 ``RateLimitError``…
"""

from __future__ import annotations

import json
import math
from typing import Any


class ProxyError(Exception):
    """An HTTP error answer. ``retry_after`` (seconds) adds a ``Retry-After`` header."""

    def __init__(
        self,
        status: int,
        message: str,
        type: str = "invalid_request_error",
        code: str | None = None,
        retry_after: float | None = None,
        param: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.code = code
        self.retry_after = retry_after
        self.param = param

    def payload(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }

    def body(self) -> bytes:
        return json.dumps(self.payload()).encode()

    def sse_event(self) -> bytes:
        """The error as one server-sent event, for a stream whose 200 is already sent."""
        return b"data: " + self.body() + b"\n\n"

    def headers(self) -> list[tuple[bytes, bytes]]:
        """Response headers (ASGI form) for the error answer."""
        headers = [(b"content-type", b"application/json")]
        if self.retry_after is not None:
            headers.append((b"retry-after", retry_after_value(self.retry_after)))
        return headers


def retry_after_value(seconds: float) -> bytes:
    """``Retry-After`` takes whole seconds; round up and never say 0."""
    return str(max(1, math.ceil(seconds))).encode()


# --- the errors the proxy raises, named so call sites read well --------------------------------


def bad_request(message: str, code: str = "invalid_request", param: str | None = None):
    return ProxyError(400, message, "invalid_request_error", code, param=param)


def model_not_found(model: str) -> ProxyError:
    # OpenAI's wording: a model the key may not use looks exactly like a missing one.
    return ProxyError(
        404,
        f"The model `{model}` does not exist or you do not have access to it.",
        "invalid_request_error",
        "model_not_found",
        param="model",
    )


def not_found(message: str) -> ProxyError:
    return ProxyError(404, message, "invalid_request_error", "not_found")


def method_not_allowed(method: str, path: str, allowed: str) -> ProxyError:
    return ProxyError(
        405,
        f"{method} {path} is not supported here; use {allowed}",
        "invalid_request_error",
        "method_not_allowed",
    )


def unauthorized(message: str) -> ProxyError:
    return ProxyError(401, message, "authentication_error", "invalid_api_key")


def forbidden(message: str) -> ProxyError:
    return ProxyError(403, message, "permission_error", "insufficient_permissions")


def too_large(limit: int) -> ProxyError:
    return ProxyError(
        413,
        f"request body is larger than the limit of {limit} bytes",
        "invalid_request_error",
        "request_too_large",
    )


def queue_full(model: str, queued: int, retry_after: float) -> ProxyError:
    return ProxyError(
        429,
        f"model `{model}` is busy: {queued} requests are already waiting; retry later",
        "rate_limit_error",
        "queue_full",
        retry_after=retry_after,
    )


def cooling_down(client: str, left: float) -> ProxyError:
    """``x_cooldown``: this client asked for its requests to be spaced out."""
    return ProxyError(
        429,
        f"client `{client}` asked for x_cooldown: next request in {left:.1f} s",
        "rate_limit_error",
        "cooldown",
        retry_after=left,
    )


def queue_timeout(model: str, waited: float, retry_after: float) -> ProxyError:
    return ProxyError(
        503,
        f"model `{model}` is busy: no free slot after waiting {waited:.0f} s; retry later",
        "server_error",
        "queue_timeout",
        retry_after=retry_after,
    )


def unavailable(message: str, status: int = 503, retry_after: float = 5.0) -> ProxyError:
    return ProxyError(status, message, "server_error", "model_unavailable", retry_after=retry_after)


def backend_error(model: str, reason: str) -> ProxyError:
    return ProxyError(
        502, f"backend of `{model}` failed: {reason}", "server_error", "backend_error"
    )


def backend_timeout(model: str, reason: str) -> ProxyError:
    return ProxyError(
        502, f"backend of `{model}` timed out: {reason}", "server_error", "backend_timeout"
    )


def request_timeout(model: str, seconds: float) -> ProxyError:
    """No answer within the model's ``requestTimeout`` (its first byte)."""
    return ProxyError(
        504,
        f"{model} did not answer within {seconds:g}s (requestTimeout); the request was abandoned",
        "server_error",
        "timeout",
    )


def idle_timeout(model: str, seconds: float) -> ProxyError:
    """An answer that went silent for longer than the model's ``idleTimeout``."""
    return ProxyError(
        504,
        f"{model} sent nothing for {seconds:g}s (idleTimeout); the stream was ended",
        "server_error",
        "timeout",
    )


def internal_error(message: str) -> ProxyError:
    return ProxyError(500, message, "server_error", "internal_error")
