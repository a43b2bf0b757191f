"""ApiError: the OpenAI error body, the HTTP status, Retry-After, and the gRPC status twin."""

import pytest

from control_plane.openai_api.errors import (
    ApiError,
    authentication_error,
    deadline_exceeded,
    invalid_request,
    model_not_found,
    rate_limited,
    server_error,
    service_unavailable,
)


@pytest.mark.parametrize(
    ("error", "status", "type_", "code", "grpc"),
    [
        (invalid_request("bad", "top_p"), 400, "invalid_request_error", None, "INVALID_ARGUMENT"),
        (authentication_error(), 401, "authentication_error", "invalid_api_key", "UNAUTHENTICATED"),
        (model_not_found("x"), 404, "not_found_error", "model_not_found", "NOT_FOUND"),
        (rate_limited(1.0), 429, "rate_limit_error", "rate_limit_exceeded", "RESOURCE_EXHAUSTED"),
        (server_error(), 500, "server_error", "internal_error", "INTERNAL"),
        (service_unavailable("no decode worker"), 503, "service_unavailable_error",
         "service_unavailable", "UNAVAILABLE"),
        (deadline_exceeded(), 504, "timeout_error", "deadline_exceeded", "DEADLINE_EXCEEDED"),
    ],
)  # fmt: skip
def test_error_kinds(error: ApiError, status: int, type_: str, code: str, grpc: str) -> None:
    assert (error.status, error.type, error.code, error.grpc_status) == (status, type_, code, grpc)
    body = error.to_dict()
    assert list(body) == ["error"]
    assert list(body["error"]) == ["message", "type", "param", "code"]
    assert body["error"]["message"] == error.message == str(error)


def test_invalid_request_body() -> None:
    assert invalid_request("Bad top_p.", "top_p", "bad_value").to_dict() == {
        "error": {
            "message": "Bad top_p.",
            "type": "invalid_request_error",
            "param": "top_p",
            "code": "bad_value",
        }
    }


def test_retry_after_is_whole_seconds_rounded_up() -> None:
    assert rate_limited(2.1).headers() == {"Retry-After": "3"}
    assert rate_limited(0.0).headers() == {"Retry-After": "1"}
    assert service_unavailable("draining", retry_after_s=5).headers() == {"Retry-After": "5"}
    assert service_unavailable("no workers").headers() == {}
    assert invalid_request("x").headers() == {}


def test_unknown_model_message_names_it() -> None:
    error = model_not_found("gpt-4o")
    assert error.message == "The model 'gpt-4o' does not exist or you do not have access to it."
    assert error.param == "model"
