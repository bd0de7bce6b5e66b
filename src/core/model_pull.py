"""Models fetched into MODEL_BASE_PATH: one pull per model id, its files
downloaded in a native thread, resumable, verified, and moved into place
only when whole.

A pull's files go to `MODEL_BASE_PATH/.pulls/<id>/` as `<file>.<key>.part`
(the key names the remote version: its sha256, or its URL and size), each
resumed with a Range request from where the part ends: after a dropped line
(a few tries while bytes keep coming), after a cancel, after a restart.
Each file is checked against the size and sha256 the hub gives; a mismatch
deletes the part and fails the pull. A whole `.gguf` is renamed to
`MODEL_BASE_PATH/<id>.gguf`, a whole folder to `MODEL_BASE_PATH/<id>/`: the
catalog (which skips dot folders) sees a model only once it is complete.
Before a byte is fetched the files must fit in the disk's free space and
under MODEL_STORAGE_LIMIT; a disk that fills anyway ends the pull with that
said in words.
"""
from __future__ import annotations

import errno
import hashlib
import os
import shutil
import time
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, Iterator, Optional
from urllib.parse import urlsplit

import urllib3
from loguru import logger

from ..utils.files import disk_size
from .concurrency import allocate_native_lock, start_native_thread
from .exceptions import ConflictError, InsufficientStorageError
from .model_sources import PullPlan, RemoteFile

STAGING = ".pulls"
CHUNK = 1 << 20
TRIES_WITHOUT_PROGRESS = 5
ops_log = logger.bind(channel="model")


def _connections() -> urllib3.PoolManager:
    """A pull's own connections: under gevent a socket belongs to the hub of the
    thread that opened it, so no two pulls' threads share one."""
    return urllib3.PoolManager(
        timeout=urllib3.Timeout(connect=15.0, read=60.0),
        # redirects to a CDN are followed; Authorization is dropped on another host
        retries=urllib3.Retry(total=None, connect=2, read=0, status=0, redirect=10,
                              backoff_factor=0.5))


class PullStatus(StrEnum):
    DOWNLOADING = "downloading"
    SUCCESS = "success"
    ERROR = "error"
    CANCELLED = "cancelled"


class _Stopped(Exception):
    """The pull ends: cancelled, or failed with a message for people."""


@dataclass
class Pull:
    plan: PullPlan
    budget: Optional[int]  # bytes it may still write; None: no limit known
    status: PullStatus = PullStatus.DOWNLOADING
    completed: int = 0
    resumed_from: int = 0  # bytes found on disk from an earlier try
    current: Optional[str] = None
    error: Optional[str] = None
    started_at: float = field(default_factory=time.time)
    finished_at: Optional[float] = None
    cancelled: bool = False

    @property
    def active(self) -> bool:
        return self.status == PullStatus.DOWNLOADING

    def snapshot(self) -> dict[str, Any]:
        plan = self.plan
        total = plan.total
        elapsed = (self.finished_at or time.time()) - self.started_at
        fetched = self.completed - self.resumed_from
        return {"id": plan.model_id, "object": "model.pull", "status": self.status,
                "source": plan.source, "origin": plan.origin,
                "format": "folder" if plan.folder else "gguf",
                "total": total, "completed": self.completed,
                "percent": round(100.0 * self.completed / total, 1) if total else None,
                "bytes_per_second": round(fetched / elapsed) if elapsed > 0 else 0,
                "current_file": self.current, "resumed_from": self.resumed_from,
                "files": [{"path": f.path, "size": f.size, "sha256": f.sha256}
                          for f in plan.files],
                "error": self.error, "started_at": self.started_at,
                "finished_at": self.finished_at}


