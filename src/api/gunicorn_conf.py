"""Gunicorn hooks for `run.py --mode prod` (the settings themselves are on
its command line).

SIGHUP to the master would restart every worker, and with them every loaded
model; here it is passed on to the workers instead, which reread
API_KEYS_FILE (src/api/middleware/auth.py) and keep serving.
"""
import signal


def when_ready(server):
    def forward_hup():
        server.log.info("SIGHUP: the workers reread API_KEYS_FILE")
        server.kill_workers(signal.SIGHUP)

    server.handle_hup = forward_hup


def worker_exit(server, worker):
    """Load-balanced mode: the local instances end with the worker that
    started them (after its own requests have finished)."""
    extensions = getattr(getattr(worker, "wsgi", None), "extensions", {})
    if "cluster" in extensions:
        extensions["cluster"].stop()
