"""Token classification (NER, BIO/IOB2 tags) over documents longer than the model.

Examples -> features. A stored example holds ``input_ids`` (the document's
sub-words), ``word_ids`` (the word of each sub-word), ``tags`` (one tag id per
word) and ``sentence_lengths`` (words per sentence; entities never cross them).
A feature is one window ``<s> tokens[a:a + n] </s>`` (global attention on ``<s>``);
windows overlap by ``doc_stride`` tokens and each token belongs to the window
where it has the most context (as in :mod:`.question_answering`). A word is
labelled on its first sub-word, in the window that owns it, so every word is
trained on and predicted exactly once; other positions carry -100 (ignored, the
reference's convention).

Metrics: ``loss``, token ``accuracy`` over labelled tokens and, from the
per-example rows, ``entity_precision`` / ``entity_recall`` / ``entity_f1``
(conlleval's definition, per sentence), all fractions in [0, 1] as seqeval's.

Batch: ``input_ids``, ``attention_mask``, ``global_attention_mask``, ``labels``,
``word_index`` (B, L) int32 (-1 where no word is labelled); ``example_index``,
``weight`` (B,).
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np

from longformer_jax import eval_metrics
from longformer_jax import outputs as out_lib
from longformer_jax.data import documents
from longformer_jax.tasks import base
from longformer_jax.tasks import windows as windows_lib
from longformer_jax.tasks.windows import owner_windows, windows


@dataclasses.dataclass(frozen=True)
class TokenWindows:
  seq_len: int
  doc_stride: int = 128

  def check(self) -> None:
    if self.seq_len < 3:
      raise ValueError(f"seq_len={self.seq_len} leaves no room between <s> and </s>")
    if not 0 <= self.doc_stride < self.seq_len - 2:
      raise ValueError(f"data_cfg.doc_stride={self.doc_stride} (the overlap of windows) "
                       f"must be in [0, {self.seq_len - 2}) for seq_len={self.seq_len}")


class Features(windows_lib.WindowedFeatures):
  """The windows of stored examples, from their token counts."""

  def __init__(self, examples, num_tokens_E, spec: TokenWindows, specials: documents.Specials):
    spec.check()
    self.examples, self.spec, self.s = examples, spec, specials
    self.table = windows_lib.window_table(
        [len(windows(max(int(n), 1), spec.seq_len - 2, spec.doc_stride))
         for n in np.asarray(num_tokens_E)])

  def feature(self, example: dict, example_index: int, window: int) -> dict:
    s, L = self.s, self.spec.seq_len
    ids = np.asarray(example["input_ids"], np.int32)
    word_ids = np.asarray(example["word_ids"], np.int64)
    tags = np.asarray(example["tags"], np.int32)
    spans = windows(max(len(ids), 1), L - 2, self.spec.doc_stride)
    start, length = spans[window]
    length = min(length, len(ids) - start)
    out = documents.pack([[s.bos], ids[start:start + length], [s.eos]], L, s.pad)
    out["global_attention_mask"] = np.zeros(L, np.int32)
    out["global_attention_mask"][0] = 1
    t = np.arange(start, start + length)
    first = np.ones(len(ids), bool)
    first[1:] = word_ids[1:] != word_ids[:-1]
    owned = owner_windows(spans, max(len(ids), 1))[:len(ids)] == window
    keep = (first & owned)[t]
    out["word_index"] = np.full(L, -1, np.int32)
    out["word_index"][1 + np.flatnonzero(keep)] = word_ids[t[keep]]
    out["labels"] = np.full(L, out_lib.IGNORE_INDEX, np.int32)
    out["labels"][1 + np.flatnonzero(keep)] = tags[word_ids[t[keep]]]
    out["example_index"] = np.int32(example_index)
    return out

  @staticmethod
  def element_spec(spec: TokenWindows) -> dict:
    spec.check()
    row = ((spec.seq_len,), np.int32)
    return dict(documents.document_spec(spec.seq_len), word_index=row, labels=row,
                example_index=documents.EXAMPLE_INDEX)


@base.register
class TokenClassification(base.Task):
  """See the module docstring; ``label_names`` are the tags in id order."""

  name = "token_classification"
  head = "token_classification"
  needs_global_bound = True
  named_labels = True

  def sums_and_rows(self, model, batch, *, key=None, no_global=False):
    del key
    logits_BxLxC = base.forward(model, batch, no_global=no_global).logits
    labels = batch["labels"]
    nll, keep = out_lib.nll_terms(logits_BxLxC, labels)
    pred_BxL = jnp.argmax(logits_BxLxC, -1).astype(jnp.int32)
    w = batch["weight"][:, None] * keep
    sums = {"loss": base.weighted(nll, w),
            "accuracy": base.weighted((pred_BxL == labels).astype(jnp.float32), w)}
    if "word_index" not in batch:
      return sums, {}
    return sums, base.eval_rows(batch, prediction=pred_BxL, word_index=batch["word_index"])

  def score(self, rows: dict, examples) -> tuple[dict, list[dict]]:
    """Each word's predicted tag (from the window that owns its first sub-word) ->
    entity precision/recall/F1 per sentence; predictions are tag lists."""
    predicted: dict[int, np.ndarray] = {}
    for e, words, tags in base.live_rows(rows, "word_index", "prediction"):
      ex = predicted.setdefault(e, np.full(len(examples[e]["tags"]), -1))
      ex[words[words >= 0]] = tags[words >= 0]
    pred_sentences, gold_sentences, records = [], [], []
    for e in sorted(predicted):
      ex = examples[e]
      name = lambda i: self.label_names[i] if i >= 0 else "O"
      pred = [name(int(i)) for i in predicted[e]]
      gold = [name(int(i)) for i in ex["tags"]]
      bounds = np.cumsum(np.asarray(ex["sentence_lengths"]))[:-1]
      pred_sentences += np.split(np.asarray(pred, object), bounds)
      gold_sentences += np.split(np.asarray(gold, object), bounds)
      qid = base.text(ex["id"])
      records.append({"id": qid, "prediction": pred, "gold": gold})
    scores = eval_metrics.entity_f1([list(s) for s in pred_sentences],
                                    [list(s) for s in gold_sentences])
    return {f"entity_{k}": v for k, v in scores.items()}, records
