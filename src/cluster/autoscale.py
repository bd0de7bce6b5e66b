"""Auto-scaling (AUTO_SCALING=true): how many local instances there should
be, one step at a time, SCALE_COOLDOWN apart: one more while the requests
waiting per instance (or the mean latency of those at work) are over their
mark, one fewer after SCALE_DOWN_AFTER quiet seconds, within MIN_INSTANCES
and MAX_INSTANCES."""
from __future__ import annotations

from typing import Optional

from ..utils.config import Settings
from ..utils.logger import logger
from .instance import Instance

cluster_log = logger.bind(channel="cluster")


class Autoscaler:
    def __init__(self, settings: Settings):
        self.settings = settings
        self._last_scaling = 0.0
        self._quiet_since: Optional[float] = None

    def target(self, now: float, serving: list[Instance], target: int) -> int:
        """The target count of local instances after this look (`serving`: the
        local instances that take requests now)."""
        s = self.settings
        if now - self._last_scaling < s.scale_cooldown or not serving:
            return target
        # requests beyond what an instance decodes at once are waiting in its queue
        waiting = sum(max(0, i.active - _decodes(i)) for i in serving)
        # the latency of instances at work now: an idle one's last figure is history
        latencies = [i.ewma_latency for i in serving if i.ewma_latency is not None and i.active]
        slow = s.scale_up_latency > 0 and latencies and \
            sum(latencies) / len(latencies) >= s.scale_up_latency
        if target < s.max_instances and (waiting / len(serving) >= s.scale_up_queue_depth
                                         or slow):
            self._last_scaling, self._quiet_since = now, None
            cluster_log.info("Auto-scaling up to {} local instances ({} waiting{})", target + 1,
                             waiting, ", slow answers" if slow else "")
            return target + 1
        # the others could take every request, whichever instance goes
        quiet = waiting == 0 and sum(i.active for i in serving) <= \
            sum(sorted(map(_decodes, serving))[:-1])
        if not quiet or target <= s.min_instances:
            self._quiet_since = None
            return target
        self._quiet_since = self._quiet_since or now
        if now - self._quiet_since < s.scale_down_after:
            return target
        self._last_scaling, self._quiet_since = now, None
        cluster_log.info("Auto-scaling down to {} local instances (quiet for {:.0f} s)",
                         target - 1, s.scale_down_after)
        return target - 1


def _decodes(inst: Instance) -> int:
    """Requests an instance decodes at once (one before it has said)."""
    return max(inst.parallel_sequences, 1)
