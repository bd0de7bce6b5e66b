"""One error handler for both apps: every failure leaves as a JSON error in
the wire shape of the face it was asked through (OpenAI's
`{"error": {"message", "type", "param", "code"}}` unless a face registered
its own for the requests it answers), never as a stack trace."""
from __future__ import annotations

from typing import Any, Callable, Optional

from flask import Flask, Request, jsonify, request
from pydantic import BaseModel
from werkzeug.exceptions import HTTPException, MethodNotAllowed

from ..core.exceptions import ServiceError, error_body
from ..utils.logger import logger

_HTTP_ERROR_TYPES = {404: ("not_found", "invalid_request_error"),
                     405: ("method_not_allowed", "invalid_request_error"),
                     413: ("payload_too_large", "invalid_request_error")}


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: Optional[str] = None
    code: Optional[str] = None


class ErrorBody(BaseModel):
    """OpenAI's error shape, the one every face starts from."""

    error: ErrorDetail


# (is the request the face's?, render(status, OpenAI-shaped body) -> that face's body,
#  the model of that body)
Renderer = Callable[[int, dict[str, Any]], dict[str, Any]]
Claims = Callable[[Request], bool]
_FACE_SHAPES: list[tuple[Claims, Renderer, type[BaseModel]]] = []


def register_error_shape(claims: Claims, render: Renderer, model: type[BaseModel]) -> None:
    """Errors of the requests `claims` recognises are rendered by `render`,
    in the shape of `model` (what /openapi.json says of them)."""
    if all(c is not claims for c, _, _ in _FACE_SHAPES):
        _FACE_SHAPES.append((claims, render, model))


def error_model(req: Request) -> type[BaseModel]:
    for claims, _, model in _FACE_SHAPES:
        if claims(req):
            return model
    return ErrorBody


def error_response(status: int, body: dict[str, Any]):
    for claims, render, _ in _FACE_SHAPES:
        if claims(request):
            return jsonify(render(status, body)), status
    return jsonify(body), status


def install(app: Flask) -> None:
    @app.errorhandler(ServiceError)
    def _service_error(exc: ServiceError):
        body, status = error_response(exc.status_code, exc.to_dict())
        return body, status, exc.headers

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException):
        code, kind = _HTTP_ERROR_TYPES.get(exc.code or 500, ("http_error", "invalid_request_error"))
        body, status = error_response(exc.code or 500, error_body(exc.description, kind,
                                                                  code=code))
        # a 405 says which methods the path takes
        allow = {"Allow": ", ".join(sorted(exc.valid_methods))} \
            if isinstance(exc, MethodNotAllowed) and exc.valid_methods else {}
        return body, status, allow

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception):
        logger.exception("Unhandled error")
        return error_response(500, error_body(
            "The server had an error while processing your request.", "server_error",
            code="internal_error"))
