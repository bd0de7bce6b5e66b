"""The load-balanced entry point's routes.

Requests go to one instance chosen by the balancer (src/cluster/proxy.py);
what concerns every instance is answered from all of them
(src/cluster/fanout.py): `/v1/models` merges their lists, and loading or
unloading a model goes to every local instance (remote upstreams are
someone else's servers: they are never managed from here). The entry point
answers its own `/health`, status, metrics and logs.
"""
from __future__ import annotations

import time
from typing import Any

from flask import Blueprint, current_app, g, jsonify, request

from ... import __version__
from ...cluster.fanout import Answer, call_each, merge_models, one_answer, summed_figures
from ...cluster.instance import Instance
from ...cluster.proxy import Outgoing, forward, model_of
from ...core.exceptions import ModelNotFoundError, ServiceUnavailableError
from ...utils.metrics import ADDITIVE_FIGURES, system_figures
from ...utils.names import ModelState
from .. import extensions as ext
from ..base_app import new_flask
from ..middleware.auth import admin_only
from ..openai import responses, routes as openai
from ..request_parsing import read_body
from ..openai.protocol import ModelList, ModelObject
from ..schemas import ClusterHealth, DeletedModel, ModelInfo, SystemMetrics, SystemStatus
from ..spec import public, responds
from . import custom_protocol, system

bp = Blueprint("load_balanced", __name__)

# the faces whose requests one instance answers, with routes of their own here (for the
# access log and /openapi.json); anything else goes to an instance through the catch-all
RELAYED_FACES = (openai.bp, responses.bp, custom_protocol.bp)


def relayed_routes() -> dict[str, str]:
    """Path -> endpoint of the single service's POST routes in RELAYED_FACES,
    read from those blueprints: a route added there is relayed by its name."""
    bare = new_flask(__name__)
    for blueprint in RELAYED_FACES:
        bare.register_blueprint(blueprint)
    return {rule.rule: rule.endpoint.replace(".", "_") for rule in bare.url_map.iter_rules()
            if "POST" in (rule.methods or ()) and "<" not in rule.rule}


def _read_timeout() -> float:
    # the instance ends a request at REQUEST_TIMEOUT itself; streams send keep-alives
    return current_app.config["SETTINGS"].request_timeout + 30


def relay(**path_args: Any):
    """Sent to one instance, which answers as the single service would."""
    body = read_body() if request.method in ("POST", "PUT", "PATCH") else b""
    model = path_args.get("model_id") or model_of(body)
    query = request.query_string.decode("latin-1")
    out = Outgoing(request.method, request.path + (f"?{query}" if query else ""), body,
                   dict(request.headers), model, _read_timeout())
    return forward(ext.balancer(), out, dict(request.headers), g.request_id, request.remote_addr,
                   request.environ)


relay.relays = True  # type: ignore[attr-defined]  # /openapi.json: as the instances answer
for _path, _name in relayed_routes().items():
    bp.add_url_rule(_path, endpoint=_name, view_func=relay, methods=["POST"])
bp.add_url_rule("/v1/models/<model_id:model_id>/status", endpoint="model_status", view_func=relay)
bp.add_url_rule("/<path:path>", endpoint="other", view_func=relay,
                methods=["GET", "POST", "PUT", "PATCH", "DELETE"])


def _each(instances: list[Instance], method: str, path: str, body: bytes = b"",
          timeout: float = 30.0) -> dict[str, Answer]:
    return call_each(instances, method, path, body, dict(request.headers), g.request_id,
                     request.remote_addr, timeout)


def _merged_models() -> list[dict[str, Any]]:
    instances = [i for i in ext.cluster().instances() if i.routable]
    if not instances:
        raise ServiceUnavailableError("No healthy instance to list the models of.",
                                      headers={"Retry-After": "5"})
    return merge_models(instances, _each(instances, "GET", "/v1/models"))


@bp.get("/v1/models")
@responds(ModelList)
def list_models():
    """Every model any healthy instance serves; `instances` says which."""
    return jsonify({"object": "list", "data": _merged_models()})


