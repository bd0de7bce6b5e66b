"""Model management routes: health, load, unload, status."""
from __future__ import annotations

from flask import Blueprint, current_app, jsonify, request

from ...core.exceptions import InvalidRequestError, ModelNotFoundError
from ...core.model_manager import ModelManager
from ..middleware.auth import admin_only
from ..pulling import downloading
from ..schemas import DeletedModel, Health, LoadModelRequest, ModelInfo
from ..spec import accepts, public, responds

bp = Blueprint("management", __name__)


def _manager() -> ModelManager:
    return current_app.extensions["model_manager"]


@bp.get("/health")
@public
@responds(Health)
@responds(Health, status=503, description="No model is ready")
def health():
    """Liveness for load balancers: 200 while at least one model is ready."""
    mgr = _manager()
    states = mgr.states()
    ready = [mid for mid, (state, _) in states.items() if state == "ready"]
    body = {"status": "healthy" if ready else "unavailable", "models_ready": ready,
            "models_loading": [mid for mid, (state, _) in states.items() if state == "loading"],
            "model_errors": {mid: err for mid, (state, err) in states.items() if state == "error"},
            "default_model": mgr.default_model_id}
    return jsonify(body), 200 if ready else 503


@bp.post("/v1/models/load")
@admin_only
@responds(ModelInfo, description="Loaded")
@responds(ModelInfo, status=202, description="Still loading: poll its status")
@accepts(LoadModelRequest)
def load_model(req: LoadModelRequest):
    info = _manager().load(req.model_name, req.model_path, req.engine_type, req.settings(),
                           timeout=current_app.config["SETTINGS"].request_timeout)
    # still loading after the timeout: accepted, poll its status
    return jsonify(info), 202 if info["state"] == "loading" else 200


@bp.delete("/v1/models/<model_id:model_id>/unload")
@admin_only
@responds(ModelInfo)
def unload_model(model_id: str):
    return jsonify(_manager().unload(model_id, _drain_timeout()))


@bp.delete("/v1/models/<model_id:model_id>")
@admin_only
@responds(DeletedModel)
def delete_model(model_id: str):
    """Unload, and forget a model that a load request registered."""
    _manager().unload(model_id, _drain_timeout(), forget=True)
    return jsonify({"id": model_id, "object": "model", "deleted": True})


@bp.get("/v1/models/<model_id:model_id>/status")
@responds(ModelInfo)
def model_status(model_id: str):
    """A model's state and figures; a model still being pulled is `downloading`."""
    try:
        return jsonify(_manager().describe(model_id)[0])
    except ModelNotFoundError:
        pulled = downloading(model_id)
        if pulled is None:
            raise
        return jsonify(pulled)


def _drain_timeout():
    raw = request.args.get("drain_timeout")
    if raw is None:
        return None
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not 0 <= value <= 3600:
        raise InvalidRequestError("drain_timeout must be a number of seconds from 0 to 3600.",
                                  param="drain_timeout")
    return value
