"""Settings, platform detection, run.py's environment check and dev mode."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import requests

from src.utils.config import ConfigError, load_settings
from src.utils.platform_detector import GpuInfo, PlatformInfo, choose_engine, detect_platform
from tests.conftest import ROOT, start_server, stop_server
from tests.helpers import wait_until


def fake_platform(cuda=False, apple=False, installed=("llama_cpp",)) -> PlatformInfo:
    return PlatformInfo(
        os="Linux", os_release="6", arch="x86_64", python="3.11", cpu_model="cpu",
        physical_cores=2, logical_cores=2, cpu_flags=[], memory_total_gb=8,
        memory_available_gb=4, apple_silicon=apple,
        cuda_gpus=[GpuInfo("H100", 81000)] if cuda else [],
        engines_installed={e: e in installed for e in ("vllm", "mlx", "llama_cpp")})


def test_dotenv_then_environment(tmp_path, monkeypatch):
    env_file = tmp_path / ".env"
    env_file.write_text("PORT=9001\nDEFAULT_MODEL=from-dotenv\nINFERENCE_ENGINE=LLAMA_CPP\n")
    monkeypatch.setenv("PORT", "9002")
    settings = load_settings(env_file)
    assert settings.port == 9002  # the environment wins over .env
    assert settings.default_model == "from-dotenv"
    assert settings.inference_engine == "llama_cpp"


def test_bad_value_names_the_variable(tmp_path, monkeypatch):
    monkeypatch.setenv("MAX_CONCURRENT_MODELS", "many")
    with pytest.raises(ConfigError) as err:
        load_settings(tmp_path / "missing.env")
    assert "MAX_CONCURRENT_MODELS" in str(err.value)


def test_env_example_lists_every_setting():
    from src.utils.config import Settings

    listed = {line.split("=", 1)[0].strip().lstrip("# ").lower()
              for line in (ROOT / ".env.example").read_text().splitlines() if "=" in line}
    assert set(Settings.model_fields) <= listed


@pytest.mark.parametrize("platform, engine_env, device_env, expected", [
    (dict(), "auto", "auto", "llama_cpp"),
    (dict(cuda=True, installed=("vllm", "llama_cpp")), "auto", "auto", "vllm"),
    (dict(cuda=True), "auto", "auto", "llama_cpp"),  # vllm missing: CPU fallback
    (dict(apple=True, installed=("mlx", "llama_cpp")), "auto", "auto", "mlx"),
    (dict(cuda=True, installed=("vllm", "llama_cpp")), "llama_cpp", "auto", "llama_cpp"),
    (dict(cuda=True, installed=("vllm", "llama_cpp")), "auto", "cpu", "llama_cpp"),
    (dict(), "vllm", "auto", "vllm"),  # forced: returned as is, the check reports it
])
def test_engine_choice(platform, engine_env, device_env, expected):
    assert choose_engine(fake_platform(**platform), engine_env, device_env).engine == expected


def test_auto_skips_an_engine_this_version_lacks():
    info = fake_platform(cuda=True, installed=("vllm", "llama_cpp"))
    choice = choose_engine(info, "auto", "auto", usable=["llama_cpp"])
    assert choice.engine == "llama_cpp" and "not supported" in choice.reason


def test_detect_platform_reads_this_machine():
    info = detect_platform()
    assert info.physical_cores >= 1 and info.memory_total_gb > 0
    assert info.engines_installed["llama_cpp"] is True


def test_platform_report_runs():
    out = subprocess.run([sys.executable, "-m", "src.utils.platform_detector"], cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "Chosen engine" in out.stdout


def run_py(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "run.py", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=60, env={**os.environ, **env})


def test_forced_engine_missing_stops_startup():
    out = run_py("--mode", "prod", env={"INFERENCE_ENGINE": "vllm"})
    assert out.returncode == 1
    assert "Engine 'vllm'" in out.stderr and "not installed" in out.stderr


def test_missing_default_model_stops_startup(tmp_path):
    out = run_py("--mode", "prod", env={"DEFAULT_MODEL": "no-such-model",
                                        "MODEL_BASE_PATH": str(tmp_path)})
    assert out.returncode == 1 and "no-such-model" in out.stderr


def test_help_lists_the_flags():
    out = run_py("--help", env={})
    for flag in ("--mode", "--host", "--port", "--workers", "--skip-check", "--debug"):
        assert flag in out.stdout


def test_dev_mode_serves(tmp_path, tiny_model):
    server = start_server(tmp_path, {"DEFAULT_MODEL": str(tiny_model)}, mode="dev")
    try:
        resp = server.client().completions.create(model="tiny-chat", prompt="ab", max_tokens=4)
        assert resp.usage.completion_tokens == 4
        logs = list((tmp_path / "logs").glob("*.log"))
        assert any("POST /v1/completions" in p.read_text() for p in logs)
    finally:
        stop_server(server)


def test_health_is_503_while_no_model_is_ready(tmp_path):
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"not a gguf file")
    server = start_server(tmp_path, {"DEFAULT_MODEL": str(bad)}, require_model=False)
    try:
        # a list, not the response: a 503 response is false
        r = wait_until(lambda: [r for r in [requests.get(f"{server.url}/health", timeout=5)]
                                if r.json()["model_errors"]], 60, "the load failed")[0]
        assert r.status_code == 503 and r.json()["status"] == "unavailable"
        assert "broken" in r.json()["model_errors"]
        resp = requests.post(f"{server.base_url}/completions", timeout=30,
                             json={"model": "broken", "prompt": "x"})
        assert resp.status_code == 503
        assert resp.json()["error"]["code"] == "model_load_failed"
        assert "broken" in resp.json()["error"]["message"]
    finally:
        stop_server(server)


def test_bad_models_yaml_stops_startup_with_the_entry_named(tmp_path):
    (tmp_path / "models.yaml").write_text("models:\n  tiny:\n    context_sise: 512\n")
    out = run_py("--mode", "prod", env={"CONFIG_DIR": str(tmp_path)})
    assert out.returncode == 1
    assert "model 'tiny'" in out.stderr and "context_sise" in out.stderr


def test_models_json_is_read_like_yaml(tmp_path):
    from src.core.model_catalog import parse_model_config

    (tmp_path / "models.json").write_text(
        '{"models": {"m": {"path": "m.gguf", "engine": "llama_cpp", "aliases": ["a"]}}}')
    entry = parse_model_config(tmp_path / "models.json")["m"]
    assert entry.path == "m.gguf" and entry.aliases == ["a"]


def test_multi_instance_keeps_several_models_unless_told_otherwise():
    from src.utils.config import MULTI_INSTANCE_MODELS, Settings

    assert Settings().max_concurrent_models == 1
    assert Settings(inference_mode="multi_instance").max_concurrent_models == MULTI_INSTANCE_MODELS
    chosen = Settings(inference_mode="Multi_Instance", max_concurrent_models=2)
    assert chosen.max_concurrent_models == 2
    assert Settings(inference_mode="single", max_concurrent_models=2).max_concurrent_models == 2


def test_batch_size_and_context_default_to_auto_and_take_numbers():
    from src.utils.config import Settings

    assert (Settings().max_batch_size, Settings().context_size) == ("auto", "auto")
    chosen = Settings(max_batch_size="8", context_size="0")  # as the environment gives them
    assert (chosen.max_batch_size, chosen.context_size) == (8, 0)
    assert Settings(max_batch_size=" AUTO ").max_batch_size == "auto"
    for bad in ("0", "many", "-1"):
        with pytest.raises(ValueError):
            Settings(max_batch_size=bad)
