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
from dataclasses import dataclass, field
from typing import Callable, Iterable, Optional

from ..utils.names import ModelState, Strategy
from .instance import Instance
from .supervisor import ClusterManager


@dataclass
class Turns:
    """What the strategies remember between two choices."""

    turn: int = 0
    current_weight: dict[str, float] = field(default_factory=dict)  # weighted: nginx's

    def next_of(self, pool: list[Instance]) -> Instance:
        self.turn += 1
        return pool[self.turn % len(pool)]


# strategies: each picks one of a non-empty pool (sorted by id), under the balancer's lock
def round_robin(pool: list[Instance], turns: Turns) -> Instance:
    return turns.next_of(pool)


def least_connections(pool: list[Instance], turns: Turns) -> Instance:
    fewest = min(i.active for i in pool)
    return turns.next_of([i for i in pool if i.active == fewest])


def weighted(pool: list[Instance], turns: Turns) -> Instance:
    total = sum(i.weight for i in pool)
    for inst in pool:
        turns.current_weight[inst.id] = turns.current_weight.get(inst.id, 0.0) + inst.weight
    chosen = max(pool, key=lambda i: turns.current_weight[i.id])
    turns.current_weight[chosen.id] -= total
    return chosen


def weighted_random(pool: list[Instance], turns: Turns) -> Instance:
    return random.choices(pool, weights=[i.weight for i in pool])[0]


def response_time(pool: list[Instance], turns: Turns) -> Instance:
    untried = [i for i in pool if i.ewma_latency is None]
    if untried:
        return turns.next_of(untried)
    return min(pool, key=lambda i: (i.ewma_latency * (i.active + 1), i.active))


STRATEGIES: dict[Strategy, Callable[[list[Instance], Turns], Instance]] = {
    Strategy.ROUND_ROBIN: round_robin, Strategy.LEAST_CONNECTIONS: least_connections,
    Strategy.WEIGHTED: weighted, Strategy.RANDOM: weighted_random,
    Strategy.RESPONSE_TIME: response_time}


class LoadBalancer:
    def __init__(self, cluster: ClusterManager, strategy: str):
        self.cluster = cluster
        self.strategy = Strategy(strategy)  # ValueError for an unknown one
        self._turns = Turns()
        self._lock = threading.Lock()

    def set_strategy(self, strategy: str) -> str:
        """Switch, and return the strategy used until now."""
        chosen = Strategy(strategy)  # ValueError for an unknown one
        with self._lock:
            previous, self.strategy = self.strategy, chosen
            self._turns.current_weight.clear()
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
            chosen = STRATEGIES[self.strategy](pool, self._turns)
            chosen.active += 1
            chosen.requests += 1
        return chosen

    def first_byte(self, inst: Instance, seconds: float) -> None:
        with self._lock:
            inst.record(seconds)

    def finished(self, inst: Instance) -> None:
        with self._lock:
            inst.active -= 1
