"""Starting model pulls for the faces that offer them (the management routes'
POST /v1/models/pull, Ollama's /api/pull): downloads must be allowed, the
name must be free, the source is listed, then the pull manager fetches."""
from __future__ import annotations

from typing import Any, Optional

from flask import current_app

from ..core.exceptions import ConflictError, ModelNotFoundError, PermissionDeniedError
from ..core.model_pull import Pull
from ..core.model_sources import PullPlan, plan_huggingface, plan_modelscope, plan_url
from . import extensions as ext
from .middleware.auth import require_admin
from ..utils.names import ModelState
from .schemas import PullModelRequest


def start_pull(req: PullModelRequest) -> Pull:
    settings = current_app.config["SETTINGS"]
    require_admin()
    if not settings.allow_model_downloads:
        raise PermissionDeniedError("Model downloads are off on this server: set "
                                    "ALLOW_MODEL_DOWNLOADS=true to pull models.",
                                    code="downloads_disabled")
    plan = _plan(req, settings)
    running = ext.model_pulls().get(plan.model_id)
    if (running is None or not running.active) and _known(plan.model_id):
        raise ConflictError(f"A model called '{plan.model_id}' exists already; pull it under "
                            f"another name.", param="name", code="model_exists")
    return ext.model_pulls().start(plan)


def _plan(req: PullModelRequest, settings: Any) -> PullPlan:
    if req.source == "url":
        return plan_url(req.url or "", req.name, req.sha256)
    if req.source == "modelscope":
        return plan_modelscope(req.repo or "", req.revision, req.file, req.quantization,
                               req.name, settings.modelscope_endpoint, settings.modelscope_token)
    return plan_huggingface(req.repo or "", req.revision, req.file, req.quantization, req.name,
                            settings.hf_endpoint, settings.hf_token)


def _known(model_id: str) -> bool:
    try:
        ext.model_manager().describe(model_id)
        return True
    except ModelNotFoundError:
        return False


def downloading(model_id: str) -> Optional[dict[str, Any]]:
    """A model that exists only as a pull under way, described like the others."""
    pull = ext.model_pulls().get(model_id)
    if pull is None or not pull.active:
        return None
    return {"id": model_id, "state": ModelState.DOWNLOADING, "error": None, "engine": None,
            "path": None, "size_bytes": pull.plan.total, "default": False,
            "download": pull.snapshot()}
