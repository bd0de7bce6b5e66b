"""The objects an app shares between its requests, each behind one typed
accessor: installed once when the app is built (app.py, load_balanced_app.py,
the middleware), read by routes and middleware as `ext.model_manager()`."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Generic, Optional, TypeVar

from flask import Flask, current_app

if TYPE_CHECKING:
    from ..cluster.balancer import LoadBalancer
    from ..cluster.supervisor import ClusterManager
    from ..core.model_manager import ModelManager
    from ..core.model_pull import PullManager
    from ..core.response_store import ResponseStore
    from ..utils.metrics import ServiceMetrics
    from .middleware.auth import KeyRing
    from .middleware.rate_limit import RateLimiter

T = TypeVar("T")


class Extension(Generic[T]):
    def __init__(self, name: str):
        self.name = name

    def install(self, app: Flask, value: T) -> T:
        app.extensions[self.name] = value
        return value

    def __call__(self) -> T:
        """The current app's."""
        return current_app.extensions[self.name]

    def of(self, app: Any) -> Optional[T]:
        """`app`'s, or None where it has none (the other kind of app)."""
        return getattr(app, "extensions", {}).get(self.name)


model_manager: Extension[ModelManager] = Extension("model_manager")
model_pulls: Extension[PullManager] = Extension("model_pulls")
response_store: Extension[ResponseStore] = Extension("response_store")
metrics: Extension[ServiceMetrics] = Extension("metrics")
platform: Extension[dict[str, Any]] = Extension("platform")  # what the platform detector found
keys: Extension[KeyRing] = Extension("keys")
rate_limiter: Extension[RateLimiter] = Extension("rate_limiter")
cluster: Extension[ClusterManager] = Extension("cluster")  # load-balanced mode
balancer: Extension[LoadBalancer] = Extension("balancer")
