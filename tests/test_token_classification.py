"""NER: the task's loss against HF's, CoNLL files cut into windows where every word is
labelled once, entity scoring over windows, and finetune_ontonotes:tiny."""

import numpy as np
import pytest

from conftest import WORDS, batch, save_hf, tiny_run
from test_finetune import assert_same_eval, evaluated_predictions
from longformer_jax import data as data_lib
from longformer_jax import tasks, tokenization
from longformer_jax.data import conll

TYPES = ("PER", "ORG", "LOC")


def test_token_loss_equals_hf(tmp_path):
  import torch
  hf, path = save_hf("token_classification", tmp_path)
  model = __import__("longformer_jax").from_hf(path)
  rng = np.random.default_rng(0)
  ids, mask, gmask, _ = batch(rng)
  labels = rng.integers(0, 3, ids.shape)
  labels[rng.random(ids.shape) < 0.3] = -100
  labels[mask == 0] = -100
  inputs = dict(input_ids=ids, attention_mask=mask, global_attention_mask=gmask)
  loss, _ = tasks.get("token_classification")(("O", "B-X", "I-X")).loss_and_metrics(
      model, dict(inputs, labels=labels, weight=np.ones(3, np.float32)))
  with torch.no_grad():
    ref = hf(**{k: torch.tensor(v) for k, v in inputs.items()},
             labels=torch.tensor(labels)).loss
  np.testing.assert_allclose(float(loss), float(ref), rtol=0, atol=1e-5)


def conll_documents(n_docs, seed=0, sentences=6, words=12):
  """Documents of sentences of (word, tag) with random entities."""
  rng = np.random.default_rng(seed)
  docs = []
  for _ in range(n_docs):
    doc = []
    for _ in range(sentences):
      sent, k = [], 0
      while k < words:
        if rng.random() < 0.25:
          kind, length = rng.choice(TYPES), int(rng.integers(1, 3))
          sent += [(str(rng.choice(WORDS)), ("B-" if j == 0 else "I-") + kind)
                   for j in range(length)]
          k += length
        else:
          sent.append((str(rng.choice(WORDS)), "O"))
          k += 1
      doc.append(sent)
    docs.append(doc)
  return docs


def write_conll(path, docs):
  lines = []
  for doc in docs:
    lines += ["-DOCSTART- -X- -X- O", ""]
    for sent in doc:
      lines += [f"{w} NN O {t}" for w, t in sent] + [""]
  path.write_text("\n".join(lines))
  return str(path)


def ner_cfg(tmp_path, tokenizer_dir, files, **fields):
  return dict(name="conll_ner", data_dir=str(tmp_path / "data"), tokenizer=str(tokenizer_dir),
              files=files, **fields)


def test_conll_windows_label_every_word_once(tmp_path, tokenizer_dir):
  docs = conll_documents(3)
  cfg = ner_cfg(tmp_path, tokenizer_dir, dict(train=write_conll(tmp_path / "t.conll", docs)),
                doc_stride=6)
  names = data_lib.pipeline.label_names(cfg)
  assert names[0] == "O" and set(names) == {"O"} | {p + t for p in "BI" for t in ("-" + x for
                                                                                  x in TYPES)}
  source = data_lib.stored_examples(cfg, "train")
  assert len(source) == 3 and all(len(x["input_ids"]) > 60 for x in source)
  it = data_lib.make_iterator(cfg, split="train", seq_len=24,
                              batch_size=256, seed=0, num_epochs=1)
  b = next(it)
  tok = tokenization.load_tokenizer(tokenizer_dir)
  for e, doc in enumerate(docs):
    rows = (b["example_index"] == e) & (b["weight"] > 0)  # not the batch's padding
    words = b["word_index"][rows]
    labelled = np.sort(words[words >= 0])
    flat = [(w, t) for s in doc for w, t in s]
    assert labelled.tolist() == list(range(len(flat)))  # each word once
    got = dict(zip(words[words >= 0].tolist(), b["labels"][rows][words >= 0].tolist()))
    assert [names[got[k]] for k in range(len(flat))] == [t for _, t in flat]
    ids, word_ids = conll.encode_words(tok, [w for w, _ in flat])
    first = np.flatnonzero(np.r_[True, word_ids[1:] != word_ids[:-1]])
    starts = {int(w): i for w, i in zip(word_ids[first], first)}
    for row in np.flatnonzero(rows):  # the labelled position holds the word's first sub-word
      for pos in np.flatnonzero(b["word_index"][row] >= 0):
        assert b["input_ids"][row][pos] == ids[starts[int(b["word_index"][row][pos])]]


