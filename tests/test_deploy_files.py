"""The deployment examples under deploy/ parse, and every setting they give
is one this service knows, with a value it accepts."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from src.utils.config import Settings

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"


def check_settings(pairs: dict[str, str]) -> None:
    unknown = [name for name in pairs if name.lower() not in Settings.model_fields]
    assert not unknown, f"unknown settings: {unknown}"
    Settings(**{name.lower(): value for name, value in pairs.items()})  # values accepted


def test_compose_file_runs_the_service_behind_nginx():
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    service, nginx = compose["services"]["vllm-service"], compose["services"]["nginx"]
    check_settings(dict(item.split("=", 1) for item in service["environment"]))
    assert nginx["depends_on"] == ["vllm-service"]
    mounted = nginx["volumes"][0].split(":")[0]
    assert (DEPLOY / mounted).resolve().is_file()
    assert "server vllm-service:8000" in (DEPLOY / mounted).read_text()


def test_kubernetes_example_probes_health_and_scales():
    docs = list(yaml.safe_load_all((DEPLOY / "kubernetes" / "vllm-obtain.yaml").read_text()))
    kinds = {d["kind"]: d for d in docs}
    assert set(kinds) == {"Deployment", "Service", "HorizontalPodAutoscaler"}
    container = kinds["Deployment"]["spec"]["template"]["spec"]["containers"][0]
    check_settings({e["name"]: e["value"] for e in container["env"] if "value" in e})
    assert container["readinessProbe"]["httpGet"]["path"] == "/health"
    assert kinds["HorizontalPodAutoscaler"]["spec"]["scaleTargetRef"]["name"] == \
        kinds["Deployment"]["metadata"]["name"]


@pytest.mark.parametrize("name", ["nginx.conf", "multi-machine.conf"])
def test_nginx_configs_stream_without_buffering(name):
    text = (DEPLOY / "nginx" / name).read_text()
    assert "proxy_buffering off;" in text and text.count("{") == text.count("}")


def test_systemd_unit_starts_run_py_in_prod_mode():
    unit = (DEPLOY / "systemd" / "vllm-inference.service").read_text()
    assert "ExecStart=/opt/vllm-inference/.venv/bin/python run.py --mode prod" in unit
    assert "Restart=always" in unit
