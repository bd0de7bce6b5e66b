"""What every protocol face does to start a request on the serving core:
find the model (the default one when a request names none), lease it, trace
the request, cap its output, and stream an answer that ends its job."""
from __future__ import annotations

import time
from typing import Any, Iterator

from flask import Response, current_app, g, request, stream_with_context

from ..core.exceptions import ClientDisconnectedError, InvalidRequestError
from ..utils.client_connection import client_disconnected
from . import extensions as ext
from .generation import Caller, Job, start_chat
from .middleware.rate_limit import token_reservation
from .request_trace import RequestTrace
from .schemas import ChatCompletionRequest


def request_timeout() -> float:
    return current_app.config["SETTINGS"].request_timeout


def event_stream(lines: Iterator[str], job: Job) -> Response:
    """A streamed answer that ends its job even when it never starts."""
    response = Response(stream_with_context(lines), mimetype="text/event-stream",
                        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    # a client gone before the first chunk: the generator never ran, end the job here
    response.call_on_close(lambda: job.close(ClientDisconnectedError.status_code))
    return response


def with_model(req: Any) -> Any:
    req.model = req.model or ext.model_manager().default_model_id
    return req


def new_caller(model: str, endpoint: str, req: Any) -> Caller:
    trace = RequestTrace(ext.metrics(), model, endpoint, req.stream, req.n)
    g.trace = trace  # for the access log line
    return Caller(g.get("client", ""), trace, client_disconnected(request.environ),
                  token_reservation())


def cap_output(req: Any) -> Any:
    """MAX_OUTPUT_TOKENS: the default max_tokens, and the most one may ask
    (a route's own default, completions' 16, is kept under it)."""
    cap = current_app.config["SETTINGS"].max_output_tokens
    if cap and req.max_tokens is None:
        req.max_tokens = cap
    elif cap and "max_tokens" not in req.model_fields_set:
        req.max_tokens = min(req.max_tokens, cap)
    elif cap and req.max_tokens > cap:
        raise InvalidRequestError(f"max_tokens is too large: {req.max_tokens}. This server "
                                  f"allows at most {cap} completion tokens.", param="max_tokens")
    return req


def start_chat_job(req: ChatCompletionRequest, endpoint: str,
                   truncate: bool = False) -> tuple[Job, float]:
    """A chat request under way on its model (the default one when it names
    none), and its deadline: what every chat-shaped route starts from."""
    cap_output(with_model(req))
    lease = ext.model_manager().acquire(req.model, request_timeout())
    deadline = time.monotonic() + request_timeout()
    return start_chat(lease, req, new_caller(lease.model_id, endpoint, req), truncate), deadline
