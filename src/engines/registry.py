"""Engine names to classes, imported lazily: an engine's library is only
imported when that engine is used, so the server starts without the others.
Nothing is ever imported from a name a request supplies: names are looked
up in this fixed table."""
from __future__ import annotations

import importlib
from typing import Type

from ..core.exceptions import InvalidRequestError
from ..core.inference_engine import InferenceEngine
from ..core.model_catalog import check_engine_name

_ENGINES = {
    "llama_cpp": ("src.engines.llamacpp_engine", "LlamaCppEngine"),
    "mlx": ("src.engines.mlx_engine", "MLXEngine"),
    "vllm": ("src.engines.vllm_engine", "VLLMEngine"),
}
_FORMATS = {"llama_cpp": "GGUF file (.gguf)",
            "mlx": "model folder (config.json, *.safetensors, tokenizer files)",
            "vllm": "Hugging Face model folder"}


def implemented_engines() -> list[str]:
    return list(_ENGINES)


def get_engine_class(name: str) -> Type[InferenceEngine]:
    """The class of a known engine; 400 for one this version or machine lacks."""
    check_engine_name(name)
    if name not in _ENGINES:
        raise InvalidRequestError(f"engine_type '{name}' is not available in this version "
                                  f"(available: {', '.join(_ENGINES)}).", param="engine_type",
                                  code="engine_unavailable")
    module, cls = _ENGINES[name]
    try:
        return getattr(importlib.import_module(module), cls)
    except ImportError as exc:
        raise InvalidRequestError(f"engine_type '{name}' cannot run on this machine: {exc}.",
                                  param="engine_type", code="engine_unavailable") from None


def model_format(name: str) -> str:
    return _FORMATS.get(name, "")
