"""core/concurrency under gevent's monkey-patching, in a fresh interpreter
(patching cannot be undone in the test process)."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap

from tests.conftest import ROOT

SCRIPT = textwrap.dedent("""
    from gevent import monkey
    monkey.patch_all()
    import subprocess
    from src.core.concurrency import HubRunner, allocate_native_lock, start_native_thread

    run_in_hub = HubRunner()  # made in the hub's thread, as the engine modules do
    results = {}
    done = allocate_native_lock()
    done.acquire()

    def native() -> None:  # a model's thread
        try:
            subprocess.run(["true"], check=True)
            results["direct"] = "ran"
        except TypeError as exc:  # gevent: child watchers only on the default loop
            results["direct"] = f"TypeError: {exc}"
        results["via hub"] = run_in_hub(lambda: subprocess.run(["echo", "hi"],
                                        capture_output=True).stdout.decode().strip())
        try:
            run_in_hub(lambda: 1 / 0)
        except ZeroDivisionError:
            results["error"] = "raised in the caller"
        done.release()

    start_native_thread(native)
    import gevent
    while not done.acquire(False):  # the hub keeps running while the thread waits
        gevent.sleep(0.01)
    import json
    print(json.dumps(results))
""")


def test_hub_runner_runs_subprocesses_for_native_threads():
    out = subprocess.run([sys.executable, "-c", SCRIPT], cwd=ROOT, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    results = json.loads(out.stdout.strip().splitlines()[-1])
    assert results["direct"].startswith("TypeError"), results  # why HubRunner exists
    assert results["via hub"] == "hi"
    assert results["error"] == "raised in the caller"


# A native thread that logged, ending while the interpreter exits: gevent's module
# is cleared first, as at teardown, then the thread ends.
EXIT_RACE = textwrap.dedent("""
    from gevent import monkey
    monkey.patch_all()
    import gc
    import threading
    import gevent.threading
    from src.core.concurrency import allocate_native_lock, native_sleep, start_native_thread

    asked, go = allocate_native_lock(), allocate_native_lock()
    asked.acquire()
    go.acquire()

    def native() -> None:
        threading.current_thread()  # what every log line does
        asked.release()
        go.acquire()

    start_native_thread(native)
    asked.acquire()
    kept, gevent.threading.__threading__ = gevent.threading.__threading__, None
    go.release()
    native_sleep(0.5)
    gc.collect()
    gevent.threading.__threading__ = kept
""")


def test_a_native_thread_ending_at_exit_leaves_no_traceback():
    out = subprocess.run([sys.executable, "-c", EXIT_RACE], cwd=ROOT, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0 and "Traceback" not in out.stderr, out.stderr
