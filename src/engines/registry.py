"""Engine names to classes, imported lazily: an engine's library is only
imported when that engine is used, so the server starts without the others.
Nothing is ever imported from a name a request supplies: names are looked
up in this fixed table. Which engine a model's files call for is decided
here too."""
from __future__ import annotations

import importlib
from pathlib import Path
from typing import Optional, Type

from ..core.exceptions import InvalidRequestError
from ..core.inference_engine import InferenceEngine
from ..core.model_catalog import check_engine_name
from ..utils.names import Engine

_ENGINES = {
    Engine.LLAMA_CPP: ("src.engines.llamacpp_engine", "LlamaCppEngine"),
    Engine.MLX: ("src.engines.mlx_engine", "MLXEngine"),
    Engine.VLLM: ("src.engines.vllm_engine", "VLLMEngine"),
}
FOLDER_ENGINES = (Engine.VLLM, Engine.MLX)  # the engines that load a model folder


def implemented_engines() -> list[str]:
    return list(_ENGINES)


def get_engine_class(name: str) -> Type[InferenceEngine]:
    """The class of a known engine; 400 for one this version or machine lacks."""
    engine = check_engine_name(name)
    if engine not in _ENGINES:
        raise InvalidRequestError(f"engine_type '{name}' is not available in this version "
                                  f"(available: {', '.join(_ENGINES)}).", param="engine_type",
                                  code="engine_unavailable")
    module, cls = _ENGINES[engine]
    try:
        return getattr(importlib.import_module(module), cls)
    except ImportError as exc:
        raise InvalidRequestError(f"engine_type '{name}' cannot run on this machine: {exc}.",
                                  param="engine_type", code="engine_unavailable") from None


def engine_for_model(model_id: str, named: Optional[str], path: Optional[Path],
                     default: str) -> tuple[str, Type[InferenceEngine]]:
    """The engine that loads a model, and its class: the one a request or
    models.yaml names, else the model's format decides: a .gguf file ->
    llama_cpp; a folder -> the machine's engine when it loads folders (vLLM
    on CUDA, MLX on Apple Silicon), else a 400 that says so."""
    name = named
    if name is None and path is not None and path.is_dir():
        if default not in FOLDER_ENGINES:
            raise InvalidRequestError(f"'{model_id}' is a model folder: on this machine give "
                                      f"engine_type mlx or vllm to load it.",
                                      param="engine_type")
        name = default
    elif name is None:
        name = Engine.LLAMA_CPP if path is not None and path.suffix == ".gguf" else default
    return name, get_engine_class(name)
