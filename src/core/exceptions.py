"""One exception hierarchy for every error a client can see.

Each class knows its HTTP status and its OpenAI error `type` and `code`;
one Flask handler turns any of them into
`{"error": {"message", "type", "param", "code"}}`.
"""
from __future__ import annotations

from typing import Any, Optional


def error_body(message: str, error_type: str, param: Optional[str] = None,
               code: Optional[str] = None) -> dict[str, Any]:
    """OpenAI's error body: every error leaves in it (or in a face's own shape made from it)."""
    return {"error": {"message": message, "type": error_type, "param": param, "code": code}}


class ServiceError(Exception):
    status_code = 500
    error_type = "server_error"
    code: Optional[str] = None

    def __init__(self, message: str, *, param: Optional[str] = None,
                 code: Optional[str] = None, headers: Optional[dict[str, str]] = None):
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code
        self.headers = headers or {}

    def to_dict(self) -> dict[str, Any]:
        return error_body(self.message, self.error_type, self.param, self.code)


class InvalidRequestError(ServiceError):
    status_code = 400
    error_type = "invalid_request_error"


class ContextLengthExceededError(InvalidRequestError):
    code = "context_length_exceeded"

    def __init__(self, context_length: int, requested: int, *, param: str = "messages"):
        super().__init__(
            f"This model's maximum context length is {context_length} tokens, but the request "
            f"has {requested} tokens (prompt plus max_tokens). Shorten the prompt or lower max_tokens.",
            param=param)
        self.context_length = context_length
        self.requested = requested


class UnsupportedFeatureError(InvalidRequestError):
    code = "unsupported_feature"


class AuthenticationError(ServiceError):
    status_code = 401
    error_type = "authentication_error"
    code = "invalid_api_key"


class PermissionDeniedError(ServiceError):
    status_code = 403
    error_type = "permission_error"
    code = "permission_denied"


class NotFoundError(ServiceError):
    status_code = 404
    error_type = "invalid_request_error"
    code = "not_found"


class ModelNotFoundError(NotFoundError):
    code = "model_not_found"

    def __init__(self, model: str):
        super().__init__(f"The model '{model}' does not exist or is not available.",
                         param="model")


class ModelNotLoadedError(NotFoundError):
    code = "model_not_loaded"

    def __init__(self, model: str):
        super().__init__(f"The model '{model}' is not loaded (AUTO_LOAD is off): load it with "
                         f"POST /v1/models/load.", param="model")


class ConflictError(ServiceError):
    status_code = 409
    error_type = "invalid_request_error"
    code = "conflict"


class PayloadTooLargeError(ServiceError):
    status_code = 413
    error_type = "invalid_request_error"
    code = "payload_too_large"


class RateLimitError(ServiceError):
    status_code = 429
    error_type = "rate_limit_error"
    code = "rate_limit_exceeded"


class ServiceUnavailableError(ServiceError):
    status_code = 503
    error_type = "server_error"
    code = "service_unavailable"


class InsufficientStorageError(ServiceError):
    """A model pull would not fit in MODEL_BASE_PATH (its disk or MODEL_STORAGE_LIMIT)."""

    status_code = 507
    error_type = "server_error"
    code = "insufficient_storage"


class BadGatewayError(ServiceError):
    """A server this one depends on failed: the load balancer's instances, a model hub."""

    status_code = 502
    error_type = "server_error"
    code = "upstream_error"


class RequestTimeoutError(ServiceError):
    status_code = 504
    error_type = "server_error"
    code = "timeout"


class ClientDisconnectedError(ServiceError):
    """The client went away before its answer was ready (nginx's 499)."""

    status_code = 499
    error_type = "invalid_request_error"
    code = "client_disconnected"


class ModelLoadError(ServiceError):
    status_code = 503
    code = "model_load_failed"


class EngineError(ServiceError):
    code = "engine_error"
