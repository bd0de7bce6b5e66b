"""Detect the platform and choose the inference engine.

Run `python src/utils/platform_detector.py` for a readable report.
Nothing here imports torch or an engine library: CUDA is found through
`nvidia-smi` / the driver's /proc entry, engines through `importlib.util.find_spec`.
"""
from __future__ import annotations

import importlib.util
import os
import platform
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Optional

import psutil

from .names import DEVICE_ENGINE, ENGINE_DEVICE, ENGINE_MODULE, Device, Engine

_INTERESTING_CPU_FLAGS = ("sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512_vnni",
                          "amx_tile", "neon", "asimd", "sve")


@dataclass
class GpuInfo:
    name: str
    memory_total_mb: Optional[int] = None
    driver: Optional[str] = None


@dataclass
class PlatformInfo:
    os: str
    os_release: str
    arch: str
    python: str
    cpu_model: str
    physical_cores: int
    logical_cores: int
    cpu_flags: list[str]
    memory_total_gb: float
    memory_available_gb: float
    apple_silicon: bool
    cuda_gpus: list[GpuInfo] = field(default_factory=list)
    engines_installed: dict[str, bool] = field(default_factory=dict)

    @property
    def has_cuda(self) -> bool:
        return bool(self.cuda_gpus)


@dataclass
class EngineChoice:
    engine: str
    device: str
    reason: str
    forced: bool


def engine_installed(engine: str) -> bool:
    module = ENGINE_MODULE.get(engine)
    return bool(module) and importlib.util.find_spec(module) is not None


def _cpu_model_and_flags() -> tuple[str, list[str]]:
    model, flags = platform.processor() or platform.machine(), set()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text(errors="replace").splitlines():
            key, _, value = line.partition(":")
            key = key.strip()
            if key == "model name" and value.strip():
                model = value.strip()
            elif key in ("flags", "Features"):
                flags.update(value.split())
    elif sys.platform == "darwin":
        model = _run(["sysctl", "-n", "machdep.cpu.brand_string"]) or model
        features = _run(["sysctl", "-n", "machdep.cpu.features"]) or ""
        flags.update(f.lower() for f in features.split())
        if platform.machine() == "arm64":
            flags.add("neon")
    return model, sorted(f for f in flags if f in _INTERESTING_CPU_FLAGS)


def _run(cmd: list[str]) -> Optional[str]:
    if not shutil.which(cmd[0]):
        return None
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def detect_cuda_gpus() -> list[GpuInfo]:
    out = _run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version",
                "--format=csv,noheader,nounits"])
    if out:
        gpus = []
        for line in out.splitlines():
            parts = [p.strip() for p in line.split(",")]
            if parts and parts[0]:
                mem = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else None
                gpus.append(GpuInfo(parts[0], mem, parts[2] if len(parts) > 2 else None))
        return gpus
    gpu_dir = Path("/proc/driver/nvidia/gpus")
    if gpu_dir.is_dir():
        gpus = []
        for info in sorted(gpu_dir.glob("*/information")):
            name = next((l.split(":", 1)[1].strip() for l in info.read_text().splitlines()
                         if l.startswith("Model:")), "NVIDIA GPU")
            gpus.append(GpuInfo(name))
        return gpus
    return []


def detect_platform() -> PlatformInfo:
    cpu_model, flags = _cpu_model_and_flags()
    mem = psutil.virtual_memory()
    return PlatformInfo(
        os=platform.system(),
        os_release=platform.release(),
        arch=platform.machine(),
        python=platform.python_version(),
        cpu_model=cpu_model,
        physical_cores=psutil.cpu_count(logical=False) or os.cpu_count() or 1,
        logical_cores=psutil.cpu_count(logical=True) or os.cpu_count() or 1,
        cpu_flags=flags,
        memory_total_gb=round(mem.total / 2**30, 1),
        memory_available_gb=round(mem.available / 2**30, 1),
        apple_silicon=sys.platform == "darwin" and platform.machine() == "arm64",
        cuda_gpus=detect_cuda_gpus(),
        engines_installed={str(name): engine_installed(name) for name in Engine},
    )


def choose_engine(info: PlatformInfo, inference_engine: str = "auto",
                  device_type: str = "auto",
                  usable: Iterable[str] = tuple(Engine)) -> EngineChoice:
    """INFERENCE_ENGINE wins, then DEVICE_TYPE, then the hardware.

    A forced engine is returned as is (the caller checks it is installed);
    `auto` falls back to llama_cpp when the preferred engine is missing or
    not in `usable` (the engines this version implements).
    """
    if inference_engine != "auto":
        engine = Engine(inference_engine)
        device = Device(device_type) if device_type != "auto" else ENGINE_DEVICE[engine]
        return EngineChoice(engine, device, "INFERENCE_ENGINE", True)
    if device_type != "auto":
        return EngineChoice(DEVICE_ENGINE[Device(device_type)], Device(device_type),
                            "DEVICE_TYPE", True)
    if info.has_cuda:
        preferred, device, why = Engine.VLLM, Device.CUDA, \
            f"CUDA GPU found ({info.cuda_gpus[0].name})"
    elif info.apple_silicon:
        preferred, device, why = Engine.MLX, Device.MPS, "Apple Silicon"
    else:
        return EngineChoice(Engine.LLAMA_CPP, Device.CPU,
                            "no CUDA GPU or Apple Silicon: CPU engine", False)
    if info.engines_installed.get(preferred) and preferred in set(usable):
        return EngineChoice(preferred, device, why, False)
    missing = "is not installed" if not info.engines_installed.get(preferred) else \
        "is not supported by this version"
    return EngineChoice(Engine.LLAMA_CPP, Device.CPU,
                        f"{why}, but {preferred} {missing}: CPU engine", False)


def format_report(info: PlatformInfo, choice: EngineChoice) -> str:
    gpus = ", ".join(f"{g.name} ({g.memory_total_mb} MiB)" if g.memory_total_mb else g.name
                     for g in info.cuda_gpus) or "none"
    engines = ", ".join(f"{name}: {'installed' if ok else 'missing'}"
                        for name, ok in info.engines_installed.items())
    rows = [
        ("OS", f"{info.os} {info.os_release} ({info.arch})"),
        ("Python", info.python),
        ("CPU", f"{info.cpu_model}: {info.physical_cores} cores / {info.logical_cores} threads"),
        ("CPU features", " ".join(info.cpu_flags) or "-"),
        ("Memory", f"{info.memory_available_gb} GiB free of {info.memory_total_gb} GiB"),
        ("Apple Silicon", "yes" if info.apple_silicon else "no"),
        ("CUDA GPUs", gpus),
        ("Engines", engines),
        ("Chosen engine", f"{choice.engine} on {choice.device} ({choice.reason})"),
    ]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k.ljust(width)} : {v}" for k, v in rows)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from src.utils.config import get_settings

    settings = get_settings()
    detected = detect_platform()
    print(format_report(detected, choose_engine(detected, settings.inference_engine,
                                                settings.device_type)))
