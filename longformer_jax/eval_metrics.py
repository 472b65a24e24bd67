"""Evaluation metrics with their official definitions, on host (numpy / Python) values.

* :func:`accuracy`, :func:`f1_score` (binary or macro, scikit-learn's definition:
  a class with no predicted and no gold example scores 0).
* :func:`entity_spans` / :func:`entity_f1`: entity-level precision, recall and F1
  over BIO (IOB2, and IOB1 / IOBES) tag sequences, chunked as conlleval and
  seqeval's default mode do: an ``I-`` without a ``B-`` starts an entity, a type
  change ends one; an entity counts only if its type and both ends match.
* :func:`squad_em_f1`: SQuAD v1.1 exact match and token F1 after the official
  answer normalisation (lower case, punctuation and the articles a / an / the
  removed, white space collapsed), the maximum over every gold answer (TriviaQA's
  answer aliases are such a list); scores in percent, averaged over the gold ids (a
  missing prediction scores 0).
* :func:`rouge`: ROUGE-1/2/L/Lsum F-measures (the ``rouge-score`` package, Porter
  stemming as the summarisation papers report them), averaged over the examples, in
  percent; ROUGE-Lsum splits each text at its newlines.
"""

from __future__ import annotations

import collections
import re
import string
from typing import Iterable, Mapping, Sequence

import numpy as np


# ---- classification -----------------------------------------------------------------


def accuracy(predictions: Sequence, golds: Sequence) -> float:
  p, g = np.asarray(predictions), np.asarray(golds)
  if p.shape != g.shape:
    raise ValueError(f"accuracy: {p.shape[0] if p.ndim else 0} predictions for "
                     f"{g.shape[0] if g.ndim else 0} golds")
  return float((p == g).mean()) if g.size else 0.0


def f1_from_counts(tp, fp, fn) -> np.ndarray:
  """F1 = 2tp / (2tp + fp + fn) elementwise; 0 where the denominator is 0."""
  tp, fp, fn = (np.asarray(x, np.float64) for x in (tp, fp, fn))
  denom = 2 * tp + fp + fn
  return np.where(denom > 0, 2 * tp / np.where(denom > 0, denom, 1), 0.0)


def f1_per_class(predictions: Sequence[int], golds: Sequence[int], num_classes: int):
  """F1 of each class 0..num_classes-1 (0 where it has no true or predicted example)."""
  p, g = np.asarray(predictions), np.asarray(golds)
  classes = np.arange(num_classes)[:, None]
  return f1_from_counts(((p == classes) & (g == classes)).sum(1),
                        ((p == classes) & (g != classes)).sum(1),
                        ((p != classes) & (g == classes)).sum(1))


def f1_score(predictions: Sequence[int], golds: Sequence[int], *, average: str = "binary",
             pos_label: int = 1, num_classes: int | None = None) -> float:
  """``binary``: F1 of ``pos_label``; ``macro``: the mean over ``num_classes`` classes
  (default: every class present in the golds or predictions)."""
  p, g = np.asarray(predictions, np.int64), np.asarray(golds, np.int64)
  classes = np.union1d(p, g) if num_classes is None else np.arange(num_classes)
  size = int(max(classes.max(initial=0), pos_label)) + 1
  per_class = f1_per_class(p, g, size)
  if average == "binary":
    return float(per_class[pos_label])
  if average == "macro":
    return float(per_class[classes].mean()) if len(classes) else 0.0
  raise ValueError(f"average={average!r} is not one of binary, macro")


# ---- entities (conlleval / seqeval) --------------------------------------------------


def _split_tag(tag: str) -> tuple[str, str]:
  if tag in ("O", ""):
    return "O", ""
  prefix, _, kind = tag.partition("-")
  if prefix not in ("B", "I", "E", "S") or not kind:
    raise ValueError(f"tag {tag!r} is not O or one of B-, I-, E-, S- followed by a type")
  return prefix, kind


def _ends(prev: str, prev_type: str, tag: str, kind: str) -> bool:
  """Does the entity open at the previous tag end before this one?"""
  if prev in ("E", "S"):
    return True
  if prev in ("B", "I") and tag in ("B", "S", "O"):
    return True
  return prev != "O" and prev_type != kind


