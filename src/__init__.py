"""vllm-obtain: an OpenAI-compatible inference service for CUDA, Apple Silicon and CPUs."""

__version__ = "0.4.0"
