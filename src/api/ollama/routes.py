"""Ollama's API under `/api`: version, tags, show, ps, chat and generate
(NDJSON streams by default), embed and the older embeddings. A reply's
reasoning is `thinking`, its tool calls come whole with arguments as
objects; `keep_alive` sets how long the model stays after the answer (0:
unloaded then, negative: kept; absent: the server's MODEL_IDLE_TIMEOUT), by
the model manager's rules: the default model, which /health stands for,
always stays."""
from __future__ import annotations

import json
import time
from typing import Any, Callable, Iterator, Optional

import numpy as np
from flask import Blueprint, Request, Response, jsonify, stream_with_context

from ... import __version__
from ...core.exceptions import (ClientDisconnectedError, ConflictError, ServiceError,
                                UnsupportedFeatureError)
from ...utils.names import ModelState
from .. import errors, extensions as ext
from ..generation import Job, collect_replies, job_deltas, run_stream
from ..middleware.auth import admin_only
from ..middleware.rate_limit import token_reservation
from ..pulling import start_pull
from ..reply import Reasoning, ReplySummary
from ..request_parsing import validate_as
from ..schemas import ChatCompletionRequest, PullModelRequest
from ..serving import request_timeout, start_chat_job
from ..spec import NDJSON, accepts, responds
from ..tool_calls import Content
from .protocol import (ChatAnswer, ChatRequest, EmbedAnswer, EmbedRequest, OllamaError,
                       GenerateAnswer, GenerateRequest, LegacyEmbedding, LegacyEmbeddingsRequest,
                       ModelRequest, PullRequest, PullStatus, Running, ShowAnswer, Tags, Version)
from .translate import (HubReference, chat_body, final_counts, generate_body, hub_reference,
                        keep_alive_seconds, model_id, now_iso, render_error, tool_calls)

bp = Blueprint("ollama", __name__)
BASE_PATH = "/api"
OLLAMA_VERSION = "0.13.0"  # the Ollama API level served: clients gate features on it


def claims(req: Request) -> bool:
    """The requests whose errors take Ollama's shape."""
    return req.path.startswith(BASE_PATH + "/")


errors.register_error_shape(claims, render_error, OllamaError)


def _describe(name: str) -> dict[str, Any]:
    return ext.model_manager().describe(model_id(name))[0]


def _details(info: dict[str, Any]) -> dict[str, Any]:
    path = info.get("path") or ""
    meta = info.get("metadata") or {}
    family = meta.get("architecture") or info.get("engine") or ""
    return {"parent_model": "", "format": "gguf" if path.endswith(".gguf") else "safetensors",
            "family": family, "families": [family] if meta.get("architecture") else None,
            "parameter_size": meta.get("parameter_size") or "",
            "quantization_level": meta.get("quantization") or ""}


# this server's capability names -> Ollama's
_CAPABILITIES = {"completion": "completion", "chat": "completion", "tools": "tools",
                 "reasoning": "thinking", "embeddings": "embedding"}


def _tag(info: dict[str, Any]) -> dict[str, Any]:
    return {"name": info["id"], "model": info["id"],
            "modified_at": _iso(info.get("loaded_at") or time.time()),
            "size": info.get("size_bytes") or 0, "digest": "", "details": _details(info)}


@bp.get("/api/version")
@responds(Version)
def version():
    return jsonify({"version": OLLAMA_VERSION, "server": f"vllm-obtain {__version__}"})


@bp.get("/api/tags")
@responds(Tags)
def tags():
    """Every model this server knows, loaded or not."""
    return jsonify({"models": [_tag(info) for info in ext.model_manager().describe()]})


@bp.get("/api/ps")
@responds(Running)
def running_models():
    """The models loaded now."""
    models = []
    for info in ext.model_manager().describe():
        if info["state"] == ModelState.READY:
            models.append({**_tag(info), "expires_at": _iso(info["expires_at"] or NEVER),
                           "size_vram": 0})
    return jsonify({"models": models})


NEVER = 253402300799.0  # 9999-12-31T23:59:59Z: a model kept until it is unloaded


