"""Read a JSON body into a pydantic model, or answer a clear 400."""
from __future__ import annotations

from typing import Type, TypeVar

from flask import request
from pydantic import BaseModel, ValidationError

from ..core.exceptions import InvalidRequestError

M = TypeVar("M", bound=BaseModel)


def parse_body(model: Type[M]) -> M:
    body = request.get_json(silent=True, force=True)
    if body is None:
        raise InvalidRequestError("We could not parse the JSON body of your request. The body "
                                  "must be a JSON object (Content-Type: application/json).")
    if not isinstance(body, dict):
        raise InvalidRequestError("The request body must be a JSON object.")
    return validate_as(model, body)


def validate_as(model: Type[M], data: dict) -> M:
    """`data` as `model`, or a 400 that names the first bad field."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        param = ".".join(str(p) for p in err["loc"] if not str(p).startswith("function-"))
        field = param or "body"
        if err["type"] == "missing":
            message = f"Missing required parameter: '{field}'."
        else:
            message = f"Invalid value for '{field}': {err['msg']}."
        raise InvalidRequestError(message, param=param or None) from None
