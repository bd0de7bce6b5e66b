"""The model manager owns the engines: which models are resident, loading
them (the default one at start, others on first use) and unloading the
least recently used idle one when MAX_CONCURRENT_MODELS is reached.

Loads run in native threads: they are long native calls, and a greenlet
waiting for one must not stop the hub from serving /health.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Optional

from loguru import logger

from .concurrency import CrossThreadQueue, allocate_native_lock, start_native_thread
from .exceptions import ModelLoadError, ServiceError, ServiceUnavailableError
from .inference_engine import EngineOptions, InferenceEngine
from .model_catalog import ModelCatalog, ModelEntry

EngineFactory = Callable[[str, EngineOptions], InferenceEngine]


@dataclass
class _LoadJob:
    model_id: str
    done: bool = False
    error: Optional[ServiceError] = None
    waiters: list[CrossThreadQueue] = field(default_factory=list)


class ModelManager:
    def __init__(self, catalog: ModelCatalog, engine_factory: EngineFactory,
                 options: EngineOptions, max_models: int = 1):
        self.catalog = catalog
        self._factory = engine_factory
        self._options = options
        self._max_models = max_models
        self._engines: dict[str, InferenceEngine] = {}
        self._last_used: dict[str, float] = {}
        self._jobs: dict[str, _LoadJob] = {}
        self._failures: dict[str, str] = {}
        self._lock = allocate_native_lock()  # held only for dictionary updates

    # queries -----------------------------------------------------------------
    @property
    def default_model_id(self) -> str:
        return self.catalog.default_model_id

    def ready(self) -> bool:
        return any(e.status().state == "ready" for e in list(self._engines.values()))

    def loaded(self) -> dict[str, InferenceEngine]:
        return dict(self._engines)

    def loading(self) -> list[str]:
        return [job.model_id for job in list(self._jobs.values()) if not job.done]

    def failures(self) -> dict[str, str]:
        return dict(self._failures)

    def entries(self) -> dict[str, ModelEntry]:
        return self.catalog.entries()

    # loading -----------------------------------------------------------------
    def start(self) -> None:
        """Begin loading the default model in the background."""
        self._begin_load(self.default_model_id)

    def get_engine(self, model_id: str, timeout: float) -> InferenceEngine:
        """The engine serving `model_id`, loading it first if needed."""
        engine = self._engines.get(model_id)
        if engine is not None:
            self._last_used[model_id] = time.monotonic()
            return engine
        self.catalog.get(model_id)  # 404 for an unknown id
        job = self._begin_load(model_id)
        waiter: CrossThreadQueue[bool] = CrossThreadQueue()
        with self._lock:
            finished = job.done
            if not finished:
                job.waiters.append(waiter)
        try:
            if not finished and not waiter.take(timeout):
                raise ServiceUnavailableError(f"Model '{model_id}' is still loading; retry shortly.",
                                              headers={"Retry-After": "5"})
        finally:
            waiter.close()
        if job.error is not None:
            raise job.error
        return self.get_engine(model_id, timeout)

    def _begin_load(self, model_id: str) -> _LoadJob:
        with self._lock:
            job = self._jobs.get(model_id)
            if job is not None and not (job.done and job.error is not None):
                return job
            job = self._jobs[model_id] = _LoadJob(model_id)
        start_native_thread(lambda: self._load(job))
        return job

    def _load(self, job: _LoadJob) -> None:
        engine = None
        try:
            self._make_room()
            entry = self.catalog.get(job.model_id)
            started = time.monotonic()
            path = entry.resolve_path()
            engine = self._factory(job.model_id, self._options)
            engine.load(str(path))
            with self._lock:
                self._engines[job.model_id] = engine
                self._last_used[job.model_id] = time.monotonic()
                self._failures.pop(job.model_id, None)
            logger.info("Model {} ready in {:.1f}s ({})", job.model_id,
                        time.monotonic() - started, path)
        except ServiceError as exc:
            job.error = exc
        except Exception as exc:  # a bad file must not take the worker down
            logger.exception("Loading {} failed", job.model_id)
            job.error = ModelLoadError(f"Loading model '{job.model_id}' failed: {exc}")
        if job.error is not None:
            self._failures[job.model_id] = job.error.message
            logger.error("Model {} could not be loaded: {}", job.model_id, job.error.message)
        with self._lock:
            job.done = True
            waiters, job.waiters = job.waiters, []
            if job.error is None:
                self._jobs.pop(job.model_id, None)
        for waiter in waiters:
            waiter.put(True)

    def _make_room(self) -> None:
        while len(self._engines) >= self._max_models:
            idle = [(self._last_used.get(mid, 0.0), mid) for mid, e in list(self._engines.items())
                    if (s := e.status()).requests_running + s.requests_waiting == 0]
            if not idle:
                raise ServiceUnavailableError(
                    f"MAX_CONCURRENT_MODELS={self._max_models} models are loaded and all are busy.",
                    headers={"Retry-After": "10"})
            self.unload(min(idle)[1])

    def unload(self, model_id: str) -> None:
        with self._lock:
            engine = self._engines.pop(model_id, None)
            self._last_used.pop(model_id, None)
        if engine is not None:
            engine.unload()

    def shutdown(self) -> None:
        for model_id in list(self._engines):
            self.unload(model_id)
