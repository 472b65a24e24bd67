"""Extractive QA: the task's loss against HF's and a closed form, windows over long
contexts against the whole context, SQuAD-format files, and finetune_triviaqa:tiny."""

import json
import os

import numpy as np
import pytest

from conftest import PAD, SEP, WORDS, qa_batch, save_hf, tiny_run
from test_finetune import assert_same_eval, evaluated_predictions
from longformer_jax import data as data_lib
from longformer_jax import model as model_lib
from longformer_jax import tasks
from longformer_jax.config import LongformerConfig
from longformer_jax.data import documents
from longformer_jax.data import windows as windows_lib
from longformer_jax.tasks import question_answering as qa_lib

SPECIALS = documents.Specials(bos=0, eos=SEP, pad=PAD)


def test_span_loss_equals_hf(tmp_path):
  import torch
  hf, path = save_hf("question_answering", tmp_path)
  model = __import__("longformer_jax").from_hf(path)
  rng = np.random.default_rng(0)
  ids, mask = qa_batch(rng)
  first_sep = np.argmax(ids == SEP, axis=1)
  gmask = (np.arange(ids.shape[1]) < first_sep[:, None]).astype(np.int64)
  start, end = np.array([5, 9, 6]), np.array([7, 12, 6])
  batch = dict(input_ids=ids, attention_mask=mask, global_attention_mask=gmask,
               start_positions=start, end_positions=end, weight=np.ones(3, np.float32))
  loss, _ = tasks.get("question_answering")().loss_and_metrics(model, batch)
  with torch.no_grad():
    ref = hf(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
             global_attention_mask=torch.tensor(gmask), start_positions=torch.tensor(start),
             end_positions=torch.tensor(end)).loss
  np.testing.assert_allclose(float(loss), float(ref), rtol=0, atol=1e-5)


def test_occurrence_loss_is_minus_log_of_summed_probability():
  rng = np.random.default_rng(1)
  logits = rng.normal(size=(3, 10)).astype(np.float32)
  positions = np.array([[1, 4, -1], [3, -1, -1], [2, 2, 7]], np.int32)
  nll, has = qa_lib.occurrence_nll(logits, positions)
  p = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
  want = [-np.log(p[0, 1] + p[0, 4]), -np.log(p[1, 3]), -np.log(p[2, 2] + p[2, 7])]
  np.testing.assert_allclose(np.asarray(nll), want, rtol=1e-5)
  assert np.asarray(has).all()
  nll, has = qa_lib.occurrence_nll(logits[:1], np.array([[-1, 10]], np.int32))
  assert not bool(has[0]) and float(nll[0]) == 0.0


def test_windows_cover_the_context_with_the_overlap():
  spans = windows_lib.windows(100, 39, 16)
  assert spans[0] == (0, 39) and spans[-1][0] + spans[-1][1] == 100
  for (a, n), (b, _) in zip(spans, spans[1:]):
    assert a + n - b == 16
  owner = windows_lib.owner_windows(spans, 100)
  for t in range(100):  # every token is owned by a window that holds it
    a, n = spans[owner[t]]
    assert a <= t < a + n
  assert windows_lib.windows(20, 39, 16) == [(0, 20)]
  np.testing.assert_array_equal(windows_lib.window_table([2, 0, 1]), [[0, 0], [0, 1], [2, 0]])


def _long_example(rng, q_len=5, c_len=120):
  return {"question_ids": rng.integers(5, 50, q_len), "context_ids": rng.integers(5, 50, c_len),
          "offsets": np.stack([np.arange(c_len) * 2, np.arange(c_len) * 2 + 1], 1),
          "spans": np.zeros((0, 2), np.int32), "id": "q", "context": "x" * 240,
          "answers": json.dumps(["x"])}


