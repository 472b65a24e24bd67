"""Training tasks: which model head, its loss, and its metrics.

Each task maps a batch (dict of arrays, see ``data``) to a scalar loss and a
dict of metric *sums* plus their counts, so sums can be accumulated over
micro-batches, devices and eval batches before dividing.

* ``classification``: sequence classification on the first token (global
  attention where the batch marks it); metric accuracy.
* ``causal_lm``: next-token prediction with a causal window; metric bits per
  token (BPC for character corpora).
* ``mlm``: masked-LM (BERT masking of ``config.mlm.rate`` of the real tokens:
  80% ``<mask>``, 10% random, 10% kept); metric bits per masked token.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import optax

TASK_HEADS = {"classification": "sequence_classification", "causal_lm": "masked_lm",
              "mlm": "masked_lm"}


def mask_tokens(input_ids_BxN, valid_BxN, key, *, vocab_size: int, mask_token_id: int,
                rate: float = 0.15):
  """BERT masking. Returns (inputs, targets_BxN bool); only valid tokens are targets."""
  k_pick, k_how, k_rand = jax.random.split(key, 3)
  targets = jax.random.bernoulli(k_pick, rate, input_ids_BxN.shape) & valid_BxN
  how = jax.random.uniform(k_how, input_ids_BxN.shape)
  random_ids = jax.random.randint(k_rand, input_ids_BxN.shape, 0, vocab_size, input_ids_BxN.dtype)
  inputs = jnp.where(targets & (how < 0.8), mask_token_id,
                     jnp.where(targets & (how < 0.9), random_ids, input_ids_BxN))
  return inputs, targets


def _position_ids(batch, pad_token_id: int):
  """RoBERTa positions from the attention mask (token ids may equal the pad id in LMs)."""
  mask = batch["attention_mask"].astype(jnp.int32)
  return jnp.cumsum(mask, axis=1) * mask + pad_token_id


def loss_and_metrics(task: str, model, batch, *, no_global: bool = False, key=None,
                     mlm: dict | None = None):
  """Returns (mean loss, {name: (sum, count)}) for one batch.

  ``key`` and ``mlm`` (rate, mask_token_id) are used by the ``mlm`` task only.
  """
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
  if task == "mlm":
    valid = batch["attention_mask"] != 0
    inputs, targets = mask_tokens(batch["input_ids"], valid, key, vocab_size=cfg.vocab_size,
                                  mask_token_id=mlm["mask_token_id"], rate=mlm["rate"])
    logits = model(inputs, batch["attention_mask"], gmask,
                   position_ids=_position_ids(batch, cfg.pad_token_id)).logits
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, batch["input_ids"])
    w = targets.astype(jnp.float32) * batch["weight"].astype(jnp.float32)
    loss_sum = (ce * w).sum()
    return loss_sum / jnp.maximum(w.sum(), 1.0), {
        "loss": (loss_sum, w.sum()), "bits_per_token": (loss_sum / math.log(2), w.sum())}
  raise ValueError(f"config.task={task!r} is not one of {sorted(TASK_HEADS)}")


def finalize(sums: dict) -> dict:
  """{name: (sum, count)} -> {name: sum / count} as Python floats."""
  return {k: float(s) / max(float(c), 1.0) for k, (s, c) in jax.device_get(sums).items()}
