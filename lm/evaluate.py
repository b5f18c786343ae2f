"""Validation loss and perplexity over a fixed set of packed rows."""

from __future__ import annotations

import math
from typing import Any, Callable, Iterable

import jax
import numpy as np


def evaluate(eval_step: Callable[[Any, Any], tuple[jax.Array, jax.Array]], params: Any,
             batches: Iterable[dict[str, jax.Array]]) -> dict[str, float]:
  """Token-weighted mean loss over `batches`.

  Args:
    eval_step: (params, batch) -> (summed next-token loss in nats, number of target tokens).
    params: model parameters.
    batches: global batches (dicts of [batch, seq] int32 arrays).

  Returns:
    {"loss": nats per token, "perplexity": exp(loss), "tokens": tokens scored}.
  """
  pending = [eval_step(params, batch) for batch in batches]  # dispatch all before reading any
  total_loss = sum(float(np.asarray(s)) for s, _ in pending)
  total_tokens = sum(float(np.asarray(c)) for _, c in pending)
  if total_tokens == 0:
    raise ValueError("validation set has no target tokens")
  loss = total_loss / total_tokens
  return {"loss": loss, "perplexity": math.exp(min(loss, 700.0)), "tokens": total_tokens}
