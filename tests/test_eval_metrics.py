"""Metrics against implementations we did not write: scikit-learn (F1), seqeval
(conlleval entity F1) and torchmetrics' SQuAD (the official v1.1 evaluation)."""

import numpy as np
import pytest

from longformer_jax import eval_metrics as em

sklearn_metrics = pytest.importorskip("sklearn.metrics")
seqeval_metrics = pytest.importorskip("seqeval.metrics")
torchmetrics_text = pytest.importorskip("torchmetrics.functional.text")


@pytest.mark.parametrize("seed", range(6))
def test_accuracy_and_f1_equal_scikit_learn(seed):
  rng = np.random.default_rng(seed)
  classes = [2, 2, 3, 5, 4, 3][seed]
  gold = rng.integers(0, classes, 40)
  pred = np.where(rng.random(40) < 0.6, gold, rng.integers(0, classes, 40))
  if seed == 5:
    pred[pred == 2] = 0  # a class that is never predicted
  assert em.accuracy(pred, gold) == pytest.approx(sklearn_metrics.accuracy_score(gold, pred))
  assert em.f1_score(pred, gold, average="macro") == pytest.approx(
      sklearn_metrics.f1_score(gold, pred, average="macro", zero_division=0))
  if classes == 2:
    assert em.f1_score(pred, gold) == pytest.approx(
        sklearn_metrics.f1_score(gold, pred, zero_division=0))


def test_f1_of_an_absent_positive_class_is_zero():
  assert em.f1_score([0, 0], [0, 0]) == sklearn_metrics.f1_score([0, 0], [0, 0],
                                                                 zero_division=0) == 0.0


NER_CASES = [
    # (gold, prediction): plain, adjacent same-type entities, I- without B-,
    # type change inside a span, entity at the end, nested-looking overlaps
    (["B-PER", "I-PER", "O", "B-LOC"], ["B-PER", "I-PER", "O", "B-LOC"]),
    (["B-PER", "B-PER", "I-PER", "O"], ["B-PER", "I-PER", "I-PER", "O"]),
    (["I-ORG", "I-ORG", "O", "I-PER"], ["B-ORG", "I-ORG", "O", "B-PER"]),
    (["B-ORG", "I-PER", "I-PER", "O"], ["B-ORG", "I-ORG", "I-PER", "O"]),
    (["O", "O", "B-MISC", "I-MISC"], ["O", "O", "B-MISC", "O"]),
    (["B-LOC", "I-LOC", "I-LOC", "I-LOC"], ["B-LOC", "B-LOC", "I-LOC", "I-LOC"]),
    (["O", "I-LOC", "B-LOC", "I-ORG"], ["O", "I-LOC", "I-LOC", "B-ORG"]),
]


def test_entity_f1_equals_seqeval_on_crafted_cases():
  golds, preds = [g for g, _ in NER_CASES], [p for _, p in NER_CASES]
  for gold, pred in NER_CASES:  # each sentence alone, then all together
    got = em.entity_f1([pred], [gold])
    assert got["f1"] == pytest.approx(seqeval_metrics.f1_score([gold], [pred])), (gold, pred)
  got = em.entity_f1(preds, golds)
  assert got["precision"] == pytest.approx(seqeval_metrics.precision_score(golds, preds))
  assert got["recall"] == pytest.approx(seqeval_metrics.recall_score(golds, preds))
  assert got["f1"] == pytest.approx(seqeval_metrics.f1_score(golds, preds))


@pytest.mark.parametrize("seed", range(5))
def test_entity_f1_equals_seqeval_on_random_tags(seed):
  rng = np.random.default_rng(seed)
  tags = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC", "I-ORG"]
  golds = [list(rng.choice(tags, rng.integers(1, 12))) for _ in range(20)]
  preds = [[t if rng.random() < 0.7 else str(rng.choice(tags)) for t in g] for g in golds]
  got = em.entity_f1(preds, golds)
  assert got["f1"] == pytest.approx(seqeval_metrics.f1_score(golds, preds))
  assert got["precision"] == pytest.approx(seqeval_metrics.precision_score(golds, preds))


def test_entity_spans_iobes():
  assert em.entity_spans(["S-PER", "B-LOC", "E-LOC", "O", "B-ORG", "I-ORG", "E-ORG"]) == {
      ("PER", 0, 0), ("LOC", 1, 2), ("ORG", 4, 6)}


def test_bad_tags_are_named():
  with pytest.raises(ValueError, match="'X-PER'"):
    em.entity_spans(["X-PER"])
  with pytest.raises(ValueError, match="sentence 0"):
    em.entity_f1([["O"]], [["O", "O"]])


SQUAD_CASES = [
    ("1", "the Eiffel Tower", ["Eiffel Tower", "the tower"]),       # articles
    ("2", "Paris, France.", ["Paris France"]),                     # punctuation
    ("3", "", ["Denver Broncos"]),                                 # empty prediction
    ("4", "in 1990 and 1991", ["1990", "1991 and 1990"]),          # partial overlap
    ("5", "An apple a day", ["apple day", "a DAY"]),               # case, several articles
    ("6", "Sherlock_Holmes", ["Sherlock Holmes", "holmes"]),       # aliases (TriviaQA)
    ("7", "   spaced    out  ", ["spaced out"]),                   # white space
    ("9", "o'neill", ["O'Neill", "oneill"]),                       # apostrophes
]


def test_squad_em_f1_equal_the_official_evaluation():
  preds = {qid: p for qid, p, _ in SQUAD_CASES}
  answers = {qid: a for qid, _, a in SQUAD_CASES}
  got = em.squad_em_f1(preds, answers)
  ref = torchmetrics_text.squad(
      [{"prediction_text": p, "id": qid} for qid, p in preds.items()],
      [{"answers": {"answer_start": [0] * len(a), "text": a}, "id": qid}
       for qid, a in answers.items()])
  assert got["exact_match"] == pytest.approx(float(ref["exact_match"]), abs=1e-4)
  assert got["f1"] == pytest.approx(float(ref["f1"]), abs=1e-4)
  for qid, p, a in SQUAD_CASES:  # case by case
    one = torchmetrics_text.squad([{"prediction_text": p, "id": qid}],
                                  [{"answers": {"answer_start": [0] * len(a), "text": a},
                                    "id": qid}])
    assert em.squad_em_f1({qid: p}, {qid: a})["f1"] == pytest.approx(float(one["f1"]),
                                                                     abs=1e-4), qid


def test_answers_that_normalise_to_nothing_follow_v1_1():
  # v1.1's f1_score returns 0 when no token is shared, even if both sides are empty;
  # exact match compares the normalised strings. (torchmetrics follows v2 here.)
  assert em.squad_em_f1({"q": "the the"}, {"q": ["The"]}) == {"exact_match": 100.0, "f1": 0.0}


def test_missing_prediction_scores_zero():
  got = em.squad_em_f1({"a": "x"}, {"a": ["x"], "b": ["y"]})
  assert got == {"exact_match": 50.0, "f1": 50.0}
