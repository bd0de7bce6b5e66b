"""The load-balanced entry point (INFERENCE_MODE=load_balance).

Gunicorn serves `src.api.load_balanced_app:application` with one gevent
worker: the worker owns the cluster manager, which starts the local
instances as child processes and stops them when the worker exits
(gunicorn_conf.worker_exit); the entry point itself holds no model. Keys and
the requests-a-minute limit are checked here; the instances, started with
the same settings, check keys again and count tokens.
"""
from __future__ import annotations

import os
import signal
import threading
from typing import Any, Optional

from flask import Flask

from ..cluster.balancer import LoadBalancer
from ..cluster.supervisor import ClusterManager
from ..utils.config import Settings, get_settings
from ..utils.logger import logger
from ..utils.metrics import ServiceMetrics
from . import extensions as ext
from .base_app import new_app
from .middleware.auth import service_key
from .routes import cluster, console, load_balanced


def create_load_balanced_app(settings: Optional[Settings] = None) -> Flask:
    settings = settings or get_settings()
    app = new_app(settings, __name__, count_tokens=False)
    app.register_blueprint(console.bp)
    app.register_blueprint(cluster.bp)
    app.register_blueprint(load_balanced.bp)
    manager = ClusterManager(settings, service_key(settings))
    balancer = LoadBalancer(manager, settings.load_balance_strategy)
    metrics = ServiceMetrics(lambda: [])  # no model here: the instances have them
    metrics.add_instances(lambda: [i.describe() for i in manager.instances()])
    ext.cluster.install(app, manager)
    ext.balancer.install(app, balancer)
    ext.metrics.install(app, metrics)
    if settings.api_keys_file and threading.current_thread() is threading.main_thread():
        _pass_hup_on(manager)
    manager.start()
    logger.info("Load-balanced entry point: {} local instances from port {}, {} upstreams, "
                "strategy {}", settings.cluster_instances, settings.first_instance_port,
                len(settings.upstreams), settings.load_balance_strategy)
    return app


def _pass_hup_on(manager: ClusterManager) -> None:
    """SIGHUP rereads API_KEYS_FILE here (auth.py) and in every local instance."""
    reread_here = signal.getsignal(signal.SIGHUP)

    def on_hup(signum: int, frame: Any) -> None:
        if callable(reread_here):
            reread_here(signum, frame)
        for inst in manager.locals():
            if inst.alive:
                os.kill(inst.pid, signal.SIGHUP)

    signal.signal(signal.SIGHUP, on_hup)


_app: Optional[Flask] = None


def get_load_balanced_app() -> Flask:
    global _app
    if _app is None:
        _app = create_load_balanced_app()
    return _app


def __getattr__(name: str) -> Any:
    # `application` is built lazily, so importing this module starts nothing.
    if name == "application":
        return get_load_balanced_app()
    raise AttributeError(name)
