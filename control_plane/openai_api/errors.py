"""API errors in the OpenAI shape: `{"error": {"message", "type", "param", "code"}}`.

One exception type, `ApiError`, carries the HTTP status and the body fields; the helpers below
build the kinds the gateway returns. Types and codes:

    400 invalid_request_error      (code per case, e.g. context_length_exceeded, or null)
    401 authentication_error       code invalid_api_key
    404 not_found_error            code model_not_found
    429 rate_limit_error           code rate_limit_exceeded, with a Retry-After header
    500 server_error               code internal_error
    503 service_unavailable_error  code service_unavailable, Retry-After when given
    504 timeout_error              code deadline_exceeded

`grpc_status` names the gRPC status of the same error, so gRPC Generate maps errors the same way.
Messages never include API keys or request bodies beyond the offending value.
"""

from __future__ import annotations

import math
from typing import Any

GRPC_STATUS_BY_HTTP = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    404: "NOT_FOUND",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}


class ApiError(Exception):
    """An error answered to the client; `status` is the HTTP status."""

    def __init__(
        self,
        status: int,
        message: str,
        type: str = "invalid_request_error",  # the OpenAI field name
        param: str | None = None,
        code: str | None = None,
        retry_after_s: float | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.retry_after_s = retry_after_s

    def to_dict(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }

    def headers(self) -> dict[str, str]:
        """Extra HTTP headers: Retry-After (whole seconds, at least 1) when a retry time is set."""
        if self.retry_after_s is None:
            return {}
        return {"Retry-After": str(max(1, math.ceil(self.retry_after_s)))}

    @property
    def grpc_status(self) -> str:
        return GRPC_STATUS_BY_HTTP.get(self.status, "UNKNOWN")

    def __repr__(self) -> str:
        return f"ApiError({self.status}, {self.message!r}, param={self.param!r})"


def invalid_request(message: str, param: str | None = None, code: str | None = None) -> ApiError:
    return ApiError(400, message, "invalid_request_error", param, code)


def authentication_error(message: str = "Invalid or missing API key.") -> ApiError:
    return ApiError(401, message, "authentication_error", None, "invalid_api_key")


def model_not_found(model: str) -> ApiError:
    message = f"The model '{model}' does not exist or you do not have access to it."
    return ApiError(404, message, "not_found_error", "model", "model_not_found")


def rate_limited(retry_after_s: float, message: str | None = None) -> ApiError:
    text = message or "The server is overloaded; retry after the time given in Retry-After."
    return ApiError(429, text, "rate_limit_error", None, "rate_limit_exceeded", retry_after_s)


def server_error(
    message: str = "The server had an error while processing the request.",
) -> ApiError:
    return ApiError(500, message, "server_error", None, "internal_error")


def service_unavailable(message: str, retry_after_s: float | None = None) -> ApiError:
    return ApiError(
        503, message, "service_unavailable_error", None, "service_unavailable", retry_after_s
    )


def deadline_exceeded(message: str = "The request did not finish within its deadline.") -> ApiError:
    return ApiError(504, message, "timeout_error", None, "deadline_exceeded")
