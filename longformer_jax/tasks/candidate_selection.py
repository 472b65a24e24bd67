"""Choosing the answer among candidates named in the input (WikiHop, paper section 6).

Examples -> features. A stored example holds ``question_ids``, ``candidate_ids``
with ``candidate_lengths`` (the candidates' sub-words, concatenated),
``support_ids`` (the supporting documents' sub-words, each followed by ``</s>``),
``label`` (the answer's index) and ``candidates`` (their texts, JSON). A feature is

    <s> question </s> candidate_1 </s> ... candidate_K </s> documents[a:a + n] </s>

with global attention on everything before the documents (question and candidates,
as the paper). A candidate's score is a linear layer on its first sub-word (the
token-classification head with one label, so an export is an HF
``LongformerForTokenClassification``); the loss is the cross-entropy over the
candidates. Documents longer than a window are cut into windows overlapping by
``doc_stride`` tokens, each trained with the example's label; evaluation averages
each candidate's score over the example's windows, as the paper's model does over
its chunks.

Batch: ``input_ids``, ``attention_mask``, ``global_attention_mask`` (B, L);
``candidate_positions`` (B, K) int32 (-1 pads); ``labels``, ``example_index``,
``weight`` (B,).
"""

from __future__ import annotations

import json

import jax.numpy as jnp
import numpy as np

from longformer_jax import outputs as out_lib
from longformer_jax.data.wikihop import CandidateWindows
from longformer_jax.tasks import base

PAD_SCORE = -1e9  # the score of a candidate slot past an example's candidates


def candidate_scores(logits_BxN, positions_BxK):
  """Each candidate's score (its first sub-word's logit); PAD_SCORE past the last."""
  safe = jnp.maximum(positions_BxK, 0)
  scores = jnp.take_along_axis(logits_BxN.astype(jnp.float32), safe, axis=1)
  return jnp.where(positions_BxK >= 0, scores, PAD_SCORE)


@base.register
class CandidateSelection(base.Task):
  """See the module docstring."""

  name = "candidate_selection"
  head = "token_classification"
  needs_global_bound = True

  def model_fields(self, data_cfg) -> dict:
    del data_cfg
    return {"num_labels": 1}

  def check_config(self, config) -> None:
    super().check_config(config)
    prefix = int((config.get("data") or {}).get("max_prefix_tokens")
                 or CandidateWindows.max_prefix_tokens)
    bound = (config.get("model") or {}).get("max_global_tokens")
    if bound is not None and bound < prefix:
      raise ValueError(f"config.model.max_global_tokens={bound} must hold the "
                       f"config.data.max_prefix_tokens={prefix} global tokens")

  def sums_and_rows(self, model, batch, *, key=None, no_global=False):
    del key
    logits = base.forward(model, batch, no_global=no_global).logits[..., 0]
    scores_BxK = candidate_scores(logits, batch["candidate_positions"])
    nll_B, _ = out_lib.nll_terms(scores_BxK, batch["labels"])
    right = (jnp.argmax(scores_BxK, -1) == batch["labels"]).astype(jnp.float32)
    sums = {"loss": base.weighted(nll_B, batch["weight"]),
            "window_accuracy": base.weighted(right, batch["weight"])}
    return sums, base.eval_rows(batch, scores=scores_BxK)

  def score(self, rows: dict, examples) -> tuple[dict, list[dict]]:
    """Scores averaged over each example's windows -> ``accuracy`` (the fraction of
    examples answered right) and predictions by candidate text."""
    totals: dict[int, list] = {}
    for e, scores in base.live_rows(rows, "scores"):
      acc = totals.setdefault(e, [0.0, 0])
      acc[0], acc[1] = acc[0] + np.asarray(scores, np.float64), acc[1] + 1
    right, records = 0, []
    for e in sorted(totals):
      ex = examples[e]
      names = json.loads(base.text(ex["candidates"]))
      mean = totals[e][0] / totals[e][1]
      pred = int(np.argmax(mean[:len(names)]))
      right += pred == int(ex["label"])
      records.append({"id": base.text(ex["id"]), "prediction": names[pred],
                      "gold": names[int(ex["label"])]})
    return {"accuracy": right / max(len(totals), 1)}, records
