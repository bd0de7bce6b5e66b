"""The cluster supervisor's decisions, in process: instances are stand-in
processes (no server starts), so each rule is checked exactly. The same rules
run end to end with real instances in test_cluster.py."""
from __future__ import annotations

import time
from typing import Optional

import pytest

from src.cluster import supervisor as cluster_manager
from src.cluster.instance import Instance
from src.cluster.supervisor import ClusterManager
from src.utils.config import Settings

REAL_SPAWN = ClusterManager._spawn  # the fixture replaces it


class StandIn:
    """What the supervisor uses of a Popen: a pid, poll() and wait()."""

    _pids = iter(range(10**6, 2 * 10**6))

    def __init__(self) -> None:
        self.pid = next(self._pids)
        self.returncode: Optional[int] = None

    def poll(self) -> Optional[int]:
        return self.returncode

    def wait(self, timeout: Optional[float] = None) -> int:
        return self.returncode or 0


@pytest.fixture
def supervisor(monkeypatch):
    """ClusterManager whose starts record the instance's environment; no health
    check runs unless a test asks for it."""
    started: list[tuple[str, dict[str, str]]] = []  # (instance, its environment)
    checked: list[str] = []

    def spawn(self, inst: Instance, reason: str) -> None:
        started.append((inst.id, self._instance_env(inst, "/tmp")))
        inst.process, inst.state, inst.restart_at = StandIn(), "starting", 0.0
        inst.started_at = inst.next_check = time.monotonic()

    def check(self, inst: Instance) -> None:
        checked.append(inst.id)
        inst.checking = False

    monkeypatch.setattr(cluster_manager, "_signal_group", lambda inst, sig: None)
    monkeypatch.setattr(ClusterManager, "_spawn", spawn)
    monkeypatch.setattr(ClusterManager, "_check", check)

    def make(**settings) -> ClusterManager:
        manager = ClusterManager(Settings(inference_mode="load_balance", **settings))
        manager.started, manager.checked = started, checked
        return manager

    return make


def settle(manager: ClusterManager) -> None:
    """Two passes: one adds the instances the target asks for, the next starts them."""
    manager._tick()
    manager._tick()


def healthy(manager: ClusterManager) -> None:
    for inst in manager.locals():
        inst.state = "healthy"


def test_gpu_memory_is_shared_out_for_every_instance_that_may_run(supervisor):
    manager = supervisor(cluster_instances=2, max_instances=3, max_gpu_memory=0.9)
    settle(manager)
    healthy(manager)
    manager.scale("scale_up", 1)
    settle(manager)
    shares = [float(env["MAX_GPU_MEMORY"]) for _, env in manager.started]
    assert len(shares) == 3 and sum(shares) <= 0.9 + 1e-9


def test_scaling_up_while_one_drains_keeps_it_and_stays_within_max(supervisor):
    manager = supervisor(cluster_instances=3, max_instances=3, cluster_base_port=20000)
    settle(manager)
    healthy(manager)
    for inst in manager.locals():
        inst.active = 1  # requests in flight: a drain takes a while
    manager.scale("scale_down", 1)
    settle(manager)
    draining = [i for i in manager.locals() if i.state == "draining"]
    assert len(draining) == 1 and draining[0].removing
    manager.scale("scale_up", 1)
    settle(manager)
    assert len(manager.locals()) == 3 and len(manager.started) == 3  # none started
    assert draining[0].state == "healthy" and not draining[0].removing
    assert sorted(i.port for i in manager.locals()) == [20000, 20001, 20002]


def test_a_start_that_fails_backs_off_and_the_others_are_still_checked(supervisor, monkeypatch):
    manager = supervisor(cluster_instances=1, cluster_upstreams="http://127.0.0.1:9/v1")
    good_spawn = ClusterManager._spawn

    def failing_spawn(self, inst, reason):
        raise OSError(24, "Too many open files")

    monkeypatch.setattr(ClusterManager, "_spawn", failing_spawn)
    settle(manager)
    inst = manager.get("instance_0")
    assert "Too many open files" in inst.last_error and inst.process is None
    assert inst.restart_at > time.monotonic()  # not tried again on every tick
    for _ in range(20):
        if "upstream_0" in manager.checked:
            break
        time.sleep(0.05)
    assert "upstream_0" in manager.checked  # the remote upstream is still looked after
    monkeypatch.setattr(ClusterManager, "_spawn", good_spawn)
    inst.restart_at = 0.0
    manager._tick()
    assert inst.process is not None and inst.state == "starting"


