"""The names every layer shares, each defined once: the engines, the devices
they run on, and the load balancer's strategies. Settings, the platform
detector, the engine registry, the model catalog, the API's schemas and
run.py derive their lists from these. (A model's states are
src/core/inference_engine.ModelState.)"""
from __future__ import annotations

from enum import StrEnum


class Engine(StrEnum):
    LLAMA_CPP = "llama_cpp"  # llama-cpp-python: GGUF files, everywhere
    VLLM = "vllm"  # NVIDIA CUDA: Hugging Face model folders
    MLX = "mlx"  # Apple Silicon: mlx-lm model folders


class Device(StrEnum):
    CPU = "cpu"
    CUDA = "cuda"
    MPS = "mps"


ENGINE_DEVICE = {Engine.VLLM: Device.CUDA, Engine.MLX: Device.MPS, Engine.LLAMA_CPP: Device.CPU}
DEVICE_ENGINE = {device: engine for engine, device in ENGINE_DEVICE.items()}
ENGINE_MODULE = {Engine.VLLM: "vllm", Engine.MLX: "mlx_lm", Engine.LLAMA_CPP: "llama_cpp"}


class ModelState(StrEnum):
    """Where a model is in its life: the same names in the engines, the model
    manager, the API's answers, the load balancer and the console."""

    UNLOADED = "unloaded"
    LOADING = "loading"
    READY = "ready"
    UNLOADING = "unloading"
    ERROR = "error"  # the load failed, or the engine's worker did
    DOWNLOADING = "downloading"  # not a model yet: its pull is under way (src/core/model_pull.py)


class Strategy(StrEnum):
    """How the load-balanced entry point picks an instance (src/core/load_balancer.py)."""

    ROUND_ROBIN = "round_robin"
    LEAST_CONNECTIONS = "least_connections"
    WEIGHTED = "weighted"
    RANDOM = "random"
    RESPONSE_TIME = "response_time"
