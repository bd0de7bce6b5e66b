"""Small facts about files on disk."""
from __future__ import annotations

from pathlib import Path


def disk_size(path: Path) -> int:
    """Bytes of a file, or of every file under a folder (OSError when unreadable)."""
    if path.is_dir():
        return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    return path.stat().st_size