def test_autoscaling_on_latency_looks_only_at_instances_at_work(supervisor):
    manager = supervisor(cluster_instances=1, min_instances=1, max_instances=3,
                         auto_scaling=True, scale_up_latency=5.0, scale_cooldown=0)
    settle(manager)
    healthy(manager)
    inst = manager.get("instance_0")
    inst.ewma_latency = 8.0  # one slow burst, long over
    serving = [i for i in manager.locals() if i.routable]
    assert manager._autoscaler.target(time.monotonic(), serving, manager.target) == 1
    inst.active = 1  # slow now
    assert manager._autoscaler.target(time.monotonic(), serving, manager.target) == 2


def test_the_start_timeout_spares_an_instance_replaying_its_loads(supervisor):
    manager = supervisor(cluster_instances=1, instance_start_timeout=10)
    settle(manager)
    inst = manager.get("instance_0")
    first = inst.process
    inst.started_at -= 60  # started long ago, still loading the models loaded before
    inst.replaying = True
    manager._tick()
    assert inst.process is first and len(manager.started) == 1
    inst.replaying = False
    manager._tick()
    assert inst.process is not first  # past the limit and not loading: started again


def test_an_instance_that_keeps_dying_before_healthy_backs_off_however_slow(supervisor):
    manager = supervisor(cluster_instances=1)
    settle(manager)
    inst = manager.get("instance_0")
    for attempt in range(2):  # each start fails only after a while (a slow machine)
        inst.started_at -= 30
        inst.process.returncode = 1
        manager._tick()
    assert inst.quick_exits == 2 and inst.restart_at > time.monotonic() + 1
    assert len(manager.started) == 2  # the third start waits


def test_an_instance_that_ran_for_a_while_is_restarted_at_once(supervisor):
    manager = supervisor(cluster_instances=1)
    settle(manager)
    inst = manager.get("instance_0")
    for attempt in range(3):
        healthy(manager)
        inst.started_at -= 30
        inst.process.returncode = -9
        manager._tick()
    assert inst.quick_exits == 0 and len(manager.started) == 4


def test_a_check_that_passed_before_a_request_failed_does_not_bring_it_back(supervisor):
    manager = supervisor(cluster_instances=1)
    settle(manager)
    healthy(manager)
    inst = manager.get("instance_0")
    began = time.monotonic()  # a check starts and will pass...
    manager.report_failure(inst, "connection refused", take_out=True)  # ...a request fails
    manager._checked(inst, inst.process, None, began)
    assert inst.state == "unhealthy" and inst.next_check <= time.monotonic()
    manager._checked(inst, inst.process, None, time.monotonic())  # the next check counts
    assert inst.state == "healthy"


def test_a_process_that_will_not_die_does_not_hold_the_supervisor(supervisor, monkeypatch,
                                                                   tmp_path):
    manager = supervisor(cluster_instances=1, log_dir=str(tmp_path))
    settle(manager)
    inst = manager.get("instance_0")
    stuck = inst.process

    def wait(timeout=None):  # stuck in the kernel: SIGKILL does not end it
        if timeout is None:
            raise AssertionError("waited for good, with the supervisor's lock held")
        raise cluster_manager.subprocess.TimeoutExpired("run.py", timeout)

    stuck.wait = wait
    monkeypatch.setattr(cluster_manager, "KILLED_WAIT", 0.01)
    monkeypatch.setattr(cluster_manager.subprocess, "Popen", lambda *a, **k: StandIn())
    REAL_SPAWN(manager, inst, "3 failed health checks")
    assert inst.process is not stuck and inst.restarts == 1 and inst.state == "starting"
