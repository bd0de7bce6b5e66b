"""Prometheus metrics (prometheus-client) and the JSON view built from them.

Request figures are counted as requests end; the model figures (state,
requests running and waiting, load time, tokens/s) are read from the model
manager at scrape time through `snapshot`, so they are never stale. Each
worker process keeps its own figures: one worker is the supported setup
(each worker would load its own copy of every model), see docs/operations.md.
"""
from __future__ import annotations

import time
from typing import Any, Callable, Iterable, Optional

import psutil
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from .names import ModelState

PREFIX = "vllm_obtain"
MODEL_STATES = tuple(s for s in ModelState if s != ModelState.DOWNLOADING)  # a loaded model's
_LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40, 80, 160, 320)
_TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 60)
_TPOT_BUCKETS = (0.002, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.15, 0.25, 0.5, 1)

# snapshot() returns one dict per known model: id, state, load_seconds,
# requests_running, requests_waiting, tokens_per_second, tokens_batched
Snapshot = Callable[[], list[dict[str, Any]]]


class _ModelCollector(Collector):
    def __init__(self, snapshot: Snapshot):
        self._snapshot = snapshot

    def collect(self) -> Iterable[Any]:
        models = self._snapshot()
        state = GaugeMetricFamily(f"{PREFIX}_model_state", "1 for the state each model is in",
                                  labels=["model", "state"])
        running = GaugeMetricFamily(f"{PREFIX}_requests_running",
                                    "Requests being generated now", labels=["model"])
        waiting = GaugeMetricFamily(f"{PREFIX}_requests_waiting",
                                    "Requests waiting for a free sequence", labels=["model"])
        load = GaugeMetricFamily(f"{PREFIX}_model_load_seconds",
                                 "Seconds the last load of each model took", labels=["model"])
        rate = GaugeMetricFamily(f"{PREFIX}_generation_tokens_per_second",
                                 "Recent output tokens per second", labels=["model"])
        batched = CounterMetricFamily(f"{PREFIX}_generation_tokens_batched",
                                      "Output tokens generated in a step shared with other "
                                      "requests (continuous batching)", labels=["model"])
        for m in models:
            for s in MODEL_STATES:
                state.add_metric([m["id"], s], 1.0 if m["state"] == s else 0.0)
            if m["state"] == ModelState.READY:
                running.add_metric([m["id"]], m.get("requests_running", 0))
                waiting.add_metric([m["id"]], m.get("requests_waiting", 0))
                rate.add_metric([m["id"]], m.get("tokens_per_second", 0.0))
                batched.add_metric([m["id"]], m.get("tokens_batched", 0))
            if m.get("load_seconds") is not None:
                load.add_metric([m["id"]], m["load_seconds"])
        return [state, running, waiting, load, rate, batched]


class _InstanceCollector(Collector):
    """Load-balanced mode: the figures of each instance behind the entry point,
    from `snapshot()` (ClusterManager instances' describe())."""

    def __init__(self, snapshot: Snapshot):
        self._snapshot = snapshot

    def collect(self) -> Iterable[Any]:
        def gauge(name: str, text: str) -> GaugeMetricFamily:
            return GaugeMetricFamily(f"{PREFIX}_instance_{name}", text, labels=["instance"])

        def counter(name: str, text: str) -> CounterMetricFamily:
            return CounterMetricFamily(f"{PREFIX}_instance_{name}", text, labels=["instance"])

        healthy = gauge("healthy", "1 while the instance takes requests")
        active = gauge("active_connections", "Requests at the instance now")
        latency = gauge("response_seconds", "Moving average of the time to first byte")
        cpu = gauge("cpu_percent", "CPU use of a local instance's processes")
        memory = gauge("memory_bytes", "Resident memory of a local instance's processes")
        requests = counter("requests", "Requests sent to the instance")
        failures = counter("failures", "Failed requests and health checks")
        restarts = counter("restarts", "Times a local instance was started again")
        for inst in self._snapshot():
            label = [inst["id"]]
            healthy.add_metric(label, 1.0 if inst["healthy"] else 0.0)
            active.add_metric(label, inst["active_connections"])
            if inst["avg_response_time"] is not None:
                latency.add_metric(label, inst["avg_response_time"])
            cpu.add_metric(label, inst["cpu_percent"])
            memory.add_metric(label, inst["memory_mb"] * 2 ** 20)
            requests.add_metric(label, inst["requests"])
            failures.add_metric(label, inst["failures"])
            restarts.add_metric(label, inst["restarts"])
        return [healthy, active, latency, cpu, memory, requests, failures, restarts]


