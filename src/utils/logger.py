"""loguru set-up: readable lines on the console, JSON lines in LOG_DIR.

Files (one JSON object a line, rotated by size, kept LOG_RETENTION_DAYS):
  app.log               everything the service logs at LOG_LEVEL
  api_requests.log      one line a request (channel "request")
  model_operations.log  loads, unloads, evictions (channel "model")
  system_metrics.log    a system sample every METRICS_INTERVAL s (channel "metrics")
  cluster.log           instances started, stopped, taken out, back (channel "cluster")
  errors.log            ERROR and above
Every line carries the request id of the request it belongs to ("-" outside
a request), given by the provider the API layer installs.
"""
from __future__ import annotations

import json
import sys
import traceback
from collections import deque
from datetime import timezone
from pathlib import Path
from typing import Any, Callable, Optional

from loguru import logger

LOG_FILES = ("app.log", "api_requests.log", "model_operations.log", "system_metrics.log",
             "cluster.log", "errors.log")
_CHANNEL_FILES = {"request": "api_requests.log", "model": "model_operations.log",
                  "metrics": "system_metrics.log", "cluster": "cluster.log"}
_configured = False
_request_id_provider: Callable[[], Optional[str]] = lambda: None  # noqa: E731
_log_dir: Optional[Path] = None


def set_request_id_provider(provider: Callable[[], Optional[str]]) -> None:
    """`provider()` returns the id of the request being served, or None."""
    global _request_id_provider
    _request_id_provider = provider


def _patch(record: Any) -> None:
    extra = record["extra"]
    if extra.get("request_id", "-") == "-":
        extra["request_id"] = _request_id_provider() or "-"
    fields = {k: v for k, v in extra.items() if k not in ("request_id", "channel", "json")}
    line = {"time": record["time"].astimezone(timezone.utc).isoformat(timespec="milliseconds"),
            "level": record["level"].name, "message": record["message"],
            "request_id": extra["request_id"], "channel": extra.get("channel", "app"),
            "process": record["process"].id, "logger": record["name"], **fields}
    if record["exception"] is not None:
        exc = record["exception"]
        line["exception"] = "".join(traceback.format_exception(exc.type, exc.value,
                                                               exc.traceback))[-4000:]
    extra["json"] = json.dumps(line, ensure_ascii=False, default=str)


def setup_logging(level: str = "INFO", log_dir: Optional[Path] = None, rotation_mb: int = 50,
                  retention_days: int = 14) -> None:
    """Configure the process-wide loguru logger once (idempotent)."""
    global _configured, _log_dir
    if _configured:
        return
    logger.remove()
    logger.configure(extra={"request_id": "-"}, patcher=_patch)
    logger.add(
        sys.stderr,
        level=level,
        format="<green>{time:YYYY-MM-DD HH:mm:ss.SSS}</green> | <level>{level: <7}</level> | "
        "{process} | {extra[request_id]} | <level>{message}</level>",
        filter=lambda r: r["extra"].get("channel") not in ("request", "metrics"),
        backtrace=False,
        diagnose=False,
    )
    if log_dir is not None:
        log_dir.mkdir(parents=True, exist_ok=True)
        common = dict(format="{extra[json]}", rotation=f"{rotation_mb} MB",
                      retention=f"{retention_days} days", encoding="utf-8",
                      backtrace=False, diagnose=False, catch=True)
        logger.add(log_dir / "app.log", level=level, **common)
        for channel, name in _CHANNEL_FILES.items():
            logger.add(log_dir / name, level="DEBUG",
                       filter=lambda r, c=channel: r["extra"].get("channel") == c, **common)
        logger.add(log_dir / "errors.log", level="ERROR", **common)
        _log_dir = log_dir
    _configured = True


def recent_logs(limit: int = 100, level: Optional[str] = None,
                file_name: str = "app.log", request_id: Optional[str] = None
                ) -> list[dict[str, Any]]:
    """The last `limit` lines of a log file (at `level` or above, of one
    request if `request_id` is given), oldest first."""
    if _log_dir is None:
        return []
    path = _log_dir / file_name
    if not path.is_file():
        return []
    minimum = logger.level(level.upper()).no if level else 0
    kept: deque[dict[str, Any]] = deque(maxlen=limit)
    with path.open("rb") as fh:
        fh.seek(0, 2)
        size = fh.tell()
        # lines are short: the tail holds enough of them
        fh.seek(max(size - max(limit, 1) * 4096 * (4 if level or request_id else 1), 0))
        lines = fh.read().decode("utf-8", "replace").splitlines()
    for raw in lines:
        try:
            entry = json.loads(raw)
        except ValueError:
            continue  # a line cut by the seek
        if logger.level(entry.get("level", "INFO")).no >= minimum and \
                request_id in (None, entry.get("request_id")):
            kept.append(entry)
    return list(kept)


__all__ = ["LOG_FILES", "logger", "recent_logs", "set_request_id_provider", "setup_logging"]
