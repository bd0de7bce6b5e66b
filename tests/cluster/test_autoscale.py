"""The autoscaler's arithmetic: what an instance decodes at once is what its
own /health says (MAX_BATCH_SIZE may be auto, different on each machine)."""
from __future__ import annotations

from src.cluster.autoscale import Autoscaler
from src.cluster.instance import Instance
from src.utils.config import Settings

SETTINGS = Settings(inference_mode="load_balance", auto_scaling=True, cluster_instances=2,
                    min_instances=1, max_instances=3, scale_up_queue_depth=2,
                    scale_cooldown=0, scale_down_after=10)


def instance(name: str, active: int, sequences: int) -> Instance:
    return Instance(name, f"http://{name}", active=active, parallel_sequences=sequences)


def test_requests_beyond_each_instances_own_batch_are_waiting():
    # 12 + 4 active, 8 + 8 decoding: 4 waiting, 2 an instance: one more
    busy = [instance("a", 12, 8), instance("b", 4, 8)]
    assert Autoscaler(SETTINGS).target(100.0, busy, 2) == 3
    # the same load on instances that decode 16 at once: nothing waits
    roomy = [instance("a", 12, 16), instance("b", 4, 16)]
    assert Autoscaler(SETTINGS).target(100.0, roomy, 2) == 2


def test_an_instance_goes_only_when_the_others_hold_every_request():
    scaler = Autoscaler(SETTINGS)
    # 10 active fit in the smaller of the two (8)? no: the larger may be the one to go
    held = [instance("a", 5, 16), instance("b", 5, 8)]
    assert scaler.target(100.0, held, 2) == 2
    assert scaler.target(200.0, held, 2) == 2  # never quiet, however long
    light = [instance("a", 4, 16), instance("b", 3, 8)]
    assert scaler.target(300.0, light, 2) == 2  # quiet from now on
    assert scaler.target(311.0, light, 2) == 1  # SCALE_DOWN_AFTER later


def test_an_instance_not_yet_checked_counts_as_one_sequence():
    fresh = [instance("a", 6, 0)]  # its first /health has not come back
    assert Autoscaler(SETTINGS).target(100.0, fresh, 1) == 2
