"""Model pulls: start one (admin), follow its progress (JSON, or server-sent
events while it runs), list them, cancel one (admin; what was fetched stays
for the next pull of that model to resume)."""
from __future__ import annotations

import json
import time
from typing import Iterator

from flask import Blueprint, Response, jsonify, request, stream_with_context

from ...core.exceptions import NotFoundError
from ...core.model_pull import Pull
from .. import extensions as ext
from ..middleware.auth import admin_only
from ..pulling import start_pull
from ..schemas import PullInfo, PullList, PullModelRequest
from ..spec import accepts, responds, sse

bp = Blueprint("model_pull", __name__)


@bp.post("/v1/models/pull")
@admin_only
@responds(PullInfo, status=202, description="Started, or joined the pull of that model under way")
@responds(sse(PullInfo), description="stream: its progress until it ends, then [DONE]")
@accepts(PullModelRequest)
def pull_model(req: PullModelRequest):
    pull = start_pull(req)
    if req.stream:
        return _events(pull)
    return jsonify(pull.snapshot()), 202


@bp.get("/v1/models/pull")
@responds(PullList)
def list_pulls():
    """This process's pulls, the newest first: those under way and those that ended."""
    return jsonify({"object": "list", "data": [p.snapshot() for p in ext.model_pulls().all()]})


@bp.get("/v1/models/pull/<model_id:model_id>")
@responds(PullInfo)
@responds(sse(PullInfo), description="?stream=true: its progress until it ends, then [DONE]")
def pull_status(model_id: str):
    pull = _pull(model_id)
    if request.args.get("stream", "").lower() in ("1", "true", "yes"):
        return _events(pull)
    return jsonify(pull.snapshot())


@bp.delete("/v1/models/pull/<model_id:model_id>")
@admin_only
@responds(PullInfo)
def cancel_pull(model_id: str):
    pull = ext.model_pulls().cancel(model_id) or _pull(model_id)
    deadline = time.monotonic() + 10.0  # the transfer stops at its next chunk
    while pull.active and time.monotonic() < deadline:
        time.sleep(0.05)
    return jsonify(pull.snapshot())


def _pull(model_id: str) -> Pull:
    pull = ext.model_pulls().get(model_id)
    if pull is None:
        raise NotFoundError(f"No pull of '{model_id}' was started on this server.",
                            code="pull_not_found")
    return pull


def _events(pull: Pull) -> Response:
    def lines() -> Iterator[str]:
        for snapshot in ext.model_pulls().follow(pull.plan.model_id):
            yield f"data: {json.dumps(snapshot)}\n\n"
        yield "data: [DONE]\n\n"

    return Response(stream_with_context(lines()), mimetype="text/event-stream",
                    headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
