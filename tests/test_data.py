"""Datasets and input pipelines on tiny corpora written by the tests themselves."""

import concurrent.futures
import json
import zipfile

import grain
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
import pytest

from longformer_jax import data
from longformer_jax.data import corpora, language_modeling

KV = dict(name="kv_recall", num_pairs=4, num_keys=12, num_values=5, num_fillers=20,
          num_train=40, num_eval=11, seed=3)
KV_LEN = 64
TEXT8_CHARS = 200_000


def _take(it, n):
  return [next(it) for _ in range(n)]


def _assert_batches_equal(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    assert x.keys() == y.keys()
    for k in x:
      np.testing.assert_array_equal(x[k], y[k], err_msg=k)


@pytest.fixture(scope="module")
def kv_cfg(tmp_path_factory):
  return dict(KV, data_dir=str(tmp_path_factory.mktemp("kv")))


@pytest.fixture(scope="module")
def text8(tmp_path_factory):
  """A fake text8.zip (a-z and space) and a config preparing it; returns (cfg, text)."""
  root = tmp_path_factory.mktemp("text8")
  rng = np.random.default_rng(0)
  text = rng.choice(np.frombuffer(b"abcdefghijklmnopqrstuvwxyz ", np.uint8),
                    size=TEXT8_CHARS).tobytes()
  with zipfile.ZipFile(root / "text8.zip", "w", zipfile.ZIP_DEFLATED) as z:
    z.writestr("text8", text)
  cfg = dict(name="text8", data_dir=str(root / "tfds"), path=str(root / "text8.zip"),
             chunk_size=4096)
  data.prepare(cfg)
  return cfg, text


# ---- kv_recall --------------------------------------------------------------------


def _kv_answer(ids, num_keys, num_values, num_fillers, min_distance):
  """Recomputes the label from the tokens alone, checking the layout on the way."""
  ranges = data.kv_recall_token_ranges(num_keys, num_values, num_fillers)
  is_key = (ids >= ranges["keys"][0]) & (ids < ranges["keys"][1])
  is_value = (ids >= ranges["values"][0]) & (ids < ranges["values"][1])
  is_filler = (ids >= ranges["fillers"][0]) & (ids < ranges["fillers"][1])
  assert is_key[0]
  key_pos = np.flatnonzero(is_key[1:]) + 1
  np.testing.assert_array_equal(np.flatnonzero(is_value), key_pos + 1)  # adjacent pairs
  assert len(set(ids[key_pos])) == len(key_pos)  # distinct keys
  assert key_pos.min() >= min_distance  # every pair far from position 0
  assert np.all(is_key | is_value | is_filler)
  (hit,) = key_pos[ids[key_pos] == ids[0]]
  return len(key_pos), int(ids[hit + 1] - ranges["values"][0])


def test_kv_recall_example_deterministic_and_solvable():
  params = dict(seq_len=128, num_pairs=6, num_keys=10, num_values=7, num_fillers=30, seed=5)
  for i in range(20):
    ex = data.kv_recall_example(i, **params)
    again = data.kv_recall_example(i, **params)
    np.testing.assert_array_equal(ex["input_ids"], again["input_ids"])
    assert ex["input_ids"].dtype == np.int32 and ex["input_ids"].shape == (128,)
    pairs, label = _kv_answer(ex["input_ids"], 10, 7, 30, min_distance=64)
    assert pairs == 6 and label == ex["label"]
  other = data.kv_recall_example(0, **dict(params, seed=6))
  assert not np.array_equal(other["input_ids"], data.kv_recall_example(0, **params)["input_ids"])
  ex = data.kv_recall_example(0, **dict(params, min_distance=100))
  _kv_answer(ex["input_ids"], 10, 7, 30, min_distance=100)
  assert data.kv_recall_vocab_size(10, 7, 30) == 51


def test_kv_recall_batches(kv_cfg):
  it = data.make_iterator(kv_cfg, split="train", seq_len=KV_LEN, batch_size=8, seed=0)
  batch = next(it)
  assert {k: (v.shape, v.dtype) for k, v in batch.items()} == {
      "input_ids": ((8, KV_LEN), np.int32), "attention_mask": ((8, KV_LEN), np.int32),
      "global_attention_mask": ((8, KV_LEN), np.int32), "labels": ((8,), np.int32),
      "weight": ((8,), np.float32)}
  assert np.all(batch["attention_mask"] == 1) and np.all(batch["weight"] == 1)
  assert np.all(batch["global_attention_mask"][:, 0] == 1)
  assert np.all(batch["global_attention_mask"][:, 1:] == 0)
  assert batch["input_ids"].max() < data.vocab_size(kv_cfg)
  params = {k: KV[k] for k in ("num_pairs", "num_keys", "num_values", "num_fillers", "seed")}
  train = {data.kv_recall_example(i, seq_len=KV_LEN, **params)["input_ids"].tobytes()
           for i in range(KV["num_train"])}
  for ids, label in zip(batch["input_ids"], batch["labels"]):
    assert ids.tobytes() in train
    assert _kv_answer(ids, 12, 5, 20, KV_LEN // 2)[1] == label
  same = next(data.make_iterator(ml_collections.ConfigDict(kv_cfg), split="train",
                                 seq_len=KV_LEN, batch_size=8, seed=0))
  _assert_batches_equal([batch], [same])
  other = next(data.make_iterator(kv_cfg, split="train", seq_len=KV_LEN, batch_size=8, seed=1))
  assert not np.array_equal(other["input_ids"], batch["input_ids"])


def test_kv_recall_global_query_off_and_labels(kv_cfg):
  cfg = dict(kv_cfg, global_query=False)
  batch = next(data.make_iterator(cfg, split="validation", seq_len=KV_LEN, batch_size=4, seed=0))
  assert np.all(batch["global_attention_mask"] == 0)
  assert data.num_labels(kv_cfg) == KV["num_values"]
  assert data.vocab_size(kv_cfg) == 4 + 12 + 5 + 20


def test_concurrent_prepare(tmp_path):
  cfg = dict(KV, data_dir=str(tmp_path))
  with concurrent.futures.ThreadPoolExecutor(2) as pool:
    builders = list(pool.map(lambda _: data.prepare(cfg, seq_len=KV_LEN), range(2)))
  assert all(b.is_prepared() for b in builders)
  assert len(builders[0].as_data_source()["train"]) == KV["num_train"]


def test_kv_recall_eval_is_one_padded_pass(kv_cfg):
  batches = list(data.make_iterator(kv_cfg, split="validation", seq_len=KV_LEN, batch_size=4,
                                    seed=0))
  assert len(batches) == 3  # 11 examples
  weight = np.concatenate([b["weight"] for b in batches])
  np.testing.assert_array_equal(weight, [1] * 11 + [0])
  ids = np.concatenate([b["input_ids"] for b in batches])[:11]
  params = {k: KV[k] for k in ("num_pairs", "num_keys", "num_values", "num_fillers", "seed")}
  for i in range(11):  # validation example i is generator index num_train + i
    ex = data.kv_recall_example(KV["num_train"] + i, seq_len=KV_LEN, **params)
    np.testing.assert_array_equal(ids[i], ex["input_ids"])


# ---- text8-like character corpus --------------------------------------------------


def test_char_splits_match_the_text(text8):
  cfg, text = text8
  builder = data.prepare(cfg)
  bounds = data.char_split_bounds(TEXT8_CHARS)
  assert bounds == {"train": (0, 180_000), "validation": (180_000, 190_000),
                    "test": (190_000, 200_000)}
  assert data.char_split_bounds(100_000_000)["test"] == (95_000_000, 100_000_000)
  for split, (a, b) in bounds.items():
    tokens = data.load_split_tokens(builder, split)
    assert tokens.dtype == np.uint8 and tokens.tobytes() == text[a:b]
  assert data.vocab_size(cfg) == 256


def test_char_train_crops(text8):
  cfg, text = text8
  it = data.make_iterator(cfg, split="train", seq_len=100, batch_size=4, seed=0)
  train = text[:180_000]
  for batch in _take(it, 3):
    assert batch["input_ids"].shape == (4, 100) and batch["input_ids"].dtype == np.int32
    assert np.all(batch["attention_mask"] == 1) and np.all(batch["weight"] == 1)
    np.testing.assert_array_equal(batch["labels"][:, :-1], batch["input_ids"][:, 1:])
    for x, y in zip(batch["input_ids"], batch["labels"]):
      crop = bytes(x.astype(np.uint8)) + bytes(y[-1:].astype(np.uint8))
      assert crop in train


@pytest.mark.parametrize("stride", [None, 37])
def test_char_eval_windows_score_every_target_once(text8, stride):
  cfg, text = text8
  cfg = dict(cfg, eval_stride=stride)
  val = np.frombuffer(text[180_000:190_000], np.uint8)
  seq_len = 128
  batches = list(data.make_iterator(cfg, split="validation", seq_len=seq_len, batch_size=8,
                                    seed=0))
  inputs = np.concatenate([b["input_ids"] for b in batches])
  labels = np.concatenate([b["labels"] for b in batches])
  weight = np.concatenate([b["weight"] for b in batches])
  assert weight.shape == labels.shape
  np.testing.assert_array_equal(labels[:, :-1], inputs[:, 1:])
  scored = labels[weight > 0]  # row-major: windows in order, positions in order
  np.testing.assert_array_equal(scored, val[1:])
  ends, counts = data.eval_windows(len(val), seq_len, stride or seq_len)
  assert counts.sum() == len(val) - 1
  for k, end in enumerate(ends):  # full windows of context ending at each end
    np.testing.assert_array_equal(inputs[k], val[end - seq_len:end])
  assert np.all(weight[len(ends):] == 0)  # padding rows of the last batch


def test_eval_shards_are_disjoint_and_cover(text8, kv_cfg):
  cfg, _ = text8
  for c, split, seq_len in ((cfg, "validation", 96), (kv_cfg, "validation", KV_LEN)):
    def rows(index, count):
      batches = list(data.make_iterator(c, split=split, seq_len=seq_len, batch_size=3, seed=0,
                                        shard_index=index, shard_count=count))
      out = []
      for b in batches:
        weight = b["weight"] if b["weight"].ndim == 1 else b["weight"].max(1)
        out += [x.tobytes() for x, w in zip(b["input_ids"], weight) if w > 0]
      return len(batches), out

    n_all, whole = rows(0, 1)
    (n0, shard0), (n1, shard1) = rows(0, 2), rows(1, 2)
    assert n0 == n1  # every process runs the same number of steps
    assert not set(shard0) & set(shard1)
    assert sorted(shard0 + shard1) == sorted(whole) and len(whole) == len(set(whole))


def test_train_shards_differ(text8):
  cfg, _ = text8
  a = next(data.make_iterator(cfg, split="train", seq_len=64, batch_size=4, seed=0,
                              shard_index=0, shard_count=2))
  b = next(data.make_iterator(cfg, split="train", seq_len=64, batch_size=4, seed=0,
                              shard_index=1, shard_count=2))
  assert not np.array_equal(a["input_ids"], b["input_ids"])


# ---- text_corpus ------------------------------------------------------------------


def _train_tokenizer(docs, path):
  from tokenizers import Tokenizer, models, pre_tokenizers, trainers
  tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
  tok.pre_tokenizer = pre_tokenizers.Whitespace()
  tok.train_from_iterator(docs, trainers.WordLevelTrainer(special_tokens=["<unk>", "</s>"]))
  tok.save(str(path))
  return tok


def test_text_corpus_jsonl_tokenized(tmp_path):
  rng = np.random.default_rng(1)
  words = ["alpha", "beta", "gamma", "delta", "eps", "zeta", "eta", "theta"]
  docs = [" ".join(rng.choice(words, size=rng.integers(5, 40))) for _ in range(200)]
  with open(tmp_path / "corpus.jsonl", "w") as f:
    for d in docs:
      f.write(json.dumps({"body": d, "id": 0}) + "\n")
  tok = _train_tokenizer(docs, tmp_path / "tok.json")
  cfg = dict(name="text_corpus", data_dir=str(tmp_path / "tfds"),
             path=str(tmp_path / "corpus.jsonl"), tokenizer=str(tmp_path / "tok.json"),
             text_field="body", eos_token="</s>", validation_fraction=0.1, chunk_size=100)
  builder = data.prepare(cfg)
  train = data.load_split_tokens(builder, "train")
  val = data.load_split_tokens(builder, "validation")
  eos = tok.token_to_id("</s>")
  expected = np.concatenate([tok.encode(d).ids + [eos] for d in docs])
  assert train.dtype == np.int32
  np.testing.assert_array_equal(np.concatenate([train, val]), expected)
  assert len(val) == round(0.1 * len(expected))
  first = train[:np.argmax(train == eos)]
  assert tok.decode(first.tolist()) == docs[0]  # tokens round-trip to the text
  assert data.vocab_size(cfg) == tok.get_vocab_size() == len(words) + 2
  batch = next(data.make_iterator(cfg, split="train", seq_len=16, batch_size=2, seed=0))
  assert batch["input_ids"].dtype == np.int32 and batch["input_ids"].max() < len(words) + 2
  with pytest.raises(ValueError, match="tokenizer"):
    language_modeling.split_tokens(builder, "validation", vocab=3)


def test_text_corpus_plain_bytes(tmp_path):
  text = "Hello, Longformer.\nÜnïcödé lines too.\n" * 50
  (tmp_path / "c.txt").write_text(text, encoding="utf-8")
  cfg = dict(name="text_corpus", data_dir=str(tmp_path / "tfds"), path=str(tmp_path / "c.txt"),
             validation_fraction=0.2)
  builder = data.prepare(cfg)
  stream = [data.load_split_tokens(builder, s) for s in ("train", "validation")]
  assert stream[0].dtype == np.uint8 and data.vocab_size(cfg) == 256
  assert np.concatenate(stream).tobytes() == text.encode("utf-8")


@pytest.mark.parametrize("which", ["kv", "text8"])
def test_a_batch_of_one_streams_past_an_epoch(which, kv_cfg, text8):
  """Training streams repeat without end at any batch size, 1 included (grain's
  repeat(None) length overflowed len() at a batch of 1)."""
  cfg, seq_len = (kv_cfg, KV_LEN) if which == "kv" else (text8[0], 64)
  it = data.make_iterator(cfg, split="train", seq_len=seq_len, batch_size=1, seed=0)
  batches = _take(it, 41)  # past one epoch of kv_recall's 40 examples
  assert len(batches) == 41 and batches[-1]["input_ids"].shape == (1, seq_len)


# ---- checkpointing ----------------------------------------------------------------


@pytest.mark.parametrize("which", ["kv", "text8_train", "text8_eval"])
def test_iterator_state_round_trip(which, kv_cfg, text8, tmp_path):
  if which == "kv":
    kwargs = dict(data_cfg=kv_cfg, split="train", seq_len=KV_LEN, batch_size=6, seed=4)
  else:
    split = "train" if which == "text8_train" else "validation"
    kwargs = dict(data_cfg=text8[0], split=split, seq_len=64, batch_size=5, seed=4)
  it = data.make_iterator(**kwargs)
  _take(it, 9)  # past one epoch of kv_recall's 40 examples
  state = it.get_state()
  mngr = ocp.CheckpointManager(tmp_path / "ckpt")
  mngr.save(9, args=ocp.args.Composite(data=grain.checkpoint.CheckpointSave(it)))
  mngr.wait_until_finished()
  expected = _take(it, 4)

  fresh = data.make_iterator(**kwargs)
  fresh.set_state(state)
  _assert_batches_equal(_take(fresh, 4), expected)

  restored = data.make_iterator(**kwargs)
  mngr.restore(9, args=ocp.args.Composite(data=grain.checkpoint.CheckpointRestore(restored)))
  _assert_batches_equal(_take(restored, 4), expected)
  mngr.close()


# ---- validation -------------------------------------------------------------------


def _iterator(cfg, **kwargs):
  args = dict(split="train", seq_len=KV_LEN, batch_size=2, seed=0)
  args.update(kwargs)
  return data.make_iterator(cfg, **args)


def test_errors_name_the_field(kv_cfg, text8, tmp_path, monkeypatch):
  cfg8, _ = text8
  cases = [
      (dict(kv_cfg, name="imagenet"), {}, "name"),
      ({"name": "kv_recall"}, {}, "data_dir"),
      (kv_cfg, dict(batch_size=0), "batch_size"),
      (kv_cfg, dict(shard_index=2, shard_count=2), "shard_index"),
      (kv_cfg, dict(split="test"), "split"),
      (kv_cfg, dict(seed=-1), "seed"),
      (dict(kv_cfg, seq_len=32), {}, "seq_len"),
      (dict(kv_cfg, num_pairs=13), {}, "num_pairs"),
      (dict(kv_cfg, min_distance=60), {}, "num_pairs"),
      (cfg8, dict(split="validation", seq_len=20_000), "seq_len"),
      (dict(cfg8, eval_stride=0), dict(split="validation"), "eval_stride"),
      (dict(name="text8", data_dir=str(tmp_path / "none")), {}, "path"),
      (dict(name="text_corpus", data_dir=str(tmp_path / "none")), {}, "path"),
  ]
  for cfg, kwargs, field in cases:
    with pytest.raises(ValueError, match=field):
      _iterator(cfg, **kwargs)
  with zipfile.ZipFile(tmp_path / "text8.zip", "w") as z:  # not the prepared corpus
    z.writestr("text8", b"ab " * 1000)
  with pytest.raises(ValueError, match="data_dir"):
    _iterator(dict(cfg8, path=str(tmp_path / "text8.zip")))
  missing = str(tmp_path / "nowhere" / "enwik8.zip")
  cfg = dict(name="enwik8", data_dir=str(tmp_path / "tfds"), path=missing, download=False)
  with pytest.raises(FileNotFoundError, match="enwik8.zip.*config.data.path"):
    _iterator(cfg)

  def no_network(*args, **kwargs):
    raise OSError("network is unreachable")

  monkeypatch.setattr(corpora.urllib.request, "urlopen", no_network)
  with pytest.raises(FileNotFoundError, match="enwik8.zip.*config.data.path.*unreachable"):
    _iterator(dict(cfg, download=True))
