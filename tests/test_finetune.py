"""Fine-tuning: task losses against HF's, document datasets from files in the real
formats, and every ``configs/finetune_*.py:tiny`` trained 2 steps and evaluated."""

import json
import os

import numpy as np
import pytest

from conftest import HF_ATOL, WORDS, save_hf, tiny_run
from longformer_jax import data as data_lib
from longformer_jax import tasks, tokenization


def documents(n, seed=0, words=200):
  rng = np.random.default_rng(seed)
  return [(f"doc{i}", " ".join(rng.choice(WORDS, rng.integers(words // 2, words))),
           int(rng.integers(0, 2))) for i in range(n)]


def write_jsonl(path, docs, label_field="label", labels=None):
  with open(path, "w") as f:
    for k, (doc_id, text, label) in enumerate(docs):
      value = label if labels is None else labels[k]
      f.write(json.dumps({"id": doc_id, "text": text, label_field: value}) + "\n")
  return str(path)


def write_semeval(tmp_path, docs):
  articles = ["<articles>"] + [
      f'<article id="{i}" title="Title {i}"><p>{t}</p><p>more {t[:20]}</p></article>'
      for i, t, _ in docs] + ["</articles>"]
  truth = ["<articles>"] + [
      f'<article id="{i}" hyperpartisan="{str(bool(y)).lower()}" />' for i, _, y in docs
  ] + ["</articles>"]
  (tmp_path / "articles.xml").write_text("\n".join(articles))
  (tmp_path / "truth.xml").write_text("\n".join(truth))
  return str(tmp_path / "articles.xml"), str(tmp_path / "truth.xml")


# ---- task losses equal the reference's ----------------------------------------------


@pytest.mark.parametrize("multi_label", [False, True])
def test_classification_task_loss_equals_hf(tmp_path, multi_label):
  import torch
  hf, path = save_hf("sequence_classification", tmp_path)
  model = __import__("longformer_jax").from_hf(path)
  rng = np.random.default_rng(0)
  ids = rng.integers(3, 99, (3, 20)).astype(np.int32)
  ids[:, 0] = 0
  mask = np.ones_like(ids)
  mask[1, 15:] = 0
  ids[mask == 0] = 1
  gmask = np.zeros_like(ids)
  gmask[:, 0] = 1
  labels = (rng.random((3, 3)) < 0.5).astype(np.float32) if multi_label else \
      np.array([0, 2, 1], np.int32)
  batch = dict(input_ids=ids, attention_mask=mask, global_attention_mask=gmask,
               labels=labels, weight=np.ones(3, np.float32))
  loss, _ = tasks.get("classification")().loss_and_metrics(model, batch)
  hf.config.problem_type = ("multi_label_classification" if multi_label
                            else "single_label_classification")
  with torch.no_grad():
    ref = hf(input_ids=torch.tensor(ids, dtype=torch.long), attention_mask=torch.tensor(mask),
             global_attention_mask=torch.tensor(gmask),
             labels=torch.tensor(labels if multi_label else labels.astype(np.int64))).loss
  np.testing.assert_allclose(float(loss), float(ref), rtol=0, atol=1e-5)


# ---- datasets ----------------------------------------------------------------------


def classification_cfg(tmp_path, tokenizer_dir, **fields):
  base = dict(name="document_classification", data_dir=str(tmp_path / "data"),
              tokenizer=tokenizer_dir and str(tokenizer_dir), format="jsonl")
  return {**base, **fields}


def test_jsonl_documents_become_truncated_global_first_batches(tmp_path, tokenizer_dir):
  docs = documents(10)
  cfg = classification_cfg(tmp_path, tokenizer_dir, files=dict(
      train=write_jsonl(tmp_path / "train.jsonl", docs),
      validation=write_jsonl(tmp_path / "dev.jsonl", docs[:3])))
  assert data_lib.num_labels(cfg) == 2 and data_lib.vocab_size(cfg) == 300
  batch = next(data_lib.make_iterator(cfg, split="validation", seq_len=32, batch_size=4,
                                      seed=0))
  tok = tokenization.load_tokenizer(tokenizer_dir)
  want = tok.encode(docs[0][1]).ids  # <s> ... </s>
  assert batch["input_ids"][0].tolist() == want[:31] + [2]
  assert batch["global_attention_mask"][:, 0].tolist() == [1] * 4
  assert batch["global_attention_mask"][:, 1:].sum() == 0
  assert batch["labels"].tolist()[:3] == [d[2] for d in docs[:3]]
  assert batch["weight"].tolist() == [1, 1, 1, 0]  # one pass, padded with weight 0


def test_multi_label_documents(tmp_path, tokenizer_dir):
  docs = documents(6)
  labels = [["sports"], ["politics", "economy"], [], ["economy"], ["sports"], ["politics"]]
  cfg = classification_cfg(tmp_path, tokenizer_dir, multi_label=True, files=dict(
      train=write_jsonl(tmp_path / "train.jsonl", docs, "labels", labels)))
  assert data_lib.num_labels(cfg) == 3  # economy, politics, sports
  batch = next(data_lib.make_iterator(cfg, split="train", seq_len=32, batch_size=6, seed=0))
  names = ["economy", "politics", "sports"]
  want = sorted(tuple(float(n in ls) for n in names) for ls in labels)
  assert sorted(map(tuple, batch["labels"].tolist())) == want


def test_a_mistyped_data_file_is_named_with_its_field(tmp_path, tokenizer_dir):
  docs = documents(20, words=8)
  for split in ("train", "validation"):
    files = dict(train=write_jsonl(tmp_path / "train.jsonl", docs),
                 validation=write_jsonl(tmp_path / "dev.jsonl", docs))
    files[split] = str(tmp_path / "trian.jsonl")
    # label_names given: nothing reads the records before the builder hashes the files
    cfg = classification_cfg(tmp_path, tokenizer_dir, files=files, label_names=(0, 1))
    with pytest.raises(FileNotFoundError,
                       match=rf"no file at \S*trian.jsonl \(config.data.files.{split}\)"):
      data_lib.prepare(cfg)
    assert not (tmp_path / "data").exists()  # nothing prepared


def test_split_by_id_is_disjoint_and_stable(tmp_path, tokenizer_dir, capsys):
  docs = documents(200, words=8)
  articles, truth = write_semeval(tmp_path, docs)
  cfg = classification_cfg(tmp_path, tokenizer_dir, format="semeval_xml",
                           files=dict(train=articles, labels=truth),
                           split_fractions=(0.8, 0.1, 0.1), split_seed=0)
  builder = data_lib.prepare(cfg)
  assert capsys.readouterr().out == ""  # tfds's "Downloading and preparing ..." kept off
  ids = {s: {x["id"] for x in builder.as_data_source()[s]}
         for s in ("train", "validation", "test")}
  assert sum(map(len, ids.values())) == 200
  assert not (ids["train"] & ids["validation"]) and not (ids["train"] & ids["test"])
  assert 140 <= len(ids["train"]) <= 180 and min(len(ids["validation"]), len(ids["test"])) >= 8
  from longformer_jax.data import documents as docs_lib
  assert all(docs_lib.split_of_id(i.decode() if isinstance(i, bytes) else i, (0.8, 0.1, 0.1),
                                  0) == "validation" for i in ids["validation"])


@pytest.mark.parametrize("content,match", [
    ('{"text": "a", "label": 0}\nnot json\n', r"train.jsonl:2 is not JSON"),
    ('{"text": "a", "label": 0}\n{"label": 1}\n', r"train.jsonl:2 has no str field 'text'"),
    ('{"text": "a", "label": 0}\n{"text": "b", "label": 7}\n', r"train.jsonl:2: label 7"),
])
def test_malformed_files_are_named_and_nothing_is_left(tmp_path, tokenizer_dir, content,
                                                       match):
  (tmp_path / "train.jsonl").write_text(content)
  cfg = classification_cfg(tmp_path, tokenizer_dir, label_names=(0, 1),
                           files=dict(train=str(tmp_path / "train.jsonl")))
  with pytest.raises(ValueError, match=match):
    data_lib.prepare(cfg)
  assert not data_lib.get_builder(cfg).is_prepared()
  assert not (tmp_path / "data").exists()  # the folders the preparation made are gone


def test_missing_files_name_the_field(tmp_path, tokenizer_dir):
  cfg = classification_cfg(tmp_path, tokenizer_dir, files=dict(train=str(tmp_path / "no")))
  with pytest.raises(FileNotFoundError, match=r"config.data.files.train"):
    data_lib.prepare(cfg)
  cfg = classification_cfg(tmp_path, None, files=dict(train=str(tmp_path / "no")))
  with pytest.raises(ValueError, match=r"config.data.tokenizer"):
    data_lib.prepare(cfg)


# ---- the configs ----------------------------------------------------------------------


def evaluated_predictions(workdir, split="validation"):
  """(metrics, predictions) of re-evaluating a run's last checkpoint on ``split`` with
  the config the run recorded; the predictions are the records of the file it writes."""
  import ml_collections
  from longformer_jax import train
  with open(os.path.join(workdir, "experiment.json")) as f:
    config = ml_collections.ConfigDict(json.load(f))
  metrics = train.evaluate(config, str(workdir), split)
  with open(os.path.join(workdir, f"predictions-{split}.jsonl")) as f:
    return metrics, [json.loads(line) for line in f]


def assert_same_eval(loop_metrics, metrics):
  """The run's last eval metrics equal a re-evaluation of its last checkpoint."""
  assert metrics and metrics == {k: loop_metrics[k] for k in metrics}


def assert_classification_scores(metrics, records, gold_of_id):
  """Accuracy and F1 (fractions) equal scikit-learn's on the predictions, whose golds
  are the generated labels (``gold_of_id``: id -> label)."""
  from sklearn.metrics import accuracy_score, f1_score
  assert records and all(r["gold"] == gold_of_id[r["id"]] for r in records)
  gold = [gold_of_id[r["id"]] for r in records]
  predicted = [r["prediction"] for r in records]
  reference = {
      "eval_accuracy": accuracy_score(gold, predicted),
      "eval_f1": f1_score(gold, predicted, pos_label=1, zero_division=0),
      "eval_macro_f1": f1_score(gold, predicted, labels=[0, 1], average="macro",
                                zero_division=0)}
  for name, want in reference.items():
    assert 0 <= metrics[name] <= 1, name
    np.testing.assert_allclose(metrics[name], want, rtol=0, atol=1e-6, err_msg=name)


def test_finetune_hyperpartisan_tiny_trains_and_evaluates(tmp_path, tokenizer_dir):
  docs = documents(60)
  articles, truth = write_semeval(tmp_path, docs)
  out = tiny_run(tmp_path, "finetune_hyperpartisan", tokenizer_dir,
                 dict(train=articles, labels=truth))
  assert np.isfinite(out["loss"])
  metrics, records = evaluated_predictions(tmp_path / "finetune_hyperpartisan")
  assert_same_eval(out, metrics)
  from longformer_jax.data import documents as docs_lib
  validation = {i for i, _, _ in docs if docs_lib.split_of_id(i, (0.8, 0.1, 0.1), 0)
                == "validation"}
  assert sorted(r["id"] for r in records) == sorted(validation)
  assert_classification_scores(out, records, {i: label for i, _, label in docs})


# ---- a new user's path: HF directory + JSONL -> fine-tuned, predictions, HF export --------
# (also configs/finetune_imdb.py:tiny's 2 steps and evaluation), everything in a bucket:
# the HF directory with its tokenizer, the JSONL files, the workdir and the exports.


def test_hf_directory_and_jsonl_to_predictions_and_export(tmp_path, tokenizer_dir,
                                                          gcs_emulator, monkeypatch):
  import shutil
  import torch
  import transformers
  from conftest import bucket_path, load_config, set_fields
  from flax import nnx
  from longformer_jax import convert, fileio, train, workdir as workdir_lib
  monkeypatch.setenv(fileio.CACHE_ENV, str(tmp_path / "cache"))  # this host's copies
  (tmp_path / "cwd").mkdir()
  monkeypatch.chdir(tmp_path / "cwd")
  bucket = bucket_path(tmp_path)
  _, hf_dir = save_hf("sequence_classification", tmp_path, vocab_size=300, num_labels=2)
  for name in ("tokenizer.json", "vocab.json", "merges.txt"):
    shutil.copy(tokenizer_dir / name, hf_dir / name)
  fileio.copy_tree(hf_dir, f"{bucket}/init")
  dev = documents(5, seed=1)
  for name, docs in (("train", documents(12)), ("dev", dev)):
    fileio.copy_file(write_jsonl(tmp_path / f"{name}.jsonl", docs), f"{bucket}/{name}.jsonl")
  # configs/finetune_imdb.py:tiny (2 steps) from the HF directory, its tokenizer included
  c = load_config("finetune_imdb", "tiny")
  set_fields(c, {"init_from_hf": f"{bucket}/init", "data.tokenizer": None,
                 "data.data_dir": f"{bucket}/data",
                 "data.files.train": f"{bucket}/train.jsonl",
                 "data.files.validation": f"{bucket}/dev.jsonl",
                 "async_checkpoints": False})
  workdir = f"{bucket}/run"
  trained = train.train_and_evaluate(c, workdir)
  assert np.isfinite(trained["loss"]) and {"eval_accuracy", "eval_macro_f1", "eval_f1"} <= set(
      trained)
  metrics = train.evaluate(c, workdir, "validation")
  records = [json.loads(line) for line in
             fileio.read_text(f"{workdir}/predictions-validation.jsonl").splitlines()]
  assert [r["id"] for r in records] == [d[0] for d in dev]
  assert_same_eval(trained, metrics)
  assert_classification_scores(trained, records, {i: label for i, _, label in dev})
  assert os.listdir(tmp_path / "cwd") == []  # no run folder, no "gs:" folder here

  out = f"{bucket}/export"
  convert.main(["to-hf", workdir, out])
  ours, info = workdir_lib.trained_model(workdir)
  assert info["step"] == 2
  local_out = fileio.local_mirror(out)  # transformers reads local files
  hf = transformers.AutoModelForSequenceClassification.from_pretrained(local_out).eval()
  assert hf.config.id2label == {0: "0", 1: "1"}
  tok = transformers.AutoTokenizer.from_pretrained(local_out)
  text = dev[0][1]
  ids = tok(text, return_tensors="np")["input_ids"][:, :64]
  assert ids[0].tolist() == tokenization.load_tokenizer(tokenizer_dir).encode(text).ids[:64]
  gmask = np.zeros_like(ids)
  gmask[:, 0] = 1
  with torch.no_grad():
    ref = hf(input_ids=torch.tensor(ids), global_attention_mask=torch.tensor(gmask)).logits
  got = ours(ids, np.ones_like(ids), gmask).logits
  np.testing.assert_allclose(np.asarray(got), ref.numpy(), rtol=0, atol=HF_ATOL)
  back = __import__("longformer_jax").from_hf(out)
  for a, b in zip(jax_leaves(nnx.state(back, nnx.Param)), jax_leaves(nnx.state(ours, nnx.Param))):
    assert np.array_equal(a, b)
  # the same workdir exported as a jax.export artifact: the trained model's logits
  from longformer_jax import export
  artifact = f"{bucket}/run.jax_exported"
  export.main([workdir, artifact, "--seq-len", str(ids.shape[1]),
               "--max-global-tokens", "1"])
  from_artifact = export.load(artifact)(ids, np.ones_like(ids), gmask)["logits"]
  np.testing.assert_allclose(np.asarray(from_artifact), np.asarray(got), rtol=0, atol=1e-5)
  assert os.listdir(tmp_path / "cwd") == []


def jax_leaves(tree):
  import jax
  return [np.asarray(x) for x in jax.tree.leaves(tree)]
