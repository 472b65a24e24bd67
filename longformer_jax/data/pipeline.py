"""grain input pipelines over the prepared tfds datasets: one entry point, make_iterator.

``data_cfg`` (an ``ml_collections.ConfigDict`` or a dict) holds ``name`` (one of
kv_recall, text8, enwik8, text_corpus), ``data_dir`` (where tfds writes and reads
prepared data) and the dataset's own fields:

* kv_recall: ``seq_len`` (optional; defaults to make_iterator's), ``num_pairs``,
  ``num_keys``, ``num_values``, ``num_fillers``, ``min_distance``, ``num_train``,
  ``num_eval``, ``seed`` (the generator's; see :mod:`.kv_recall`), ``global_query``
  (default True; False gives an all-zero ``global_attention_mask``, the ablation).
* text8 / enwik8: ``path`` (the zip; downloaded there when missing unless
  ``download`` is False), ``chunk_size``.
* text_corpus: ``path``, ``tokenizer`` (an HF tokenizers json, optional),
  ``text_field``, ``format``, ``validation_fraction``, ``eos_token``, ``chunk_size``.
* all: ``eval_stride`` (LM evaluation, below), ``num_threads`` and ``prefetch``
  (grain read options).

Batches are dicts of numpy arrays (B the per-process batch size, L = seq_len):

* kv_recall: ``input_ids``, ``attention_mask`` (ones), ``global_attention_mask``
  (1 at position 0 unless ``global_query`` is False) (B, L) int32; ``labels`` (B,)
  int32; ``weight`` (B,) float32.
* language modelling: ``input_ids``, ``labels`` (the inputs shifted by one),
  ``attention_mask`` (ones) (B, L) int32; ``weight`` (B, L) float32.

Train iterators shuffle (kv_recall) or draw random crops (LM) as a function of
``seed`` and the element index, and repeat forever unless ``num_epochs`` is set.
Evaluation iterators make one pass and drop nothing: examples past the end are
copies with weight 0, so every shard yields the same number of full batches.
LM evaluation windows end at positions ``L, L + s, L + 2s, ...`` (s =
``eval_stride``, default L; the last window ends at the split's end) and score
only the targets no earlier window scored: every target of the split is scored
exactly once, with up to L - s tokens of context before it.

Iterators are grain ``DatasetIterator`` objects: ``get_state`` / ``set_state``
and ``grain.checkpoint.CheckpointSave`` / ``CheckpointRestore`` save and restore
the position exactly.
"""

from __future__ import annotations

import contextlib
import fcntl
import math
import os
import sys
from typing import Any, Mapping

import grain
import numpy as np
import tensorflow_datasets as tfds

from longformer_jax.data import corpora
from longformer_jax.data import kv_recall as kv

NAMES = ("kv_recall", "text8", "enwik8", "text_corpus")
SPLITS = {"kv_recall": ("train", "validation"),
          "text8": ("train", "validation", "test"),
          "enwik8": ("train", "validation", "test"),
          "text_corpus": ("train", "validation")}
KV_FIELDS = ("num_pairs", "num_keys", "num_values", "num_fillers", "min_distance",
             "num_train", "num_eval", "seed", "fused", "copies")
TEXT_CORPUS_FIELDS = ("tokenizer", "text_field", "format", "validation_fraction",
                      "eos_token", "chunk_size")
DEFAULT_NUM_THREADS = 4
DEFAULT_PREFETCH = 8  # batches


# ---- configuration ----------------------------------------------------------------


def _as_dict(data_cfg: Any) -> dict:
  if hasattr(data_cfg, "to_dict"):
    return dict(data_cfg.to_dict())
  if isinstance(data_cfg, Mapping):
    return dict(data_cfg)
  raise ValueError(f"data_cfg must be a ConfigDict or a dict, got {type(data_cfg).__name__}")


def _dataset_name(cfg: dict) -> str:
  name = cfg.get("name")
  if name not in NAMES:
    raise ValueError(f"data_cfg.name={name!r} is not one of {NAMES}")
  return name


