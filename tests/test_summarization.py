"""Summarisation: the seq2seq task's loss against HF's label smoother, ROUGE against
hand-counted n-grams, and ``configs/summarize_arxiv.py:tiny`` from JSONL files
through training, generation-scored evaluation, HF export and the summarise CLI."""

import json
import os

import numpy as np
import pytest

from conftest import load_config, set_fields

WORDS = ("the film was great and moving . a dull plot , bad acting and a weak script . "
         "news about politics economy election vote party left right").split()


def write_pairs(path, n, seed, words=80):
  """Documents of random WORDS; the summary is the first five words."""
  rng = np.random.default_rng(seed)
  with open(path, "w") as f:
    for i in range(n):
      doc = " ".join(rng.choice(WORDS, words))
      f.write(json.dumps({"id": f"d{seed}-{i}", "document": doc,
                          "summary": " ".join(doc.split()[:5])}) + "\n")
  return str(path)


def test_label_smoothing_matches_hf_label_smoother():
  torch = pytest.importorskip("torch")
  from transformers.trainer_pt_utils import LabelSmoother
  from longformer_jax.tasks.seq2seq import smoothed_terms
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(3, 6, 11)).astype(np.float32) * 3
  labels = rng.integers(0, 11, (3, 6))
  labels[0, 4:] = labels[2, 1:] = -100
  for epsilon in (0.0, 0.1):
    ref = LabelSmoother(epsilon=epsilon)({"logits": torch.tensor(logits)},
                                         torch.tensor(labels)).item()
    loss, _, _, counted = smoothed_terms(logits, labels, epsilon)
    np.testing.assert_allclose(float(loss.sum() / counted.sum()), ref, rtol=1e-6)


def test_rouge_matches_hand_counts():
  from longformer_jax.eval_metrics import rouge
  # "the cat sat" in "the cat sat on the mat": unigrams and LCS 3 of 3 / 6 (F 2/3);
  # bigrams 2 of 2 / 5 (F 4/7). Stemming: "dogs running" = "dog runs" (F 1).
  got = rouge(["the cat sat", "dogs running"], ["the cat sat on the mat", "dog runs"])
  expect = {"rouge1": (2 / 3 + 1) / 2, "rouge2": (4 / 7 + 1) / 2, "rougeL": (2 / 3 + 1) / 2,
            "rougeLsum": (2 / 3 + 1) / 2}
  assert set(got) == set(expect)
  for k, v in expect.items():
    np.testing.assert_allclose(got[k], 100 * v, rtol=1e-9, err_msg=k)


def _tiny_config(tmp_path, tokenizer_dir, **overrides):
  c = load_config("summarize_arxiv")
  set_fields(c, {"data.data_dir": str(tmp_path / "data"), "data.tokenizer": str(tokenizer_dir),
                 "async_checkpoints": False,
                 "data.files.train": write_pairs(tmp_path / "train.jsonl", 12, 0),
                 "data.files.validation": write_pairs(tmp_path / "dev.jsonl", 5, 1),
                 **overrides})
  return c


def test_lengths_past_the_positions_are_refused(tmp_path, tokenizer_dir):
  from longformer_jax import train
  c = _tiny_config(tmp_path, tokenizer_dir, **{"data.max_target_length": 40})
  with pytest.raises(ValueError, match="max_target_length=40"):
    train.Runner(c, str(tmp_path / "run"))
  c = _tiny_config(tmp_path, tokenizer_dir, **{"seq2seq.generation.max_length": 33})
  with pytest.raises(ValueError, match="generation.max_length=33"):
    train.Runner(c, str(tmp_path / "run"))
  c = _tiny_config(tmp_path, tokenizer_dir, **{"model.max_encoder_position_embeddings": 32})
  with pytest.raises(ValueError, match=r"config.model.max_encoder_position_embeddings\)"):
    train.Runner(c, str(tmp_path / "run"))


def test_summarize_arxiv_tiny_trains_scores_exports_and_summarizes(tmp_path, tokenizer_dir):
  """2 steps; the eval ROUGE is that of its predictions file; the HF export loads in
  transformers with the same logits; the CLI gives the evaluation's summaries from the
  workdir and from the export."""
  torch = pytest.importorskip("torch")
  import transformers
  import longformer_jax as lj
  from longformer_jax import convert, summarize, train
  from longformer_jax.eval_metrics import rouge
  c = _tiny_config(tmp_path, tokenizer_dir)
  workdir = str(tmp_path / "run")
  out = train.train_and_evaluate(c, workdir)
  assert np.isfinite(out["loss"]) and np.isfinite(out["eval_nll"])
  metrics = train.evaluate(c, workdir, "validation")
  with open(os.path.join(workdir, "predictions-validation.jsonl")) as f:
    records = [json.loads(line) for line in f]
  assert [r["id"] for r in records] == [f"d1-{i}" for i in range(5)]
  again = rouge([r["prediction"] for r in records], [r["gold"] for r in records])
  for k, v in again.items():
    np.testing.assert_allclose(metrics[f"eval_{k}"], v, rtol=1e-9)
  assert 0 < metrics["eval_gen_len"] <= 15

  export = tmp_path / "export"
  convert.main(["to-hf", workdir, str(export)])
  with open(export / "generation_config.json") as f:
    assert json.load(f)["num_beams"] == 2
  ours = lj.from_hf(export)
  hf = transformers.LEDForConditionalGeneration.from_pretrained(export).eval()
  ids = np.random.default_rng(2).integers(3, 300, (2, 64))
  dec = np.random.default_rng(3).integers(3, 300, (2, 9))
  with torch.no_grad():
    ref = hf(input_ids=torch.tensor(ids), global_attention_mask=torch.tensor(
        np.eye(1, 64, dtype=np.int64).repeat(2, 0)), decoder_input_ids=torch.tensor(dec))
  np.testing.assert_allclose(np.asarray(ours(ids, decoder_input_ids=dec).logits),
                             ref.logits.numpy(), atol=1e-4, rtol=0)

  golds = {r["id"]: r["prediction"] for r in records}
  for model in (workdir, str(export)):
    path = tmp_path / f"summaries-{os.path.basename(model)}.jsonl"
    summarize.main([model, str(tmp_path / "dev.jsonl"), "--output", str(path),
                    "--max_input_length", "64", "--batch_size", "4"])
    with open(path) as f:
      got = {r["id"]: r["summary"] for r in map(json.loads, f)}
    assert got == golds, model
