"""Extractive question answering over contexts longer than the model.

Examples -> features. A stored example holds ``question_ids``, ``context_ids``,
``offsets`` (the context tokens' character spans), ``context``, ``answers`` (the
gold texts, aliases included, JSON) and ``spans``: the token spans (first, last)
of every occurrence of an answer in the context. A feature is one window of the
context, ``<s> question </s></s> context[a:a + n] </s>``, with global attention on
``<s>`` and the question (the reference's default for this head). Windows of one
example overlap by ``doc_stride`` tokens (the reference's scripts' name). Each
context token "belongs" to the window where it has the most context on both sides
(the original BERT SQuAD rule); only there may an answer start.

Training targets are every occurrence of the answer in the window: the loss is
the negative log of the probability summed over them (Clark & Gardner 2018, the
paper's TriviaQA loss), which is the reference's cross-entropy when there is one.
A window without the answer points at ``<s>``.

Evaluation decodes each feature's best span on device (start owned by the window,
end in the window, ``end - start < max_answer_length``, score start + end logit);
:meth:`QuestionAnswering.score` keeps each example's best span over its windows
and scores it with the SQuAD v1.1 EM/F1 against every alias.

Batch: ``input_ids``, ``attention_mask``, ``global_attention_mask``,
``start_mask``, ``end_mask`` (B, L) int32; ``offsets`` (B, L, 2) int32 (-1 outside
the context); ``start_positions``, ``end_positions`` (B, K) int32 (-1 pads);
``example_index``, ``weight`` (B,).
"""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np

from longformer_jax import eval_metrics
from longformer_jax.data.extractive_qa import Features, WindowSpec  # noqa: F401  (Features too)
from longformer_jax.tasks import base

MAX_ANSWER_LENGTH = 30  # tokens, the reference's scripts' default


# ---- loss and decoding (device side) ------------------------------------------------


def occurrence_nll(logits_BxN, positions_BxK):
  """-log of the softmax probability summed over the positions in [0, N) of each
  row (duplicates count once), and whether a row has any."""
  n = logits_BxN.shape[-1]
  logits_BxN = logits_BxN.astype(jnp.float32)
  gold_BxN = jnp.any(positions_BxK[..., None] == jnp.arange(n), axis=1)
  gold_lse_B = jax.nn.logsumexp(jnp.where(gold_BxN, logits_BxN, -jnp.inf), axis=-1)
  has_B = gold_BxN.any(-1)
  nll_B = jax.nn.logsumexp(logits_BxN, axis=-1) - gold_lse_B
  return jnp.where(has_B, nll_B, 0.0), has_B


def best_spans(start_BxN, end_BxN, start_ok_BxN, end_ok_BxN, max_answer_length: int):
  """(score, start, end) of each row's best span: start where ``start_ok``, end
  where ``end_ok``, ``0 <= end - start < max_answer_length``; score -inf if none."""
  n = start_BxN.shape[-1]
  s = jnp.where(start_ok_BxN > 0, start_BxN, -jnp.inf)
  e = jnp.where(end_ok_BxN > 0, end_BxN, -jnp.inf)
  by_length = [s + jnp.pad(e[:, k:], ((0, 0), (0, k)), constant_values=-jnp.inf)
               for k in range(min(max_answer_length, n))]
  flat_BxAN = jnp.concatenate(by_length, axis=-1)
  best = jnp.argmax(flat_BxAN, axis=-1)
  start = best % n
  return jnp.max(flat_BxAN, axis=-1), start, start + best // n


@base.register
class QuestionAnswering(base.Task):
  """See the module docstring. ``config.qa.max_answer_length`` (tokens) bounds spans."""

  name = "question_answering"
  head = "question_answering"
  needs_global_bound = True

  def __init__(self, max_answer_length: int = MAX_ANSWER_LENGTH):
    self.max_answer_length = int(max_answer_length)

  @classmethod
  def from_config(cls, config):
    qa = config.get("qa") or {}
    return cls(qa.get("max_answer_length", MAX_ANSWER_LENGTH))

  def model_fields(self, data_cfg) -> dict:
    del data_cfg
    return {"num_labels": 2}

  def check_config(self, config) -> None:
    super().check_config(config)
    query = int((config.get("data") or {}).get("max_query_length")
                or WindowSpec.max_query_length)
    bound = (config.get("model") or {}).get("max_global_tokens")
    if bound is not None and bound < query + 1:
      raise ValueError(f"config.model.max_global_tokens={bound} must hold <s> and a "
                       f"config.data.max_query_length={query} question ({query + 1})")

  def sums_and_rows(self, model, batch, *, key=None, no_global=False):
    del key
    out = base.forward(model, batch, no_global=no_global)
    pos = {k: jnp.asarray(batch[k]).astype(jnp.int32) for k in ("start_positions",
                                                                "end_positions")}
    pos = {k: v[:, None] if v.ndim == 1 else v for k, v in pos.items()}
    nll_s, has_s = occurrence_nll(out.start_logits, pos["start_positions"])
    nll_e, has_e = occurrence_nll(out.end_logits, pos["end_positions"])
    loss = base.weighted((nll_s + nll_e) / 2, batch["weight"] * has_s * has_e)
    if "start_mask" not in batch:  # a training batch without decoding fields
      return {"loss": loss}, {}
    score, start, end = best_spans(out.start_logits, out.end_logits, batch["start_mask"],
                                   batch["end_mask"], self.max_answer_length)
    take = lambda i, j: jnp.take_along_axis(batch["offsets"][..., j], i[:, None], 1)[:, 0]
    return {"loss": loss}, base.eval_rows(batch, score=score, start_char=take(start, 0),
                                          end_char=take(end, 1))

  def score(self, rows: dict, examples) -> tuple[dict, list[dict]]:
    """Each example's best span over its windows -> SQuAD EM/F1 (percent) and the
    predictions ``{id, prediction, gold}``."""
    best: dict[int, tuple[float, int, int]] = {}
    for e, sc, a, b in base.live_rows(rows, "score", "start_char", "end_char"):
      if np.isfinite(sc) and (e not in best or sc > best[e][0]):
        best[e] = (float(sc), int(a), int(b))
    predictions, golds, records = {}, {}, []
    for e in sorted({e for e, in base.live_rows(rows)}):
      ex = examples[e]
      qid, answers = base.text(ex["id"]), json.loads(base.text(ex["answers"]))
      text = base.text(ex["context"])[best[e][1]:best[e][2]] if e in best else ""
      predictions[qid], golds[qid] = text, answers
      records.append({"id": qid, "prediction": text, "gold": answers})
    return eval_metrics.squad_em_f1(predictions, golds), records
