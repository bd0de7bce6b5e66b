"""What concerns every instance, asked of all of them at once: the merged
model list (each model with the instances that list it and the most
available state any of them reports), loading and unloading everywhere,
and the inference figures added up."""
from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor  # green threads under gevent
from dataclasses import dataclass
from typing import Any, Optional

import urllib3

from ..core.exceptions import BadGatewayError
from ..utils.names import ModelState
from .instance import Instance, http_pool
from .proxy import CONNECT_TIMEOUT, FAILURES, instance_headers

# which instance's word on a model counts when they differ: the most available
STATE_RANK = {ModelState.READY: 0, ModelState.LOADING: 1, ModelState.UNLOADING: 2,
              ModelState.UNLOADED: 3, ModelState.ERROR: 4}


@dataclass
class Answer:
    status: Optional[int]  # None: no answer (the error says why)
    body: Any  # the JSON answer, or None
    error: Optional[str] = None

    @property
    def ok(self) -> bool:
        return self.status is not None and 200 <= self.status < 300


def call_each(instances: list[Instance], method: str, path: str, body: bytes,
              incoming: dict[str, str], request_id: str, peer: Optional[str],
              timeout: float) -> dict[str, Answer]:
    """The same request to every instance at once; each one's JSON answer by its id."""
    def call(inst: Instance) -> Answer:
        try:
            resp = http_pool.request(method, inst.url + path, body=body or None,
                                     headers=instance_headers(inst, incoming, request_id, peer),
                                     timeout=urllib3.Timeout(connect=CONNECT_TIMEOUT,
                                                             read=timeout))
        except FAILURES as exc:
            return Answer(None, None, f"{exc.__class__.__name__} from {inst.url}")
        try:
            return Answer(resp.status, json.loads(resp.data))
        except ValueError:
            return Answer(resp.status, None, f"{inst.id} answered {resp.status} without JSON")

    if not instances:
        return {}
    with ThreadPoolExecutor(max_workers=len(instances)) as pool:
        return dict(zip((i.id for i in instances), pool.map(call, instances)))


def merge_models(instances: list[Instance], answers: dict[str, Answer]) -> list[dict[str, Any]]:
    """The instances' /v1/models lists as one; each instance's own list is kept
    on it for the balancer. 502 when none answered."""
    by_id = {i.id: i for i in instances}
    merged: dict[str, dict[str, Any]] = {}
    for inst_id, answer in answers.items():
        if answer.status != 200 or not isinstance(answer.body, dict):
            continue
        models = [m for m in answer.body.get("data") or [] if isinstance(m, dict) and "id" in m]
        by_id[inst_id].models = {m["id"]: m.get("state", ModelState.READY) for m in models}
        for model in models:
            entry = merged.setdefault(model["id"], {**model, "instances": []})
            entry["instances"].append(inst_id)
            if STATE_RANK.get(model.get("state", ModelState.READY), 5) < \
                    STATE_RANK.get(entry.get("state", ModelState.READY), 5):
                entry["state"] = model["state"]
    if all(a.status != 200 for a in answers.values()):
        first = next(iter(answers.values()))
        raise BadGatewayError(f"No instance answered its model list "
                              f"({first.error or f'status {first.status}'}).")
    return list(merged.values())


def one_answer(answers: dict[str, Answer]) -> tuple[dict[str, Any], int, bool]:
    """A request made of every instance, answered as one: the answer of the
    first that failed (else of the first), with each instance's status; the
    status to send; whether all of them succeeded."""
    statuses = {i: a.status if a.status is not None else 502 for i, a in answers.items()}
    failed = [i for i, a in answers.items() if not a.ok]
    chosen = answers[failed[0] if failed else next(iter(answers))]
    result = chosen.body if isinstance(chosen.body, dict) else \
        BadGatewayError(chosen.error or "The instance gave no answer.").to_dict()
    result["instances"] = statuses
    return result, statuses[failed[0]] if failed else max(statuses.values()), not failed


def summed_figures(answers: dict[str, Answer], names: tuple[str, ...]) -> dict[str, Any]:
    """The `inference` figures of the instances' /v1/system/metrics added up
    (those that answered; an OpenAI server of someone else's has none)."""
    total: dict[str, Any] = dict.fromkeys(names, 0)
    reporting = []
    for inst_id, answer in answers.items():
        figures = answer.body.get("inference") if isinstance(answer.body, dict) else None
        if answer.status != 200 or not isinstance(figures, dict):
            continue
        reporting.append(inst_id)
        for name in names:
            value = figures.get(name)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                total[name] += value
    return {**{name: round(value, 6) for name, value in total.items()},
            "instances_reporting": reporting}
