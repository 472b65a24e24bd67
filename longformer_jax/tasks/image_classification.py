"""Image classification with a Vision Longformer (``vision.py``): one label per image.

Batch: ``pixel_values`` (B, S, S, C) float32 (``data/images.py``), ``labels`` (B,) int32,
``weight`` (B,). Metrics: ``loss``, ``accuracy``, ``macro_f1`` and, with two classes,
``f1`` of class 1, as :mod:`.classification`'s single-label sums.

Global attention is part of the model (``config.model.num_global_tokens``), not of the
batch: the ablation without it is a model trained local-only, and
``config.eval_without_global`` has no meaning here.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from longformer_jax import outputs as out_lib
from longformer_jax.data import images
from longformer_jax.tasks import base
from longformer_jax.tasks.classification import Classification, class_counts


@base.register
class ImageClassification(Classification):
  """See the module docstring."""

  name = "image_classification"
  family = "vision"
  head = "image_classification"
  needs_global_bound = False
  named_labels = True

  def check_config(self, config) -> None:
    super().check_config(config)
    if config.get("eval_without_global", False):
      raise ValueError("config.eval_without_global: a vision model's global tokens are part "
                       "of the model (config.model.num_global_tokens); train a local-only "
                       "model for the ablation")

  def check_model(self, model_cfg, data_cfg: dict) -> None:
    shape = (model_cfg.image_size, model_cfg.image_size, model_cfg.num_channels)
    data = images.image_shape(data_cfg)
    if shape != data:
      raise ValueError(f"config.model.image_size / num_channels give images {shape}, but the "
                       f"data's are {data} (config.data.image_size / num_channels)")

  def model_fields(self, data_cfg) -> dict:
    size, _, channels = images.image_shape(data_cfg)
    return {"image_size": size, "num_channels": channels,
            "problem_type": "single_label_classification"}

  def sums_and_rows(self, model, batch, *, key=None, no_global=False):
    del key
    if no_global:
      raise ValueError("image classification has no run without global tokens: see "
                       "config.model.num_global_tokens")
    logits_BxC = model(batch["pixel_values"]).logits
    labels_B, w_B = batch["labels"], batch["weight"]
    nll_B, _ = out_lib.nll_terms(logits_BxC, labels_B)
    top_B = jnp.argmax(logits_BxC, -1)
    num_classes = logits_BxC.shape[-1]
    tp, fp, fn = class_counts(jax.nn.one_hot(top_B, num_classes),
                              jax.nn.one_hot(labels_B, num_classes), w_B)
    ones = jnp.ones(())
    sums = {"loss": base.weighted(nll_B, w_B),
            "accuracy": base.weighted((top_B == labels_B).astype(jnp.float32), w_B),
            "tp": (tp, ones), "fp": (fp, ones), "fn": (fn, ones)}
    return sums, base.eval_rows(batch, prediction=top_B.astype(jnp.int32))
