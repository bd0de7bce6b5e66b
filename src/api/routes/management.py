"""Management routes: health and per-model status."""
from __future__ import annotations

from dataclasses import asdict

from flask import Blueprint, current_app, jsonify

from ...core.exceptions import NotFoundError

bp = Blueprint("management", __name__)


def _manager():
    return current_app.extensions["model_manager"]


@bp.get("/health")
def health():
    mgr = _manager()
    loaded = {mid: e.status().state for mid, e in mgr.loaded().items()}
    ready = [mid for mid, state in loaded.items() if state == "ready"]
    body = {"status": "healthy" if ready else "unavailable", "models_ready": ready,
            "models_loading": mgr.loading(), "model_errors": mgr.failures(),
            "default_model": mgr.default_model_id}
    return jsonify(body), 200 if ready else 503


@bp.get("/v1/models/<path:model_id>/status")
def model_status(model_id: str):
    engine = _manager().loaded().get(model_id)
    if engine is None:
        raise NotFoundError(f"Model '{model_id}' is not loaded.", param="model",
                            code="model_not_loaded")
    return jsonify(asdict(engine.status()))