def _data_dir(cfg: dict) -> str:
  data_dir = cfg.get("data_dir")
  if not data_dir:
    raise ValueError("data_cfg.data_dir (where prepared datasets live) is not set")
  return os.fspath(data_dir)


def _kv_params(cfg: dict, seq_len: int | None) -> dict:
  """kv_recall generator parameters from the config; ``seq_len`` fills a missing one."""
  params = {k: cfg[k] for k in KV_FIELDS if cfg.get(k) is not None}
  cfg_len = cfg.get("seq_len")
  if cfg_len is not None and seq_len is not None and cfg_len != seq_len:
    raise ValueError(f"seq_len={seq_len} differs from data_cfg.seq_len={cfg_len}: kv_recall "
                     "examples have exactly data_cfg.seq_len tokens")
  length = cfg_len if cfg_len is not None else seq_len
  if length is None:
    raise ValueError("kv_recall: data_cfg.seq_len is not set")
  params["seq_len"] = length
  return params


def vocab_size(data_cfg) -> int:
  """Number of token ids of the dataset (ids are in [0, vocab_size))."""
  cfg = _as_dict(data_cfg)
  name = _dataset_name(cfg)
  if name == "kv_recall":
    return kv.kv_recall_vocab_size(*(cfg.get(k) or kv.DEFAULTS[k]
                                     for k in ("num_keys", "num_values", "num_fillers",
                                               "fused")))
  if name == "text_corpus" and cfg.get("tokenizer"):
    return corpora.load_tokenizer(cfg["tokenizer"]).get_vocab_size(with_added_tokens=True)
  return 256


def num_labels(data_cfg) -> int:
  """Classes of ``labels``: kv_recall's num_values; the vocab size for language modelling."""
  cfg = _as_dict(data_cfg)
  if _dataset_name(cfg) == "kv_recall":
    return int(cfg.get("num_values") or kv.DEFAULTS["num_values"])
  return vocab_size(cfg)


# ---- tfds builders ----------------------------------------------------------------


def _char_builder(name: str, cfg: dict, data_dir: str) -> tfds.core.DatasetBuilder:
  """text8 / enwik8 builder; fetches the zip only when the data is not prepared yet."""
  path = cfg.get("path")
  chunk = cfg.get("chunk_size") or corpora.DEFAULT_CHUNK_SIZE
  builder = corpora.CHAR_BUILDERS[name](config=corpora.CharCorpusConfig.make(path, chunk),
                                        data_dir=data_dir, file_format="array_record")
  if builder.is_prepared():
    if path and os.path.exists(path):  # the prepared data must come from this file
      size = corpora.zip_member_size(path, builder.MEMBER)
      done = builder.info.metadata.get("num_chars")
      if done is not None and done != size:
        raise ValueError(f"{name}: data_cfg.data_dir={data_dir} holds a corpus of {done} "
                         f"chars, but data_cfg.path={path} has {size}; use another data_dir")
    return builder
  if not path:
    raise ValueError(f"{name}: data_cfg.path (the {builder.MEMBER}.zip) is not set and "
                     f"{data_dir} holds no prepared {name}")
  corpora.ensure_corpus_zip(name, path, download=cfg.get("download", True))
  return builder


def get_builder(data_cfg, *, seq_len: int | None = None) -> tfds.core.DatasetBuilder:
  """The tfds builder named by ``data_cfg`` (not prepared; see :func:`prepare`)."""
  cfg = _as_dict(data_cfg)
  name, data_dir = _dataset_name(cfg), _data_dir(cfg)
  if name == "kv_recall":
    config = kv.KvRecallConfig.make(**_kv_params(cfg, seq_len))
    return kv.KvRecall(config=config, data_dir=data_dir, file_format="array_record")
  if name in corpora.CHAR_BUILDERS:
    return _char_builder(name, cfg, data_dir)
  fields = {k: cfg[k] for k in TEXT_CORPUS_FIELDS if cfg.get(k) is not None}
  config = corpora.TextCorpusConfig.make(path=cfg.get("path"), **fields)
  return corpora.TextCorpus(config=config, data_dir=data_dir, file_format="array_record")


