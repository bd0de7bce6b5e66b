"""The cluster API of the load-balanced mode (admin key when keys are set):
status, scaling, strategy, restarts, and remote upstreams joining and leaving."""
from __future__ import annotations

from flask import Blueprint, current_app, jsonify

from ...core.exceptions import InvalidRequestError, NotFoundError
from ...core.load_balancer import LoadBalancer
from ...utils.cluster_manager import ClusterManager
from ...utils.config import make_upstream
from ..middleware.auth import admin_only
from ..schemas import (ClusterChange, ClusterRestartRequest, ClusterScaleRequest,
                       ClusterStrategyRequest, ClusterUpstreamRequest, Deleted)
from ..spec import accepts, responds

bp = Blueprint("cluster", __name__)


def _cluster() -> ClusterManager:
    return current_app.extensions["cluster"]


def _balancer() -> LoadBalancer:
    return current_app.extensions["balancer"]


@bp.get("/v1/cluster/status")
@admin_only
@responds(ClusterChange)
def cluster_status():
    """Every instance: health, load, latency, CPU and memory."""
    return jsonify(_cluster().status(_balancer().strategy))


@bp.post("/v1/cluster/scale")
@admin_only
@responds(ClusterChange)
@accepts(ClusterScaleRequest)
def scale(req: ClusterScaleRequest):
    """Add or remove local instances (removed ones finish their requests first)."""
    try:
        return jsonify(_cluster().scale(req.action, req.count))
    except ValueError as exc:
        raise InvalidRequestError(str(exc), param="count") from None


@bp.post("/v1/cluster/strategy")
@admin_only
@responds(ClusterChange)
@accepts(ClusterStrategyRequest)
def set_strategy(req: ClusterStrategyRequest):
    """Switch the load-balancing strategy."""
    previous = _balancer().set_strategy(req.strategy)
    return jsonify({"strategy": req.strategy, "previous_strategy": previous})


@bp.post("/v1/cluster/restart")
@admin_only
@responds(ClusterChange)
@accepts(ClusterRestartRequest)
def restart(req: ClusterRestartRequest):
    """Restart a local instance: drained first, then started again."""
    try:
        return jsonify(_cluster().restart(req.instance_id))
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
    return jsonify(_cluster().add_upstream(spec).describe()), 201


@bp.delete("/v1/cluster/upstreams/<instance_id>")
@admin_only
@responds(Deleted)
def remove_upstream(instance_id: str):
    """A remote upstream leaves."""
    try:
        _cluster().remove_upstream(instance_id)
    except KeyError:
        raise NotFoundError(f"No instance '{instance_id}'.") from None
    except ValueError as exc:
        raise InvalidRequestError(str(exc)) from None
    return jsonify({"id": instance_id, "deleted": True})
