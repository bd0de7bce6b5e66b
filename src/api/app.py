"""Flask application factory.

Gunicorn serves `src.api.app:application` (or `src.api.app:get_app()`);
each worker process builds its own app, model manager and engines after the
fork, because native scheduler threads do not survive a fork.
"""
from __future__ import annotations

from dataclasses import asdict
from typing import Any, Optional

from flask import Flask

from ..core.inference_engine import EngineOptions
from ..core.model_catalog import ModelCatalog
from ..core.model_manager import ModelManager
from ..core.model_pull import PullManager
from ..core.response_store import ResponseStore
from ..engines.registry import engine_for_model, implemented_engines
from ..utils.config import Settings, auto_is_none, get_settings
from ..utils.logger import logger
from ..utils.metrics import ServiceMetrics
from ..utils.platform_detector import choose_engine, detect_platform
from . import extensions as ext
from .anthropic import routes as anthropic
from .base_app import new_app
from .ollama import routes as ollama
from .openai import responses, routes as openai
from .routes import console, custom_protocol, management, model_pull, system
from .system_sampler import start_system_sampler


def engine_options(settings: Settings) -> EngineOptions:
    return EngineOptions(context_size=auto_is_none(settings.context_size),
                         parallel_sequences=auto_is_none(settings.max_batch_size),
                         threads=settings.max_cpu_threads,
                         max_waiting=settings.max_concurrent_requests,
                         gpu_memory_fraction=settings.max_gpu_memory,
                         dtype=settings.vllm_dtype, quantization=settings.vllm_quantization,
                         tensor_parallel_size=settings.tensor_parallel_size,
                         pipeline_parallel_size=settings.pipeline_parallel_size,
                         distributed_executor_backend=settings.distributed_executor_backend,
                         chat_template=settings.chat_template)


def build_model_manager(settings: Settings) -> tuple[ModelManager, dict[str, Any]]:
    """The model manager, and what the platform detector found (for /v1/system/status)."""
    info = detect_platform()
    choice = choose_engine(info, settings.inference_engine, settings.device_type,
                           implemented_engines())
    logger.info("Engine: {} on {} ({})", choice.engine, choice.device, choice.reason)
    catalog = ModelCatalog(settings.model_dir, settings.default_model, settings.config_path)
    manager = ModelManager(catalog, engine_for_model, choice.engine, engine_options(settings),
                           max_models=settings.max_concurrent_models,
                           auto_load=settings.auto_load,
                           idle_timeout=settings.model_idle_timeout,
                           drain_timeout=settings.unload_drain_timeout)
    return manager, {"info": asdict(info), "choice": asdict(choice)}


def model_figures(manager: ModelManager) -> list[dict[str, Any]]:
    """Per-model figures for the metrics: state, load time, and the engine's counters."""
    return [{"id": m["id"], "state": m["state"], "load_seconds": m["load_seconds"],
             **(m.get("runtime") or {})} for m in manager.describe()]


# the protocol faces this service serves over its one core, and where each lives
FACES = [{"name": "OpenAI", "base_url": "/v1"},
         {"name": "Anthropic", "base_url": anthropic.BASE_PATH},
         {"name": "Ollama", "base_url": ollama.BASE_PATH}]


# the single service's routes (each face renders its errors in its own shape)
BLUEPRINTS = [openai.bp, management.bp, model_pull.bp, system.bp, responses.bp, custom_protocol.bp,
              console.bp, anthropic.bp, ollama.bp]


def create_app(settings: Optional[Settings] = None) -> Flask:
    settings = settings or get_settings()
    app = new_app(settings, __name__)
    for blueprint in BLUEPRINTS:
        app.register_blueprint(blueprint)
    manager, platform = build_model_manager(settings)
    manager.start()
    ext.model_manager.install(app, manager)
    ext.platform.install(app, platform)
    ext.model_pulls.install(app, PullManager(settings.model_dir, settings.model_storage_limit))
    app.config["FACES"] = FACES
    metrics = ext.metrics.install(app, ServiceMetrics(lambda: model_figures(manager)))
    ext.response_store.install(app, ResponseStore(settings.data_path / "responses.sqlite3",
                                                  settings.response_store_retention_days))
    if settings.metrics_interval > 0:
        start_system_sampler(settings.metrics_interval, metrics.summary)
    return app


_app: Optional[Flask] = None


def get_app() -> Flask:
    """The process's one app, built on first use."""
    global _app
    if _app is None:
        _app = create_app()
    return _app


def __getattr__(name: str) -> Any:
    # `application` is built lazily, so importing this module starts nothing.
    if name == "application":
        return get_app()
    raise AttributeError(name)
