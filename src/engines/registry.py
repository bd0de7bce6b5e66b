"""Engine names to classes, imported lazily: an engine's library is only
imported when that engine is used, so the server starts without the others."""
from __future__ import annotations

import importlib
from typing import Type

from ..core.inference_engine import InferenceEngine

_ENGINES = {
    "llama_cpp": ("src.engines.llamacpp_engine", "LlamaCppEngine"),
}
_FORMATS = {"llama_cpp": "GGUF file (.gguf)"}


def implemented_engines() -> list[str]:
    return list(_ENGINES)


def get_engine_class(name: str) -> Type[InferenceEngine]:
    if name not in _ENGINES:
        raise KeyError(f"engine '{name}' is not available in this version "
                       f"(available: {', '.join(_ENGINES)})")
    module, cls = _ENGINES[name]
    return getattr(importlib.import_module(module), cls)


def model_format(name: str) -> str:
    return _FORMATS.get(name, "")
