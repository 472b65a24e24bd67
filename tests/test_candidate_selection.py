"""WikiHop-style candidate selection: the loss against HF's token-classification
logits, WikiHop files cut into windows, scores averaged over windows, and
finetune_wikihop:tiny."""

import json

import numpy as np
import pytest

from conftest import WORDS, batch, save_hf, tiny_run
from test_finetune import assert_same_eval, evaluated_predictions
from longformer_jax import data as data_lib
from longformer_jax import tasks, tokenization
from longformer_jax.tasks import candidate_selection as cs_lib


def test_candidate_loss_equals_cross_entropy_of_hf_logits(tmp_path):
  import torch
  hf, path = save_hf("token_classification", tmp_path, num_labels=1)
  model = __import__("longformer_jax").from_hf(path)
  rng = np.random.default_rng(0)
  ids, mask, gmask, _ = batch(rng)
  positions = np.array([[1, 4, 6, -1], [2, 3, -1, -1], [1, 2, 3, 5]], np.int32)
  labels = np.array([2, 0, 3], np.int32)
  loss, sums = tasks.get("candidate_selection")().loss_and_metrics(
      model, dict(input_ids=ids, attention_mask=mask, global_attention_mask=gmask,
                  candidate_positions=positions, labels=labels,
                  weight=np.ones(3, np.float32)))
  with torch.no_grad():
    logits = hf(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                global_attention_mask=torch.tensor(gmask)).logits[..., 0]
  ref = 0.0
  for e in range(3):
    scores = logits[e, positions[e][positions[e] >= 0]]
    ref += torch.nn.functional.cross_entropy(scores[None], torch.tensor([int(labels[e])])).item()
  np.testing.assert_allclose(float(loss), ref / 3, rtol=0, atol=1e-5)


def test_scores_are_averaged_over_windows():
  task = tasks.get("candidate_selection")()
  examples = [{"id": "a", "candidates": json.dumps(["x", "y"]), "label": 1},
              {"id": "b", "candidates": json.dumps(["u", "v", "w"]), "label": 0}]
  pad = cs_lib.PAD_SCORE
  rows = dict(example_index=np.array([0, 0, 1, 1]), weight=np.array([1, 1, 1, 0.0]),
              scores=np.array([[3.0, 0.0, pad], [-4.0, 0.5, pad], [1.0, 2.0, 0.0],
                               [9.0, 0.0, 0.0]]))
  scores, records = task.score(rows, examples)
  # a: mean (-0.5, 0.25) -> y (right); b: the weight-0 row is padding -> v (wrong)
  assert [r["prediction"] for r in records] == ["y", "v"]
  assert scores["accuracy"] == 0.5  # a fraction, as scikit-learn's accuracy_score


def wikihop_file(path, n, seed=0):
  rng = np.random.default_rng(seed)
  records = []
  for k in range(n):
    candidates = ["election", "vote party", "film"]
    records.append({"id": f"w{k}", "query": "member_of_political_party x",
                    "answer": candidates[k % 3], "candidates": candidates,
                    "supports": [" ".join(rng.choice(WORDS, 25)) for _ in range(3)]})
  with open(path, "w") as f:
    json.dump(records, f)
  return str(path)


def test_wikihop_windows_lead_with_global_question_and_candidates(tmp_path, tokenizer_dir):
  cfg = dict(name="wikihop", data_dir=str(tmp_path / "data"), tokenizer=str(tokenizer_dir),
             files=dict(train=wikihop_file(tmp_path / "w.json", 3)), doc_stride=4,
             max_candidates=4)
  b = next(data_lib.make_iterator(cfg, split="train", seq_len=64, batch_size=64, seed=0,
                                  num_epochs=1))
  tok = tokenization.load_tokenizer(tokenizer_dir)
  keep = b["weight"] > 0
  assert keep.sum() > 3  # documents longer than a window: several per example
  for row in np.flatnonzero(keep):
    ids, pos = b["input_ids"][row], b["candidate_positions"][row]
    assert pos.tolist()[-1] == -1  # 3 candidates, 4 slots
    first = [tok.encode(" " + c, add_special_tokens=False).ids[0]
             for c in ("election", "vote party", "film")]
    assert ids[pos[:3]].tolist() == first
    prefix = int(b["global_attention_mask"][row].sum())
    assert b["global_attention_mask"][row][:prefix].all() and ids[prefix - 1] == 2
    assert b["labels"][row] == int(b["example_index"][row]) % 3


def test_prefix_longer_than_the_global_bound_is_named(tmp_path, tokenizer_dir):
  cfg = dict(name="wikihop", data_dir=str(tmp_path / "data"), tokenizer=str(tokenizer_dir),
             files=dict(train=wikihop_file(tmp_path / "w.json", 3)), max_prefix_tokens=20)
  with pytest.raises(ValueError, match=r"more than config.data.max_prefix_tokens=20"):
    next(data_lib.make_iterator(cfg, split="train", seq_len=64, batch_size=4, seed=0))
  from conftest import load_config
  c = load_config("finetune_wikihop")
  c.model.max_global_tokens = 47
  with pytest.raises(ValueError, match=r"max_global_tokens=47 must hold"):
    tasks.build(c).check_config(c)


def test_answer_outside_candidates_is_named(tmp_path, tokenizer_dir):
  (tmp_path / "w.json").write_text(json.dumps([{"id": "q7", "query": "r x", "answer": "z",
                                                "candidates": ["a"], "supports": []}]))
  cfg = dict(name="wikihop", data_dir=str(tmp_path / "data"), tokenizer=str(tokenizer_dir),
             files=dict(train=str(tmp_path / "w.json")))
  with pytest.raises(ValueError, match=r"record 0 \(id q7\): the answer 'z'"):
    data_lib.prepare(cfg)


def test_finetune_wikihop_tiny_trains_and_evaluates(tmp_path, tokenizer_dir):
  files = dict(train=wikihop_file(tmp_path / "train.json", 6),
               validation=wikihop_file(tmp_path / "dev.json", 3, seed=1))
  out = tiny_run(tmp_path, "finetune_wikihop", tokenizer_dir, files)
  assert np.isfinite(out["loss"])
  metrics, records = evaluated_predictions(tmp_path / "finetune_wikihop")
  assert_same_eval(out, metrics)
  from sklearn.metrics import accuracy_score
  with open(files["validation"]) as f:
    questions = {q["id"]: q for q in json.load(f)}
  assert sorted(r["id"] for r in records) == sorted(questions)
  for r in records:
    assert r["gold"] == questions[r["id"]]["answer"]
    assert r["prediction"] in questions[r["id"]]["candidates"]
  want = accuracy_score([questions[r["id"]]["answer"] for r in records],
                        [r["prediction"] for r in records])
  assert 0 <= out["eval_accuracy"] <= 1
  np.testing.assert_allclose(out["eval_accuracy"], want, rtol=0, atol=1e-6)
