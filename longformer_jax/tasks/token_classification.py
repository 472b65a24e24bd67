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

import jax.numpy as jnp
import numpy as np

from longformer_jax import eval_metrics
from longformer_jax import outputs as out_lib
from longformer_jax.tasks import base


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
