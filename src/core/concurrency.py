"""Threads and wake-ups that work the same under gevent and without it.

Each loaded model runs its scheduler in a real OS thread, because inference
is long native code. Under Gunicorn's gevent worker `threading` is
monkey-patched, so the primitives here come from gevent's saved originals:
a patched lock or thread would be a greenlet object and break across threads.

A request's greenlet waits for its results on a `CrossThreadSignal`: under
gevent that is an async watcher of the hub's loop (the one thing libev lets
another thread poke safely), so waiting never blocks the hub; without gevent
(the Flask dev server, the tests) it is a plain native lock.
"""
from __future__ import annotations

import time
from collections import deque
from typing import Any, Callable, Generic, Optional, TypeVar

try:  # gevent is always installed with the server, but the core must not need it
    from gevent import monkey as _monkey
except ImportError:  # pragma: no cover
    _monkey = None

T = TypeVar("T")


def _original(module: str, name: str) -> Any:
    if _monkey is not None:
        return _monkey.get_original(module, name)
    return getattr(__import__(module), name)


def gevent_active() -> bool:
    return _monkey is not None and _monkey.is_module_patched("threading")


allocate_native_lock: Callable[[], Any] = _original("_thread", "allocate_lock")
_start_native_thread = _original("_thread", "start_new_thread")
native_sleep: Callable[[float], None] = _original("time", "sleep")
_native_thread_id: Callable[[], int] = _original("_thread", "get_ident")


def start_native_thread(target: Callable[[], None]) -> None:
    """Run `target` in a real OS thread, even when threading is monkey-patched."""
    def run() -> None:
        try:
            target()
        finally:
            _forget_thread_record()

    _start_native_thread(run, ())


def _forget_thread_record() -> None:
    """Under gevent, a native thread that asked for its Thread object (every log
    line does) has a record in threading._active, removed by a weakref callback
    when the thread's greenlet is freed as the thread ends. A thread that ends
    while the interpreter exits can run that callback after gevent's module was
    cleared, and Python prints a traceback. Removed here, the record takes its
    callback with it."""
    if gevent_active():
        import threading

        threading._active.pop(threading.get_ident(), None)  # type: ignore[attr-defined]


class NativeWakeup:
    """A binary semaphore on a native lock: `notify()` from anywhere, `wait()` in
    a native thread. Notifications do not pile up; one wait consumes them all."""

    def __init__(self) -> None:
        self._lock = allocate_native_lock()
        self._lock.acquire()

    def notify(self) -> None:
        try:
            self._lock.release()
        except RuntimeError:  # already notified
            pass

    def wait(self, timeout: Optional[float] = None) -> bool:
        return self._lock.acquire(True, -1 if timeout is None else max(timeout, 0.0))


class _GeventSignal:
    def __init__(self) -> None:
        from gevent import get_hub
        from gevent.event import Event

        self._event = Event()
        self._guard = allocate_native_lock()
        self._closed = False
        self._watcher = get_hub().loop.async_()
        self._watcher.start(self._event.set)

    def notify(self) -> None:  # any thread
        with self._guard:
            if not self._closed:
                self._watcher.send()

    def clear(self) -> None:
        self._event.clear()

    def wait(self, timeout: Optional[float]) -> None:
        self._event.wait(timeout)

    def close(self) -> None:
        with self._guard:
            if not self._closed:
                self._closed = True
                self._watcher.close()


class _NativeSignal:
    def __init__(self) -> None:
        self._wakeup = NativeWakeup()

    def notify(self) -> None:
        self._wakeup.notify()

    def clear(self) -> None:
        pass  # the semaphore is consumed by wait()

    def wait(self, timeout: Optional[float]) -> None:
        self._wakeup.wait(timeout)

    def close(self) -> None:
        pass


class CrossThreadQueue(Generic[T]):
    """Items put by a native thread, taken by a greenlet or a thread.

    `put` never blocks; `take(timeout)` returns every item available, or an
    empty list when the timeout passed first. Create it in the consumer's thread.
    """

    def __init__(self) -> None:
        self._items: deque[T] = deque()
        self._signal = _GeventSignal() if gevent_active() else _NativeSignal()

    def put(self, item: T) -> None:
        self._items.append(item)
        self._signal.notify()

    def take(self, timeout: Optional[float] = None) -> list[T]:
        self._signal.clear()
        items = self._drain()
        if items:
            return items
        self._signal.wait(timeout)
        return self._drain()

    def _drain(self) -> list[T]:
        items = []
        while self._items:
            items.append(self._items.popleft())
        return items

    def close(self) -> None:
        self._signal.close()


class HubRunner:
    """Runs a function in the hub's thread, as a greenlet, for a native thread
    that waits for its result. Some work gevent allows only there: its
    subprocesses need child watchers, which exist on the default loop alone.
    Create it in the hub's thread; without gevent it simply calls."""

    def __init__(self) -> None:
        self._loop = None
        self._thread = _native_thread_id()
        if gevent_active():
            from gevent import get_hub

            self._loop = get_hub().loop

    def __call__(self, fn: Callable[[], T]) -> T:
        if self._loop is None or _native_thread_id() == self._thread:
            return fn()
        import gevent

        done = allocate_native_lock()
        done.acquire()
        outcome: dict[str, Any] = {}

        def run() -> None:
            try:
                outcome["value"] = fn()
            except BaseException as exc:  # handed to the waiting thread
                outcome["error"] = exc
            finally:
                done.release()

        self._loop.run_callback_threadsafe(lambda: gevent.spawn(run))
        done.acquire()
        if "error" in outcome:
            raise outcome["error"]
        return outcome["value"]


def call_in_native_thread(fn: Callable[[], None], timeout: Optional[float] = None) -> bool:
    """Run `fn` in a native thread of its own and wait for it (from a greenlet
    too, without blocking the hub); True once it has ended, raised or not,
    False if `timeout` seconds passed first. Engines are stopped this way."""
    done: CrossThreadQueue[bool] = CrossThreadQueue()

    def run() -> None:
        try:
            fn()
        finally:
            done.put(True)

    start_native_thread(run)
    deadline = None if timeout is None else time.monotonic() + timeout
    try:
        while not done.take(1.0):
            if deadline is not None and time.monotonic() >= deadline:
                return False
        return True
    finally:
        done.close()
