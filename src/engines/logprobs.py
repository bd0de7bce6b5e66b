"""Log-probability entries from one row of logits, as every engine reports
them (see GenerationDelta.logprobs): the token's own, its rank in the
vocabulary, and the `top` likeliest alternatives."""
from __future__ import annotations

from typing import Any, Callable, Optional

import numpy as np

Piece = Callable[[int], bytes]  # a token's text, as bytes


def log_softmax(row: np.ndarray) -> np.ndarray:
    row = np.asarray(row, dtype=np.float64).reshape(-1)
    peak = row.max()
    return row - (peak + np.log(np.exp(row - peak).sum()))


def token_entry(piece: Piece, token: int, logprob: Optional[float],
                rank: Optional[int]) -> dict[str, Any]:
    data = piece(token)
    return {"token_id": token, "token": data.decode("utf-8", "replace"), "bytes": list(data),
            "logprob": None if logprob is None else float(logprob), "rank": rank}


def first_entry(piece: Piece, token: int) -> dict[str, Any]:
    """A prompt's first token: nothing before it to give it a probability."""
    return {**token_entry(piece, token, None, None), "top": []}


def logprob_entry(piece: Piece, logprobs: np.ndarray, token: int, top: int) -> dict[str, Any]:
    """`logprobs`: a log-softmax over the vocabulary."""
    own = float(logprobs[token])
    out = token_entry(piece, token, own, int((logprobs > own).sum()) + 1)
    best = np.argpartition(-logprobs, top - 1)[:top] if top else np.array([], dtype=int)
    best = best[np.argsort(-logprobs[best], kind="stable")]
    out["top"] = [token_entry(piece, int(t), logprobs[t], rank) for rank, t in enumerate(best, 1)]
    return out
