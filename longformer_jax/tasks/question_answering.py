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

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np

from longformer_jax import eval_metrics
from longformer_jax.data import documents
from longformer_jax.tasks import base
from longformer_jax.tasks import windows as windows_lib
from longformer_jax.tasks.windows import owner_windows, windows

MAX_ANSWER_LENGTH = 30  # tokens, the reference's scripts' default


# ---- examples -> features (host side) ---------------------------------------------


@dataclasses.dataclass(frozen=True)
class WindowSpec:
  """How examples are cut: the model length, the overlap of consecutive windows and
  the longest question kept (longer ones are truncated)."""

  seq_len: int
  doc_stride: int = 128
  max_query_length: int = 64
  max_occurrences: int = 8  # answer occurrences kept per window (static K)

  def capacity(self, query_len: int) -> int:
    """Context tokens a window holds after <s> q </s></s> ... </s>."""
    return self.seq_len - min(query_len, self.max_query_length) - 4

  def check(self) -> None:
    room = self.capacity(self.max_query_length)
    if room < 1:
      raise ValueError(f"seq_len={self.seq_len} leaves no room for the context after a "
                       f"data_cfg.max_query_length={self.max_query_length} question")
    if not 0 <= self.doc_stride < room:
      raise ValueError(f"data_cfg.doc_stride={self.doc_stride} (the overlap of windows) "
                       f"must be in [0, {room}) for seq_len={self.seq_len}")


class Features(windows_lib.WindowedFeatures):
  """The windows of stored examples; ``lengths_Ex2`` holds each example's (question,
  context) token counts."""

  def __init__(self, examples, lengths_Ex2: np.ndarray, spec: WindowSpec,
               specials: documents.Specials):
    spec.check()
    self.examples, self.spec, self.s = examples, spec, specials
    self.table = windows_lib.window_table(
        [len(windows(int(c), spec.capacity(int(q)), spec.doc_stride))
         for q, c in np.asarray(lengths_Ex2).reshape(-1, 2)])

  def feature(self, example: dict, example_index: int, window: int) -> dict:
    spec, s = self.spec, self.s
    q = np.asarray(example["question_ids"], np.int32)[:spec.max_query_length]
    ctx = np.asarray(example["context_ids"], np.int32)
    spans = windows(len(ctx), spec.capacity(len(q)), spec.doc_stride)
    start, length = spans[window]
    first = len(q) + 3  # position of the window's first context token
    out = documents.pack([[s.bos], q, [s.eos, s.eos], ctx[start:start + length], [s.eos]],
                         spec.seq_len, s.pad)
    L = spec.seq_len
    out["global_attention_mask"] = (np.arange(L) < len(q) + 1).astype(np.int32)
    pos = np.arange(first, first + length)
    out["end_mask"] = np.zeros(L, np.int32)
    out["end_mask"][pos] = 1
    out["start_mask"] = np.zeros(L, np.int32)
    out["start_mask"][pos[owner_windows(spans, len(ctx))[start:start + length] == window]] = 1
    out["offsets"] = np.full((L, 2), -1, np.int32)
    out["offsets"][pos] = np.asarray(example["offsets"], np.int32).reshape(-1, 2)[
        start:start + length]
    gold = np.asarray(example["spans"], np.int64).reshape(-1, 2)
    inside = gold[(gold[:, 0] >= start) & (gold[:, 1] < start + length)]
    inside = inside[:spec.max_occurrences] - start + first
    if len(inside) == 0:
      inside = np.zeros((1, 2), np.int64)  # no answer here: point at <s>
    out["start_positions"] = np.full(spec.max_occurrences, -1, np.int32)
    out["end_positions"] = np.full(spec.max_occurrences, -1, np.int32)
    out["start_positions"][:len(inside)], out["end_positions"][:len(inside)] = inside.T
    out["example_index"] = np.int32(example_index)
    return out

  @staticmethod
  def element_spec(spec: WindowSpec) -> dict:
    spec.check()
    L, K = spec.seq_len, spec.max_occurrences
    row, occurrences = ((L,), np.int32), ((K,), np.int32)
    return dict(documents.document_spec(L), start_mask=row, end_mask=row,
                offsets=((L, 2), np.int32), start_positions=occurrences,
                end_positions=occurrences, example_index=documents.EXAMPLE_INDEX)


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