@contextlib.contextmanager
def _file_lock(path: str):
  """An exclusive lock on ``path`` (created) for processes sharing a file system."""
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "a") as f:
    fcntl.flock(f, fcntl.LOCK_EX)
    try:
      yield
    finally:
      fcntl.flock(f, fcntl.LOCK_UN)


def prepare(data_cfg, *, seq_len: int | None = None) -> tfds.core.DatasetBuilder:
  """Builds the dataset's array_record files under ``data_dir`` if absent; returns the builder.

  Processes sharing a ``data_dir`` take turns: the first builds, the others wait
  and reuse its files.
  """
  builder = get_builder(data_cfg, seq_len=seq_len)
  if builder.is_prepared():
    return builder
  lock = os.path.join(_data_dir(_as_dict(data_cfg)), ".locks",
                      f"{builder.name}-{builder.builder_config.name}.lock")
  with _file_lock(lock):
    builder = get_builder(data_cfg, seq_len=seq_len)
    if not builder.is_prepared():
      builder.download_and_prepare(
          file_format="array_record",
          download_config=tfds.download.DownloadConfig(try_download_gcs=False))
  return builder


_TOKENS_CACHE: dict[tuple[str, str], np.ndarray] = {}


def split_tokens(builder: tfds.core.DatasetBuilder, split: str, vocab: int) -> np.ndarray:
  """The token stream of an LM split, (T,), cached per process; ids checked < vocab."""
  key = (os.fspath(builder.data_dir), split)
  if key not in _TOKENS_CACHE:
    tokens = corpora.load_split_tokens(builder, split)
    if tokens.size and int(tokens.max()) >= vocab:
      raise ValueError(f"{builder.name} {split}: token id {int(tokens.max())} >= vocab size "
                       f"{vocab} (data_cfg.tokenizer)")
    if len(_TOKENS_CACHE) >= 4:
      _TOKENS_CACHE.pop(next(iter(_TOKENS_CACHE)))
    _TOKENS_CACHE[key] = tokens
  return _TOKENS_CACHE[key]


# ---- elements and batches ---------------------------------------------------------


class KvElement:
  """A stored kv_recall example (+ weight) -> the model inputs of one example."""

  def __init__(self, global_query: bool = True):
    self.global_query = global_query

  def __call__(self, example: dict, weight: float = 1.0) -> dict:
    ids = np.asarray(example["input_ids"], np.int32)
    glob = np.zeros_like(ids)
    glob[0] = int(self.global_query)
    return {"input_ids": ids, "attention_mask": np.ones_like(ids),
            "global_attention_mask": glob, "labels": np.int32(example["label"]),
            "weight": np.float32(weight)}


class RandomCrop:
  """Global element index g -> a crop of seq_len + 1 tokens at a start drawn from (seed, g)."""

  def __init__(self, tokens: np.ndarray, seq_len: int, seed: int):
    self.tokens, self.seq_len, self.seed = tokens, seq_len, seed

  def __call__(self, g: int) -> dict:
    start = int(np.random.default_rng((self.seed, int(g))).integers(
        0, len(self.tokens) - self.seq_len))
    crop = self.tokens[start:start + self.seq_len + 1].astype(np.int32)
    return {"input_ids": crop[:-1], "labels": crop[1:],
            "attention_mask": np.ones(self.seq_len, np.int32),
            "weight": np.ones(self.seq_len, np.float32)}


def eval_windows(num_tokens: int, seq_len: int, stride: int) -> tuple[np.ndarray, np.ndarray]:
  """Ends and scored counts of the LM evaluation windows over a split of num_tokens.

  Targets are the positions 1..T-1 (target j predicts token j + 1 from tokens <= j,
  indexed 0..T-2). Window k covers targets [end_k - L, end_k) with end_k =
  min(L + k * stride, T - 1) and scores its last ``scored_k`` of them, those after
  end_{k-1}; all L for k = 0. Returns ``(ends, scored)``, both (W,) int64.
  """
  targets = num_tokens - 1
  count = 1 + math.ceil(max(0, targets - seq_len) / stride)
  ends = np.minimum(seq_len + stride * np.arange(count), targets)
  scored = np.diff(ends, prepend=0)
  scored[0] = seq_len
  return ends, scored