def test_scoring_gold_predictions_over_windows_gives_full_f1(tmp_path, tokenizer_dir):
  docs = conll_documents(2, seed=1)
  cfg = ner_cfg(tmp_path, tokenizer_dir, dict(train=write_conll(tmp_path / "t.conll", docs)),
                doc_stride=4)
  b = next(data_lib.make_iterator(cfg, split="train", seq_len=20, batch_size=256, seed=0,
                                  num_epochs=1))
  task = tasks.get("token_classification")(data_lib.pipeline.label_names(cfg))
  rows = dict(prediction=np.where(b["labels"] >= 0, b["labels"], 0), word_index=b["word_index"],
              example_index=b["example_index"], weight=b["weight"])
  source = data_lib.stored_examples(cfg, "train")
  scores, records = task.score(rows, source)
  assert scores["entity_f1"] == 1.0 and len(records) == 2  # fractions, as seqeval's
  assert records[0]["prediction"] == [t for s in docs[0] for _, t in s]
  rows["prediction"] = np.zeros_like(rows["prediction"])  # all O: nothing found
  assert task.score(rows, source)[0]["entity_recall"] == 0.0


def test_bad_tag_is_named(tmp_path, tokenizer_dir):
  (tmp_path / "t.conll").write_text("a NN O\nfilm NN X-PER\n")
  cfg = ner_cfg(tmp_path, tokenizer_dir, dict(train=str(tmp_path / "t.conll")))
  with pytest.raises(ValueError, match=r"t.conll:2: tag 'X-PER'"):
    data_lib.prepare(cfg)


def test_finetune_ontonotes_tiny_trains_and_evaluates(tmp_path, tokenizer_dir):
  dev = conll_documents(2, seed=1)
  files = dict(train=write_conll(tmp_path / "train.conll", conll_documents(4)),
               validation=write_conll(tmp_path / "dev.conll", dev))
  out = tiny_run(tmp_path, "finetune_ontonotes", tokenizer_dir, files)
  assert np.isfinite(out["loss"])
  metrics, records = evaluated_predictions(tmp_path / "finetune_ontonotes")
  assert_same_eval(out, metrics)
  # documents are named FILE:K in file order; the predictions are cut into the
  # generated sentences, where entities end
  doc_of_id = {f"dev.conll:{k + 1}": doc for k, doc in enumerate(dev)}
  assert sorted(r["id"] for r in records) == sorted(doc_of_id)
  gold, predicted = [], []
  for r in records:
    doc = doc_of_id[r["id"]]
    assert r["gold"] == [t for s in doc for _, t in s]
    assert len(r["prediction"]) == len(r["gold"])
    tags = iter(r["prediction"])
    gold += [[t for _, t in s] for s in doc]
    predicted += [[next(tags) for _ in s] for s in doc]
  from seqeval import metrics as seqeval_metrics
  from sklearn.metrics import accuracy_score
  reference = {
      "eval_accuracy": accuracy_score(sum(gold, []), sum(predicted, [])),
      "eval_entity_f1": seqeval_metrics.f1_score(gold, predicted),
      "eval_entity_precision": seqeval_metrics.precision_score(gold, predicted),
      "eval_entity_recall": seqeval_metrics.recall_score(gold, predicted)}
  for name, want in reference.items():
    assert 0 <= out[name] <= 1, name
    np.testing.assert_allclose(out[name], want, rtol=0, atol=1e-6, err_msg=name)
