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


SHUTDOWN_LIMIT = 120.0  # seconds the models may take to unload when the worker exits


def worker_exit(server, worker):
    """After the worker's own requests have finished: in load-balanced mode
    the local instances end with it; in single mode its models are unloaded
    in order (vLLM's engine process stopped by its client, not left to die
    under it at interpreter exit)."""
    from src.api import extensions as ext

    app = getattr(worker, "wsgi", None)
    cluster, manager = ext.cluster.of(app), ext.model_manager.of(app)
    if cluster is not None:
        cluster.stop()
    if manager is not None:
        # engines are stopped from a native thread, as the unload route does
        from src.core.concurrency import call_in_native_thread

        call_in_native_thread(manager.shutdown, SHUTDOWN_LIMIT)
