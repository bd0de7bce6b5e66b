"""lm-evaluation-harness itself against the real server, on local task files
(`dataset_path: json`: nothing is downloaded): a multiple-choice task scored
by loglikelihood through `local-completions` (prompt logprobs, the remote
tokenizer of /tokenizer_info and /tokenize), and a generate_until task
through `local-chat-completions`. The harness's scores are checked against
llama.cpp's own on the same model file."""
from __future__ import annotations

import glob
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import SMOL, reference_logprobs
from tests.scripted_model import THINK_ANSWER

QUESTIONS = [
    ("What is the capital of France?", ["Paris", "Berlin", "Madrid", "Rome"], 0),
    ("How many legs does a spider have?", ["six", "eight", "ten", "four"], 1),
    ("Which planet is known as the red planet?", ["Venus", "Jupiter", "Mars", "Saturn"], 2),
    ("What do bees make?", ["milk", "silk", "wax and honey", "glass"], 2),
    ("What is frozen water called?", ["steam", "ice", "sand", "air"], 1),
]
MC_TASK = """task: local_mc
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "Question: {{{{question}}}}\\nAnswer:"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: "{{{{answer}}}}"
metric_list:
  - metric: acc
"""
GEN_TASK = """task: local_gen
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: generate_until
doc_to_text: "{{{{question}}}}"
doc_to_target: "{{{{answer}}}}"
generation_kwargs:
  until: ["###"]
  max_gen_toks: 200
metric_list:
  - metric: exact_match
"""


def run_lm_eval(tmp: Path, model: str, model_args: str, task: str, *extra: str) -> Path:
    env = dict(os.environ, HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1",
               HF_HOME=str(tmp / "hf"), TOKENIZERS_PARALLELISM="false")
    out = subprocess.run([sys.executable, "-m", "lm_eval", "--model", model, "--model_args",
                          model_args, "--tasks", task, "--include_path", str(tmp),
                          "--output_path", str(tmp / "out"), "--log_samples", *extra],
                         capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 0, out.stderr[-4000:]
    (folder,) = glob.glob(str(tmp / "out" / "*"))
    return Path(folder)


def read_samples(folder: Path, task: str) -> list[dict]:
    (path,) = glob.glob(str(folder / f"samples_{task}_*.jsonl"))
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def read_result(folder: Path, task: str) -> dict:
    (path,) = glob.glob(str(folder / "results_*.json"))
    return json.loads(Path(path).read_text())["results"][task]


def harness_tokens(llm, context: str, continuation: str) -> tuple[list[int], int]:
    """The tokens lm-eval sends for a (context, continuation) pair, as its
    _encode_pair makes them, and how many of them are the context's."""
    spaces = len(context) - len(context.rstrip())
    if spaces:
        context, continuation = context[:-spaces], context[-spaces:] + continuation

    def encode(text: str) -> list[int]:
        return llm.tokenize(text.encode(), add_bos=False, special=True)

    whole, ctx = encode(context + continuation), encode(context)
    return ctx + whole[len(ctx):], len(ctx)


def test_loglikelihood_multiple_choice_matches_llama_cpp(smollm_server, reference, tmp_path):
    data = tmp_path / "mc.jsonl"
    data.write_text("".join(json.dumps({"question": q, "choices": c, "answer": a}) + "\n"
                            for q, c, a in QUESTIONS))
    (tmp_path / "local_mc.yaml").write_text(MC_TASK.format(data=data))
    folder = run_lm_eval(tmp_path, "local-completions",
                         f"base_url={smollm_server.base_url}/completions,model={SMOL},"
                         f"tokenizer_backend=remote,tokenized_requests=True,"
                         f"num_concurrent=2,max_retries=1", "local_mc")
    samples = read_samples(folder, "local_mc")
    assert len(samples) == len(QUESTIONS)
    correct = 0
    for sample in sorted(samples, key=lambda s: s["doc_id"]):
        pairs = [(a["arg_0"], a["arg_1"]) for a in sample["arguments"].values()]
        scores = [float(r[0][0]) for r in sample["resps"]]
        expected = []
        for context, continuation in pairs:
            tokens, ctxlen = harness_tokens(reference, context, continuation)
            expected.append(sum(reference_logprobs(reference, tokens)[ctxlen - 1:]))
        assert np.allclose(scores, expected, atol=1e-3), (pairs, scores, expected)
        correct += int(np.argmax(expected) == sample["doc"]["answer"])
    result = read_result(folder, "local_mc")
    assert result["acc,none"] == pytest.approx(correct / len(QUESTIONS))


def test_generate_until_through_chat_completions(scripted_server, tmp_path):
    data = tmp_path / "gen.jsonl"
    data.write_text(json.dumps({"question": "What is 17 × 23?", "answer": THINK_ANSWER}) + "\n"
                    + json.dumps({"question": "And 17 × 24?", "answer": "408"}) + "\n")
    (tmp_path / "local_gen.yaml").write_text(GEN_TASK.format(data=data))
    folder = run_lm_eval(tmp_path, "local-chat-completions",
                         f"base_url={scripted_server.base_url}/chat/completions,"
                         f"model=scripted-think,num_concurrent=1,max_retries=1", "local_gen",
                         "--apply_chat_template")
    samples = read_samples(folder, "local_gen")
    # the reply's reasoning stays out of the answer the harness reads
    assert [s["resps"][0][0] for s in samples] == [THINK_ANSWER, THINK_ANSWER]
    assert read_result(folder, "local_gen")["exact_match,none"] == pytest.approx(0.5)
