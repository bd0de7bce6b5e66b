"""The one Settings object: read once from the environment and `.env`.

No other module reads `os.environ`; they call `get_settings()`.
"""
from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal, NamedTuple, Optional, Union
from urllib.parse import urlsplit

from dotenv import dotenv_values
from pydantic import (BaseModel, ConfigDict, Field, ValidationError, field_validator,
                      model_validator)

from .names import Device, Engine, Strategy

PROJECT_ROOT = Path(__file__).resolve().parents[2]
MULTI_INSTANCE_MODELS = 3  # models resident at once in multi_instance mode, unless set

# a size the engine chooses from the model and the memory at load time
# (src/core/batch_plan.py), or the operator's number
Sequences = Union[Literal["auto"], Annotated[int, Field(ge=1, le=1024)]]
Context = Union[Literal["auto"], Annotated[int, Field(ge=0)]]  # 0: the model's training context


def auto_is_none(value: Union[str, int, None]) -> Optional[int]:
    """An automatic size as the engines take it: None."""
    return None if value == "auto" else value


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
    inference_engine: Union[Literal["auto"], Engine] = "auto"
    device_type: Union[Literal["auto"], Device] = "auto"
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
    context_size: Context = "auto"  # tokens per sequence
    max_batch_size: Sequences = "auto"  # sequences decoded together per model
    chat_template: Optional[str] = None  # jinja2 template for models without one

    # Pulling models (POST /v1/models/pull): off, so the server never contacts the network
    allow_model_downloads: bool = False
    hf_endpoint: str = "https://huggingface.co"  # a mirror, e.g. https://hf-mirror.com
    hf_token: Optional[str] = None  # gated and private repositories
    modelscope_endpoint: str = "https://modelscope.cn"
    modelscope_token: Optional[str] = None
    model_storage_limit: int = Field(0, ge=0)  # bytes MODEL_BASE_PATH may hold ("50GB"); 0: disk

    # Requests
    max_concurrent_requests: int = Field(100, ge=1)
    request_timeout: float = Field(300.0, gt=0)

    # Stored responses (the Responses API's `store`): a SQLite file under DATA_DIR
    data_dir: Path = Path("./data")
    response_store_retention_days: float = Field(30.0, ge=0)  # 0: keep them forever

    # Access: keys, rate limits, input limits (docs/operations.md)
    api_keys: str = ""  # comma-separated user keys; with none (and no file) the API is open
    api_keys_file: Optional[Path] = None  # one key a line ('#' comments); reread on SIGHUP
    admin_api_key: Optional[str] = None  # management routes; unset: any user key may manage
    rate_limit_rpm: int = Field(0, ge=0)  # requests a minute per key (per IP without keys)
    rate_limit_tpm: int = Field(0, ge=0)  # prompt + completion tokens a minute per key
    max_request_bytes: int = Field(10 * 1024 * 1024, ge=1024)  # larger bodies get a 413
    max_output_tokens: int = Field(0, ge=0)  # max_tokens cap (and default); 0: the context
    cors_origins: str = ""  # comma-separated origins allowed by browsers, or *; empty: off

    # Run mode. multi_instance: one process keeping several models resident
    # (MAX_CONCURRENT_MODELS defaults to MULTI_INSTANCE_MODELS then); load_balance:
    # one entry point in front of local instances and remote upstreams (docs/cluster.md)
    inference_mode: Literal["single", "multi_instance", "load_balance"] = "single"
    cluster_instances: int = Field(2, ge=0)  # local instances started at launch
    cluster_base_port: int = Field(0, ge=0, le=65535)  # first instance's port; 0: PORT + 1
    cluster_upstreams: str = ""  # "http://host-a:8000 weight=2 api_key=..., http://host-b:8000"
    load_balance_strategy: Strategy = Strategy.ROUND_ROBIN
    health_check_interval: float = Field(30.0, gt=0)  # seconds between active checks
    instance_start_timeout: float = Field(300.0, gt=0)  # a local instance must be healthy by then
    auto_scaling: bool = False
    min_instances: int = Field(1, ge=0)
    max_instances: int = Field(4, ge=1)
    scale_up_queue_depth: float = Field(4.0, gt=0)  # waiting requests per instance
    scale_up_latency: float = Field(0.0, ge=0)  # seconds of mean response time; 0: off
    scale_down_after: float = Field(300.0, gt=0)  # seconds without a queue before one goes
    scale_cooldown: float = Field(60.0, ge=0)  # seconds between two scaling steps

    # Logs and metrics
    log_level: Literal["TRACE", "DEBUG", "INFO", "SUCCESS", "WARNING", "ERROR", "CRITICAL"] = "INFO"
    log_dir: Path = Path("./logs")
    log_rotation_mb: int = Field(50, ge=1)  # a log file is rotated past this size
    log_retention_days: int = Field(14, ge=1)
    log_prompts: bool = False  # put prompt text in api_requests.log
    metrics_interval: float = Field(60.0, ge=0)  # seconds between system_metrics.log samples; 0: off

    @model_validator(mode="before")
    @classmethod
    def _multi_instance_models(cls, data: Any) -> Any:
        mode = str(data.get("inference_mode", "")).strip().lower() if isinstance(data, dict) else ""
        if mode == "multi_instance" and "max_concurrent_models" not in data:
            data = {**data, "max_concurrent_models": MULTI_INSTANCE_MODELS}
        return data

    @field_validator("inference_engine", "device_type", "context_size", "max_batch_size",
                     mode="before")
    @classmethod
    def _lower(cls, value: str) -> str:
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper(cls, value: str) -> str:
        return value.strip().upper() if isinstance(value, str) else value

    @field_validator("inference_mode", "load_balance_strategy", mode="before")
    @classmethod
    def _lower_names(cls, value: str) -> str:
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator("cluster_upstreams")
    @classmethod
    def _upstreams_parse(cls, value: str) -> str:
        parse_upstreams(value)  # raises ValueError with the faulty entry
        return value

    @model_validator(mode="after")
    def _cluster_bounds(self) -> "Settings":
        if self.inference_mode != "load_balance":
            return self
        if self.min_instances > self.max_instances:
            raise ValueError(f"MIN_INSTANCES ({self.min_instances}) is above MAX_INSTANCES "
                             f"({self.max_instances})")
        if not self.min_instances <= self.cluster_instances <= self.max_instances:
            raise ValueError(f"CLUSTER_INSTANCES ({self.cluster_instances}) must be from "
                             f"MIN_INSTANCES ({self.min_instances}) to MAX_INSTANCES "
                             f"({self.max_instances})")
        if not self.cluster_instances and not self.cluster_upstreams.strip():
            raise ValueError("load_balance needs CLUSTER_INSTANCES > 0 or CLUSTER_UPSTREAMS")
        return self

    @field_validator("chat_template", "vllm_quantization", "distributed_executor_backend",
                     "api_keys_file", "admin_api_key", "hf_token", "modelscope_token",
                     mode="before")
    @classmethod
    def _empty_is_none(cls, value: Optional[str]) -> Optional[str]:
        return value or None

    @field_validator("hf_endpoint", "modelscope_endpoint")
    @classmethod
    def _endpoint(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"{value!r} is not an http:// or https:// URL")
        return value.rstrip("/")

    @field_validator("model_storage_limit", mode="before")
    @classmethod
    def _size(cls, value):
        return parse_size(value) if isinstance(value, str) else value

    def resolve(self, path: Path) -> Path:
        """A configured relative path is relative to the project root."""
        return path if path.is_absolute() else (PROJECT_ROOT / path).resolve()

    @property
    def upstreams(self) -> list["UpstreamSpec"]:
        return parse_upstreams(self.cluster_upstreams)

    @property
    def first_instance_port(self) -> int:
        return self.cluster_base_port or self.port + 1

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
    def data_path(self) -> Path:
        return self.resolve(self.data_dir)

    @property
    def logs_path(self) -> Path:
        return self.resolve(self.log_dir)


