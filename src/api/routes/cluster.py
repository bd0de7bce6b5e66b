"""The cluster API of the load-balanced mode (admin key when keys are set):
status, scaling, strategy, restarts, and remote upstreams joining and leaving."""
from __future__ import annotations

from flask import Blueprint, jsonify

from ...core.exceptions import InvalidRequestError, NotFoundError
from ...utils.config import make_upstream
from .. import extensions as ext
from ..middleware.auth import admin_only
from ..schemas import (ClusterChange, ClusterRestartRequest, ClusterScaleRequest,
                       ClusterStrategyRequest, ClusterUpstreamRequest, Deleted)
from ..spec import accepts, responds

bp = Blueprint("cluster", __name__)


@bp.get("/v1/cluster/status")
@admin_only
@responds(ClusterChange)
def cluster_status():
    """Every instance: health, load, latency, CPU and memory."""
    return jsonify(ext.cluster().status(ext.balancer().strategy))


@bp.post("/v1/cluster/scale")
@admin_only
@responds(ClusterChange)
@accepts(ClusterScaleRequest)
def scale(req: ClusterScaleRequest):
    """Add or remove local instances (removed ones finish their requests first)."""
    try:
        return jsonify(ext.cluster().scale(req.action, req.count))
    except ValueError as exc:
        raise InvalidRequestError(str(exc), param="count") from None


@bp.post("/v1/cluster/strategy")
@admin_only
@responds(ClusterChange)
@accepts(ClusterStrategyRequest)
def set_strategy(req: ClusterStrategyRequest):
    """Switch the load-balancing strategy."""
    previous = ext.balancer().set_strategy(req.strategy)
    return jsonify({"strategy": req.strategy, "previous_strategy": previous})


@bp.post("/v1/cluster/restart")
@admin_only
@responds(ClusterChange)
@accepts(ClusterRestartRequest)
def restart(req: ClusterRestartRequest):
    """Restart a local instance: drained first, then started again."""
    try:
        return jsonify(ext.cluster().restart(req.instance_id))
    except KeyError:
        raise NotFoundError(f"No instance '{req.instance_id}'.", param="instance_id") from None
    except ValueError as exc:
        raise InvalidRequestError(str(exc), param="instance_id") from None


@bp.post("/v1/cluster/upstreams")
@admin_only
@responds(ClusterChange, status=201, description="Joined")
@accepts(ClusterUpstreamRequest)
def add_upstream(req: ClusterUpstreamRequest):
    """A remote OpenAI-compatible server joins (it takes requests once a check passes)."""
    try:
        spec = make_upstream(req.url, req.weight, req.api_key)
    except ValueError as exc:
        raise InvalidRequestError(str(exc), param="url") from None
    return jsonify(ext.cluster().add_upstream(spec).describe()), 201


@bp.delete("/v1/cluster/upstreams/<instance_id>")
@admin_only
@responds(Deleted)
def remove_upstream(instance_id: str):
    """A remote upstream leaves."""
    try:
        ext.cluster().remove_upstream(instance_id)
    except KeyError:
        raise NotFoundError(f"No instance '{instance_id}'.") from None
    except ValueError as exc:
        raise InvalidRequestError(str(exc)) from None
    return jsonify({"id": instance_id, "deleted": True})
