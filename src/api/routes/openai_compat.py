"""The OpenAI routes: models, chat completions, completions."""
from __future__ import annotations

import time
from typing import Any, Iterator

from flask import Blueprint, Response, current_app, jsonify, request, stream_with_context

from ...core.exceptions import ModelNotFoundError
from ...core.model_manager import ModelManager
from ..client_connection import client_disconnected
from ..generation import (chat_response, chat_stream, completion_response, completion_stream,
                          start_chat, start_completion)
from ..request_parsing import parse_body
from ..schemas import ChatCompletionRequest, CompletionRequest

bp = Blueprint("openai", __name__)


def manager() -> ModelManager:
    return current_app.extensions["model_manager"]


def _timeout() -> float:
    return current_app.config["SETTINGS"].request_timeout


def _event_stream(lines: Iterator[str]) -> Response:
    return Response(stream_with_context(lines), mimetype="text/event-stream",
                    headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


def _model_object(model_id: str) -> dict[str, Any]:
    mgr = manager()
    entry = mgr.entries().get(model_id)
    if entry is None:
        raise ModelNotFoundError(model_id)
    engine = mgr.loaded().get(model_id)
    loaded_at = engine.status().loaded_at if engine else None
    path = entry.path
    created = loaded_at or (path.stat().st_mtime if path and path.exists() else
                            current_app.config["STARTED_AT"])
    return {"id": model_id, "object": "model", "created": int(created),
            "owned_by": entry.owned_by}


@bp.get("/v1/models")
def list_models():
    return jsonify({"object": "list",
                    "data": [_model_object(model_id) for model_id in manager().entries()]})


@bp.get("/v1/models/<path:model_id>")
def get_model(model_id: str):
    return jsonify(_model_object(model_id))


@bp.post("/v1/chat/completions")
def chat_completions():
    req = parse_body(ChatCompletionRequest)
    engine = manager().get_engine(req.model, _timeout())
    deadline = time.monotonic() + _timeout()
    job = start_chat(engine, req)
    if req.stream:
        return _event_stream(chat_stream(job, deadline, req.include_usage))
    return jsonify(chat_response(job, deadline, client_disconnected(request.environ)))


@bp.post("/v1/completions")
def completions():
    req = parse_body(CompletionRequest)
    engine = manager().get_engine(req.model, _timeout())
    deadline = time.monotonic() + _timeout()
    job = start_completion(engine, req)
    prompts = [p if isinstance(p, str) else engine.detokenize(p) for p in req.prompts()]
    if req.stream:
        return _event_stream(completion_stream(job, prompts, req.echo, deadline,
                                               req.include_usage))
    return jsonify(completion_response(job, prompts, req.echo, deadline,
                                       client_disconnected(request.environ)))