class UpstreamSpec(NamedTuple):
    """A remote OpenAI-compatible server the load balancer sends requests to."""

    url: str  # base URL without a trailing /v1
    weight: int
    api_key: Optional[str]  # sent instead of the client's key; None: the client's key


def make_upstream(url: str, weight: int = 1, api_key: Optional[str] = None) -> UpstreamSpec:
    """An upstream from its URL (a trailing /v1 is dropped: paths are added
    whole), or ValueError saying what is wrong."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"upstream {url!r} is not an http:// or https:// URL")
    if weight < 1:
        raise ValueError(f"upstream {url!r}: weight must be 1 or more")
    base = url.rstrip("/")
    return UpstreamSpec(base[:-3] if base.endswith("/v1") else base, weight, api_key or None)


def parse_upstreams(text: str) -> list[UpstreamSpec]:
    """CLUSTER_UPSTREAMS: comma-separated entries, each a URL followed by
    optional `weight=N` and `api_key=KEY` words."""
    specs = []
    for entry in filter(None, (e.strip() for e in text.split(","))):
        url, *options = entry.split()
        weight, api_key = 1, None
        for option in options:
            name, _, value = option.partition("=")
            if name == "weight" and value.isdigit():
                weight = int(value)
            elif name == "api_key" and value:
                api_key = value
            else:
                raise ValueError(f"upstream {url!r}: unknown option {option!r} "
                                 f"(weight=N with N >= 1, api_key=KEY)")
        specs.append(make_upstream(url, weight, api_key))
    return specs


_UNITS = {"": 1, "B": 1, "K": 1024, "KB": 1024, "M": 1024 ** 2, "MB": 1024 ** 2,
          "G": 1024 ** 3, "GB": 1024 ** 3, "T": 1024 ** 4, "TB": 1024 ** 4}


def parse_size(text: str) -> int:
    """'50GB', '512M', '1.5G' or a number of bytes (binary units: 1G = 1024^3)."""
    raw = text.strip().upper().replace("IB", "B").replace(" ", "")
    number = raw.rstrip("KMGTB")
    unit = raw[len(number):]
    try:
        if unit not in _UNITS:
            raise ValueError
        return int(float(number) * _UNITS[unit])
    except ValueError:
        raise ValueError(f"{text!r} is not a size like 50GB, 512MB or a number of bytes") from None


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
            if err["loc"] else err["msg"] for err in exc.errors()
        )
        raise ConfigError(f"Invalid configuration: {problems}") from None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return load_settings()
