"""Management routes: health."""
from __future__ import annotations

from flask import Blueprint, current_app, jsonify

bp = Blueprint("management", __name__)


@bp.get("/health")
def health():
    mgr = current_app.extensions["model_manager"]
    loaded = {mid: e.status().state for mid, e in mgr.loaded().items()}
    ready = [mid for mid, state in loaded.items() if state == "ready"]
    body = {"status": "healthy" if ready else "unavailable", "models_ready": ready,
            "models_loading": mgr.loading(), "model_errors": mgr.failures(),
            "default_model": mgr.default_model_id}
    return jsonify(body), 200 if ready else 503
