"""One instance behind the load-balanced entry point: a local child process
(`run.py` on 127.0.0.1) or a remote upstream, with the state the supervisor,
the health checks and the balancer keep on it."""
from __future__ import annotations

import subprocess
import time
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Optional

import psutil
import urllib3

EWMA_WEIGHT = 0.3  # weight of the newest response time in the moving average

# one pool of keep-alive connections for everything sent to the instances
http_pool = urllib3.PoolManager(num_pools=64, maxsize=256, block=False, retries=False)


class InstanceState(StrEnum):
    STARTING = "starting"
    HEALTHY = "healthy"
    UNHEALTHY = "unhealthy"
    DRAINING = "draining"  # finishing its requests before it stops
    STOPPING = "stopping"


@dataclass(eq=False)
class Instance:
    id: str
    url: str  # base URL, without /v1
    weight: int = 1
    local: bool = True
    port: Optional[int] = None
    api_key: Optional[str] = None  # remote only: sent instead of the client's key
    state: InstanceState = InstanceState.STARTING
    process: Optional[subprocess.Popen] = None
    models: dict[str, str] = field(default_factory=dict)  # id -> state ("ready", "unloaded"...)
    active: int = 0  # requests at this instance now (counted by the balancer)
    parallel_sequences: int = 0  # what its models decode at once (a local one's /health)
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
        return self.state == InstanceState.HEALTHY

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
                "is_running": self.alive if self.local else self.routable,
                "healthy": self.routable, "active_connections": self.active,
                "requests": self.requests, "failures": self.failures,
                "avg_response_time": round(self.ewma_latency, 6)
                if self.ewma_latency is not None else None,
                "cpu_percent": cpu, "memory_mb": memory, "restarts": self.restarts,
                "models": sorted(self.models), "last_error": self.last_error}
