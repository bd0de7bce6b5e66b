"""The operator's view: system status, deep health, metrics (JSON and
Prometheus) and recent logs."""
from __future__ import annotations

import time
import uuid
from typing import Any

from flask import Blueprint, Response, current_app, jsonify, request

from ... import __version__
from ...core.exceptions import InvalidRequestError, ServiceError
from ...core.inference_engine import GenerationRequest, SamplingParams
from ...utils.logger import LOG_FILES, recent_logs
from ...utils.metrics import system_figures
from .. import extensions as ext
from ..middleware.auth import admin_only, open_access_warning
from ..request_parsing import query_int
from ..schemas import DeepHealth, LogLines, OpenAPIDocument, SystemMetrics, SystemStatus
from ..spec import TEXT, responds

bp = Blueprint("system", __name__)
PROBE_TIMEOUT = 30.0  # seconds one model may take to answer the health probe
_LOG_LEVELS = ("TRACE", "DEBUG", "INFO", "SUCCESS", "WARNING", "ERROR", "CRITICAL")


@bp.get("/v1/system/status")
@responds(SystemStatus)
def system_status():
    settings = current_app.config["SETTINGS"]
    platform = ext.platform()
    return jsonify({
        "status": "ok", "version": __version__,
        "uptime_seconds": round(time.time() - current_app.config["STARTED_AT"], 1),
        "platform": platform["info"], "engine": platform["choice"],
        "default_model": ext.model_manager().default_model_id,
        "faces": current_app.config["FACES"],
        "models": ext.model_manager().describe(),
        "security": security_summary(settings),
        "limits": {"max_concurrent_models": settings.max_concurrent_models,
                   "max_batch_size": settings.max_batch_size,
                   "context_size": settings.context_size,
                   "max_concurrent_requests": settings.max_concurrent_requests,
                   "request_timeout": settings.request_timeout,
                   "auto_load": settings.auto_load,
                   "model_idle_timeout": settings.model_idle_timeout},
    })


def security_summary(settings: Any) -> dict[str, Any]:
    keys = ext.keys()
    return {"api_keys": keys.users_need_keys, "admin_key": keys.has_admin_key,
            "rate_limit_rpm": settings.rate_limit_rpm, "rate_limit_tpm": settings.rate_limit_tpm,
            "warning": open_access_warning(settings, keys)}


@bp.get("/v1/system/health")
@responds(DeepHealth)
@responds(DeepHealth, status=503, description="A model failed its probe, or none is ready")
def deep_health():
    """Every ready model answers a one-token probe; 503 if one fails or none is ready."""
    checks = {}
    for model_id in ext.model_manager().ready_models():
        checks[model_id] = _probe(model_id)
    healthy = bool(checks) and all(c["ok"] for c in checks.values())
    return jsonify({"status": "healthy" if healthy else "unhealthy", "models": checks}), \
        200 if healthy else 503


def _probe(model_id: str) -> dict[str, Any]:
    started = time.monotonic()
    try:
        with ext.model_manager().acquire(model_id, PROBE_TIMEOUT) as lease:
            tokens = lease.engine.tokenize("ping", add_special=True)
            stream = lease.engine.submit(GenerationRequest(
                f"probe-{uuid.uuid4().hex}", tokens, max_tokens=1,
                sampling=SamplingParams(temperature=0.0)))
            for delta in stream.iter_deltas(time.monotonic() + PROBE_TIMEOUT):
                if delta is not None and delta.error is not None:
                    raise delta.error
    except ServiceError as exc:
        return {"ok": False, "error": exc.message,
                "latency_ms": round((time.monotonic() - started) * 1000, 1)}
    return {"ok": True, "latency_ms": round((time.monotonic() - started) * 1000, 1)}


@bp.get("/v1/system/metrics")
@responds(SystemMetrics)
def system_metrics():
    return jsonify({"timestamp": time.time(), "system": system_figures(),
                    "inference": ext.metrics().summary(),
                    "models": [_model_figures(m) for m in ext.model_manager().describe()]})


def _model_figures(info: dict[str, Any]) -> dict[str, Any]:
    runtime = info.get("runtime") or {}
    return {"id": info["id"], "state": info["state"],
            "requests_running": runtime.get("requests_running", 0),
            "requests_waiting": runtime.get("requests_waiting", 0),
            "tokens_per_second": runtime.get("tokens_per_second", 0.0),
            "load_seconds": info["load_seconds"]}


@bp.get("/metrics")
@responds(TEXT, description="Prometheus text format")
def prometheus_metrics():
    return Response(ext.metrics().prometheus_text(),
                    mimetype="text/plain; version=0.0.4; charset=utf-8")


@bp.get("/openapi.json")
@responds(OpenAPIDocument)
def openapi_document():
    """This API described in OpenAPI 3.1."""
    from ..openapi import build_openapi  # it imports every route module

    return jsonify(build_openapi(current_app))


@bp.get("/v1/logs/recent")
@admin_only
@responds(LogLines)
def logs_recent():
    limit = query_int("limit", 100, 1, 1000)
    level = request.args.get("level")
    if level is not None and level.upper() not in _LOG_LEVELS:
        raise InvalidRequestError(f"level must be one of {', '.join(_LOG_LEVELS)}.",
                                  param="level")
    name = request.args.get("file", "app.log")
    if name not in LOG_FILES:
        raise InvalidRequestError(f"file must be one of {', '.join(LOG_FILES)}.", param="file")
    lines = recent_logs(limit, level, name, request.args.get("request_id") or None)
    return jsonify({"object": "list", "file": name, "data": lines})
