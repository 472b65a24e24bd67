"""Datasets tfds itself prepared (imdb_reviews, trivia_qa) read without TensorFlow:
stand-in builders with the same features, prepared in array_record as tfds does."""

import numpy as np
import pytest
import tensorflow_datasets as tfds

from conftest import WORDS
from longformer_jax import data as data_lib
from longformer_jax import tokenization


class ImdbLike(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """imdb_reviews/plain_text's features: text, label (ClassLabel neg/pos)."""

  VERSION = tfds.core.Version("1.0.0")
  name = "imdb_like"

  def _info(self):
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
        "text": tfds.features.Text(), "label": tfds.features.ClassLabel(names=["neg", "pos"])}))

  def _split_generators(self, dl_manager):
    return {"train": self._generate_examples(0, 12), "test": self._generate_examples(1, 5)}

  def _generate_examples(self, seed, n):
    rng = np.random.default_rng(seed)
    for k in range(n):
      yield k, {"text": " ".join(rng.choice(WORDS, 40)), "label": k % 2}


class TriviaQaLike(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """trivia_qa/rc's features that the reader uses; its validation split lists its first
  question twice (rc holds some questions under both of its sources)."""

  VERSION = tfds.core.Version("1.1.0")
  name = "trivia_qa_like"

  def _info(self):
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
        "question": tfds.features.Text(), "question_id": tfds.features.Text(),
        "answer": tfds.features.FeaturesDict({
            "value": tfds.features.Text(),
            "aliases": tfds.features.Sequence(tfds.features.Text())}),
        "entity_pages": tfds.features.Sequence({
            "filename": tfds.features.Text(), "wiki_context": tfds.features.Text()})}))

  def _split_generators(self, dl_manager):
    return {"train": self._generate_examples(3), "validation": self._generate_examples(2)}

  def _generate_examples(self, n):
    rng = np.random.default_rng(n)
    for k in list(range(n)) + ([0] if n == 2 else []):
      pages = [" ".join(rng.choice(WORDS, 30)) + " the election vote party won ."
               for _ in range(2)]
      yield f"{k}-{rng.integers(1 << 30)}", {"question": "which vote ?", "question_id": f"tq{k}",
                "answer": {"value": "Election Vote Party", "aliases": ["vote party"]},
                "entity_pages": {"filename": [f"p{j}.txt" for j in range(2)],
                                 "wiki_context": pages}}


def prepared(builder_cls, root):
  builder = builder_cls(data_dir=str(root))
  builder.download_and_prepare(file_format="array_record")
  return builder.data_dir


@pytest.mark.parametrize("store", ["local", "bucket"])
def test_tfds_imdb_reviews_split_reads_without_tensorflow(tmp_path, tokenizer_dir, store,
                                                           request, monkeypatch):
  """DIR:SPLIT of a tfds-prepared dataset, local or in a bucket (read from this host's
  copy of it), with the prepared data of ours beside it."""
  local = directory = prepared(ImdbLike, tmp_path / "tfds")
  root = str(tmp_path)
  if store == "bucket":
    from conftest import bucket_path
    from longformer_jax import fileio
    request.getfixturevalue("gcs_emulator")
    monkeypatch.setenv(fileio.CACHE_ENV, str(tmp_path / "cache"))
    root = bucket_path(tmp_path)
    directory = f"{root}/tfds/imdb_like/1.0.0"
    fileio.copy_tree(local, directory)
  cfg = dict(name="document_classification", data_dir=f"{root}/data",
             tokenizer=str(tokenizer_dir), format="tfds",
             files=dict(train=f"{directory}:train", validation=f"{directory}:test"))
  assert data_lib.num_labels(cfg) == 2
  b = next(data_lib.make_iterator(cfg, split="validation", seq_len=32, batch_size=8, seed=0))
  want = tfds.builder_from_directory(local).as_data_source(split="test")
  tok = tokenization.load_tokenizer(tokenizer_dir)
  for k in range(5):
    assert b["input_ids"][k].tolist() == tok.encode(want[k]["text"].decode()).ids[:31] + [2]
    assert b["labels"][k] == want[k]["label"]
  bad = dict(cfg, files=dict(train=f"{directory}:dev"))
  with pytest.raises(ValueError, match=r"config.data.files.train: .* not 'dev'"):
    data_lib.prepare(bad)


def test_tfds_trivia_qa_pages_become_questions(tmp_path, tokenizer_dir, caplog):
  directory = prepared(TriviaQaLike, tmp_path / "tfds")
  cfg = dict(name="extractive_qa", data_dir=str(tmp_path / "data"), tokenizer=str(tokenizer_dir),
             format="tfds_trivia_qa", max_query_length=8,
             files=dict(train=f"{directory}:train", validation=f"{directory}:validation"))
  source = data_lib.stored_examples(cfg, "validation")
  assert len(source) == 4  # 2 questions x 2 pages, the repeated question kept once
  assert "lists 2 question-page pairs more than once" in caplog.text
  assert len({ex["id"] for ex in source}) == 4
  for ex in source:
    context = ex["context"].decode()
    found = {context[ex["offsets"][a][0]:ex["offsets"][b][1]] for a, b in ex["spans"]}
    assert found == {"vote party"}  # the alias; the value's case does not occur
    assert "Election Vote Party" in ex["answers"].decode()
