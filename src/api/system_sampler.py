"""A sample of the system and inference figures in system_metrics.log every
METRICS_INTERVAL seconds, from a native thread: it never blocks the hub."""
from __future__ import annotations

from typing import Any, Callable

from ..core.concurrency import native_sleep, start_native_thread
from ..utils.logger import logger
from ..utils.metrics import system_figures

metrics_log = logger.bind(channel="metrics")


def start_system_sampler(interval: float, inference: Callable[[], dict[str, Any]]) -> None:
    def run() -> None:
        while True:
            native_sleep(interval)
            try:
                metrics_log.bind(system=system_figures(), inference=inference()).info(
                    "system metrics")
            except Exception:  # a failed sample must not end the sampler
                logger.exception("System metrics sample failed")

    start_native_thread(run)
