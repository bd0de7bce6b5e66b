"""The OpenAI routes: models, chat completions, completions, embeddings; and vLLM's
/tokenize, /detokenize and /tokenizer_info."""
from __future__ import annotations

import base64
import time
from pathlib import Path
from typing import Any

import numpy as np
from flask import Blueprint, current_app, jsonify, request

from ...core.exceptions import InvalidRequestError, UnsupportedFeatureError
from .. import extensions as ext
from ..generation import start_completion
from ..middleware.rate_limit import token_reservation
from ..schemas import ChatCompletionRequest, CompletionRequest
from ..serving import (cap_output, event_stream, new_caller, request_timeout,
                       start_chat_job, with_model)
from ..spec import accepts, responds, sse
from .protocol import (ChatCompletion, ChatCompletionChunk, Completion, CompletionChunk,
                       DetokenizeAnswer, DetokenizeRequest, EmbeddingList, EmbeddingRequest,
                       ModelList, ModelObject, TokenizeAnswer, TokenizeRequest, TokenizerInfo)
from .render import chat_response, chat_stream, completion_response, completion_stream

bp = Blueprint("openai", __name__)


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
    if info.get("metadata"):
        body["metadata"] = info["metadata"]
    return body


@bp.get("/v1/models")
@responds(ModelList)
def list_models():
    """Every model this server knows, loaded or not (Anthropic's shape for
    requests with an anthropic-version header)."""
    return jsonify({"object": "list",
                    "data": [_model_object(info) for info in ext.model_manager().describe()]})


@bp.get("/v1/models/<model_id:model_id>")
@responds(ModelObject)
def get_model(model_id: str):
    return jsonify(_model_object(ext.model_manager().describe(model_id)[0]))


@bp.post("/v1/chat/completions")
@bp.post("/chat/completions")  # clients configured without the /v1 prefix
@responds(ChatCompletion, sse(ChatCompletionChunk))
@accepts(ChatCompletionRequest)
def chat_completions(req: ChatCompletionRequest):
    job, deadline = start_chat_job(req, "chat")
    if req.stream:
        return event_stream(chat_stream(job, req, deadline), job)
    return jsonify(chat_response(job, req, deadline))


@bp.post("/v1/completions")
@bp.post("/completions")
@responds(Completion, sse(CompletionChunk))
@accepts(CompletionRequest)
def completions(req: CompletionRequest):
    cap_output(with_model(req))
    lease = ext.model_manager().acquire(req.model, request_timeout())
    deadline = time.monotonic() + request_timeout()
    job = start_completion(lease, req, new_caller(lease.model_id, "completions", req))
    prompts = [p if isinstance(p, str) else job.engine.detokenize(p) for p in req.prompts()]
    if req.stream:
        return event_stream(completion_stream(job, req, prompts, deadline), job)
    return jsonify(completion_response(job, req, prompts, deadline))


@bp.post("/tokenize")
@responds(TokenizeAnswer)
@accepts(TokenizeRequest)
def tokenize(req: TokenizeRequest):
    """vLLM's /tokenize: a prompt, or chat messages rendered with the model's template."""
    with_model(req)
    with ext.model_manager().acquire(req.model, request_timeout()) as lease:
        engine = lease.engine
        if req.messages is not None:
            text = engine.render_chat([m.for_template() for m in req.messages],
                                      add_generation_prompt=req.add_generation_prompt)
        else:
            text = req.prompt or ""
        tokens = engine.tokenize(text, add_special=req.add_special_tokens)
        return jsonify({"count": len(tokens), "max_model_len": engine.context_length,
                        "tokens": tokens})


@bp.get("/tokenizer_info")
@responds(TokenizerInfo)
def tokenizer_info():
    """vLLM's /tokenizer_info (what lm-eval's remote tokenizer reads): the
    tokenizer's settings and chat template; `?model=` picks a model."""
    name = request.args.get("model") or ext.model_manager().default_model_id
    with ext.model_manager().acquire(name, request_timeout()) as lease:
        return jsonify(lease.engine.tokenizer_info())


@bp.post("/detokenize")
@responds(DetokenizeAnswer)
@accepts(DetokenizeRequest)
def detokenize(req: DetokenizeRequest):
    with_model(req)
    with ext.model_manager().acquire(req.model, request_timeout()) as lease:
        return jsonify({"prompt": lease.engine.detokenize(req.tokens)})


@bp.post("/v1/embeddings")
@bp.post("/embeddings")
@responds(EmbeddingList)
@accepts(EmbeddingRequest)
def embeddings(req: EmbeddingRequest):
    with_model(req)
    with ext.model_manager().acquire(req.model, request_timeout()) as lease:
        engine = lease.engine
        if not engine.capabilities.embeddings:
            raise UnsupportedFeatureError(f"Model '{lease.model_id}' cannot compute embeddings.",
                                          param="model")
        inputs = [x if isinstance(x, list) else engine.tokenize(x, add_special=True)
                  for x in req.inputs()]
        used = sum(len(x) for x in inputs)
        token_reservation()(used)(used)  # counted against the TPM limit, all at once
        vectors = engine.embed(inputs, request_timeout())
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
