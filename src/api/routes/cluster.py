"""The cluster API of the load-balanced mode (admin key when keys are set):
status, scaling, strategy, restarts, and remote upstreams joining and leaving."""
from __future__ import annotations

from flask import Blueprint, current_app, jsonify

from ...core.exceptions import InvalidRequestError, NotFoundError
from ...core.load_balancer import LoadBalancer
from ...utils.cluster_manager import ClusterManager
from ...utils.config import make_upstream
from ..middleware.auth import admin_only
from ..request_parsing import parse_body
from ..schemas import (ClusterRestartRequest, ClusterScaleRequest, ClusterStrategyRequest,
                       ClusterUpstreamRequest)

bp = Blueprint("cluster", __name__)


def _cluster() -> ClusterManager:
    return current_app.extensions["cluster"]


def _balancer() -> LoadBalancer:
    return current_app.extensions["balancer"]


@bp.get("/v1/cluster/status")
@admin_only
def cluster_status():
    """Every instance: health, load, latency, CPU and memory."""
    return jsonify(_cluster().status(_balancer().strategy))


@bp.post("/v1/cluster/scale")
@admin_only
def scale():
    """Add or remove local instances (removed ones finish their requests first)."""
    req = parse_body(ClusterScaleRequest)
    try:
        return jsonify(_cluster().scale(req.action, req.count))
    except ValueError as exc:
        raise InvalidRequestError(str(exc), param="count") from None


@bp.post("/v1/cluster/strategy")
@admin_only
def set_strategy():
    """Switch the load-balancing strategy."""
    req = parse_body(ClusterStrategyRequest)
    previous = _balancer().set_strategy(req.strategy)
    return jsonify({"strategy": req.strategy, "previous_strategy": previous})


@bp.post("/v1/cluster/restart")
@admin_only
def restart():
    """Restart a local instance: drained first, then started again."""
    req = parse_body(ClusterRestartRequest)
    try:
        return jsonify(_cluster().restart(req.instance_id))
    except KeyError:
        raise NotFoundError(f"No instance '{req.instance_id}'.", param="instance_id") from None
    except ValueError as exc:
        raise InvalidRequestError(str(exc), param="instance_id") from None


@bp.post("/v1/cluster/upstreams")
@admin_only
def add_upstream():
    """A remote OpenAI-compatible server joins (it takes requests once a check passes)."""
    req = parse_body(ClusterUpstreamRequest)
    try:
        spec = make_upstream(req.url, req.weight, req.api_key)
    except ValueError as exc:
        raise InvalidRequestError(str(exc), param="url") from None
    return jsonify(_cluster().add_upstream(spec).describe()), 201


@bp.delete("/v1/cluster/upstreams/<instance_id>")
@admin_only
def remove_upstream(instance_id: str):
    """A remote upstream leaves."""
    try:
        _cluster().remove_upstream(instance_id)
    except KeyError:
        raise NotFoundError(f"No instance '{instance_id}'.") from None
    except ValueError as exc:
        raise InvalidRequestError(str(exc)) from None
    return jsonify({"id": instance_id, "deleted": True})
