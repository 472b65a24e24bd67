"""Training tasks: which model head, its loss, and its metrics.

Each task maps a batch (dict of arrays, see ``data``) to a scalar loss and a
dict of metric *sums* plus their counts, so sums can be accumulated over
micro-batches, devices and eval batches before dividing.

* ``classification``: sequence classification on the first token (global
  attention where the batch marks it); metric accuracy.
* ``causal_lm``: next-token prediction with a causal window; metric bits per
  token (BPC for character corpora).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import optax

TASK_HEADS = {"classification": "sequence_classification", "causal_lm": "masked_lm"}


def _position_ids(batch, pad_token_id: int):
  """RoBERTa positions from the attention mask (token ids may equal the pad id in LMs)."""
  mask = batch["attention_mask"].astype(jnp.int32)
  return jnp.cumsum(mask, axis=1) * mask + pad_token_id


def loss_and_metrics(task: str, model, batch, *, no_global: bool = False):
  """Returns (mean loss, {name: (sum, count)}) for one batch."""
  cfg = model.config
  gmask = batch.get("global_attention_mask")
  if no_global and gmask is not None:
    gmask = jnp.zeros_like(gmask)
  if task == "classification":
    logits = model(batch["input_ids"], batch["attention_mask"], gmask,
                   position_ids=_position_ids(batch, cfg.pad_token_id)).logits
    w = batch["weight"].astype(jnp.float32)
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, batch["labels"])
    correct = (jnp.argmax(logits, -1) == batch["labels"]).astype(jnp.float32)
    total = jnp.maximum(w.sum(), 1.0)
    return (ce * w).sum() / total, {"loss": ((ce * w).sum(), w.sum()),
                                    "accuracy": ((correct * w).sum(), w.sum())}
  if task == "causal_lm":
    logits = model(batch["input_ids"], batch["attention_mask"], gmask,
                   position_ids=_position_ids(batch, cfg.pad_token_id)).logits
    labels = batch["labels"]
    w = batch["weight"].astype(jnp.float32)
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    total = jnp.maximum(w.sum(), 1.0)
    loss_sum = (ce * w).sum()
    return loss_sum / total, {"loss": (loss_sum, w.sum()),
                              "bpc": (loss_sum / math.log(2), w.sum())}
  raise ValueError(f"config.task={task!r} is not one of {sorted(TASK_HEADS)}")


def finalize(sums: dict) -> dict:
  """{name: (sum, count)} -> {name: sum / count} as Python floats."""
  return {k: float(s) / max(float(c), 1.0) for k, (s, c) in jax.device_get(sums).items()}
