"""The model manager owns every engine: which models are resident, loading
and unloading them at run time, and the leases that keep a model in place
while requests use it.

A model is `unloaded`, `loading`, `ready`, `unloading` or `error` (with the
error's message). At most MAX_CONCURRENT_MODELS are resident: loading one
more unloads the least recently used idle one, or answers 409 when all are
busy. An unload waits for the requests in flight (each holds a lease) up to
a deadline; past it the engine ends them with a clean error. With
MODEL_IDLE_TIMEOUT set, a model nobody used for that long is unloaded; a
request may set its own keep-alive for the model it used (Ollama's
`keep_alive`: seconds after the answer, 0 at once, negative never), which
replaces that rule for the model until it is unloaded. The default model
always stays. Loads and unloads run in native threads: they are
long native calls, and the hub must keep serving meanwhile.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from loguru import logger

from .concurrency import (CrossThreadQueue, NativeWakeup, allocate_native_lock,
                          call_in_native_thread, start_native_thread)
from .exceptions import (ConflictError, ModelLoadError, ModelNotFoundError, ModelNotLoadedError,
                         ServiceError, ServiceUnavailableError)
from .inference_engine import EngineOptions, InferenceEngine, ModelState
from .model_catalog import ModelCatalog, ModelSettings, ModelSpec

# (model id, the engine named for it, its path, the machine's engine) -> (engine, its class):
# the engine registry's rule (src/engines/registry.engine_for_model)
EngineFor = Callable[[str, Optional[str], Optional[Path], str], tuple[str, type]]
ops_log = logger.bind(channel="model")


@dataclass
class _Model:
    spec: ModelSpec
    engine_name: str
    state: ModelState = ModelState.UNLOADED
    error: Optional[str] = None
    engine: Optional[InferenceEngine] = None
    loading: Optional[InferenceEngine] = None  # the engine whose load is under way
    in_flight: int = 0
    last_used: float = 0.0
    keep_for: Optional[float] = None  # a request's keep-alive in seconds; None: the server's rule
    loaded_at: Optional[float] = None
    load_seconds: Optional[float] = None
    load_waiters: list[CrossThreadQueue] = field(default_factory=list)
    drain_waiters: list[CrossThreadQueue] = field(default_factory=list)

    @property
    def model_id(self) -> str:
        return self.spec.model_id

    def busy(self) -> bool:
        if self.in_flight:
            return True
        status = self.engine.status() if self.engine else None
        return bool(status and status.requests_running + status.requests_waiting)


class ModelLease:
    """A request's hold on a ready model: the model is not unloaded under it
    before `release()` (or before the unload deadline)."""

    def __init__(self, manager: "ModelManager", model: _Model):
        self._manager = manager
        self._model = model
        self.engine: InferenceEngine = model.engine  # type: ignore[assignment]
        self.model_id = model.model_id
        self.settings: ModelSettings = model.spec.settings
        self._released = False

    def keep_for(self, seconds: Optional[float]) -> None:
        """How long the model stays once idle: seconds after the last answer, 0
        unloads it then, negative keeps it; None returns it to MODEL_IDLE_TIMEOUT."""
        self._manager._keep(self._model, seconds)

    def release(self) -> None:
        if not self._released:
            self._released = True
            self._manager._release(self._model)

    def __enter__(self) -> "ModelLease":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()


class ModelManager:
    def __init__(self, catalog: ModelCatalog, engine_for: EngineFor,
                 default_engine: str, options: EngineOptions, *, max_models: int = 1,
                 auto_load: bool = True, idle_timeout: float = 0.0,
                 drain_timeout: float = 30.0):
        self.catalog = catalog
        self._engine_for = engine_for
        self.default_engine = default_engine
        self._options = options
        self._max_models = max_models
        self.auto_load = auto_load
        self._idle_timeout = idle_timeout
        self._drain_timeout = drain_timeout
        self._models: dict[str, _Model] = {}
        self._lock = allocate_native_lock()  # held only for bookkeeping, never across a wait
        self._stopping = False
        self._reaper = NativeWakeup()  # a model's expiry moved: look again

    # queries -----------------------------------------------------------------
    @property
    def default_model_id(self) -> str:
        return self.catalog.default_model_id

    def ready_models(self) -> list[str]:
        return [m.model_id for m in list(self._models.values()) if m.state == ModelState.READY]

    def parallel_sequences(self) -> int:
        """Sequences the ready models decode at once, together (the cluster's
        autoscaler counts requests beyond them as waiting)."""
        return sum(m.engine.parallel_sequences for m in list(self._models.values())
                   if m.state == ModelState.READY and m.engine is not None)

    def states(self) -> dict[str, tuple[str, Optional[str]]]:
        """(state, error) of every model ever loaded: cheap, no catalog scan."""
        return {m.model_id: (m.state, m.error) for m in list(self._models.values())}

    def describe(self, name: Optional[str] = None) -> list[dict[str, Any]]:
        """Every known model (or the one called `name`) with its state."""
        if name:
            return [self._describe(self._spec(name))]
        specs = self.catalog.entries()
        for model in list(self._models.values()):  # loaded, though its files were removed
            if model.state != ModelState.UNLOADED:
                specs.setdefault(model.model_id, model.spec)
        return [self._describe(spec) for spec in specs.values()]

    def _spec(self, name: str) -> ModelSpec:
        """The model called `name` in the catalog, or resident though its files
        left MODEL_BASE_PATH; 404 otherwise."""
        try:
            return self.catalog.get(name)
        except ModelNotFoundError:
            model = self._models.get(name)
            if model is None or model.state == ModelState.UNLOADED:
                raise
            return model.spec

    def _describe(self, spec: ModelSpec) -> dict[str, Any]:
        model = self._models.get(spec.model_id)
        info: dict[str, Any] = {"id": spec.model_id, **spec.describe(),
                                "state": model.state if model else ModelState.UNLOADED,
                                "error": model.error if model else None,
                                "engine": model.engine_name if model else
                                (spec.engine or self.default_engine),
                                "requests_in_flight": model.in_flight if model else 0,
                                "load_seconds": model.load_seconds if model else None,
                                "loaded_at": model.loaded_at if model else None,
                                "last_used": model.last_used if model and model.last_used else None,
                                "expires_at": self._expiry_of(model),
                                "default": spec.model_id == self.default_model_id}
        if model and model.state == ModelState.LOADING:
            fraction, stage = model.loading.load_progress if model.loading else (0.0, "queued")
            info["load_progress"], info["load_stage"] = round(fraction, 3), stage
        if model and model.engine is not None and model.state == ModelState.READY:
            status = model.engine.status()
            info["runtime"] = {k: v for k, v in vars(status).items()
                               if k not in ("model_id", "engine", "path", "state", "loaded_at")}
        return info

    # requests -----------------------------------------------------------------------
    def start(self) -> None:
        """Begin loading the default model; start the reaper of idle models."""
        try:
            self._begin_load(self.catalog.get(self.default_model_id))
        except ServiceError as exc:
            ops_log.error("Default model {} cannot be loaded: {}", self.default_model_id,
                          exc.message)
        start_native_thread(self._reap_idle)

    def acquire(self, name: str, timeout: float) -> ModelLease:
        """A lease on the ready model called `name` (an id or an alias),
        loading it first when AUTO_LOAD allows."""
        deadline = time.monotonic() + timeout
        model = self._find_ready(name)
        if model is None:
            spec = self.catalog.get(name)  # 404 for an unknown name
            model = self._models.get(spec.model_id)
            if model is None or model.state != ModelState.READY:
                if model is not None and model.state == ModelState.UNLOADING:
                    raise ServiceUnavailableError(f"Model '{spec.model_id}' is being unloaded.",
                                                  headers={"Retry-After": "5"})
                if not self.auto_load and (model is None or model.state != ModelState.LOADING):
                    raise ModelNotLoadedError(spec.model_id)
                self._begin_load(spec)
                model = self._wait_loaded(spec.model_id, deadline)
        with self._lock:
            if model.state != ModelState.READY:
                raise ServiceUnavailableError(f"Model '{model.model_id}' is {model.state}; "
                                              f"retry shortly.", headers={"Retry-After": "5"})
            model.in_flight += 1
            model.last_used = time.time()
            return ModelLease(self, model)

    def _find_ready(self, name: str) -> Optional[_Model]:
        """The ready model called `name` or aliased so, without a catalog scan."""
        model = self._models.get(name)
        if model is None:
            model = next((m for m in list(self._models.values())
                          if name in m.spec.settings.aliases), None)
        return model if model is not None and model.state == ModelState.READY else None

    def _release(self, model: _Model) -> None:
        with self._lock:
            model.in_flight = max(model.in_flight - 1, 0)
            model.last_used = time.time()
            waiters = model.drain_waiters if model.in_flight == 0 else []
            model.drain_waiters = [] if waiters else model.drain_waiters
            # the reaper looks again only when this model can expire (not on every
            # request of a server that never unloads idle models)
            expires = model.in_flight == 0 and not math.isinf(self._expiry(model))
        for waiter in waiters:
            waiter.put(True)
        if expires:
            self._reaper.notify()

    def _keep(self, model: _Model, seconds: Optional[float]) -> None:
        with self._lock:
            model.keep_for = seconds
        self._reaper.notify()

    # loading --------------------------------------------------------------------------
    def load(self, name: str, model_path: Optional[str] = None, engine: Optional[str] = None,
             settings: Optional[ModelSettings] = None, timeout: float = 300.0) -> dict[str, Any]:
        """Register (when a path or settings are given) and load a model;
        wait for it up to `timeout` seconds and describe it."""
        deadline = time.monotonic() + timeout
        custom = bool(model_path or engine or (settings and settings.model_fields_set))
        model = self._models.get(name)
        if custom and model is not None and model.state in (
                ModelState.LOADING, ModelState.READY, ModelState.UNLOADING):
            raise ConflictError(f"Model '{name}' is {model.state}: unload it before loading it "
                                f"with other settings.", param="model_name")
        if custom:
            spec = self.catalog.register(name, model_path, engine, settings or ModelSettings())
        else:
            spec = self.catalog.get(name)
        try:
            self._begin_load(spec)
        except ServiceError:
            if custom and model is None:  # a registration that never loaded is not kept
                self.catalog.forget(spec.model_id)
            raise
        self._wait_loaded(spec.model_id, deadline, accept_loading=True)
        return self._describe(spec)

    def _begin_load(self, spec: ModelSpec) -> None:
        # 400 for an engine not available here
        engine_name, engine_class = self._engine_for(spec.model_id, spec.engine, spec.path,
                                                     self.default_engine)
        options = spec.engine_options(self._options, self._chat_template(spec))
        victims: list[_Model] = []
        with self._lock:
            model = self._models.get(spec.model_id)
            if model is not None and model.state in (ModelState.LOADING, ModelState.READY):
                return
            if model is not None and model.state == ModelState.UNLOADING:
                raise ServiceUnavailableError(f"Model '{spec.model_id}' is being unloaded; "
                                              f"retry shortly.", headers={"Retry-After": "5"})
            resident = [m for m in self._models.values()
                        if m.state in (ModelState.LOADING, ModelState.READY)]
            idle = sorted((m for m in resident if m.state == ModelState.READY and not m.busy()),
                          key=lambda m: m.last_used)
            excess = len(resident) + 1 - self._max_models
            if excess > len(idle):
                raise ConflictError(
                    f"MAX_CONCURRENT_MODELS={self._max_models} models are loaded and busy; "
                    f"unload one or retry when they are idle.", code="models_busy")
            victims = idle[:max(excess, 0)]
            for victim in victims:
                victim.state = ModelState.UNLOADING
            if model is None:
                model = self._models[spec.model_id] = _Model(spec, engine_name)
            # the same record across loads: leases of an earlier load still count down on it
            model.spec, model.engine_name = spec, engine_name
            model.state, model.error = ModelState.LOADING, None

        def load() -> None:
            try:
                path = spec.resolve_path()
                engine_class.check_model(str(path))
            except Exception as exc:  # nothing was unloaded for a model that cannot load
                with self._lock:
                    for victim in victims:
                        victim.state = ModelState.READY
                self._loaded(model, None, _load_error(model.model_id, exc))
                return
            for victim in victims:
                ops_log.info("Unloading {} to make room for {} (least recently used)",
                             victim.model_id, spec.model_id)
                self._finish_unload(victim)
            self._load(model, engine_class, options, str(path))

        start_native_thread(load)

    def _load(self, model: _Model, engine_class: type, options: EngineOptions,
              path: str) -> None:
        started = time.monotonic()
        ops_log.info("Loading {} with {} from {}", model.model_id, model.engine_name, path)
        engine = engine_class(model.model_id, options)
        model.loading = engine
        try:
            engine.load(path)
        except Exception as exc:  # a bad file or no memory must not take the worker down
            self._loaded(model, None, _load_error(model.model_id, exc))
            return
        model.load_seconds = round(time.monotonic() - started, 3)
        self._loaded(model, engine, None)

    def _loaded(self, model: _Model, engine: Optional[InferenceEngine],
                error: Optional[str]) -> None:
        with self._lock:
            model.loading = None
            if error is None:
                model.engine, model.state, model.error = engine, ModelState.READY, None
                model.loaded_at, model.last_used = time.time(), time.time()
            else:
                model.state, model.error = ModelState.ERROR, error
            waiters, model.load_waiters = model.load_waiters, []
        if error is None:
            ops_log.info("Model {} ready in {:.2f}s", model.model_id, model.load_seconds)
        else:
            ops_log.error("Model {} could not be loaded: {}", model.model_id, error)
        for waiter in waiters:
            waiter.put(True)

    def _wait_loaded(self, model_id: str, deadline: float, accept_loading: bool = False) -> _Model:
        waiter: CrossThreadQueue[bool] = CrossThreadQueue()
        try:
            while True:
                with self._lock:
                    model = self._models[model_id]
                    if model.state != ModelState.LOADING:
                        break
                    model.load_waiters.append(waiter)
                left = deadline - time.monotonic()
                if left <= 0 or not waiter.take(left):
                    if accept_loading:
                        return model
                    raise ServiceUnavailableError(f"Model '{model_id}' is still loading; retry "
                                                  f"shortly.", headers={"Retry-After": "5"})
        finally:
            waiter.close()
        if model.state == ModelState.ERROR:
            raise ModelLoadError(model.error or f"Model '{model_id}' could not be loaded.")
        return model

    def _chat_template(self, spec: ModelSpec) -> Optional[str]:
        """The per-model template file's text: it replaces the model's own template."""
        name = spec.settings.chat_template_file
        if not name:
            return None
        return self.catalog.resolve_template_file(name).read_text(encoding="utf-8")

    # unloading ------------------------------------------------------------------------
    def unload(self, name: str, drain_timeout: Optional[float] = None,
               forget: bool = False) -> dict[str, Any]:
        """Unload a model: new requests get 503 at once, those in flight get
        `drain_timeout` seconds to finish, then the engine ends them."""
        spec = self._spec(name)
        drain = self._drain_timeout if drain_timeout is None else drain_timeout
        waiter: CrossThreadQueue[bool] = CrossThreadQueue()
        try:
            with self._lock:
                model = self._models.get(spec.model_id)
                if model is not None and model.state == ModelState.LOADING:
                    raise ConflictError(f"Model '{spec.model_id}' is loading; unload it once "
                                        f"it is ready.", code="model_loading")
                mine = model is not None and model.state == ModelState.READY
                if mine:
                    model.state = ModelState.UNLOADING
                if model is not None and model.state == ModelState.UNLOADING and model.in_flight:
                    model.drain_waiters.append(waiter)
                    in_flight = model.in_flight
                else:
                    in_flight = 0
            if in_flight:
                ops_log.info("Unloading {}: waiting up to {:.0f}s for {} requests in flight",
                             spec.model_id, drain, in_flight)
                waiter.take(drain)
            if mine:
                call_in_native_thread(lambda: self._finish_unload(model))
        finally:
            waiter.close()
        if forget:
            self.catalog.forget(spec.model_id)
            with self._lock:
                self._models.pop(spec.model_id, None)
        return (self._describe(spec) if not forget
                else {"id": spec.model_id, "state": ModelState.UNLOADED})

    def _finish_unload(self, model: _Model) -> None:
        """Free the engine (native thread): requests still running end with an error."""
        left = model.in_flight
        engine = model.engine
        if engine is not None:
            engine.unload()
        with self._lock:
            model.engine, model.state, model.loaded_at = None, ModelState.UNLOADED, None
            model.keep_for = None
        ops_log.info("Unloaded {}{}", model.model_id,
                     f" ({left} requests in flight were ended)" if left else "")

    def _expiry(self, model: _Model) -> float:
        """When an idle model goes: its request keep-alive, else MODEL_IDLE_TIMEOUT."""
        keep = model.keep_for if model.keep_for is not None else (self._idle_timeout or -1)
        if keep < 0 or model.model_id == self.default_model_id:
            return math.inf
        return model.last_used + keep

    def _expiry_of(self, model: Optional[_Model]) -> Optional[float]:
        if model is None or model.state != ModelState.READY:
            return None
        expiry = self._expiry(model)
        return None if math.isinf(expiry) else expiry

    def _reap_idle(self) -> None:
        """Unload each idle model when its expiry passes; a busy one is looked at
        again when its last request ends (a release wakes this thread)."""
        while not self._stopping:
            now = time.time()
            with self._lock:
                ready = [m for m in self._models.values() if m.state == ModelState.READY]
                idle = [m for m in ready if not m.busy()]
                due = [m for m in idle if self._expiry(m) <= now]
                for model in due:
                    model.state = ModelState.UNLOADING
                upcoming = min((self._expiry(m) for m in idle if m not in due), default=math.inf)
            for model in due:
                if model.keep_for is not None:
                    ops_log.info("Unloading {}: its keep-alive of {:.0f}s after the last "
                                 "request passed", model.model_id, model.keep_for)
                else:
                    ops_log.info("Unloading {}: idle for more than MODEL_IDLE_TIMEOUT={:.0f}s",
                                 model.model_id, self._idle_timeout)
                self._finish_unload(model)
            self._reaper.wait(min(max(upcoming - time.time(), 0.05), 30.0))

    def shutdown(self) -> None:
        self._stopping = True
        self._reaper.notify()
        for model in list(self._models.values()):
            if model.state == ModelState.READY:
                model.state = ModelState.UNLOADING
                self._finish_unload(model)


def _load_error(model_id: str, exc: Exception) -> str:
    if isinstance(exc, ServiceError):
        return exc.message
    logger.opt(exception=exc).error("Loading {} failed", model_id)  # a bug, or a bad file
    return f"Loading model '{model_id}' failed: {exc}"
