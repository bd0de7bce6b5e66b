"""Read a JSON body into a pydantic model, or answer a clear 400.

The body is strict JSON in UTF-8 (no NaN or Infinity), at most
MAX_JSON_DEPTH levels deep, with no NUL characters and no lone surrogates
in its strings: what the tokenizers and C engines behind could not take.
Its size is capped before it is read (MAX_REQUEST_BYTES, a 413).
"""
from __future__ import annotations

import json
from typing import Any, Type, TypeVar, Union

from flask import current_app, request
from pydantic import BaseModel, ValidationError

from ..core.exceptions import InvalidRequestError, PayloadTooLargeError

M = TypeVar("M", bound=BaseModel)
MAX_JSON_DEPTH = 64


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _check_values(body: Any) -> None:
    stack = [(body, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, str):
            if "\x00" in value:
                raise InvalidRequestError("The request contains a NUL character (\\u0000), "
                                          "which this API does not accept.")
            if not value.isascii():
                try:
                    value.encode("utf-8")
                except UnicodeEncodeError:
                    raise InvalidRequestError("The request contains a lone UTF-16 surrogate "
                                              "(an invalid \\ud800-\\udfff escape).") from None
        elif isinstance(value, (dict, list)):
            if depth > MAX_JSON_DEPTH:
                raise InvalidRequestError(f"The request body is nested more than "
                                          f"{MAX_JSON_DEPTH} levels deep.")
            items = value.items() if isinstance(value, dict) else enumerate(value)
            for key, item in items:
                stack.append((key, depth))
                stack.append((item, depth + 1))


def read_body() -> bytes:
    """The request's raw body within MAX_REQUEST_BYTES (cached for a second read)."""
    raw = request.get_data(cache=True)  # a declared length over the cap: 413 here
    limit = current_app.config.get("MAX_CONTENT_LENGTH")
    if limit and request.content_length is None and len(raw) >= limit:
        # a chunked body is cut at the cap rather than refused: refuse it here
        raise PayloadTooLargeError(f"The request body is larger than {limit} bytes.")
    return raw


def read_json() -> Any:
    """The request's body, parsed and checked (and cached for a second read)."""
    raw = read_body()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidRequestError("The request body is not valid UTF-8.") from None
    try:
        body = json.loads(text, parse_constant=_no_constants)
    except RecursionError:
        raise InvalidRequestError(f"The request body is nested more than {MAX_JSON_DEPTH} "
                                  f"levels deep.") from None
    except ValueError:
        raise InvalidRequestError("We could not parse the JSON body of your request. The body "
                                  "must be a JSON object (Content-Type: application/json).") \
            from None
    _check_values(body)
    return body


def parse_body(model: Type[M]) -> M:
    body = read_json()
    if not isinstance(body, dict):
        raise InvalidRequestError("The request body must be a JSON object.")
    return validate_as(model, body)


def validate_as(model: Type[M], data: dict) -> M:
    """`data` as `model`, or a 400 that names the bad field. Of pydantic's
    errors the one that reaches deepest into the body is named, and one
    about a value over one about its type: for a field that takes one of
    several shapes, that is the shape the client meant."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        located = [(_path_in(data, err), err) for err in exc.errors()]
        path, err = max(located, key=lambda pair: (len(pair[0]),
                                                   not pair[1]["type"].endswith("_type")))
        param = ".".join(str(p) for p in path)
        field = param or "body"
        if err["type"] == "missing":
            message = f"Missing required parameter: '{field}'."
        else:
            message = f"Invalid value for '{field}': {err['msg']}."
        raise InvalidRequestError(message, param=param or None) from None


def _path_in(data: Any, err: dict[str, Any]) -> list[Union[str, int]]:
    """The part of an error's location that is a path in the body: without
    the tags pydantic adds for union members and validators; a missing
    field's name is kept."""
    path: list[Union[str, int]] = []
    node, loc = data, err["loc"]
    for i, key in enumerate(loc):
        if isinstance(node, dict) and key in node:
            node = node[key]
        elif isinstance(node, list) and isinstance(key, int) and 0 <= key < len(node):
            node = node[key]
        elif not (err["type"] == "missing" and i == len(loc) - 1):
            continue
        path.append(key)
    return path


def query_int(name: str, default: int, low: int, high: int) -> int:
    """An integer query parameter within [low, high], or a 400 that says so."""
    try:
        value = int(request.args.get(name, str(default)))
    except ValueError:
        value = low - 1
    if not low <= value <= high:
        raise InvalidRequestError(f"{name} must be a whole number from {low} to {high}.",
                                  param=name)
    return value