class ServiceMetrics:
    """One registry per app: request counters and latency histograms by model."""

    def __init__(self, snapshot: Snapshot):
        self.registry = CollectorRegistry()
        self.started = time.time()
        self._snapshot = snapshot
        r = self.registry
        self.requests = Counter(f"{PREFIX}_requests", "Inference requests by endpoint and status",
                                ["model", "endpoint", "status"], registry=r)
        self.http_requests = Counter(f"{PREFIX}_http_requests", "HTTP requests by route and status",
                                     ["method", "route", "status"], registry=r)
        self.prompt_tokens = Counter(f"{PREFIX}_prompt_tokens", "Prompt tokens processed",
                                     ["model"], registry=r)
        self.generation_tokens = Counter(f"{PREFIX}_generation_tokens", "Tokens generated",
                                         ["model"], registry=r)
        self.cached_tokens = Counter(f"{PREFIX}_prompt_tokens_cached",
                                     "Prompt tokens served from the prefix cache", ["model"],
                                     registry=r)
        self.ttft = Histogram(f"{PREFIX}_time_to_first_token_seconds", "Time to first token",
                              ["model"], buckets=_TTFT_BUCKETS, registry=r)
        self.tpot = Histogram(f"{PREFIX}_time_per_output_token_seconds",
                              "Time per output token after the first", ["model"],
                              buckets=_TPOT_BUCKETS, registry=r)
        self.latency = Histogram(f"{PREFIX}_e2e_request_latency_seconds",
                                 "End-to-end request latency", ["model"],
                                 buckets=_LATENCY_BUCKETS, registry=r)
        r.register(_ModelCollector(snapshot))

    def observe_request(self, model: str, endpoint: str, status: int, latency: float,
                        ttft: Optional[float], prompt_tokens: int, completion_tokens: int,
                        cached_tokens: int) -> None:
        self.requests.labels(model, endpoint, str(status)).inc()
        self.latency.labels(model).observe(latency)
        self.prompt_tokens.labels(model).inc(prompt_tokens)
        self.generation_tokens.labels(model).inc(completion_tokens)
        self.cached_tokens.labels(model).inc(cached_tokens)
        if ttft is not None:
            self.ttft.labels(model).observe(ttft)
            if completion_tokens > 1:
                self.tpot.labels(model).observe((latency - ttft) / (completion_tokens - 1))

    def add_instances(self, snapshot: Snapshot) -> None:
        """Load-balanced mode: per-instance figures in /metrics too."""
        self.registry.register(_InstanceCollector(snapshot))

    def prometheus_text(self) -> bytes:
        return generate_latest(self.registry)

    # the JSON view ----------------------------------------------------------------
    def summary(self) -> dict[str, Any]:
        models = self._snapshot()
        ready = [m for m in models if m["state"] == ModelState.READY]
        completed = _sum(self.latency, "_count")
        return {
            "uptime_seconds": round(time.time() - self.started, 1),
            "models_ready": len(ready),
            "requests_total": int(_sum(self.requests, "_total")),
            "requests_failed": int(sum(s.value for s in _samples(self.requests, "_total")
                                       if not s.labels["status"].startswith("2"))),
            "requests_running": sum(m.get("requests_running", 0) for m in ready),
            "requests_waiting": sum(m.get("requests_waiting", 0) for m in ready),
            "average_latency_ms": _mean_ms(self.latency),
            "average_ttft_ms": _mean_ms(self.ttft),
            "average_tpot_ms": _mean_ms(self.tpot),
            "prompt_tokens_total": int(_sum(self.prompt_tokens, "_total")),
            "generation_tokens_total": int(_sum(self.generation_tokens, "_total")),
            "cached_prompt_tokens_total": int(_sum(self.cached_tokens, "_total")),
            "tokens_per_second": round(sum(m.get("tokens_per_second", 0.0) for m in ready), 2),
            "completed_requests": int(completed),
            # running totals: a client that polls takes differences for recent averages
            "latency_seconds_sum": round(_sum(self.latency, "_sum"), 6),
            "ttft_seconds_sum": round(_sum(self.ttft, "_sum"), 6),
            "ttft_count": int(_sum(self.ttft, "_count")),
        }


# the figures of summary() that add up across instances (running totals and gauges;
# the averages do not): the load-balanced entry point sums them
ADDITIVE_FIGURES = ("requests_total", "requests_failed", "requests_running", "requests_waiting",
                    "prompt_tokens_total", "generation_tokens_total",
                    "cached_prompt_tokens_total", "tokens_per_second", "completed_requests",
                    "latency_seconds_sum", "ttft_seconds_sum", "ttft_count")


def _samples(metric: Any, suffix: str) -> list[Any]:
    return [s for family in metric.collect() for s in family.samples if s.name.endswith(suffix)]


def _sum(metric: Any, suffix: str) -> float:
    return sum(s.value for s in _samples(metric, suffix))


def _mean_ms(histogram: Histogram) -> Optional[float]:
    count = _sum(histogram, "_count")
    return round(_sum(histogram, "_sum") / count * 1000, 1) if count else None


def system_figures() -> dict[str, Any]:
    """CPU, memory and (where NVML is present) GPU memory of this machine."""
    vm = psutil.virtual_memory()
    proc = psutil.Process()
    figures: dict[str, Any] = {
        "cpu_percent": psutil.cpu_percent(interval=None),
        "cpu_count": psutil.cpu_count(),
        "load_average": [round(x, 2) for x in psutil.getloadavg()],
        "memory_total_bytes": vm.total, "memory_used_bytes": vm.total - vm.available,
        "memory_percent": vm.percent,
        "process_rss_bytes": proc.memory_info().rss,
        "gpus": _gpu_figures(),
    }
    return figures


def _gpu_figures() -> list[dict[str, Any]]:
    try:
        import pynvml  # from nvidia-ml-py, present on CUDA machines
    except ImportError:
        return []
    try:
        pynvml.nvmlInit()
    except Exception:  # no driver: report no GPUs rather than fail
        return []
    gpus = []
    try:
        for i in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(i)
            mem = pynvml.nvmlDeviceGetMemoryInfo(handle)
            util = pynvml.nvmlDeviceGetUtilizationRates(handle)
            name = pynvml.nvmlDeviceGetName(handle)
            gpus.append({"index": i, "name": name.decode() if isinstance(name, bytes) else name,
                         "memory_total_bytes": mem.total, "memory_used_bytes": mem.used,
                         "utilization_percent": util.gpu})
    finally:
        pynvml.nvmlShutdown()
    return gpus