def _starts(prev: str, prev_type: str, tag: str, kind: str) -> bool:
  """Does an entity start at this tag?"""
  if tag in ("B", "S"):
    return True
  if tag in ("I", "E") and prev in ("E", "S", "O"):
    return True
  return tag != "O" and prev_type != kind


def entity_spans(tags: Sequence[str]) -> set[tuple[str, int, int]]:
  """The entities of one tag sequence as (type, first, last) with inclusive ends."""
  spans, start = set(), None
  prev, prev_type = "O", ""
  for i, raw in enumerate(list(tags) + ["O"]):
    tag, kind = _split_tag(raw)
    if start is not None and _ends(prev, prev_type, tag, kind):
      spans.add((prev_type, start, i - 1))
      start = None
    if _starts(prev, prev_type, tag, kind):
      start = i
    prev, prev_type = tag, kind
  return spans


def entity_f1(predictions: Iterable[Sequence[str]], golds: Iterable[Sequence[str]]) -> dict:
  """Micro precision, recall and F1 of entities over sentences (lists of tags)."""
  tp = n_pred = n_gold = 0
  for k, (pred, gold) in enumerate(zip(predictions, golds, strict=True)):
    if len(pred) != len(gold):
      raise ValueError(f"entity_f1: sentence {k} has {len(pred)} predicted tags for "
                       f"{len(gold)} gold tags")
    p, g = entity_spans(pred), entity_spans(gold)
    tp, n_pred, n_gold = tp + len(p & g), n_pred + len(p), n_gold + len(g)
  precision = tp / n_pred if n_pred else 0.0
  recall = tp / n_gold if n_gold else 0.0
  f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
  return {"precision": precision, "recall": recall, "f1": f1}


# ---- extractive QA (SQuAD v1.1 evaluation) --------------------------------------------

_PUNCTUATION = frozenset(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalize_answer(text: str) -> str:
  """Lower case; drop punctuation, then the articles; collapse white space."""
  text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
  return " ".join(_ARTICLES.sub(" ", text).split())


def exact_match(prediction: str, gold: str) -> float:
  return float(normalize_answer(prediction) == normalize_answer(gold))


def token_f1(prediction: str, gold: str) -> float:
  pred, ref = normalize_answer(prediction).split(), normalize_answer(gold).split()
  same = sum((collections.Counter(pred) & collections.Counter(ref)).values())
  if same == 0:
    return 0.0
  precision, recall = same / len(pred), same / len(ref)
  return 2 * precision * recall / (precision + recall)


def best_over_answers(metric, prediction: str, answers: Sequence[str]) -> float:
  if not answers:
    raise ValueError("a gold example has no answer")
  return max(metric(prediction, a) for a in answers)


def squad_em_f1(predictions: Mapping[str, str], answers: Mapping[str, Sequence[str]]) -> dict:
  """{"exact_match", "f1"} in percent over the ids of ``answers`` (aliases per id)."""
  if not answers:
    return {"exact_match": 0.0, "f1": 0.0}
  em = f1 = 0.0
  for qid, golds in answers.items():
    prediction = predictions.get(qid)
    if prediction is None:
      continue  # scored 0, as the official script does
    em += best_over_answers(exact_match, prediction, golds)
    f1 += best_over_answers(token_f1, prediction, golds)
  return {"exact_match": 100.0 * em / len(answers), "f1": 100.0 * f1 / len(answers)}


# ---- summarisation ----------------------------------------------------------------------

ROUGE_TYPES = ("rouge1", "rouge2", "rougeL", "rougeLsum")


def rouge(predictions: Sequence[str], references: Sequence[str], *,
          use_stemmer: bool = True) -> dict:
  """{"rouge1", "rouge2", "rougeL", "rougeLsum"}: mean F-measure in percent."""
  from rouge_score import rouge_scorer
  if len(predictions) != len(references):
    raise ValueError(f"{len(predictions)} predictions for {len(references)} references")
  if not references:
    return {k: 0.0 for k in ROUGE_TYPES}
  scorer = rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=use_stemmer)
  totals = dict.fromkeys(ROUGE_TYPES, 0.0)
  for prediction, reference in zip(predictions, references):
    scores = scorer.score(reference, prediction)  # (target, prediction)
    for k in ROUGE_TYPES:
      totals[k] += scores[k].fmeasure
  return {k: 100.0 * v / len(references) for k, v in totals.items()}