class PullManager:
    def __init__(self, model_dir: Path, storage_limit: int = 0):
        self.model_dir = model_dir.resolve()
        self._limit = storage_limit  # bytes MODEL_BASE_PATH may hold; 0: the disk's size
        self._pulls: dict[str, Pull] = {}
        self._lock = allocate_native_lock()

    # queries --------------------------------------------------------------------------
    def get(self, model_id: str) -> Optional[Pull]:
        return self._pulls.get(model_id)

    def all(self) -> list[Pull]:
        return sorted(self._pulls.values(), key=lambda p: p.started_at, reverse=True)

    def target(self, plan: PullPlan) -> Path:
        return self.model_dir / (plan.model_id if plan.folder else f"{plan.model_id}.gguf")

    def follow(self, model_id: str, interval: float = 0.25) -> Iterator[dict[str, Any]]:
        """The pull's snapshot each time it moved, until it ends (the last one
        says how)."""
        pull = self._pulls[model_id]
        last = None
        while True:
            snap = pull.snapshot()
            seen = (snap["status"], snap["completed"], snap["current_file"])
            if seen != last:
                last = seen
                yield snap
            if not pull.active:
                return
            time.sleep(interval)  # cooperative under gevent

    # starting and stopping -----------------------------------------------------------------
    def start(self, plan: PullPlan) -> Pull:
        """The pull of `plan.model_id`: the one under way (one download for
        all who ask), or a new one once the files are known to fit."""
        with self._lock:
            running = self._pulls.get(plan.model_id)
            if running is not None and running.active:
                return running
            target = self.target(plan)
            if target.exists() or (self.model_dir / f"{plan.model_id}.gguf").exists():
                raise ConflictError(f"'{plan.model_id}' is already in MODEL_BASE_PATH; delete it "
                                    f"or pull it under another name.", param="name",
                                    code="model_exists")
            pull = Pull(plan, self._free_for(plan))
            self._pulls[plan.model_id] = pull
        ops_log.info("Pulling {} from {} {} ({} files, {})", plan.model_id, plan.source,
                     plan.origin, len(plan.files), _bytes(plan.total))
        start_native_thread(lambda: self._run(pull))
        return pull

    def cancel(self, model_id: str) -> Optional[Pull]:
        pull = self._pulls.get(model_id)
        if pull is not None and pull.active:
            pull.cancelled = True  # the transfer stops at its next chunk; parts stay for a resume
        return pull

    def _free_for(self, plan: PullPlan) -> Optional[int]:
        """Bytes the pull may write; 507 when its known size does not fit."""
        self.model_dir.mkdir(parents=True, exist_ok=True)
        free = shutil.disk_usage(self.model_dir).free
        where = "free on its disk"
        if self._limit:
            left = max(self._limit - disk_size(self.model_dir), 0)
            if left < free:
                free, where = left, f"left under MODEL_STORAGE_LIMIT={_bytes(self._limit)}"
        staging = self._staging(plan.model_id)
        on_disk = sum(p.stat().st_size for p in staging.rglob("*.part")) if staging.is_dir() else 0
        needed = (plan.total or 0) - on_disk
        if needed > free:
            raise InsufficientStorageError(
                f"Pulling '{plan.model_id}' needs {_bytes(needed)}; MODEL_BASE_PATH has "
                f"{_bytes(free)} {where}.", param="name")
        return free

    # the transfer (native thread) ------------------------------------------------------------
    def _run(self, pull: Pull) -> None:
        plan = pull.plan
        staging = self._staging(plan.model_id)
        http = _connections()
        try:
            staging.mkdir(parents=True, exist_ok=True)
            for remote in plan.files:
                pull.current = remote.path
                done = staging / remote.path
                if done.is_file() and _matches(done, remote):  # verified on an earlier try
                    pull.completed += done.stat().st_size
                    pull.resumed_from += done.stat().st_size
                    continue
                self._fetch(http, pull, remote, done)
            pull.current = None
            self._move_into_place(plan, staging)
        except _Stopped as stop:
            self._ended(pull, PullStatus.CANCELLED if pull.cancelled else PullStatus.ERROR,
                        None if pull.cancelled else str(stop))
            return
        except OSError as exc:
            self._ended(pull, PullStatus.ERROR, _disk_error(exc))
            return
        except Exception as exc:  # a bug: said, and the worker keeps serving
            logger.opt(exception=exc).error("Pulling {} failed", plan.model_id)
            self._ended(pull, PullStatus.ERROR, f"Pulling failed: {exc}")
            return
        finally:
            http.clear()
        self._ended(pull, PullStatus.SUCCESS, None)

    def _fetch(self, http: urllib3.PoolManager, pull: Pull, remote: RemoteFile,
               done: Path) -> None:
        done.parent.mkdir(parents=True, exist_ok=True)
        key = remote.sha256 or hashlib.sha1(f"{remote.url}|{remote.size}".encode()).hexdigest()
        part = done.with_name(f"{done.name}.{key[:16]}.part")
        for stale in done.parent.glob(f"{done.name}.*.part"):  # another version of the file
            if stale != part:
                stale.unlink()
        digest = hashlib.sha256()
        offset = part.stat().st_size if part.exists() else 0
        if remote.size is not None and offset > remote.size:
            part.unlink()
            offset = 0
        if offset:
            _hash_file(part, digest, pull)
            pull.completed += offset
            pull.resumed_from += offset
            ops_log.info("Resuming {} of {} at {}", remote.path, pull.plan.model_id, _bytes(offset))
        tries = 0
        with part.open("ab") as out:
            while remote.size is None or offset < remote.size:
                before = offset
                offset, whole = self._get(http, pull, remote, out, digest, offset)
                if whole:
                    break
                tries = 0 if offset > before else tries + 1
                if tries >= TRIES_WITHOUT_PROGRESS:
                    raise _Stopped(f"The download of {remote.path} stopped at {_bytes(offset)} "
                                   f"and did not resume: {urlsplit(remote.url).netloc} is not "
                                   f"answering.")
                time.sleep(min(0.5 * 2 ** tries, 8.0))
        if remote.size is not None and offset != remote.size or (
                remote.sha256 and digest.hexdigest() != remote.sha256):
            part.unlink()
            pull.completed -= offset
            raise _Stopped(f"{remote.path} is corrupt: its {_bytes(offset)} do not match the "
                           f"{'sha256' if remote.sha256 else 'size'} the source gives; the "
                           f"file was deleted.")
        os.replace(part, done)

    def _get(self, http: urllib3.PoolManager, pull: Pull, remote: RemoteFile, out, digest,
             offset: int) -> tuple[int, bool]:
        """One GET from `offset`: the new offset, and whether the body came whole."""
        headers = dict(pull.plan.headers)
        if offset:
            headers["Range"] = f"bytes={offset}-"
        try:
            response = http.request("GET", remote.url, headers=headers, preload_content=False)
        except urllib3.exceptions.HTTPError as exc:
            ops_log.warning("Pulling {}: {} ({})", remote.path, type(exc).__name__, exc)
            return offset, False
        try:
            if response.status == 416 and offset and offset == remote.size:
                return offset, True
            if response.status == 200 and offset:  # the server ignored the Range: start over
                out.seek(0)
                out.truncate()
                pull.completed -= offset
                offset = 0
                digest.__init__()
            elif response.status not in (200, 206):
                raise _Stopped(f"{urlsplit(remote.url).netloc} answered {response.status} for "
                               f"{remote.path}.")
            try:
                # read1: what has arrived, so that a line that drops loses none of it
                while chunk := response.read1(CHUNK):
                    if pull.cancelled:
                        raise _Stopped("cancelled")
                    out.write(chunk)
                    digest.update(chunk)
                    offset += len(chunk)
                    pull.completed += len(chunk)
                    if pull.budget is not None and pull.completed - pull.resumed_from > pull.budget:
                        raise _Stopped(f"MODEL_BASE_PATH has no room left for '{pull.plan.model_id}'"
                                       f" ({_bytes(pull.budget)} were free); the part is kept.")
                out.flush()
                if response.length_remaining:  # the body ended before its Content-Length
                    raise urllib3.exceptions.ProtocolError("the connection closed early")
            except (urllib3.exceptions.HTTPError, ConnectionError, TimeoutError) as exc:
                out.flush()
                ops_log.warning("Pulling {}: the line dropped at {} ({}); resuming",
                                remote.path, _bytes(offset), type(exc).__name__)
                return offset, False
            return offset, remote.size is None or offset >= remote.size
        finally:
            response.release_conn()

    def _move_into_place(self, plan: PullPlan, staging: Path) -> None:
        target = self.target(plan)
        if plan.folder:
            os.replace(staging, target)  # one rename: the folder appears whole
        else:
            os.replace(staging / plan.files[0].path, target)
            shutil.rmtree(staging, ignore_errors=True)

    def _ended(self, pull: Pull, status: PullStatus, error: Optional[str]) -> None:
        pull.status, pull.error, pull.finished_at = status, error, time.time()
        model_id = pull.plan.model_id
        if status == PullStatus.SUCCESS:
            ops_log.info("Pulled {} into {} ({} in {:.1f}s)", model_id, self.target(pull.plan),
                         _bytes(pull.completed), pull.finished_at - pull.started_at)
        elif status == PullStatus.CANCELLED:
            ops_log.info("Pull of {} cancelled at {}; a new pull resumes it", model_id,
                         _bytes(pull.completed))
        else:
            ops_log.error("Pull of {} failed: {}", model_id, error)

    def _staging(self, model_id: str) -> Path:
        return self.model_dir / STAGING / model_id


def _matches(path: Path, remote: RemoteFile) -> bool:
    if remote.size is not None and path.stat().st_size != remote.size:
        return False
    if remote.sha256:
        digest = hashlib.sha256()
        _hash_file(path, digest)
        return digest.hexdigest() == remote.sha256
    return True


def _hash_file(path: Path, digest, pull: Optional[Pull] = None) -> None:
    """Feed the file to `digest`; stops when `pull` is cancelled."""
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            if pull is not None and pull.cancelled:
                raise _Stopped("cancelled")
            digest.update(chunk)


def _disk_error(exc: OSError) -> str:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        return (f"The disk of MODEL_BASE_PATH is full ({os.strerror(exc.errno)}); free space "
                f"and pull again: the download resumes where it stopped.")
    return f"Writing the model failed: {exc}"


def _bytes(n: Optional[int]) -> str:
    if n is None:
        return "an unknown size"
    size = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"
