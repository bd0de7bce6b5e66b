"""The one Settings object: read once from the environment and `.env`.

No other module reads `os.environ`; they call `get_settings()`.
"""
from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Literal, Optional

from dotenv import dotenv_values
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

PROJECT_ROOT = Path(__file__).resolve().parents[2]


class Settings(BaseModel):
    """Every variable the README documents, with its default.

    Field names are the environment variable names in lower case.
    """

    model_config = ConfigDict(extra="ignore", frozen=True)

    # Service
    host: str = "0.0.0.0"
    port: int = Field(8000, ge=1, le=65535)
    # One worker by default: each worker process loads its own copy of every
    # model and batches only its own requests.
    workers: int = Field(1, ge=1)
    worker_timeout: int = Field(300, ge=1)

    # Engine and device
    inference_engine: Literal["auto", "llama_cpp", "vllm", "mlx"] = "auto"
    device_type: Literal["auto", "cpu", "cuda", "mps"] = "auto"
    max_gpu_memory: float = Field(0.8, gt=0, le=1)
    max_cpu_threads: int = Field(0, ge=0)  # 0: all physical cores
    # vLLM only (docs/engines.md)
    vllm_dtype: str = "auto"
    vllm_quantization: Optional[str] = None
    tensor_parallel_size: int = Field(1, ge=1)
    pipeline_parallel_size: int = Field(1, ge=1)
    distributed_executor_backend: Optional[Literal["mp", "ray", "uni"]] = None

    # Models
    default_model: str = "SmolLM2-135M-Instruct"
    model_base_path: Path = Path("./models")
    max_concurrent_models: int = Field(1, ge=1)
    auto_load: bool = True  # a request for a known, unloaded model loads it
    model_idle_timeout: float = Field(0.0, ge=0)  # seconds; 0: never unload idle models
    unload_drain_timeout: float = Field(30.0, ge=0)  # seconds in-flight requests get to finish
    config_dir: Path = Path("./config")  # models.yaml / models.json: per-model settings
    context_size: int = Field(4096, ge=0)  # per sequence; 0: the model's training context
    max_batch_size: int = Field(4, ge=1)  # sequences decoded together per model
    chat_template: Optional[str] = None  # jinja2 template for models without one

    # Requests
    max_concurrent_requests: int = Field(100, ge=1)
    request_timeout: float = Field(300.0, gt=0)

    # Access: keys, rate limits, input limits (docs/operations.md)
    api_keys: str = ""  # comma-separated user keys; with none (and no file) the API is open
    api_keys_file: Optional[Path] = None  # one key a line ('#' comments); reread on SIGHUP
    admin_api_key: Optional[str] = None  # management routes; unset: any user key may manage
    rate_limit_rpm: int = Field(0, ge=0)  # requests a minute per key (per IP without keys)
    rate_limit_tpm: int = Field(0, ge=0)  # prompt + completion tokens a minute per key
    max_request_bytes: int = Field(10 * 1024 * 1024, ge=1024)  # larger bodies get a 413
    max_output_tokens: int = Field(0, ge=0)  # max_tokens cap (and default); 0: the context
    cors_origins: str = ""  # comma-separated origins allowed by browsers, or *; empty: off

    # Logs and metrics
    log_level: Literal["TRACE", "DEBUG", "INFO", "SUCCESS", "WARNING", "ERROR", "CRITICAL"] = "INFO"
    log_dir: Path = Path("./logs")
    log_rotation_mb: int = Field(50, ge=1)  # a log file is rotated past this size
    log_retention_days: int = Field(14, ge=1)
    log_prompts: bool = False  # put prompt text in api_requests.log
    metrics_interval: float = Field(60.0, ge=0)  # seconds between system_metrics.log samples; 0: off

    @field_validator("inference_engine", "device_type", mode="before")
    @classmethod
    def _lower(cls, value: str) -> str:
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper(cls, value: str) -> str:
        return value.strip().upper() if isinstance(value, str) else value

    @field_validator("chat_template", "vllm_quantization", "distributed_executor_backend",
                     "api_keys_file", "admin_api_key", mode="before")
    @classmethod
    def _empty_is_none(cls, value: Optional[str]) -> Optional[str]:
        return value or None

    def resolve(self, path: Path) -> Path:
        """A configured relative path is relative to the project root."""
        return path if path.is_absolute() else (PROJECT_ROOT / path).resolve()

    @property
    def listens_beyond_loopback(self) -> bool:
        return self.host not in ("127.0.0.1", "localhost", "::1")

    @property
    def model_dir(self) -> Path:
        return self.resolve(self.model_base_path)

    @property
    def config_path(self) -> Path:
        return self.resolve(self.config_dir)

    @property
    def logs_path(self) -> Path:
        return self.resolve(self.log_dir)


class ConfigError(ValueError):
    """A variable has a value the service cannot use."""


def load_settings(env_file: Optional[Path] = None) -> Settings:
    """Build Settings from `.env` (if present) overlaid by the real environment."""
    env_file = env_file or PROJECT_ROOT / ".env"
    values: dict[str, str] = {}
    if env_file.is_file():
        values.update({k: v for k, v in dotenv_values(env_file).items() if v is not None})
    values.update(os.environ)
    fields = Settings.model_fields
    data = {key.lower(): value for key, value in values.items() if key.lower() in fields}
    try:
        return Settings(**data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{str(err['loc'][0]).upper()}={data.get(str(err['loc'][0]))!r}: {err['msg']}"
            for err in exc.errors()
        )
        raise ConfigError(f"Invalid configuration: {problems}") from None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return load_settings()
