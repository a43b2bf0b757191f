"""Reading a request body: raw bytes to a JSON object, and typed field readers.

Every failure is an ApiError 400 whose `param` names the field. A field given as JSON null is
treated as absent (OpenAI accepts null for optional fields). Booleans are never numbers here,
although Python's bool is an int. An integer field accepts a float with no fractional part
(as pydantic's lax mode does in other servers); NaN and Infinity are not JSON and are refused.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from control_plane.openai_api.errors import invalid_request

Body = dict[str, Any]


def json_type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, Mapping):
        return "an object"
    return type(value).__name__


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def decode_body(raw: bytes) -> Body:
    """The request body as a JSON object; 400 for invalid UTF-8, bad JSON or a non-object."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise invalid_request(
            f"The request body is not valid UTF-8 (byte {exc.start}: {exc.reason})."
        ) from None
    if not text.strip():
        raise invalid_request("The request body is empty; expected a JSON object.")
    try:
        body = json.loads(text, parse_constant=_refuse_constant)
    except json.JSONDecodeError as exc:
        raise invalid_request(
            f"The request body is not valid JSON: {exc.msg} (line {exc.lineno} column {exc.colno})."
        ) from None
    except (ValueError, RecursionError) as exc:
        raise invalid_request(f"The request body is not valid JSON: {exc}.") from None
    if not isinstance(body, dict):
        raise invalid_request(
            f"The request body must be a JSON object, got {json_type_name(body)}."
        )
    return body


def wrong_type(name: str, expected: str, value: Any) -> Exception:
    return invalid_request(
        f"Invalid type for '{name}': expected {expected}, but got {json_type_name(value)} instead.",
        param=name,
    )


def out_of_range(name: str, message: str) -> Exception:
    return invalid_request(f"Invalid value for '{name}': {message}", param=name)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def as_integer(name: str, value: Any) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    raise wrong_type(name, "an integer", value)


class Fields:
    """Typed access to the fields of one decoded body."""

    def __init__(self, body: Mapping[str, Any]) -> None:
        self.body = body

    def present(self, name: str) -> bool:
        return self.body.get(name) is not None

    def raw(self, name: str) -> Any:
        return self.body.get(name)

    def boolean(self, name: str, default: bool) -> bool:
        value = self.body.get(name)
        if value is None:
            return default
        if not isinstance(value, bool):
            raise wrong_type(name, "a boolean", value)
        return value

    def string(self, name: str) -> str | None:
        value = self.body.get(name)
        if value is not None and not isinstance(value, str):
            raise wrong_type(name, "a string", value)
        return value

    def integer(
        self, name: str, minimum: int | None = None, maximum: int | None = None
    ) -> int | None:
        value = self.body.get(name)
        if value is None:
            return None
        number = as_integer(name, value)
        if minimum is not None and number < minimum:
            raise out_of_range(name, f"{number} is less than the minimum of {minimum}.")
        if maximum is not None and number > maximum:
            raise out_of_range(name, f"{number} is greater than the maximum of {maximum}.")
        return number

    def number(
        self, name: str, default: float, minimum: float, maximum: float, open_min: bool = False
    ) -> float:
        """A number in [minimum, maximum], or (minimum, maximum] with open_min."""
        value = self.body.get(name)
        if value is None:
            return default
        if not _is_number(value):
            raise wrong_type(name, "a number", value)
        if value < minimum or (open_min and value == minimum):
            bound = "greater than" if open_min else "at least"
            raise out_of_range(name, f"{value} must be {bound} {minimum:g}.")
        if value > maximum:
            raise out_of_range(name, f"{value} is greater than the maximum of {maximum:g}.")
        return float(value)

    def mapping(self, name: str) -> Mapping[str, Any] | None:
        value = self.body.get(name)
        if value is not None and not isinstance(value, Mapping):
            raise wrong_type(name, "an object", value)
        return value