@bp.get("/v1/models/<model_id:model_id>")
@responds(ModelObject)
def get_model(model_id: str):
    for model in _merged_models():
        if model["id"] == model_id:
            return jsonify(model)
    raise ModelNotFoundError(model_id)


def _manage(path: str, model: str, remember: bool):
    """Load or unload on every healthy local instance; the answer of the first
    that failed (else of the first), with each instance's status."""
    cluster = ext.cluster()
    instances = [i for i in cluster.locals() if i.routable]
    if not instances:
        raise ServiceUnavailableError("No healthy local instance to manage models on.",
                                      headers={"Retry-After": "5"})
    body = read_body() if request.method == "POST" else b""
    result, status, all_ok = one_answer(_each(instances, request.method, path, body,
                                              timeout=_read_timeout()))
    if all_ok:
        if remember:
            cluster.remember_load(model, body)
        else:
            cluster.forget_load(model)
    cluster.check_soon()  # their model lists changed
    return jsonify(result), status


@bp.post("/v1/models/load")
@admin_only
@responds(ModelInfo, description="Loaded on every local instance (`instances`: each one's status)")
def load_model():
    """Load a model on every local instance (and on those started later)."""
    body = request.get_json(silent=True)
    name = body.get("model_name") if isinstance(body, dict) else None
    return _manage("/v1/models/load", str(name or ""), True)


@bp.delete("/v1/models/<model_id:model_id>/unload")
@admin_only
@responds(ModelInfo)
def unload_model(model_id: str):
    return _manage(request.full_path.rstrip("?"), model_id, False)


@bp.delete("/v1/models/<model_id:model_id>")
@admin_only
@responds(DeletedModel)
def delete_model(model_id: str):
    return _manage(request.full_path.rstrip("?"), model_id, False)


@bp.get("/health")
@public
@responds(ClusterHealth)
@responds(ClusterHealth, status=503, description="No instance takes requests")
def health():
    """200 while at least one instance takes requests."""
    instances = ext.cluster().instances()
    healthy = [i for i in instances if i.routable]
    ready = sorted({m for i in healthy for m, state in i.models.items()
                    if state == ModelState.READY})
    body = {"status": "healthy" if healthy else "unavailable", "mode": "load_balance",
            "healthy_instances": len(healthy), "total_instances": len(instances),
            "models_ready": ready}
    return jsonify(body), 200 if healthy else 503


@bp.get("/v1/system/status")
@responds(SystemStatus)
def system_status():
    settings = current_app.config["SETTINGS"]
    return jsonify({"status": "ok", "version": __version__, "mode": "load_balance",
                    "uptime_seconds": round(time.time() - current_app.config["STARTED_AT"], 1),
                    "cluster": ext.cluster().status(ext.balancer().strategy),
                    "security": system.security_summary(settings)})


def _summed_inference(instances: list[Instance]) -> dict[str, Any]:
    """The healthy instances' inference figures added up (those that answer
    in 3 s). Totals drop when an instance restarts: a reader taking
    differences counts a drop as zero."""
    answers = _each([i for i in instances if i.routable], "GET", "/v1/system/metrics",
                    timeout=3.0)
    return summed_figures(answers, ADDITIVE_FIGURES)


@bp.get("/v1/system/metrics")
@responds(SystemMetrics)
def system_metrics():
    metrics = ext.metrics()
    instances = ext.cluster().instances()
    return jsonify({"timestamp": time.time(), "system": system_figures(),
                    "balancer": {"uptime_seconds": round(time.time() - metrics.started, 1),
                                 "strategy": ext.balancer().strategy},
                    "inference": _summed_inference(instances),
                    "instances": [i.describe() for i in instances]})


bp.add_url_rule("/metrics", endpoint="prometheus_metrics", view_func=system.prometheus_metrics)
bp.add_url_rule("/openapi.json", endpoint="openapi_document", view_func=system.openapi_document)
bp.add_url_rule("/v1/logs/recent", endpoint="logs_recent", view_func=system.logs_recent)
