"""API keys: who may use the API, and who may manage it.

User keys come from API_KEYS and API_KEYS_FILE (reread on SIGHUP: the
Gunicorn master passes the signal on to its workers, models stay loaded);
ADMIN_API_KEY guards the routes marked `admin_only`. A key arrives as
`Authorization: Bearer <key>` or `x-api-key: <key>`. Keys are kept and
compared as SHA-256 digests, in constant time, and appear in logs only as a
short fingerprint. The routes marked public (/health, `/`, the console's
files) and CORS preflights stay open. Every request
gets `g.client`: the key's fingerprint, or the peer's address without keys;
rate limits and the engines' fair queues count per client.
"""
from __future__ import annotations

import hashlib
import hmac
import signal
import threading
from pathlib import Path
from typing import Callable, Optional

from flask import Flask, current_app, g, request

from ...core.exceptions import AuthenticationError, PermissionDeniedError
from ...utils.config import Settings
from ...utils.logger import logger
from .. import extensions as ext
from ..spec import is_public


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).digest()


def fingerprint(key: str) -> str:
    """What the logs may show of a key."""
    return "key:" + _digest(key).hex()[:10]


def key_owner() -> str:
    """Whose stored data a request may see: its API key's fingerprint, or ""
    when it presented no valid key (the service runs without keys)."""
    client = g.get("client", "")
    return client if client.startswith("key:") else ""


def admin_only(view: Callable) -> Callable:
    """Mark a management route: with ADMIN_API_KEY set, only that key may call it."""
    view.admin_only = True  # type: ignore[attr-defined]
    return view


def require_admin() -> None:
    """For what only some requests of a route may do (Ollama's /api/pull
    downloading a model): with ADMIN_API_KEY set, only that key may."""
    ring = ext.keys()
    if ring.enabled and ring.has_admin_key and g.get("role") != "admin":
        raise PermissionDeniedError("Downloading a model needs the admin key (ADMIN_API_KEY).")


class KeyRing:
    def __init__(self, settings: Settings):
        self._inline = [k.strip() for k in settings.api_keys.split(",") if k.strip()]
        self._file = settings.resolve(settings.api_keys_file) if settings.api_keys_file else None
        self._admin = _digest(settings.admin_api_key) if settings.admin_api_key else None
        self._users: list[bytes] = []
        self.stale = False  # set by SIGHUP: the next request rereads the keys
        self.reload()

    def reload(self) -> None:
        """Read the keys again; an unreadable file keeps the keys in use."""
        self.stale = False
        keys = list(self._inline)
        if self._file is not None:
            try:
                lines = self._file.read_text(encoding="utf-8").splitlines()
            except (OSError, UnicodeDecodeError) as exc:
                logger.error("API_KEYS_FILE {} could not be read ({}); keeping {} keys",
                             self._file, exc.__class__.__name__, len(self._users))
                return
            keys += [ln.strip() for ln in lines if ln.strip() and not ln.startswith("#")]
        self._users = [_digest(k) for k in dict.fromkeys(keys)]
        logger.info("API keys: {} user keys, admin key {}", len(self._users),
                    "set" if self._admin else "not set")

    @property
    def users_need_keys(self) -> bool:
        return bool(self._users)

    @property
    def has_admin_key(self) -> bool:
        return self._admin is not None

    @property
    def enabled(self) -> bool:
        return self.users_need_keys or self.has_admin_key

    def role(self, presented: str) -> Optional[str]:
        """"admin", "user", or None for an unknown key: every stored digest is
        compared, so the time taken says nothing about which one matched."""
        digest = _digest(presented)
        user = False
        for known in self._users:
            user |= hmac.compare_digest(digest, known)
        admin = self._admin is not None and hmac.compare_digest(digest, self._admin)
        return "admin" if admin else "user" if user else None


def service_key(settings: Settings) -> Optional[str]:
    """A key this service's own instances accept (load-balanced mode: health
    checks and replayed loads): the admin key, else the first user key."""
    if settings.admin_api_key:
        return settings.admin_api_key
    keys = [k.strip() for k in settings.api_keys.split(",") if k.strip()]
    if not keys and settings.api_keys_file:
        try:
            lines = settings.resolve(settings.api_keys_file).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            return None
        keys = [ln.strip() for ln in lines.splitlines()
                if ln.strip() and not ln.startswith("#")]
    return keys[0] if keys else None


def presented_key() -> str:
    auth = request.headers.get("Authorization", "")
    scheme, _, value = auth.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return request.headers.get("x-api-key", "").strip()


def open_access_warning(settings: Settings, ring: KeyRing) -> Optional[str]:
    if ring.users_need_keys or not settings.listens_beyond_loopback:
        return None
    return (f"No API keys are configured and the service listens on {settings.host}: anyone "
            f"who can reach port {settings.port} can use it. Set API_KEYS or API_KEYS_FILE.")


def _is_admin_route() -> bool:
    view = current_app.view_functions.get(request.endpoint or "")
    return bool(getattr(view, "admin_only", False))


def install(app: Flask, settings: Settings) -> KeyRing:
    ring = KeyRing(settings)
    ext.keys.install(app, ring)
    warning = open_access_warning(settings, ring)
    if warning:
        logger.warning("SECURITY: {}", warning)
    if ring.users_need_keys and not ring.has_admin_key:
        logger.info("ADMIN_API_KEY is not set: any user key may load and unload models")
    if settings.api_keys_file and threading.current_thread() is threading.main_thread():
        # a signal handler may interrupt a log call: it only marks the keys stale
        signal.signal(signal.SIGHUP, lambda *_: setattr(ring, "stale", True))

    @app.before_request
    def _authenticate() -> None:
        g.client = f"ip:{request.remote_addr}"
        if ring.stale:
            ring.reload()
        view = current_app.view_functions.get(request.endpoint or "")
        if request.method == "OPTIONS" or is_public(view, request.endpoint) \
                or not ring.enabled:
            return
        admin_route = _is_admin_route()
        key = presented_key()
        role = g.role = ring.role(key) if key else None
        if role is not None:
            g.client = fingerprint(key)
        needs_key = ring.has_admin_key or ring.users_need_keys if admin_route \
            else ring.users_need_keys
        if not needs_key:
            return
        if role is None:
            raise AuthenticationError(
                "Incorrect API key provided." if key else
                "You didn't provide an API key. Send it as 'Authorization: Bearer <key>'.")
        if admin_route and ring.has_admin_key and role != "admin":
            raise PermissionDeniedError("This route needs the admin key (ADMIN_API_KEY).")

    return ring


def keys_file_readable(settings: Settings) -> Optional[str]:
    """A start-up problem with API_KEYS_FILE, or None."""
    if settings.api_keys_file is None:
        return None
    path: Path = settings.resolve(settings.api_keys_file)
    try:
        path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        return f"API_KEYS_FILE {path} cannot be read: {exc.__class__.__name__}."
    return None
