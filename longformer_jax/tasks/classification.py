"""Sequence classification: one label per document (softmax) or several (sigmoid).

Batch: ``input_ids``, ``attention_mask``, ``global_attention_mask`` (B, L) int32
(global attention on the first token, as the paper's classifiers); ``weight`` (B,);
``labels`` (B,) int32 for single-label data, or (B, num_labels) {0, 1} float32 for
multi-label data (``problem_type="multi_label_classification"``).

Metrics: ``loss``; single-label ``accuracy``, ``macro_f1`` and, with two classes,
``f1`` of class 1 (the positive class, e.g. Hyperpartisan's "hyperpartisan");
multi-label ``micro_f1``, ``macro_f1`` and ``subset_accuracy`` (every label right).
F1 follows scikit-learn's definition (an empty class scores 0).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from longformer_jax import outputs as out_lib
from longformer_jax.eval_metrics import f1_from_counts
from longformer_jax.tasks import base


def class_counts(pred_BxC, gold_BxC, w_B):
  """Weighted true positives, false positives and false negatives per class."""
  w = w_B.astype(jnp.float32)[:, None]
  pred, gold = pred_BxC.astype(jnp.float32), gold_BxC.astype(jnp.float32)
  return ((pred * gold * w).sum(0), (pred * (1 - gold) * w).sum(0),
          ((1 - pred) * gold * w).sum(0))


@base.register
class Classification(base.Task):
  """See the module docstring."""

  name = "classification"
  head = "sequence_classification"
  needs_global_bound = True
  named_labels = True

  def model_fields(self, data_cfg) -> dict:
    multi = bool(data_cfg.get("multi_label"))
    return {"problem_type": "multi_label_classification" if multi
            else "single_label_classification"}

  def sums_and_rows(self, model, batch, *, key=None, no_global=False):
    del key
    logits_BxC = base.forward(model, batch, no_global=no_global).logits
    labels, w_B = batch["labels"], batch["weight"]
    num_classes = logits_BxC.shape[-1]
    if labels.ndim == 2:  # multi-label
      loss = base.weighted(out_lib.bce_terms(logits_BxC, labels).mean(-1), w_B)
      pred = logits_BxC > 0
      exact = jnp.all(pred == (labels > 0.5), axis=-1).astype(jnp.float32)
      gold = labels > 0.5
      sums = {"subset_accuracy": base.weighted(exact, w_B)}
      predicted = pred.astype(jnp.int32)
    else:
      nll_B, _ = out_lib.nll_terms(logits_BxC, labels)
      loss = base.weighted(nll_B, w_B)
      top_B = jnp.argmax(logits_BxC, -1)
      pred = jax.nn.one_hot(top_B, num_classes)
      gold = jax.nn.one_hot(labels, num_classes)
      sums = {"accuracy": base.weighted((top_B == labels).astype(jnp.float32), w_B)}
      predicted = top_B.astype(jnp.int32)
    tp, fp, fn = class_counts(pred, gold, w_B)
    ones = jnp.ones(())
    sums.update(loss=loss, tp=(tp, ones), fp=(fp, ones), fn=(fn, ones))
    return sums, base.eval_rows(batch, prediction=predicted)

  def score(self, rows: dict, examples) -> tuple[dict, list[dict]]:
    """No metrics beyond the sums; predictions ``{id, prediction, gold}`` by label
    name (lists of names for multi-label data)."""
    def named(value):
      value = np.asarray(value)
      if value.ndim == 0:
        return self._name(int(value))
      return [self._name(i) for i in np.flatnonzero(value > 0.5)]
    records = []
    for e, pred in base.live_rows(rows, "prediction"):
      ex = examples[e]
      records.append({"id": base.text(ex["id"]), "prediction": named(pred),
                      "gold": named(ex["label"])})
    return {}, records

  def _name(self, i: int):
    name = self.label_names[i] if i < len(self.label_names) else i
    return name.item() if hasattr(name, "item") else name

  def finalize(self, sums: dict) -> dict:
    sums = jax.device_get(dict(sums))
    tp, fp, fn = (np.asarray(sums.pop(k)[0]) for k in ("tp", "fp", "fn"))
    out = base.finalize(sums)
    out["macro_f1"] = float(f1_from_counts(tp, fp, fn).mean())
    if "subset_accuracy" in out:
      out["micro_f1"] = float(f1_from_counts(tp.sum(), fp.sum(), fn.sum()))
    elif len(tp) == 2:
      out["f1"] = float(f1_from_counts(tp, fp, fn)[1])
    return out