class EvalWindow:
  """(window index, weight) -> inputs, shifted labels and per-token weights of the window."""

  def __init__(self, tokens: np.ndarray, seq_len: int, stride: int):
    self.tokens, self.seq_len = tokens, seq_len
    self.ends, self.scored = eval_windows(len(tokens), seq_len, stride)

  def __len__(self) -> int:
    return len(self.ends)

  def __call__(self, k: int, weight: float = 1.0) -> dict:
    end, length = int(self.ends[k]), self.seq_len
    window = self.tokens[end - length:end + 1].astype(np.int32)
    w = np.zeros(length, np.float32)
    w[length - int(self.scored[k]):] = weight
    return {"input_ids": window[:-1], "labels": window[1:],
            "attention_mask": np.ones(length, np.int32), "weight": w}


class PadBatch:
  """Stacks up to batch_size elements; missing rows are copies of the last with weight 0."""

  def __init__(self, batch_size: int):
    self.batch_size = batch_size

  def __call__(self, elements) -> dict:
    elements = list(elements)
    if len(elements) < self.batch_size:
      last = elements[-1]
      pad = dict(last, weight=np.zeros_like(last["weight"]))
      elements += [pad] * (self.batch_size - len(elements))
    return {k: np.stack([e[k] for e in elements]) for k in elements[0]}


