"""The requests waiting for a model, served in turn between clients.

One client with a hundred queued requests must not starve another with one:
`get` takes the oldest request of the client served least recently (one
never served first), and a full queue
still admits a client that holds less than its fair share of it (the
capacity divided among the clients waiting), refusing only those above it.
So a queue may run over its capacity by at most that many shares' worth.

`put` is called from the server's greenlets and `get` from the model's
native thread; a native lock guards the bookkeeping only.
"""
from __future__ import annotations

from collections import OrderedDict, deque
from typing import Callable, Generic, Optional, TypeVar

from .concurrency import allocate_native_lock
from .exceptions import ServiceUnavailableError

T = TypeVar("T")
REMEMBERED_CLIENTS = 4096  # clients whose last turn is kept

def admits(waiting: int, capacity: int, mine: int, clients: int) -> bool:
    """May a client holding `mine` of the `waiting` requests add one more?
    `clients` counts the clients waiting, this one included."""
    return waiting < capacity or mine < max(1, capacity // max(1, clients))


def queue_full(model_id: str, waiting: int) -> ServiceUnavailableError:
    return ServiceUnavailableError(
        f"Model '{model_id}' has {waiting} requests waiting (MAX_CONCURRENT_REQUESTS), and "
        f"yours hold at least their fair share of the queue; retry shortly.",
        headers={"Retry-After": "1"})


class FairQueue(Generic[T]):
    def __init__(self, capacity: int):
        self.capacity = capacity
        self._queues: dict[str, deque[T]] = {}  # in order of arrival
        self._served: OrderedDict[str, int] = OrderedDict()  # client -> its last turn
        self._turn = 0
        self._size = 0
        self._lock = allocate_native_lock()

    def __len__(self) -> int:
        return self._size

    def put(self, client: str, item: T) -> bool:
        """Queue `item`; False when the queue is full for this client."""
        with self._lock:
            mine = self._queues.get(client)
            held = len(mine) if mine else 0
            clients = len(self._queues) + (0 if mine else 1)
            if not admits(self._size, self.capacity, held, clients):
                return False
            if mine is None:
                mine = self._queues[client] = deque()
            mine.append(item)
            self._size += 1
            return True

    def get(self) -> Optional[T]:
        """The oldest request of the client served least recently, or None."""
        with self._lock:
            if not self._queues:
                return None
            client = min(self._queues, key=lambda c: self._served.get(c, -1))
            mine = self._queues[client]
            item = mine.popleft()
            self._size -= 1
            if not mine:
                del self._queues[client]
            self._turn += 1
            self._served[client] = self._turn
            self._served.move_to_end(client)
            if len(self._served) > REMEMBERED_CLIENTS:
                self._served.popitem(last=False)
            return item

    def remove(self, match: Callable[[T], bool]) -> bool:
        """Take out the first waiting item that matches (a request whose client
        left); whether there was one."""
        with self._lock:
            for client, mine in self._queues.items():
                for item in mine:
                    if match(item):
                        mine.remove(item)
                        self._size -= 1
                        if not mine:
                            del self._queues[client]
                        return True
            return False

    def drain(self) -> list[T]:
        with self._lock:
            items = [item for mine in self._queues.values() for item in mine]
            self._queues.clear()
            self._size = 0
            return items
