"""The instances behind the load-balanced entry point (INFERENCE_MODE=load_balance).

Local instances are real child processes of this service (`run.py --mode
prod` on 127.0.0.1, ports CLUSTER_BASE_PORT, +1, ...), each in its own
process group so that it can be stopped whole; remote upstreams
(CLUSTER_UPSTREAMS) are any OpenAI-compatible server, checked and balanced
like the local ones but never started or restarted.

One supervisor loop owns every process action (start, drain, stop, restart,
scaling to the target count): the API only states what it wants. That keeps
process handling in one thread, which Linux's parent-death signal needs (a
child is told when the thread that started it ends). Health checks run
beside it, one at a time per instance:
  starting  -> healthy     the first check that passes
  healthy   -> unhealthy   3 failed checks in a row (after a failed check the
                           next comes within 2 s), or at once on a failed
                           request (the balancer reports it)
  unhealthy -> healthy     a check that passes
  unhealthy -> (restart)   local: 3 failed checks in a row, or a dead process
  draining  -> stopping    no requests left at it (or the drain timeout)
The instances' own state lives on `Instance`; the balancer (core/load_balancer)
reads it to route and writes the per-request figures.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Optional

import psutil
import urllib3

from .config import PROJECT_ROOT, Settings, UpstreamSpec
from .logger import logger

cluster_log = logger.bind(channel="cluster")

TICK = 0.25  # seconds between two passes of the supervisor loop
FAILURES_TO_TAKE_OUT = 3
RECHECK_INTERVAL = 2.0  # seconds between checks of an instance that is not healthy (at most)
CHECK_TIMEOUT = 5.0
STOP_GRACE = 30.0  # seconds a stopping instance gets before SIGKILL
KILLED_WAIT = 5.0  # seconds to wait for a SIGKILLed process (one stuck in the kernel may not go)
DRAIN_TIMEOUT = 60.0  # seconds a draining instance's requests get to finish
EWMA_WEIGHT = 0.3  # weight of the newest response time in the moving average

# one pool of keep-alive connections for everything sent to the instances
http_pool = urllib3.PoolManager(num_pools=64, maxsize=256, block=False, retries=False)


@dataclass(eq=False)
class Instance:
    id: str
    url: str  # base URL, without /v1
    weight: int = 1
    local: bool = True
    port: Optional[int] = None
    api_key: Optional[str] = None  # remote only: sent instead of the client's key
    state: str = "starting"  # starting, healthy, unhealthy, draining, stopping
    process: Optional[subprocess.Popen] = None
    models: dict[str, str] = field(default_factory=dict)  # id -> state ("ready", "unloaded"...)
    active: int = 0  # requests at this instance now (counted by the balancer)
    requests: int = 0
    failures: int = 0  # failed requests and failed health checks
    failed_checks: int = 0  # in a row
    ewma_latency: Optional[float] = None  # seconds
    restarts: int = 0
    last_error: Optional[str] = None
    started_at: float = field(default_factory=time.monotonic)
    next_check: float = 0.0
    checking: bool = False
    taken_out_at: float = 0.0  # a check that began before this says nothing about now
    replaying: bool = False  # models loaded before are being loaded on it (a fresh start)
    removing: bool = False  # draining to go away (scale down), not to come back
    quick_exits: int = 0  # exits before healthy or soon after, in a row (a crash loop backs off)
    restart_at: float = 0.0  # when a dead local instance is started again
    deadline: float = 0.0  # end of the drain, or of the grace before SIGKILL
    _processes: dict[int, psutil.Process] = field(default_factory=dict)

    @property
    def routable(self) -> bool:
        return self.state == "healthy"

    @property
    def pid(self) -> Optional[int]:
        return self.process.pid if self.process is not None else None

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def serves(self, model: str) -> bool:
        return model in self.models

    def record(self, seconds: float) -> None:
        self.ewma_latency = seconds if self.ewma_latency is None else \
            EWMA_WEIGHT * seconds + (1 - EWMA_WEIGHT) * self.ewma_latency

    def usage(self) -> tuple[float, float]:
        """CPU percent and resident MiB of the instance's processes (its
        Gunicorn master and worker); zeros for a remote upstream."""
        if not self.alive:
            return 0.0, 0.0
        try:
            root = psutil.Process(self.pid)
            procs = [root, *root.children(recursive=True)]
        except psutil.Error:
            return 0.0, 0.0
        cpu = rss = 0.0
        for proc in procs:
            known = self._processes.setdefault(proc.pid, proc)  # cpu_percent needs history
            try:
                cpu += known.cpu_percent(interval=None)
                rss += known.memory_info().rss
            except psutil.Error:
                self._processes.pop(proc.pid, None)
        return round(cpu, 1), round(rss / 2 ** 20, 1)

    def describe(self) -> dict[str, Any]:
        cpu, memory = self.usage()
        return {"id": self.id, "kind": "local" if self.local else "remote", "url": self.url,
                "port": self.port, "pid": self.pid, "weight": self.weight, "state": self.state,
                "is_running": self.alive if self.local else self.state == "healthy",
                "healthy": self.state == "healthy", "active_connections": self.active,
                "requests": self.requests, "failures": self.failures,
                "avg_response_time": round(self.ewma_latency, 6)
                if self.ewma_latency is not None else None,
                "cpu_percent": cpu, "memory_mb": memory, "restarts": self.restarts,
                "models": sorted(self.models), "last_error": self.last_error}


class ClusterManager:
    def __init__(self, settings: Settings, service_key: Optional[str] = None):
        self.settings = settings
        self.service_key = service_key  # what this process sends to its own instances
        self.target = settings.cluster_instances
        self._lock = threading.RLock()
        self._instances: list[Instance] = []
        self._next_upstream = 0
        self._stopping = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._loads: dict[str, bytes] = {}  # model -> load body, replayed on new instances
        self._last_scaling = 0.0
        self._quiet_since: Optional[float] = None
        for spec in settings.upstreams:
            self.add_upstream(spec)

    # what the balancer and the API read ----------------------------------------------
    def instances(self) -> list[Instance]:
        with self._lock:
            return list(self._instances)

    def get(self, instance_id: str) -> Instance:
        for inst in self.instances():
            if inst.id == instance_id:
                return inst
        raise KeyError(instance_id)

    def locals(self) -> list[Instance]:
        return [i for i in self.instances() if i.local]

    def status(self, strategy: str) -> dict[str, Any]:
        instances = self.instances()
        # once each: psutil's cpu_percent measures since its previous call
        described = {i.id: i.describe() for i in instances}
        return {"is_running": self._thread is not None and not self._stopping.is_set(),
                "total_instances": len(instances),
                "running_instances": sum(d["is_running"] for d in described.values()),
                "healthy_instances": sum(i.routable for i in instances),
                "load_balancer_strategy": strategy,
                "target_local_instances": self.target,
                "health_check_interval": self.settings.health_check_interval,
                "auto_scaling": {"enabled": self.settings.auto_scaling,
                                 "min_instances": self.settings.min_instances,
                                 "max_instances": self.settings.max_instances},
                "instances": described}

    # what the balancer reports ----------------------------------------------------------
    def report_failure(self, inst: Instance, reason: str, take_out: bool) -> None:
        """A request to `inst` failed; `take_out`: it cannot serve (refused
        connection, died, 5xx), so no request goes there until a check passes."""
        with self._lock:
            inst.failures += 1
            inst.last_error = reason
            if take_out and inst.state == "healthy":
                inst.state = "unhealthy"
                inst.taken_out_at = inst.next_check = time.monotonic()  # check again at once
                cluster_log.warning("{} taken out: {}", inst.id, reason)

    # what the API asks for -------------------------------------------------------------
    def scale(self, action: str, count: int) -> dict[str, Any]:
        with self._lock:
            target = self.target + count if action == "scale_up" else self.target - count
            if target > self.settings.max_instances:
                raise ValueError(f"{action} by {count} would make {target} local instances; "
                                 f"MAX_INSTANCES is {self.settings.max_instances}.")
            if target < self.settings.min_instances:
                raise ValueError(f"{action} by {count} would leave {target} local instances; "
                                 f"MIN_INSTANCES is {self.settings.min_instances}.")
            previous, self.target = self.target, target
        cluster_log.info("Scaling local instances from {} to {} ({})", previous, target, action)
        return {"action": action, "previous_instances": previous, "target_instances": target}

    def restart(self, instance_id: str) -> dict[str, Any]:
        inst = self.get(instance_id)
        if not inst.local:
            raise ValueError(f"{instance_id} is a remote upstream: it is checked, never restarted.")
        with self._lock:
            if inst.state not in ("draining", "stopping"):
                self._drain(inst, removing=False)
        return {"instance_id": inst.id, "state": inst.state}

    def add_upstream(self, spec: UpstreamSpec) -> Instance:
        with self._lock:
            inst = Instance(f"upstream_{self._next_upstream}", spec.url, spec.weight,
                            local=False, api_key=spec.api_key)
            self._next_upstream += 1
            self._instances.append(inst)
        cluster_log.info("Upstream {} added: {} (weight {})", inst.id, inst.url, inst.weight)
        return inst

    def remove_upstream(self, instance_id: str) -> None:
        inst = self.get(instance_id)
        if inst.local:
            raise ValueError(f"{instance_id} is a local instance: scale down instead.")
        with self._lock:
            self._instances.remove(inst)
        cluster_log.info("Upstream {} removed", inst.id)

    def remember_load(self, model: str, body: bytes) -> None:
        """A model loaded through the entry point: instances started later load it too."""
        self._loads[model] = body

    def forget_load(self, model: str) -> None:
        self._loads.pop(model, None)

    def check_soon(self) -> None:
        """Check every instance at the next pass (their model lists changed)."""
        with self._lock:
            for inst in self._instances:
                inst.next_check = 0.0

    # the supervisor ----------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._supervise, name="cluster-supervisor",
                                        daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop every local instance: SIGTERM (Gunicorn lets their requests
        finish), SIGKILL after STOP_GRACE."""
        if self._stopping.is_set():
            return
        self._stopping.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)
        locals_ = [i for i in self.locals() if i.alive]
        http_pool.clear()  # idle keep-alive connections would hold their shutdown up
        for inst in locals_:
            _signal_group(inst, signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE
        for inst in locals_:
            try:
                inst.process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
            _signal_group(inst, signal.SIGKILL)  # the worker may outlive its master
        cluster_log.info("Cluster stopped ({} local instances)", len(locals_))

    def _supervise(self) -> None:
        while not self._stopping.is_set():
            try:
                self._tick()
            except Exception:  # the loop must outlive any one bad pass
                cluster_log.exception("Cluster supervisor pass failed")
            self._stopping.wait(TICK)

    def _tick(self) -> None:
        now = time.monotonic()
        with self._lock:
            for inst in self.locals():
                try:
                    self._watch_process(inst, now)
                except Exception as exc:  # one instance's trouble must not stop the others
                    self._start_failed(inst, now, exc)
            self._reconcile()
            if self.settings.auto_scaling:
                self._autoscale(now)
            due = [i for i in self._instances if not i.checking and now >= i.next_check
                   and i.state in ("starting", "healthy", "unhealthy")]
            for inst in due:
                inst.checking = True
        for inst in due:
            threading.Thread(target=self._check, args=(inst,), daemon=True,
                             name=f"check-{inst.id}").start()

    def _watch_process(self, inst: Instance, now: float) -> None:
        if inst.state == "draining":
            if inst.active == 0 or now >= inst.deadline:
                _signal_group(inst, signal.SIGTERM)
                inst.state, inst.deadline = "stopping", now + STOP_GRACE
            return
        if inst.state == "stopping":
            if not inst.alive:
                _signal_group(inst, signal.SIGKILL)
                if inst.removing:
                    self._instances.remove(inst)
                    cluster_log.info("{} stopped and removed", inst.id)
                else:
                    self._spawn(inst, "restart requested")
            elif now >= inst.deadline:
                _signal_group(inst, signal.SIGKILL)
            return
        if inst.process is None:
            if now >= inst.restart_at:
                self._spawn(inst, inst.last_error or "first start")
        elif not inst.alive:
            if not inst.restart_at:  # just found dead: at once, unless it keeps dying young
                inst.failures += 1
                inst.last_error = f"process exited with {inst.process.returncode}"
                # a slow machine may take longer than any fixed time to fail a start
                died_young = inst.state == "starting" or now - inst.started_at < 10
                inst.quick_exits = inst.quick_exits + 1 if died_young else 0
                delay = _backoff(inst.quick_exits) if inst.quick_exits > 1 else 0.0
                inst.restart_at = now + delay
                if delay:
                    cluster_log.warning("{} exited {} s after its start, again: next start in "
                                        "{:.0f} s", inst.id, round(now - inst.started_at),
                                        delay)
            if now >= inst.restart_at:
                self._spawn(inst, inst.last_error or "process exited")
        elif inst.state == "starting" and not inst.replaying and now - inst.started_at > \
                self.settings.instance_start_timeout:
            inst.last_error = f"not healthy {self.settings.instance_start_timeout:.0f} s after start"
            self._spawn(inst, inst.last_error)
        elif inst.state == "unhealthy" and inst.failed_checks >= FAILURES_TO_TAKE_OUT:
            self._spawn(inst, f"{inst.failed_checks} failed health checks")

    def _reconcile(self) -> None:
        staying = [i for i in self.locals() if not i.removing]
        for inst in self.locals():  # scaled down, then up again: keep one still draining
            if len(staying) >= self.target:
                break
            if inst.removing and inst.state == "draining":
                inst.removing, inst.state, inst.next_check = False, "healthy", time.monotonic()
                staying.append(inst)
                cluster_log.info("{} stays", inst.id)
        if len(staying) < self.target:
            # at most MAX_INSTANCES processes (one still stopping counts), on their ports
            used = {i.id for i in self.locals()}
            for index in range(max(self.settings.max_instances, self.target)):
                if len(staying) >= self.target:
                    break
                name = f"instance_{index}"
                if name not in used:
                    port = self.settings.first_instance_port + index
                    inst = Instance(name, f"http://127.0.0.1:{port}", port=port)
                    self._instances.append(inst)
                    staying.append(inst)
                    used.add(name)
        for inst in sorted(staying, key=lambda i: i.port or 0, reverse=True):
            if len(staying) <= self.target:
                break
            self._drain(inst, removing=True)
            staying.remove(inst)

    def _drain(self, inst: Instance, removing: bool) -> None:
        inst.removing = removing
        inst.state, inst.deadline = "draining", time.monotonic() + DRAIN_TIMEOUT
        cluster_log.info("{} draining ({} requests in flight) to {}", inst.id, inst.active,
                         "go away" if removing else "restart")

    def _start_failed(self, inst: Instance, now: float, exc: Exception) -> None:
        """Starting (or watching) `inst` raised: try again later, backing off."""
        inst.failures += 1
        inst.quick_exits += 1
        inst.last_error = f"could not start: {exc.__class__.__name__}: {exc}"
        delay = _backoff(inst.quick_exits)
        inst.restart_at = now + delay
        if inst.process is not None and not inst.alive:
            inst.process = None  # nothing left to stop: the next try is a plain start
        cluster_log.error("{} {}; next try in {:.0f} s", inst.id, inst.last_error, delay)

    def _spawn(self, inst: Instance, reason: str) -> None:
        """(Re)start a local instance; whatever is left of its last process goes first."""
        if inst.process is not None:
            _signal_group(inst, signal.SIGKILL)
            try:  # the lock is held: never wait for good
                inst.process.wait(timeout=KILLED_WAIT)
            except subprocess.TimeoutExpired:
                cluster_log.error("{} pid {} still there {:.0f} s after SIGKILL; starting a new "
                                  "one anyway", inst.id, inst.pid, KILLED_WAIT)
            inst.restarts += 1
        log_dir = self.settings.logs_path / inst.id
        log_dir.mkdir(parents=True, exist_ok=True)
        with open(log_dir / "stdout.log", "ab") as out:
            inst.process = subprocess.Popen(
                [sys.executable, str(PROJECT_ROOT / "run.py"), "--mode", "prod", "--skip-check"],
                cwd=PROJECT_ROOT, env=self._instance_env(inst, log_dir), stdout=out,
                stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=_die_with_parent)
        inst.state, inst.failed_checks, inst.models, inst.restart_at = "starting", 0, {}, 0.0
        inst.started_at = inst.next_check = time.monotonic()
        inst._processes.clear()
        cluster_log.log("INFO" if inst.restarts == 0 else "WARNING",
                        "{} started on port {} (pid {}): {}", inst.id, inst.port, inst.pid, reason)

    def _instance_env(self, inst: Instance, log_dir: Any) -> dict[str, str]:
        """This process's environment (the instance reads the same settings),
        with what makes it one instance among several."""
        s = self.settings
        # GPU memory is split for as many instances as may ever run (too much and the
        # last to start cannot); the cores for those that run now (too many only slows)
        planned = max(self.target, 1)
        cores = psutil.cpu_count(logical=False) or os.cpu_count() or 1
        return {**os.environ,
                "INFERENCE_MODE": "single", "HOST": "127.0.0.1", "PORT": str(inst.port),
                "WORKERS": "1", "LOG_DIR": str(log_dir),
                "RATE_LIMIT_RPM": "0",  # counted once, at the entry point
                "CORS_ORIGINS": "",  # browsers talk to the entry point only
                # the instances share the machine: each its part of the cores and GPU memory
                "MAX_CPU_THREADS": str(s.max_cpu_threads or max(1, cores // planned)),
                "MAX_GPU_MEMORY": f"{s.max_gpu_memory / max(s.max_instances, 1):.3f}"}

    def _autoscale(self, now: float) -> None:
        """One step at a time, SCALE_COOLDOWN apart: up while the queue (or the
        latency) is over its mark, down after SCALE_DOWN_AFTER quiet seconds."""
        s = self.settings
        if now - self._last_scaling < s.scale_cooldown:
            return
        serving = [i for i in self.locals() if i.routable]
        if not serving:
            return
        # requests beyond what an instance decodes at once are waiting in its queue
        waiting = sum(max(0, i.active - s.max_batch_size) for i in serving)
        # the latency of instances at work now: an idle one's last figure is history
        latencies = [i.ewma_latency for i in serving if i.ewma_latency is not None and i.active]
        slow = s.scale_up_latency > 0 and latencies and \
            sum(latencies) / len(latencies) >= s.scale_up_latency
        if self.target < s.max_instances and (waiting / len(serving) >= s.scale_up_queue_depth
                                              or slow):
            self.target += 1
            self._last_scaling, self._quiet_since = now, None
            cluster_log.info("Auto-scaling up to {} local instances ({} waiting{})", self.target,
                             waiting, ", slow answers" if slow else "")
            return
        quiet = waiting == 0 and sum(i.active for i in serving) <= \
            (len(serving) - 1) * s.max_batch_size
        if not quiet or self.target <= s.min_instances:
            self._quiet_since = None
            return
        self._quiet_since = self._quiet_since or now
        if now - self._quiet_since >= s.scale_down_after:
            self.target -= 1
            self._last_scaling, self._quiet_since = now, None
            cluster_log.info("Auto-scaling down to {} local instances (quiet for {:.0f} s)",
                             self.target, s.scale_down_after)

    # health checks -----------------------------------------------------------------
    def _check(self, inst: Instance) -> None:
        process = inst.process  # an answer from a process since replaced says nothing
        began = time.monotonic()
        try:
            fresh = inst.state == "starting"
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
        if inst.state not in ("starting", "healthy", "unhealthy") or inst.process is not process:
            return  # draining, stopped or restarted meanwhile
        if error is None and began < inst.taken_out_at:
            inst.next_check = now  # it passed before a request failed there: check again
            return
        if error is None:
            if inst.state != "healthy":
                cluster_log.info("{} healthy ({} models)", inst.id, len(inst.models))
            inst.state, inst.failed_checks = "healthy", 0
            inst.next_check = now + self.settings.health_check_interval
            return
        recheck = min(self.settings.health_check_interval, RECHECK_INTERVAL)
        if inst.state == "starting" and inst.local:
            inst.next_check = now + min(recheck, 0.5)  # not a failure: it is booting
            return
        inst.last_error = error
        inst.failures += 1
        inst.failed_checks += 1
        if inst.state == "starting" or inst.failed_checks >= FAILURES_TO_TAKE_OUT:
            if inst.state != "unhealthy":
                cluster_log.warning("{} unhealthy: {}", inst.id, error)
            inst.state = "unhealthy"
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
        status, body = self._get(inst, "/v1/models")
        if status != 200 or not isinstance(body, dict) or not isinstance(body.get("data"), list):
            return body if status is None else f"/v1/models answered {status}"
        inst.models = {m["id"]: m.get("state", "ready") for m in body["data"]
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


def _backoff(quick_exits: int) -> float:
    """Seconds before the next start after `quick_exits` failures in a row: 2, 4, 8... 60."""
    return min(2.0 ** quick_exits, 60.0)


def _signal_group(inst: Instance, sig: int) -> None:
    """Signal the instance's process group: its Gunicorn master and workers."""
    if inst.process is None:
        return
    try:
        os.killpg(inst.process.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _die_with_parent() -> None:
    """In the child before exec: on Linux, SIGTERM it when this process ends,
    so that no instance outlives a balancer that was killed outright."""
    if sys.platform.startswith("linux"):
        import ctypes

        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)

