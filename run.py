#!/usr/bin/env python3
"""Start the vllm-obtain inference service.

  python run.py --mode prod     Gunicorn with gevent workers (production)
  python run.py --mode dev      Flask's development server

HOST, PORT, WORKERS and every other setting come from the environment or
`.env`; the flags below override them for this start.
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))

from src.utils.names import Engine  # noqa: E402 (after the project root is on the path)

INSTALL_HINTS = {
    Engine.LLAMA_CPP: "pip install -r requirements.txt",
    Engine.VLLM: "pip install -r requirements-linux.txt",
    Engine.MLX: "pip install -r requirements-mac.txt",
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="vllm-obtain: an OpenAI-compatible inference service (vLLM / MLX / llama.cpp).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Settings come from the environment and .env (see .env.example); "
               "flags override them for this start.")
    parser.add_argument("--mode", choices=["dev", "prod"], default="dev",
                        help="prod: Gunicorn + gevent workers; dev: Flask development server "
                             "(default: dev)")
    parser.add_argument("--host", help="address to listen on (default: HOST or 0.0.0.0)")
    parser.add_argument("--port", type=int, help="port to listen on (default: PORT or 8000)")
    parser.add_argument("--workers", type=int,
                        help="Gunicorn worker processes in prod mode; each loads its own copy "
                             "of the models (default: WORKERS or 1)")
    parser.add_argument("--skip-check", action="store_true",
                        help="skip the environment check before starting")
    parser.add_argument("--debug", action="store_true",
                        help="debug logging (LOG_LEVEL=DEBUG); Flask debug mode in dev")
    return parser.parse_args(argv)


def apply_overrides(args: argparse.Namespace) -> None:
    """Flags become environment variables, so the worker processes see them too."""
    overrides = {"HOST": args.host, "PORT": args.port, "WORKERS": args.workers,
                 "LOG_LEVEL": "DEBUG" if args.debug else None}
    for key, value in overrides.items():
        if value is not None:
            os.environ[key] = str(value)


def check_environment(mode: str) -> list[str]:
    """What is missing to start, one line each; empty when all is well."""
    from src.api.middleware.auth import keys_file_readable
    from src.core.exceptions import ServiceError
    from src.core.model_catalog import ModelCatalog
    from src.engines.registry import implemented_engines
    from src.utils.config import get_settings
    from src.utils.platform_detector import choose_engine, detect_platform, engine_installed

    problems = []
    if sys.version_info < (3, 11):
        problems.append(f"Python 3.11 or newer is required (this is {sys.version.split()[0]}).")
    settings = get_settings()
    choice = choose_engine(detect_platform(), settings.inference_engine, settings.device_type,
                           implemented_engines())
    if not engine_installed(choice.engine):
        problems.append(f"Engine '{choice.engine}' ({choice.reason}) is not installed: "
                        f"{INSTALL_HINTS.get(choice.engine, '')}.")
    elif choice.engine not in implemented_engines():
        problems.append(f"Engine '{choice.engine}' is not available in this version; "
                        f"use INFERENCE_ENGINE={'|'.join(implemented_engines())}.")
    if mode == "prod":
        for module in ("gunicorn", "gevent"):
            if importlib.util.find_spec(module) is None:
                problems.append(f"{module} is not installed: pip install -r requirements.txt.")
    keys_problem = keys_file_readable(settings)
    if keys_problem:
        problems.append(keys_problem)
    model_dir = settings.model_dir
    if model_dir.exists() and not os.access(model_dir, os.R_OK | os.X_OK):
        problems.append(f"MODEL_BASE_PATH {model_dir} is not readable.")
    try:
        catalog = ModelCatalog(model_dir, settings.default_model, settings.config_path)
    except ValueError as exc:  # models.yaml that does not parse
        problems.append(f"Model settings file: {exc}")
        return problems
    try:
        entry = catalog.get(catalog.default_model_id)
        if entry.path is not None and not os.access(entry.path, os.R_OK):
            problems.append(f"DEFAULT_MODEL file {entry.path} is not readable.")
    except ServiceError:
        problems.append(f"DEFAULT_MODEL '{settings.default_model}' was not found: it is neither a "
                        f"bundled model, nor a .gguf file under {model_dir}, nor a readable path.")
    return problems


def run_prod(settings) -> None:
    balanced = settings.inference_mode == "load_balance"
    if balanced and settings.workers > 1:
        # the worker owns the cluster: two would start two clusters
        print("INFERENCE_MODE=load_balance runs one Gunicorn worker (it serves thousands of "
              "connections); WORKERS is ignored.", file=sys.stderr)
    command = [sys.executable, "-m", "gunicorn",
               "--worker-class", "gevent",
               "--workers", "1" if balanced else str(settings.workers),
               "--bind", f"{settings.host}:{settings.port}",
               "--timeout", str(settings.worker_timeout),
               # the entry point's in-flight requests finish, then its instances stop
               "--graceful-timeout", "90" if balanced else "30",
               "--keep-alive", "5",
               "--no-control-socket",
               "--config", str(ROOT / "src" / "api" / "gunicorn_conf.py"),
               "--chdir", str(ROOT),
               "src.api.load_balanced_app:application" if balanced
               else "src.api.app:application"]
    os.execv(sys.executable, command)


def run_dev(settings, debug: bool) -> None:
    if settings.inference_mode == "load_balance":
        from src.api.load_balanced_app import create_load_balanced_app

        app = create_load_balanced_app(settings)
        try:
            app.run(host=settings.host, port=settings.port, threaded=True, use_reloader=False)
        finally:
            app.extensions["cluster"].stop()
        return
    from src.api.app import create_app

    app = create_app(settings)
    app.run(host=settings.host, port=settings.port, debug=debug, threaded=True,
            use_reloader=False)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    apply_overrides(args)
    from src.utils.config import ConfigError, get_settings

    try:
        settings = get_settings()
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not args.skip_check:
        problems = check_environment(args.mode)
        if problems:
            print("The environment is not ready:", file=sys.stderr)
            for line in problems:
                print(f"  - {line}", file=sys.stderr)
            return 1
    mode = "load-balanced entry point, " if settings.inference_mode == "load_balance" else ""
    print(f"Starting vllm-obtain ({mode}{args.mode}) on http://{settings.host}:{settings.port}  "
          f"OpenAI API: http://{settings.host}:{settings.port}/v1", file=sys.stderr)
    if args.mode == "prod":
        run_prod(settings)
    else:
        run_dev(settings, args.debug)
    return 0


if __name__ == "__main__":
    sys.exit(main())
