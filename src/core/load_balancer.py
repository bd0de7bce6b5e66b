"""Which instance takes the next request (INFERENCE_MODE=load_balance).

Only healthy instances are candidates, and for a request that names a model
only those that list it (preferring those where it is loaded already); a
model no instance lists goes to any, which answers the 404. Strategies,
switchable at run time:
  round_robin        each candidate in turn
  least_connections  fewest requests in flight (ties in turn)
  weighted           smooth weighted round robin (nginx's): in every
                     sum-of-weights requests, each gets its weight's share
  random             at random, in proportion to the weights
  response_time      lowest moving average of time to first byte, times the
                     requests in flight plus one; an untried instance first
"""
from __future__ import annotations

import random
import threading
from typing import Iterable, Optional

from ..utils.cluster_manager import ClusterManager, Instance
from ..utils.names import ModelState, Strategy


class LoadBalancer:
    def __init__(self, cluster: ClusterManager, strategy: str):
        strategy = Strategy(strategy)  # ValueError for an unknown one
        self.cluster = cluster
        self.strategy = strategy
        self._turn = 0
        self._current_weight: dict[str, float] = {}
        self._lock = threading.Lock()

    def set_strategy(self, strategy: str) -> str:
        """Switch, and return the strategy used until now."""
        strategy = Strategy(strategy)  # ValueError for an unknown one
        with self._lock:
            previous, self.strategy = self.strategy, strategy
            self._current_weight.clear()
        return previous

    def candidates(self, model: Optional[str], exclude: Iterable[Instance] = ()) -> list[Instance]:
        skip = set(map(id, exclude))
        healthy = [i for i in self.cluster.instances() if i.routable and id(i) not in skip]
        if not model:
            return healthy
        serving = [i for i in healthy if i.serves(model)]
        loaded = [i for i in serving if i.models.get(model) == ModelState.READY]
        return loaded or serving or healthy

    def choose(self, model: Optional[str], exclude: Iterable[Instance] = ()) -> Optional[Instance]:
        """The instance for the next request, counted as busy with it; None when
        no healthy instance is left. Call `finished` when the request ends."""
        pool = sorted(self.candidates(model, exclude), key=lambda i: i.id)
        if not pool:
            return None
        with self._lock:
            chosen = getattr(self, f"_{self.strategy}")(pool)
            chosen.active += 1
            chosen.requests += 1
        return chosen

    def first_byte(self, inst: Instance, seconds: float) -> None:
        with self._lock:
            inst.record(seconds)

    def finished(self, inst: Instance) -> None:
        with self._lock:
            inst.active -= 1

    # strategies: each picks one of a non-empty pool, under the lock ----------------------
    def _in_turn(self, pool: list[Instance]) -> Instance:
        self._turn += 1
        return pool[self._turn % len(pool)]

    def _round_robin(self, pool: list[Instance]) -> Instance:
        return self._in_turn(pool)

    def _least_connections(self, pool: list[Instance]) -> Instance:
        fewest = min(i.active for i in pool)
        return self._in_turn([i for i in pool if i.active == fewest])

    def _weighted(self, pool: list[Instance]) -> Instance:
        total = sum(i.weight for i in pool)
        for inst in pool:
            self._current_weight[inst.id] = self._current_weight.get(inst.id, 0.0) + inst.weight
        chosen = max(pool, key=lambda i: self._current_weight[i.id])
        self._current_weight[chosen.id] -= total
        return chosen

    def _random(self, pool: list[Instance]) -> Instance:
        return random.choices(pool, weights=[i.weight for i in pool])[0]

    def _response_time(self, pool: list[Instance]) -> Instance:
        untried = [i for i in pool if i.ewma_latency is None]
        if untried:
            return self._in_turn(untried)
        return min(pool, key=lambda i: (i.ewma_latency * (i.active + 1), i.active))
