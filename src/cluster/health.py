"""Health checks of the instances, beside the supervisor loop (one at a
time per instance):
  starting  -> healthy     the first check that passes
  healthy   -> unhealthy   3 failed checks in a row (after a failed check the
                           next comes within 2 s), or at once on a failed
                           request (the balancer reports it)
  unhealthy -> healthy     a check that passes
A check that began before the instance was last taken out says nothing
about it now. The first check of a fresh local instance also loads on it
the models loaded through the entry point before it started."""
from __future__ import annotations

import json
import threading
import time
from typing import Any, Optional

import urllib3

from ..utils.config import Settings
from ..utils.logger import logger
from ..utils.names import ModelState
from .instance import Instance, InstanceState, http_pool

cluster_log = logger.bind(channel="cluster")

FAILURES_TO_TAKE_OUT = 3
RECHECK_INTERVAL = 2.0  # seconds between checks of an instance that is not healthy (at most)
CHECK_TIMEOUT = 5.0
CHECKED = (InstanceState.STARTING, InstanceState.HEALTHY, InstanceState.UNHEALTHY)


class HealthChecks:
    """The supervisor's health checks (a part of ClusterManager, which holds
    the settings, the lock, the key and the loads to replay)."""

    settings: Settings
    service_key: Optional[str]
    _lock: threading.RLock
    _loads: dict[str, bytes]

    def _check(self, inst: Instance) -> None:
        process = inst.process  # an answer from a process since replaced says nothing
        began = time.monotonic()
        try:
            fresh = inst.state == InstanceState.STARTING
            error = self._probe(inst)
            if error is None and fresh and inst.local and self._loads:
                inst.replaying = True  # each load has its own time limit
                try:
                    self._replay_loads(inst)
                finally:
                    inst.replaying = False
        except Exception as exc:  # a check never brings the supervisor down
            error = f"health check failed: {exc.__class__.__name__}"
        with self._lock:
            try:
                self._checked(inst, process, error, began)
            finally:
                inst.checking = False  # under the lock: no second check counts this one's result

    def _checked(self, inst: Instance, process: Any, error: Optional[str],
                 began: float) -> None:
        """What one check, begun at `began`, means for the instance (under the lock)."""
        now = time.monotonic()
        if inst.state not in CHECKED or inst.process is not process:
            return  # draining, stopped or restarted meanwhile
        if error is None and began < inst.taken_out_at:
            inst.next_check = now  # it passed before a request failed there: check again
            return
        if error is None:
            if inst.state != InstanceState.HEALTHY:
                cluster_log.info("{} healthy ({} models)", inst.id, len(inst.models))
            inst.state, inst.failed_checks = InstanceState.HEALTHY, 0
            inst.next_check = now + self.settings.health_check_interval
            return
        recheck = min(self.settings.health_check_interval, RECHECK_INTERVAL)
        if inst.state == InstanceState.STARTING and inst.local:
            inst.next_check = now + min(recheck, 0.5)  # not a failure: it is booting
            return
        inst.last_error = error
        inst.failures += 1
        inst.failed_checks += 1
        if inst.state == InstanceState.STARTING or inst.failed_checks >= FAILURES_TO_TAKE_OUT:
            if inst.state != InstanceState.UNHEALTHY:
                cluster_log.warning("{} unhealthy: {}", inst.id, error)
            inst.state = InstanceState.UNHEALTHY
        inst.next_check = now + recheck  # a failing instance is looked at again soon

    def _probe(self, inst: Instance) -> Optional[str]:
        """None when the instance serves, else what is wrong. A local instance
        answers /health (200: a model is ready; 503 while none is loading:
        it serves and loads on demand); every server answers /v1/models."""
        if inst.local:
            status, body = self._get(inst, "/health")
            if status is None:
                return body
            loading = isinstance(body, dict) and body.get("models_loading")
            if status != 200 and (status != 503 or loading or not isinstance(body, dict)):
                return f"/health answered {status}"
            figure = body.get("parallel_sequences") if isinstance(body, dict) else None
            inst.parallel_sequences = figure if isinstance(figure, int) else 0
        status, body = self._get(inst, "/v1/models")
        if status != 200 or not isinstance(body, dict) or not isinstance(body.get("data"), list):
            return body if status is None else f"/v1/models answered {status}"
        inst.models = {m["id"]: m.get("state", ModelState.READY) for m in body["data"]
                       if isinstance(m, dict) and isinstance(m.get("id"), str)}
        return None

    def auth_headers(self, inst: Instance) -> dict[str, str]:
        key = self.service_key if inst.local else inst.api_key
        return {"Authorization": f"Bearer {key}"} if key else {}

    def _get(self, inst: Instance, path: str) -> tuple[Optional[int], Any]:
        try:
            resp = http_pool.request("GET", inst.url + path, headers=self.auth_headers(inst),
                                 timeout=urllib3.Timeout(connect=2.0, read=CHECK_TIMEOUT))
        except urllib3.exceptions.HTTPError as exc:
            return None, f"{path}: {exc.__class__.__name__}"
        try:
            return resp.status, json.loads(resp.data)
        except ValueError:
            return resp.status, None

    def _replay_loads(self, inst: Instance) -> None:
        for model, body in list(self._loads.items()):
            try:
                resp = http_pool.request("POST", inst.url + "/v1/models/load", body=body,
                                     headers={"Content-Type": "application/json",
                                              **self.auth_headers(inst)},
                                     timeout=urllib3.Timeout(connect=2.0,
                                                             read=self.settings.request_timeout))
                cluster_log.info("{}: load of {} replayed -> {}", inst.id, model, resp.status)
            except urllib3.exceptions.HTTPError as exc:
                cluster_log.warning("{}: load of {} failed: {}", inst.id, model, exc)
