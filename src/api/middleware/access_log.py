"""One line a request in api_requests.log, and the HTTP request counter.

A streamed response is logged when its stream ends, with the tokens it
produced and the status it ended with (an error event counts as its error's
status; a client that left, as 499). The prompt text is logged only with
LOG_PROMPTS=true.
"""
from __future__ import annotations

import time
from typing import Any, Optional

from flask import Flask, Response, current_app, g, request

from ...utils.logger import logger
from .. import extensions as ext

access_log = logger.bind(channel="request")


def install(app: Flask) -> None:
    @app.after_request
    def _account(response: Response) -> Response:
        entry = _entry(response)
        if response.is_streamed:
            trace = g.get("trace")
            metrics = ext.metrics()
            response.call_on_close(lambda: _write(entry, trace, metrics))
        else:
            _write(entry, g.get("trace"), ext.metrics())
        return response


def _entry(response: Response) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "request_id": g.get("request_id", "-"), "method": request.method,
        "route": request.url_rule.rule if request.url_rule else "<unmatched>",
        "path": request.path, "status": response.status_code,
        "client": request.remote_addr, "started": g.get("started", time.monotonic())}
    if g.get("client", "").startswith("key:"):  # the key's fingerprint, never the key
        entry["key"] = g.client
    if current_app.config["SETTINGS"].log_prompts and request.is_json:
        body = request.get_json(silent=True) or {}
        if isinstance(body, dict):
            entry["prompt"] = body.get("messages", body.get("prompt"))
    return entry


def _write(entry: dict[str, Any], trace: Optional[Any], metrics: Any) -> None:
    started = entry.pop("started")
    entry["latency_ms"] = round((time.monotonic() - started) * 1000, 1)
    if trace is not None:
        entry.update(model=trace.model, stream=trace.stream,
                     status=trace.status or entry["status"],
                     prompt_tokens=trace.prompt_tokens,
                     completion_tokens=trace.completion_tokens,
                     cached_tokens=trace.cached_tokens,
                     ttft_ms=round(trace.ttft * 1000, 1) if trace.ttft is not None else None)
    metrics.http_requests.labels(entry["method"], entry["route"], str(entry["status"])).inc()
    access_log.bind(**entry).info("{} {} -> {} in {:.1f} ms", entry["method"], entry["path"],
                                  entry["status"], entry["latency_ms"])
