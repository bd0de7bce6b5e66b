"""Between Ollama's API and the serving core: requests become chats (or raw
completions), `options` become sampling fields, replies become Ollama's
message objects and its final object's counts and durations (nanoseconds)."""
from __future__ import annotations

import json
import time
from datetime import datetime, timezone
from typing import Any, NamedTuple, Optional, Union

from ...core.exceptions import InvalidRequestError, UnsupportedFeatureError
from ..reply import call_arguments
from .protocol import ChatRequest, GenerateRequest, KeepAlive, OllamaMessage

# options Ollama documents -> the chat field of the same meaning
OPTION_FIELDS = {"temperature": "temperature", "top_k": "top_k", "top_p": "top_p",
                 "min_p": "min_p", "seed": "seed", "stop": "stop",
                 "repeat_penalty": "repetition_penalty", "presence_penalty": "presence_penalty",
                 "frequency_penalty": "frequency_penalty"}


# Ollama's names of models on a hub: hf.co/owner/repo[:quantization], and ModelScope's
HUB_HOSTS = {"hf.co": "huggingface", "huggingface.co": "huggingface",
             "modelscope.cn": "modelscope", "www.modelscope.cn": "modelscope"}


class HubReference(NamedTuple):
    source: str
    repo: str
    quantization: Optional[str]
    local_id: str  # the id the pulled model has here: <repo name>[-<quantization>]


def hub_reference(name: str) -> Optional[HubReference]:
    host, _, rest = name.partition("/")
    if host.lower() not in HUB_HOSTS or rest.count("/") != 1:
        return None
    repo, _, quantization = rest.partition(":")
    quantization = None if quantization in ("", "latest") else quantization
    local = repo.split("/")[1] + (f"-{quantization}" if quantization else "")
    return HubReference(HUB_HOSTS[host.lower()], repo, quantization, local)


def model_id(name: str) -> str:
    """An Ollama model name: `id` or `id:latest` name the same model here, and
    a hub name (hf.co/owner/repo:Q4_K_M) the model its pull made."""
    reference = hub_reference(name)
    if reference is not None:
        return reference.local_id
    return name[:-len(":latest")] if name.endswith(":latest") else name


def error_body(status: int, message: str) -> dict[str, Any]:
    return {"error": message}


def render_error(status: int, openai_body: dict[str, Any]) -> dict[str, Any]:
    """An error of the shared hierarchy in Ollama's wire shape."""
    return error_body(status, openai_body["error"]["message"])


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat().replace("+00:00", "Z")


def keep_alive_seconds(value: KeepAlive) -> Optional[float]:
    """Ollama's keep_alive ("5m", "1h", 300, 0, -1) in seconds; None when not given."""
    if value is None:
        return None
    if isinstance(value, (int, float)):
        return float(value)
    text = value.strip()
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    for unit in sorted(units, key=len, reverse=True):
        if text.endswith(unit) and text[:-len(unit)].lstrip("-").replace(".", "", 1).isdigit():
            return float(text[:-len(unit)]) * units[unit]
    try:
        return float(text)
    except ValueError:
        raise InvalidRequestError(f"keep_alive '{value}' is not a duration (5m, 1h, 300, 0, "
                                  f"-1).", param="keep_alive") from None


def _sampling(req: Union[ChatRequest, GenerateRequest]) -> dict[str, Any]:
    body: dict[str, Any] = {}
    options = req.options or {}
    for option, field in OPTION_FIELDS.items():
        if options.get(option) is not None:
            body[field] = options[option]
    predict = options.get("num_predict")
    if isinstance(predict, int) and predict > 0:
        body["max_tokens"] = predict
    if req.format == "json":
        body["response_format"] = {"type": "json_object"}
    elif isinstance(req.format, dict):
        body["response_format"] = {"type": "json_schema",
                                   "json_schema": {"name": "response", "schema": req.format}}
    elif req.format not in (None, ""):
        raise InvalidRequestError("format must be \"json\" or a JSON schema.", param="format")
    if req.think is False:
        body["chat_template_kwargs"] = {"enable_thinking": False}
    elif req.think is True:
        body["chat_template_kwargs"] = {"enable_thinking": True}
    elif isinstance(req.think, str):  # gpt-oss: low / medium / high
        body["reasoning_effort"] = req.think
    return body


def _message(m: OllamaMessage, i: int) -> dict[str, Any]:
    if m.images:
        raise UnsupportedFeatureError("Images are not supported by this server's models.",
                                      param=f"messages.{i}.images")
    out: dict[str, Any] = {"role": m.role, "content": m.content or ""}
    if m.tool_calls:
        out["tool_calls"] = [{"id": f"call_{i}_{j}", "type": "function", "function": {
            "name": (c.get("function") or {}).get("name", ""),
            "arguments": json.dumps((c.get("function") or {}).get("arguments") or {},
                                    ensure_ascii=False)}}
            for j, c in enumerate(m.tool_calls)]
    if m.thinking:
        out["reasoning_content"] = m.thinking
    if m.role == "tool" and m.tool_name:
        out["name"] = m.tool_name
    return out


def chat_body(req: ChatRequest) -> dict[str, Any]:
    body = {"model": model_id(req.model), "stream": req.stream,
            "messages": [_message(m, i) for i, m in enumerate(req.messages)], **_sampling(req)}
    if req.tools:
        body["tools"] = req.tools
    return body


def generate_body(req: GenerateRequest) -> dict[str, Any]:
    """/api/generate as a chat: the system prompt and the prompt as one user turn."""
    if req.images:
        raise UnsupportedFeatureError("Images are not supported by this server's models.",
                                      param="images")
    if req.suffix:
        raise UnsupportedFeatureError("suffix (fill-in-the-middle) is not supported by this "
                                      "server.", param="suffix")
    messages = [{"role": "system", "content": req.system}] if req.system else []
    messages.append({"role": "user", "content": req.prompt})
    return {"model": model_id(req.model), "stream": req.stream, "messages": messages,
            **_sampling(req)}


def tool_calls(calls: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Calls as Ollama gives them: arguments as an object."""
    return [{"function": {"name": call["name"], "arguments": call_arguments(call)}}
            for call in calls]


def final_counts(started: float, ttft: Optional[float], prompt_tokens: int,
                 completion_tokens: int) -> dict[str, Any]:
    """The counts and durations (nanoseconds) of Ollama's last object."""
    total = time.monotonic() - started
    prompt_time = ttft if ttft is not None else total
    return {"total_duration": int(total * 1e9), "load_duration": 0,
            "prompt_eval_count": prompt_tokens, "prompt_eval_duration": int(prompt_time * 1e9),
            "eval_count": completion_tokens,
            "eval_duration": int(max(total - prompt_time, 0.0) * 1e9)}