def _iso(epoch: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


@bp.post("/api/show")
@responds(ShowAnswer)
@accepts(ModelRequest)
def show(req: ModelRequest):
    info = _describe(req.id)
    meta = info.get("metadata")
    model_info: dict[str, Any] = {"general.name": info["id"]}
    if meta:  # what the model's files say (src/core/model_metadata.py)
        capabilities = list(dict.fromkeys(_CAPABILITIES[c] for c in meta["capabilities"]))
        arch = meta["architecture"] or "unknown"
        model_info.update({"general.architecture": arch,
                           "general.parameter_count": meta["parameters"],
                           f"{arch}.context_length": meta["context_length"],
                           f"{arch}.embedding_length": meta["embedding_length"]})
    else:
        capabilities = ["completion", "tools", "thinking"]
    return jsonify({"modelfile": "", "parameters": "", "template": "",
                    "details": _details(info), "model_info": model_info,
                    "capabilities": capabilities,
                    "modified_at": _tag(info)["modified_at"]})


def _answer_lines(job: Job, deadline: float, wrap, started: float) -> Iterator[dict[str, Any]]:
    """Ollama's objects for a job: a piece of text or thinking at a time, the
    calls whole when the reply ends, then the final object with the counts."""
    parser = job.new_parser() if job.new_parser else None
    finish: Optional[str] = None
    for _, d in job_deltas(job, deadline):
        if d is None:
            continue
        events: list[Any] = [Content(d.text)] if parser is None and d.text else []
        if parser is not None:
            events = parser.feed(d.text, d.token_count) + (parser.finish() if d.final else [])
        for e in events:
            if isinstance(e, Reasoning):
                yield wrap("", e.text, None, False)
            elif isinstance(e, Content) and e.text:
                yield wrap(e.text, None, None, False)
        if d.final:
            finish = d.finish_reason
    calls = tool_calls(parser.calls) if parser is not None and parser.calls else None
    if calls:
        yield wrap("", None, calls, False)
    trace = job.trace
    yield {**wrap("", None, None, True), "done_reason": "length" if finish == "length" else "stop",
           **final_counts(started, trace.ttft, trace.prompt_tokens, trace.completion_tokens)}


def _respond(job: Job, deadline: float, wrap, stream: bool):
    started = job.trace.started
    if not stream:
        (result,) = collect_replies(job, deadline)
        reply = result.reply or ReplySummary(content=result.text)
        calls = tool_calls(reply.calls) if reply.calls else None
        content = reply.content.strip() if calls else reply.content
        trace = job.trace
        body = {**wrap(content, reply.reasoning or None, calls, True),
                "done_reason": "length" if result.finish_reason == "length" else "stop",
                **final_counts(started, trace.ttft, trace.prompt_tokens,
                               trace.completion_tokens)}
        return jsonify(body)

    def ndjson() -> Iterator[str]:
        for obj in _answer_lines(job, deadline, wrap, started):
            yield json.dumps(obj, ensure_ascii=False) + "\n"

    def error_line(exc: ServiceError) -> str:
        return json.dumps({"error": exc.message}) + "\n"

    response = Response(stream_with_context(run_stream(job, ndjson(), error_line)),
                        mimetype="application/x-ndjson")
    response.call_on_close(lambda: job.close(ClientDisconnectedError.status_code))
    return response


def _serve(req: Any, empty: bool, body: Callable[[], dict[str, Any]], endpoint: str,
           wrap: Callable[..., dict[str, Any]]):
    keep = keep_alive_seconds(req.keep_alive)
    if empty and keep == 0:  # Ollama: nothing to answer and keep_alive 0 unloads
        name = model_id(req.model)
        if name != ext.model_manager().default_model_id:
            ext.model_manager().unload(name)
        return jsonify({**wrap("", None, None, True), "done_reason": "unload"})
    if empty:  # nothing to answer: the model is only loaded
        with ext.model_manager().acquire(model_id(req.model), request_timeout()) as lease:
            lease.keep_for(keep)
        return jsonify({**wrap("", None, None, True), "done_reason": "load"})
    job, deadline = start_chat_job(validate_as(ChatCompletionRequest, body()), endpoint)
    job.lease.keep_for(keep)  # counted from the end of this answer
    return _respond(job, deadline, wrap, req.stream)


@bp.post("/api/chat")
@responds(ChatAnswer, NDJSON)
@accepts(ChatRequest)
def chat(req: ChatRequest):

    def wrap(text: str, thinking: Optional[str], calls: Optional[list], done: bool):
        message: dict[str, Any] = {"role": "assistant", "content": text}
        if thinking:
            message["thinking"] = thinking
        if calls:
            message["tool_calls"] = calls
        return {"model": req.model, "created_at": now_iso(), "message": message, "done": done}

    return _serve(req, not req.messages, lambda: chat_body(req), "ollama_chat", wrap)


@bp.post("/api/generate")
@responds(GenerateAnswer, NDJSON)
@accepts(GenerateRequest)
def generate(req: GenerateRequest):

    def wrap(text: str, thinking: Optional[str], calls: Optional[list], done: bool):
        body: dict[str, Any] = {"model": req.model, "created_at": now_iso(), "response": text,
                                "done": done}
        if thinking:
            body["thinking"] = thinking
        return body

    return _serve(req, not req.prompt, lambda: generate_body(req), "ollama_generate", wrap)


@bp.post("/api/pull")
@responds(PullStatus, NDJSON)
@accepts(PullRequest)
def pull(req: PullRequest):
    """A hub name (hf.co/owner/repo:Q4_K_M, modelscope.cn/...) is downloaded
    when ALLOW_MODEL_DOWNLOADS is on; a model this server knows is made ready
    (loaded). Streams Ollama's status lines unless `stream` is false."""
    reference = hub_reference(req.id)
    if reference is not None:
        return _pull_from_hub(reference, req.stream)
    name = model_id(req.id)
    ext.model_manager().describe(name)  # 404 for a model this server does not know

    def load() -> None:
        with ext.model_manager().acquire(name, request_timeout()):
            pass

    if not req.stream:
        load()
        return jsonify({"status": "success"})

    def lines() -> Iterator[str]:
        yield json.dumps({"status": "pulling manifest"}) + "\n"
        try:
            load()
        except ServiceError as exc:
            yield json.dumps({"error": exc.message}) + "\n"
            return
        for status in ("verifying sha256 digest", "writing manifest", "success"):
            yield json.dumps({"status": status}) + "\n"

    return Response(stream_with_context(lines()), mimetype="application/x-ndjson")


def _pull_from_hub(reference: HubReference, stream: bool):
    try:
        pull = start_pull(PullModelRequest(source=reference.source, repo=reference.repo,
                                           quantization=reference.quantization,
                                           name=reference.local_id))
    except ConflictError as exc:
        if exc.code != "model_exists":
            raise
        pull = None  # pulled before: nothing to fetch
    if not stream:
        final = list(ext.model_pulls().follow(reference.local_id))[-1] if pull else None
        if final and final["status"] != "success":
            return jsonify({"error": final["error"] or f"pull {final['status']}"}), 500
        return jsonify({"status": "success"})

    def lines() -> Iterator[str]:
        yield json.dumps({"status": "pulling manifest"}) + "\n"
        final = None
        for final in (ext.model_pulls().follow(reference.local_id) if pull else []):
            file = final["files"][0] if final["files"] else {}
            yield json.dumps({"status": f"pulling {final['current_file'] or file.get('path')}",
                              "digest": f"sha256:{file.get('sha256') or ''}",
                              "total": final["total"], "completed": final["completed"]}) + "\n"
        if final is not None and final["status"] != "success":
            yield json.dumps({"error": final["error"] or f"pull {final['status']}"}) + "\n"
            return
        for status in ("verifying sha256 digest", "writing manifest", "success"):
            yield json.dumps({"status": status}) + "\n"

    return Response(stream_with_context(lines()), mimetype="application/x-ndjson")


@bp.delete("/api/delete")
@admin_only
@responds(description="Unloaded and forgotten (no body)")
@accepts(ModelRequest)
def delete(req: ModelRequest):
    """The model is unloaded and a load request's registration forgotten; the
    weights stay on disk (this server never deletes model files)."""
    ext.model_manager().unload(model_id(req.id), forget=True)
    return Response(status=200)


def _embed(model: str, inputs: list[str]) -> tuple[list[list[float]], int]:
    with ext.model_manager().acquire(model_id(model), request_timeout()) as lease:
        engine = lease.engine
        if not engine.capabilities.embeddings:
            raise UnsupportedFeatureError(f"Model '{lease.model_id}' cannot compute "
                                          f"embeddings.", param="model")
        tokens = [engine.tokenize(text, add_special=True) for text in inputs]
        used = sum(len(t) for t in tokens)
        token_reservation()(used)(used)
        return engine.embed(tokens, request_timeout()), used


@bp.post("/api/embed")
@responds(EmbedAnswer)
@accepts(EmbedRequest)
def embed(req: EmbedRequest):
    started = time.monotonic()
    inputs = [req.input] if isinstance(req.input, str) else list(req.input)
    vectors, used = _embed(req.model, inputs)
    if req.dimensions:  # the first values, normalised again
        heads = [np.asarray(v[:req.dimensions], dtype=np.float32) for v in vectors]
        vectors = [(h / (np.linalg.norm(h) or 1.0)).tolist() for h in heads]
    return jsonify({"model": req.model, "embeddings": vectors,
                    "total_duration": int((time.monotonic() - started) * 1e9),
                    "load_duration": 0, "prompt_eval_count": used})


@bp.post("/api/embeddings")
@responds(LegacyEmbedding)
@accepts(LegacyEmbeddingsRequest)
def embeddings_legacy(req: LegacyEmbeddingsRequest):
    vectors, _ = _embed(req.model, [req.prompt])
    return jsonify({"embedding": vectors[0]})
