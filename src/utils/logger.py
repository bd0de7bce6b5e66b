"""loguru set-up: readable lines on the console, JSON lines in `logs/`."""
from __future__ import annotations

import sys
from pathlib import Path

from loguru import logger

_configured = False


def setup_logging(level: str = "INFO", log_dir: Path | None = None) -> None:
    """Configure the process-wide loguru logger once (idempotent)."""
    global _configured
    if _configured:
        return
    logger.remove()
    logger.configure(extra={"request_id": "-"})
    logger.add(
        sys.stderr,
        level=level,
        format="<green>{time:YYYY-MM-DD HH:mm:ss.SSS}</green> | <level>{level: <7}</level> | "
        "{process} | {extra[request_id]} | <level>{message}</level>",
        backtrace=False,
        diagnose=False,
    )
    if log_dir is not None:
        log_dir.mkdir(parents=True, exist_ok=True)
        common = dict(serialize=True, rotation="50 MB", retention="14 days",
                      enqueue=False, backtrace=False, diagnose=False)
        logger.add(log_dir / "inference.log", level=level, **common)
        logger.add(log_dir / "error.log", level="ERROR", **common)
    _configured = True


__all__ = ["logger", "setup_logging"]
