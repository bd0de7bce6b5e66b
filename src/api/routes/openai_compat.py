"""The OpenAI routes: models, chat completions, completions, embeddings; and vLLM's
/tokenize and /detokenize."""
from __future__ import annotations

import base64
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np
from flask import Blueprint, Response, current_app, g, jsonify, request, stream_with_context

from ...core.exceptions import (ClientDisconnectedError, InvalidRequestError,
                               UnsupportedFeatureError)
from ...core.model_manager import ModelManager
from ..client_connection import client_disconnected
from ..generation import (Caller, Job, chat_response, chat_stream, completion_response, completion_stream,
                          start_chat, start_completion)
from ..middleware.rate_limit import token_reservation
from ..request_parsing import parse_body
from ..request_trace import RequestTrace
from ..schemas import (ChatCompletionRequest, CompletionRequest, DetokenizeRequest,
                       EmbeddingRequest, TokenizeRequest)

bp = Blueprint("openai", __name__)


def manager() -> ModelManager:
    return current_app.extensions["model_manager"]


def _timeout() -> float:
    return current_app.config["SETTINGS"].request_timeout


def event_stream(lines: Iterator[str], job: Job) -> Response:
    """A streamed answer that ends its job even when it never starts."""
    response = Response(stream_with_context(lines), mimetype="text/event-stream",
                        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    # a client gone before the first chunk: the generator never ran, end the job here
    response.call_on_close(lambda: job.close(ClientDisconnectedError.status_code))
    return response


def _model_object(info: dict[str, Any]) -> dict[str, Any]:
    """An OpenAI model object; `state` (and `error`) tell operators whether
    it is loaded. Clients ignore the extra fields."""
    created = info["loaded_at"] or current_app.config["STARTED_AT"]
    path = info.get("path")
    if not info["loaded_at"] and path and Path(path).exists():
        created = Path(path).stat().st_mtime
    body = {"id": info["id"], "object": "model", "created": int(created),
            "owned_by": info["owned_by"], "state": info["state"]}
    if info.get("error"):
        body["error"] = info["error"]
    return body


@bp.get("/v1/models")
def list_models():
    return jsonify({"object": "list",
                    "data": [_model_object(info) for info in manager().describe()]})


@bp.get("/v1/models/<path:model_id>")
def get_model(model_id: str):
    return jsonify(_model_object(manager().describe(model_id)[0]))


def _with_model(req: Any) -> Any:
    req.model = req.model or manager().default_model_id
    return req


def _caller(model: str, endpoint: str, req: Any) -> Caller:
    trace = RequestTrace(current_app.extensions["metrics"], model, endpoint, req.stream, req.n)
    g.trace = trace  # for the access log line
    return Caller(g.get("client", ""), trace, client_disconnected(request.environ),
                  token_reservation())


def _cap_output(req: Any) -> Any:
    """MAX_OUTPUT_TOKENS: the default max_tokens, and the most one may ask."""
    cap = current_app.config["SETTINGS"].max_output_tokens
    if cap and req.max_tokens is None:
        req.max_tokens = cap
    elif cap and req.max_tokens > cap:
        raise InvalidRequestError(f"max_tokens is too large: {req.max_tokens}. This server "
                                  f"allows at most {cap} completion tokens.", param="max_tokens")
    return req


def start_chat_job(req: ChatCompletionRequest, endpoint: str,
                   truncate: bool = False) -> tuple[Job, float]:
    """A chat request under way on its model (the default one when it names
    none), and its deadline: what every chat-shaped route starts from."""
    _cap_output(_with_model(req))
    lease = manager().acquire(req.model, _timeout())
    deadline = time.monotonic() + _timeout()
    return start_chat(lease, req, _caller(lease.model_id, endpoint, req), truncate), deadline


@bp.post("/v1/chat/completions")
@bp.post("/chat/completions")  # clients configured without the /v1 prefix
def chat_completions():
    req = parse_body(ChatCompletionRequest)
    job, deadline = start_chat_job(req, "chat")
    if req.stream:
        return event_stream(chat_stream(job, req, deadline), job)
    return jsonify(chat_response(job, req, deadline))


@bp.post("/v1/completions")
@bp.post("/completions")
def completions():
    req = _cap_output(_with_model(parse_body(CompletionRequest)))
    lease = manager().acquire(req.model, _timeout())
    deadline = time.monotonic() + _timeout()
    job = start_completion(lease, req, _caller(lease.model_id, "completions", req))
    prompts = [p if isinstance(p, str) else job.engine.detokenize(p) for p in req.prompts()]
    if req.stream:
        return event_stream(completion_stream(job, req, prompts, deadline), job)
    return jsonify(completion_response(job, req, prompts, deadline))


@bp.post("/tokenize")
def tokenize():
    """vLLM's /tokenize: a prompt, or chat messages rendered with the model's template."""
    req = _with_model(parse_body(TokenizeRequest))
    with manager().acquire(req.model, _timeout()) as lease:
        engine = lease.engine
        if req.messages is not None:
            text = engine.render_chat([m.for_template() for m in req.messages],
                                      add_generation_prompt=req.add_generation_prompt)
        else:
            text = req.prompt or ""
        tokens = engine.tokenize(text, add_special=req.add_special_tokens)
        return jsonify({"count": len(tokens), "max_model_len": engine.context_length,
                        "tokens": tokens})


@bp.post("/detokenize")
def detokenize():
    req = _with_model(parse_body(DetokenizeRequest))
    with manager().acquire(req.model, _timeout()) as lease:
        return jsonify({"prompt": lease.engine.detokenize(req.tokens)})


@bp.post("/v1/embeddings")
@bp.post("/embeddings")
def embeddings():
    req = _with_model(parse_body(EmbeddingRequest))
    with manager().acquire(req.model, _timeout()) as lease:
        engine = lease.engine
        if not engine.capabilities.embeddings:
            raise UnsupportedFeatureError(f"Model '{lease.model_id}' cannot compute embeddings.",
                                          param="model")
        inputs = [x if isinstance(x, list) else engine.tokenize(x, add_special=True)
                  for x in req.inputs()]
        used = sum(len(x) for x in inputs)
        token_reservation()(used)(used)  # counted against the TPM limit, all at once
        vectors = engine.embed(inputs, _timeout())
    if req.dimensions is not None:
        vectors = [_shorten(v, req.dimensions) for v in vectors]
    data = [{"object": "embedding", "index": i,
             "embedding": _encode(v, req.encoding_format)} for i, v in enumerate(vectors)]
    return jsonify({"object": "list", "data": data, "model": req.model,
                    "usage": {"prompt_tokens": used, "total_tokens": used}})


def _shorten(vector: list[float], dimensions: int) -> list[float]:
    """The first `dimensions` values, normalised again (as OpenAI's `dimensions` does)."""
    if dimensions > len(vector):
        raise InvalidRequestError(f"dimensions must be at most {len(vector)} for this model.",
                                  param="dimensions")
    head = np.asarray(vector[:dimensions], dtype=np.float32)
    norm = float(np.linalg.norm(head))
    return (head / norm if norm > 0 else head).tolist()


def _encode(vector: list[float], encoding: str) -> Any:
    if encoding == "base64":  # little-endian float32, what the SDKs decode
        return base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode("ascii")
    return vector
