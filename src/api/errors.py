"""One error handler for both apps: every failure leaves as an OpenAI-shaped
`{"error": {"message", "type", "param", "code"}}`, never as a stack trace."""
from __future__ import annotations

from flask import Flask, jsonify
from werkzeug.exceptions import HTTPException

from ..core.exceptions import ServiceError
from ..utils.logger import logger

_HTTP_ERROR_TYPES = {404: ("not_found", "invalid_request_error"),
                     405: ("method_not_allowed", "invalid_request_error"),
                     413: ("payload_too_large", "invalid_request_error")}


def install(app: Flask) -> None:
    @app.errorhandler(ServiceError)
    def _service_error(exc: ServiceError):
        return jsonify(exc.to_dict()), exc.status_code, exc.headers

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException):
        code, kind = _HTTP_ERROR_TYPES.get(exc.code or 500, ("http_error", "invalid_request_error"))
        body = {"error": {"message": exc.description, "type": kind, "param": None, "code": code}}
        return jsonify(body), exc.code

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception):
        logger.exception("Unhandled error")
        body = {"error": {"message": "The server had an error while processing your request.",
                          "type": "server_error", "param": None, "code": "internal_error"}}
        return jsonify(body), 500