def _rows(task, model, features):
  batch = {k: np.stack([features[i][k] for i in range(len(features))])
           for k in features[0]}
  batch["weight"] = np.ones(len(features), np.float32)
  return {k: np.asarray(v) for k, v in task.eval_step(model, batch)[1].items()}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_best_span_across_windows_equals_whole_context(seed):
  # One layer, window 4 (2 tokens each side) and no position embeddings: a token's
  # logits depend only on its neighbours and the question, so a window's logits equal
  # the whole context's wherever the window holds 2 tokens either side. Windows overlap
  # by 16 and spans are at most 4 long, so every span a window may propose is such.
  rng = np.random.default_rng(seed)
  cfg = LongformerConfig(vocab_size=50, hidden_size=32, num_hidden_layers=1,
                         num_attention_heads=4, intermediate_size=64, attention_window=(4,),
                         max_position_embeddings=140, num_labels=2, max_global_tokens=8,
                         hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
  model = model_lib.create_model(cfg, "question_answering", seed)
  emb = model.longformer.embeddings.position_embeddings
  emb.embedding[...] = np.zeros(emb.embedding.shape, np.float32)
  model.eval()
  example = _long_example(rng)
  task = qa_lib.QuestionAnswering(max_answer_length=4)
  whole = qa_lib.Features([example], [[5, 120]], qa_lib.WindowSpec(136, 0, 8), SPECIALS)
  cut = qa_lib.Features([example], [[5, 120]], qa_lib.WindowSpec(48, 16, 8), SPECIALS)
  assert len(whole) == 1 and len(cut) == 5
  rows_whole, rows_cut = _rows(task, model, whole), _rows(task, model, cut)
  best = int(np.argmax(rows_cut["score"]))
  np.testing.assert_allclose(rows_cut["score"][best], rows_whole["score"][0], rtol=0,
                             atol=1e-5)
  for field in ("start_char", "end_char"):
    assert rows_cut[field][best] == rows_whole[field][0]
  got = task.score(rows_cut, [example])[1][0]["prediction"]
  assert got == task.score(rows_whole, [example])[1][0]["prediction"] != ""


# ---- SQuAD-format files -------------------------------------------------------------


def squad_file(path, questions):
  """questions: [(context, question, [(answer, start or None)], aliases)]."""
  paragraphs = [{"context": c, "qas": [{
      "id": f"q{k}", "question": q, "aliases": aliases,
      "answers": [{"text": t, "answer_start": s} for t, s in answers if s is not None]}]}
      for k, (c, q, answers, aliases) in enumerate(questions)]
  with open(path, "w") as f:
    json.dump({"version": "1.1", "data": [{"title": "t", "paragraphs": paragraphs}]}, f)
  return str(path)


def generated_questions(n, seed=0, words=120):
  rng = np.random.default_rng(seed)
  out = []
  for _ in range(n):
    context = " ".join(rng.choice(WORDS, words))
    answer = "election vote party"
    at = len(context) // 2
    context = context[:at] + " " + answer + " " + context[at:]
    out.append((context, "which vote ?", [(answer, at + 1)], ["vote party"]))
  return out


def qa_cfg(tmp_path, tokenizer_dir, **fields):
  return dict(name="extractive_qa", data_dir=str(tmp_path / "data"),
              tokenizer=str(tokenizer_dir), **fields)


@pytest.mark.parametrize("find_all", [False, True])
def test_squad_windows_point_at_the_answers(tmp_path, tokenizer_dir, find_all):
  questions = generated_questions(3)
  cfg = qa_cfg(tmp_path, tokenizer_dir, find_all_occurrences=find_all, doc_stride=8,
               max_query_length=8,
               files=dict(train=squad_file(tmp_path / "train.json", questions)))
  source = data_lib.stored_examples(cfg, "train")
  for ex, (context, *_rest) in zip(source, questions):
    spans = ex["spans"]
    texts = {context[ex["offsets"][a][0]:ex["offsets"][b][1]] for a, b in spans}
    if find_all:  # the answer and its alias, at every occurrence
      assert "election vote party" in texts and "vote party" in texts
      assert len(spans) == context.count("vote party") + context.count("election vote party")
    else:
      assert texts == {"election vote party"}
  it = data_lib.make_iterator(cfg, split="train", seq_len=40,
                              batch_size=64, seed=0, num_epochs=1)
  batch = next(it)
  hits = 0
  for row in range(len(batch["input_ids"])):
    q_len = min(len(source[int(batch["example_index"][row])]["question_ids"]), 8)
    assert batch["global_attention_mask"][row].tolist() == [1] * (q_len + 1) + [0] * (
        40 - q_len - 1)  # <s> and the question, cut at max_query_length
    for a, b in zip(batch["start_positions"][row], batch["end_positions"][row]):
      if a > 0:
        ex = source[int(batch["example_index"][row])]
        text = ex["context"].decode() if isinstance(ex["context"], bytes) else ex["context"]
        off = batch["offsets"][row]
        assert text[off[a][0]:off[b][1]] in ("election vote party", "vote party")
        hits += 1
  assert hits >= 3


def test_bad_answer_start_is_named_and_nothing_is_left(tmp_path, tokenizer_dir):
  questions = generated_questions(2)
  context, q, [(answer, at)], aliases = questions[1]
  questions[1] = (context, q, [(answer, at + 3)], aliases)
  cfg = qa_cfg(tmp_path, tokenizer_dir,
               files=dict(train=squad_file(tmp_path / "train.json", questions)))
  with pytest.raises(ValueError, match=r"paragraphs\[1\]\.qas\[0\]\.answers\[0\]"):
    data_lib.prepare(cfg)
  assert not data_lib.get_builder(cfg).is_prepared()
  assert not [f for _, _, files in os.walk(tmp_path / "data") for f in files
              if "array_record" in f]


def test_finetune_triviaqa_tiny_trains_and_evaluates(tmp_path, tokenizer_dir):
  dev = generated_questions(3, seed=1)
  files = dict(train=squad_file(tmp_path / "train.json", generated_questions(6)),
               validation=squad_file(tmp_path / "dev.json", dev))
  out = tiny_run(tmp_path, "finetune_triviaqa", tokenizer_dir, files)
  assert np.isfinite(out["loss"]) and np.isfinite(out["eval_loss"])
  # every alias is a gold answer (squad_file names question k "qk")
  answers = {f"q{k}": [t for t, _ in golds] + aliases
             for k, (_, _, golds, aliases) in enumerate(dev)}
  assert_squad_scores(tmp_path / "finetune_triviaqa", out, answers)


def assert_squad_scores(workdir, loop_metrics, answers):
  """The run's EM and F1 (percent) equal torchmetrics' SQuAD on the predictions file
  of its last checkpoint against the generated ``answers`` (id -> gold texts)."""
  from torchmetrics.functional.text import squad
  metrics, records = evaluated_predictions(workdir)
  assert_same_eval(loop_metrics, metrics)
  assert sorted(r["id"] for r in records) == sorted(answers)
  assert all(sorted(r["gold"]) == sorted(answers[r["id"]]) for r in records)
  want = squad([{"id": r["id"], "prediction_text": r["prediction"]} for r in records],
               [{"id": qid, "answers": {"text": texts, "answer_start": [-1] * len(texts)}}
                for qid, texts in answers.items()])
  for name in ("exact_match", "f1"):
    got = loop_metrics[f"eval_{name}"]
    assert 0 <= got <= 100, name
    np.testing.assert_allclose(got, float(want[name]), rtol=1e-6, atol=1e-6, err_msg=name)


def hotpot_file(path, n, seed=0):
  rng = np.random.default_rng(seed)
  records = []
  for k in range(n):
    paragraphs = [[f"Title {j}", [" ".join(rng.choice(WORDS, 12)) + " . " for _ in range(3)]]
                  for j in range(3)]
    answer = "yes" if k % 2 else "election vote party"
    if answer != "yes":
      paragraphs[1][1][2] = f"the {answer} won . "
    records.append({"_id": f"h{k}", "question": "which party ?", "answer": answer,
                    "context": paragraphs, "supporting_facts": [["Title 1", 2]]})
  with open(path, "w") as f:
    json.dump(records, f)
  return str(path)


def test_hotpotqa_answers_are_spans_of_the_joined_paragraphs(tmp_path, tokenizer_dir):
  cfg = qa_cfg(tmp_path, tokenizer_dir, format="hotpotqa",
               files=dict(train=hotpot_file(tmp_path / "hotpot.json", 4)))
  source = data_lib.stored_examples(cfg, "train")
  for k, ex in enumerate(source):
    context = ex["context"].decode()
    assert context.startswith("yes no Title 0: ")
    found = {context[ex["offsets"][a][0]:ex["offsets"][b][1]] for a, b in ex["spans"]}
    assert found == ({"yes"} if k % 2 else {"election vote party"})


def test_finetune_hotpotqa_tiny_trains_and_evaluates(tmp_path, tokenizer_dir):
  files = dict(train=hotpot_file(tmp_path / "train.json", 6),
               validation=hotpot_file(tmp_path / "dev.json", 3, seed=1))
  out = tiny_run(tmp_path, "finetune_hotpotqa", tokenizer_dir, files)
  assert np.isfinite(out["loss"])
  with open(files["validation"]) as f:
    answers = {q["_id"]: [q["answer"]] for q in json.load(f)}
  assert_squad_scores(tmp_path / "finetune_hotpotqa", out, answers)


def test_answers_are_found_as_whole_words_and_zero_overlap_is_kept():
  from longformer_jax.data import extractive_qa
  context = "no economy is not known , no . yes eyes"
  spans = extractive_qa.char_spans(context, [("no", None, True), ("yes", None, True)], "x")
  assert [context[a:b] for a, b in spans] == ["no", "no", "yes"]  # not inside not / eyes
  assert extractive_qa.char_spans(context, [("no", 0, False)], "x") == [(0, 2)]
  spec = documents.spec_from(qa_lib.WindowSpec, {"doc_stride": 0, "max_query_length": None},
                             40, ("doc_stride", "max_query_length"))
  assert spec.doc_stride == 0 and spec.max_query_length == qa_lib.WindowSpec.max_query_length
