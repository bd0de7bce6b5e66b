"""The supervisor of the instances behind the load-balanced entry point.

Local instances are real child processes of this service (`run.py --mode
prod` on 127.0.0.1, ports CLUSTER_BASE_PORT, +1, ...), each in its own
process group so that it can be stopped whole; remote upstreams
(CLUSTER_UPSTREAMS) are any OpenAI-compatible server, checked and balanced
like the local ones but never started or restarted.

One supervisor loop owns every process action (start, drain, stop, restart,
scaling to the target count): the API only states what it wants. That keeps
process handling in one thread, which Linux's parent-death signal needs (a
child is told when the thread that started it ends). Health checks run
beside it (health.py); what it does with their verdicts:
  unhealthy -> (restart)   local: 3 failed checks in a row, or a dead process
  draining  -> stopping    no requests left at it (or the drain timeout)
The instances' own state lives on `Instance`; the balancer (balancer.py)
reads it to route and writes the per-request figures.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from typing import Any, Optional

import psutil

from ..utils.config import PROJECT_ROOT, Settings, UpstreamSpec
from ..utils.logger import logger
from .autoscale import Autoscaler
from .health import CHECKED, FAILURES_TO_TAKE_OUT, HealthChecks
from .instance import Instance, InstanceState, http_pool

cluster_log = logger.bind(channel="cluster")

TICK = 0.25  # seconds between two passes of the supervisor loop
STOP_GRACE = 30.0  # seconds a stopping instance gets before SIGKILL
KILLED_WAIT = 5.0  # seconds to wait for a SIGKILLed process (one stuck in the kernel may not go)
DRAIN_TIMEOUT = 60.0  # seconds a draining instance's requests get to finish
class ClusterManager(HealthChecks):
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
        self._autoscaler = Autoscaler(settings)
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
            if take_out and inst.state == InstanceState.HEALTHY:
                inst.state = InstanceState.UNHEALTHY
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
            if inst.state not in (InstanceState.DRAINING, InstanceState.STOPPING):
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
                self.target = self._autoscaler.target(
                    now, [i for i in self.locals() if i.routable], self.target)
            due = [i for i in self._instances if not i.checking and now >= i.next_check
                   and i.state in CHECKED]
            for inst in due:
                inst.checking = True
        for inst in due:
            threading.Thread(target=self._check, args=(inst,), daemon=True,
                             name=f"check-{inst.id}").start()

    def _watch_process(self, inst: Instance, now: float) -> None:
        if inst.state == InstanceState.DRAINING:
            if inst.active == 0 or now >= inst.deadline:
                _signal_group(inst, signal.SIGTERM)
                inst.state, inst.deadline = InstanceState.STOPPING, now + STOP_GRACE
            return
        if inst.state == InstanceState.STOPPING:
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
                died_young = inst.state == InstanceState.STARTING or now - inst.started_at < 10
                inst.quick_exits = inst.quick_exits + 1 if died_young else 0
                delay = _backoff(inst.quick_exits) if inst.quick_exits > 1 else 0.0
                inst.restart_at = now + delay
                if delay:
                    cluster_log.warning("{} exited {} s after its start, again: next start in "
                                        "{:.0f} s", inst.id, round(now - inst.started_at),
                                        delay)
            if now >= inst.restart_at:
                self._spawn(inst, inst.last_error or "process exited")
        elif inst.state == InstanceState.STARTING and not inst.replaying and \
                now - inst.started_at > self.settings.instance_start_timeout:
            inst.last_error = (f"not healthy {self.settings.instance_start_timeout:.0f} s "
                               f"after start")
            self._spawn(inst, inst.last_error)
        elif inst.state == InstanceState.UNHEALTHY and \
                inst.failed_checks >= FAILURES_TO_TAKE_OUT:
            self._spawn(inst, f"{inst.failed_checks} failed health checks")

    def _reconcile(self) -> None:
        staying = [i for i in self.locals() if not i.removing]
        for inst in self.locals():  # scaled down, then up again: keep one still draining
            if len(staying) >= self.target:
                break
            if inst.removing and inst.state == InstanceState.DRAINING:
                inst.removing, inst.state = False, InstanceState.HEALTHY
                inst.next_check = time.monotonic()
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
        inst.state, inst.deadline = InstanceState.DRAINING, time.monotonic() + DRAIN_TIMEOUT
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
        inst.state, inst.failed_checks = InstanceState.STARTING, 0
        inst.models, inst.restart_at = {}, 0.0
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