class ShardedEvalIndex:
  """Local index k of one shard -> (global index, weight); indices past n get weight 0.

  Shard i takes the global indices i, i + shard_count, ...; every shard has
  ceil(n / shard_count) entries, the missing ones standing in for index 0.
  """

  def __init__(self, n: int, shard_index: int, shard_count: int):
    self.n, self.shard_index, self.shard_count = n, shard_index, shard_count

  def __len__(self) -> int:
    return -(-self.n // self.shard_count)

  def __call__(self, k: int) -> tuple[int, float]:
    g = int(k) * self.shard_count + self.shard_index
    return (g, 1.0) if g < self.n else (0, 0.0)


class Star:
  """Calls ``fn(*args)`` on a tuple element (a picklable stand-in for a lambda)."""

  def __init__(self, fn):
    self.fn = fn

  def __call__(self, args):
    return self.fn(*args)


class KvLookup:
  """(global index, weight) -> the model inputs of that stored kv_recall example."""

  def __init__(self, source, global_query: bool = True):
    self.source, self.element = source, KvElement(global_query)

  def __call__(self, g: int, weight: float) -> dict:
    return self.element(self.source[g], weight)


# ---- datasets ---------------------------------------------------------------------


def _check_args(name: str, split: str, seq_len: int, batch_size: int, seed: int,
                shard_index: int, shard_count: int, num_epochs: int | None) -> None:
  """Raises ValueError naming the first bad argument."""
  if split not in SPLITS[name]:
    raise ValueError(f"split={split!r} is not one of {SPLITS[name]} of {name}")
  for field, value in (("seq_len", seq_len), ("batch_size", batch_size),
                       ("shard_count", shard_count)):
    if not isinstance(value, (int, np.integer)) or value < 1:
      raise ValueError(f"{field} must be a positive integer, got {value!r}")
  if not isinstance(seed, (int, np.integer)) or seed < 0:
    raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
  if not 0 <= shard_index < shard_count:
    raise ValueError(f"shard_index={shard_index} is not in [0, shard_count={shard_count})")
  if num_epochs is not None and num_epochs < 1:
    raise ValueError(f"num_epochs must be positive or None, got {num_epochs}")


def _eval_dataset(n: int, fn, shard_index: int, shard_count: int,
                  num_epochs: int | None) -> grain.MapDataset:
  """One pass (or num_epochs) over this shard's share of n elements, ``fn(g, weight)``."""
  index = ShardedEvalIndex(n, shard_index, shard_count)
  ds = grain.MapDataset.range(len(index)).map(index).map(Star(fn))
  return ds.repeat(num_epochs or 1)


def kv_dataset(builder, *, split: str, seed: int, shard_index: int, shard_count: int,
               num_epochs: int | None, global_query: bool = True) -> grain.MapDataset:
  """Unbatched kv_recall elements of one shard over ``builder.as_data_source()[split]``.

  Train: the examples reshuffled each epoch from ``seed``, as one global stream;
  shard i takes its elements i, i + shard_count, ... Consecutive global batches
  therefore hold the same examples whatever the number of shards (processes).
  """
  source = builder.as_data_source()[split]
  n = len(source)
  if split != "train":
    return _eval_dataset(n, KvLookup(source, global_query), shard_index, shard_count,
                         num_epochs)
  if n < shard_count:
    raise ValueError(f"shard_count={shard_count} exceeds the {n} train examples")
  ds = grain.MapDataset.source(source).shuffle(seed=seed).repeat(num_epochs)
  ds = ds.slice(slice(shard_index, len(ds) - len(ds) % shard_count, shard_count))
  return ds.map(KvElement(global_query))


def lm_dataset(tokens: np.ndarray, *, train: bool, seq_len: int, seed: int, shard_index: int,
               shard_count: int, num_epochs: int | None,
               eval_stride: int | None = None) -> grain.MapDataset:
  """Unbatched causal-LM elements of one shard over a token stream (T,).

  Train: element g (global index; shard i takes g = i, i + shard_count, ...) is a
  random crop from (seed, g); an epoch is (T - 1) // seq_len crops. Eval: the
  windows of :func:`eval_windows`, shared between shards as in ShardedEvalIndex.
  """
  if len(tokens) < seq_len + 1:
    raise ValueError(f"seq_len={seq_len} is too long for a split of {len(tokens)} tokens "
                     "(it needs seq_len + 1)")
  if not train:
    stride = seq_len if eval_stride is None else eval_stride
    if not 1 <= stride <= seq_len:
      raise ValueError(f"eval_stride={eval_stride} is not in [1, seq_len={seq_len}]")
    windows = EvalWindow(tokens, seq_len, stride)
    return _eval_dataset(len(windows), windows, shard_index, shard_count, num_epochs)
  per_epoch = (len(tokens) - 1) // seq_len
  total = sys.maxsize if num_epochs is None else per_epoch * num_epochs
  total -= total % shard_count
  if total < 1:
    raise ValueError(f"shard_count={shard_count} exceeds the {per_epoch * num_epochs} crops "
                     "of num_epochs")
  ds = grain.MapDataset.range(total).slice(slice(shard_index, None, shard_count))
  return ds.map(RandomCrop(tokens, seq_len, seed))


def make_iterator(data_cfg, *, split: str, seq_len: int, batch_size: int, seed: int,
                  shard_index: int = 0, shard_count: int = 1,
                  num_epochs: int | None = None) -> grain.DatasetIterator:
  """A checkpointable iterator of this process's batches (see the module docstring).

  Prepares the tfds dataset under ``data_cfg.data_dir`` when needed. ``batch_size``
  is per process; ``shard_index`` / ``shard_count`` pick this process's disjoint
  share. ``num_epochs``: None repeats train forever and makes one eval pass.
  """
  cfg = _as_dict(data_cfg)
  name = _dataset_name(cfg)
  _check_args(name, split, seq_len, batch_size, seed, shard_index, shard_count, num_epochs)
  shard = dict(seed=seed, shard_index=shard_index, shard_count=shard_count,
               num_epochs=num_epochs)
  if name == "kv_recall":
    builder = prepare(cfg, seq_len=seq_len)
    ds = kv_dataset(builder, split=split, global_query=bool(cfg.get("global_query", True)),
                    **shard)
  else:
    builder = prepare(cfg)
    tokens = split_tokens(builder, split, vocab_size(cfg))
    ds = lm_dataset(tokens, train=split == "train", seq_len=seq_len,
                    eval_stride=cfg.get("eval_stride"), **shard)
  ds = ds.batch(batch_size, batch_fn=PadBatch(batch_size))
  options = grain.ReadOptions(num_threads=cfg.get("num_threads") or DEFAULT_NUM_THREADS,
                              prefetch_buffer_size=cfg.get("prefetch") or DEFAULT_PREFETCH)
  return iter(ds.to_iter_dataset(options))
