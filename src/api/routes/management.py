"""Model management routes: health, load, unload, status."""
from __future__ import annotations

from flask import Blueprint, current_app, jsonify, request

from ...core.exceptions import InvalidRequestError, ModelNotFoundError
from ...utils.names import ModelState
from .. import extensions as ext
from ..middleware.auth import admin_only
from ..pulling import downloading
from ..schemas import DeletedModel, Health, LoadModelRequest, ModelInfo
from ..spec import accepts, public, responds

bp = Blueprint("management", __name__)


@bp.get("/health")
@public
@responds(Health)
@responds(Health, status=503, description="No model is ready")
def health():
    """Liveness for load balancers: 200 while at least one model is ready."""
    mgr = ext.model_manager()
    states = mgr.states()
    ready = [mid for mid, (state, _) in states.items() if state == ModelState.READY]
    body = {"status": "healthy" if ready else "unavailable", "models_ready": ready,
            "models_loading": [mid for mid, (state, _) in states.items()
                               if state == ModelState.LOADING],
            "model_errors": {mid: err for mid, (state, err) in states.items()
                             if state == ModelState.ERROR},
            "default_model": mgr.default_model_id,
            "parallel_sequences": mgr.parallel_sequences()}
    return jsonify(body), 200 if ready else 503


@bp.post("/v1/models/load")
@admin_only
@responds(ModelInfo, description="Loaded")
@responds(ModelInfo, status=202, description="Still loading: poll its status")
@accepts(LoadModelRequest)
def load_model(req: LoadModelRequest):
    info = ext.model_manager().load(req.model_name, req.model_path, req.engine_type, req.settings(),
                           timeout=current_app.config["SETTINGS"].request_timeout)
    # still loading after the timeout: accepted, poll its status
    return jsonify(info), 202 if info["state"] == ModelState.LOADING else 200


@bp.delete("/v1/models/<model_id:model_id>/unload")
@admin_only
@responds(ModelInfo)
def unload_model(model_id: str):
    return jsonify(ext.model_manager().unload(model_id, _drain_timeout()))


@bp.delete("/v1/models/<model_id:model_id>")
@admin_only
@responds(DeletedModel)
def delete_model(model_id: str):
    """Unload, and forget a model that a load request registered."""
    ext.model_manager().unload(model_id, _drain_timeout(), forget=True)
    return jsonify({"id": model_id, "object": "model", "deleted": True})


@bp.get("/v1/models/<model_id:model_id>/status")
@responds(ModelInfo)
def model_status(model_id: str):
    """A model's state and figures; a model still being pulled is `downloading`."""
    try:
        return jsonify(ext.model_manager().describe(model_id)[0])
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
