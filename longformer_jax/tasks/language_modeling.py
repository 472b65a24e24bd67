"""Language-model pretraining: causal next-token prediction and masked LM.

* ``causal_lm``: batches hold ``labels`` already shifted by one (see
  ``data.language_modeling``); metric bits per token (BPC for character corpora).
* ``mlm``: BERT masking of ``config.mlm.rate`` of the real tokens (80% ``<mask>``,
  10% random, 10% kept), drawn from the step's key; metric bits per masked token.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from longformer_jax import outputs as out_lib
from longformer_jax.tasks import base


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


def _bits(loss_pair, name: str) -> dict:
  total, count = loss_pair
  return {"loss": loss_pair, name: (total / math.log(2), count)}


@base.register
class CausalLM(base.Task):
  """Next-token prediction over causal windows (the paper's character LM)."""

  name = "causal_lm"
  head = "causal_lm"

  def loss_and_metrics(self, model, batch, *, key=None, no_global=False):
    del key
    logits = base.forward(model, batch, no_global=no_global).logits
    nll, _ = out_lib.nll_terms(logits, batch["labels"])
    loss = base.weighted(nll, batch["weight"])
    return base.mean_of(loss), _bits(loss, "bpc")


@base.register
class MaskedLM(base.Task):
  """Masked-LM pretraining (paper section 5); ``config.mlm``: rate, mask_token_id."""

  name = "mlm"
  head = "masked_lm"

  def __init__(self, rate: float = 0.15, mask_token_id: int = 50264):
    self.rate, self.mask_token_id = float(rate), int(mask_token_id)

  @classmethod
  def from_config(cls, config):
    return cls(**dict(config.get("mlm") or {}))

  def loss_and_metrics(self, model, batch, *, key=None, no_global=False):
    if key is None:
      raise ValueError("the mlm task draws its masks from a key; got key=None")
    valid = batch["attention_mask"] != 0
    inputs, targets = mask_tokens(batch["input_ids"], valid, key,
                                  vocab_size=model.config.vocab_size,
                                  mask_token_id=self.mask_token_id, rate=self.rate)
    logits = base.forward(model, batch, no_global=no_global, input_ids=inputs).logits
    nll, _ = out_lib.nll_terms(logits, batch["input_ids"])
    loss = base.weighted(nll, targets.astype(jnp.float32) * batch["weight"])
    return base.mean_of(loss), _bits(loss, "bits_per_token")
