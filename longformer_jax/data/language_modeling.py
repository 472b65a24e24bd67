"""Language-modelling pipelines: text8, enwik8 and a local text corpus as token streams.

``data_cfg`` fields:

* text8 / enwik8: ``path`` (the zip; downloaded there when missing unless
  ``download`` is False), ``chunk_size``.
* text_corpus: ``path``, ``tokenizer`` (an HF tokenizers json, optional),
  ``text_field``, ``format``, ``validation_fraction``, ``eos_token``, ``chunk_size``.
* all: ``eval_stride`` (evaluation windows, below).

Batches: ``input_ids``, ``labels`` (the inputs shifted by one), ``attention_mask``
(ones) (B, L) int32; ``weight`` (B, L) float32. Train elements are random crops
drawn from (seed, element index). Evaluation windows end at positions ``L, L + s,
L + 2s, ...`` (s = ``eval_stride``, default L; the last window ends at the split's
end) and score only the targets no earlier window scored: every target of the
split is scored exactly once, with up to L - s tokens of context before it.
"""

from __future__ import annotations

import math
import os

import grain
import numpy as np
import tensorflow_datasets as tfds

from longformer_jax import fileio
from longformer_jax.data import corpora, pipeline, registry

CORPUS_CONFIG_FIELDS = ("tokenizer", "text_field", "format", "validation_fraction",
                        "eos_token", "chunk_size")  # TextCorpusConfig.make's, beside path
TEXT_CORPUS_FIELDS = ("path",) + CORPUS_CONFIG_FIELDS + ("eval_stride",)
CHAR_FIELDS = ("path", "download", "chunk_size", "eval_stride")


_TOKENS_CACHE: dict[tuple[str, str], np.ndarray] = {}


def split_tokens(builder: tfds.core.DatasetBuilder, split: str, vocab: int) -> np.ndarray:
  """The token stream of an LM split, (T,), cached per process; ids checked < vocab."""
  key = (os.fspath(builder.data_dir), split)
  if key not in _TOKENS_CACHE:
    tokens = corpora.load_split_tokens(builder, split)
    if tokens.size and int(tokens.max()) >= vocab:
      raise ValueError(f"{builder.name} {split}: token id {int(tokens.max())} >= vocab size "
                       f"{vocab} (config.data.tokenizer)")
    if len(_TOKENS_CACHE) >= 4:
      _TOKENS_CACHE.pop(next(iter(_TOKENS_CACHE)))
    _TOKENS_CACHE[key] = tokens
  return _TOKENS_CACHE[key]


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


def lm_element_spec(cfg: dict, *, split: str, seq_len: int, model_cfg=None) -> dict:
  """``{name: (shape, dtype)}`` of a crop or an evaluation window (the same fields)."""
  del cfg, split, model_cfg
  row = ((seq_len,), np.int32)
  return {"input_ids": row, "labels": row, "attention_mask": row,
          "weight": ((seq_len,), np.float32)}


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
    return pipeline.eval_dataset(len(windows), windows, shard_index, shard_count, num_epochs)
  per_epoch = (len(tokens) - 1) // seq_len
  total = pipeline.FOREVER if num_epochs is None else per_epoch * num_epochs
  total -= total % shard_count
  if total < 1:
    raise ValueError(f"shard_count={shard_count} exceeds the {per_epoch * num_epochs} crops "
                     "of num_epochs")
  ds = grain.MapDataset.range(total).slice(slice(shard_index, None, shard_count))
  return ds.map(RandomCrop(tokens, seq_len, seed))


# ---- builders and registration ---------------------------------------------------


def _char_builder(name: str, cfg: dict, data_dir: str) -> tfds.core.DatasetBuilder:
  """text8 / enwik8 builder; fetches the zip only when the data is not prepared yet."""
  path = cfg.get("path")
  chunk = cfg.get("chunk_size") or corpora.DEFAULT_CHUNK_SIZE
  builder = corpora.CHAR_BUILDERS[name](config=corpora.CharCorpusConfig.make(path, chunk),
                                        data_dir=data_dir, file_format="array_record")
  if builder.is_prepared():
    if path and fileio.exists(path):  # the prepared data must come from this file
      size = corpora.zip_member_size(path, builder.MEMBER)
      done = builder.info.metadata.get("num_chars")
      if done is not None and done != size:
        raise ValueError(f"{name}: config.data.data_dir={data_dir} holds a corpus of {done} "
                         f"chars, but config.data.path={path} has {size}; use another data_dir")
    return builder
  if not path:
    raise ValueError(f"{name}: config.data.path (the {builder.MEMBER}.zip) is not set and "
                     f"{data_dir} holds no prepared {name}")
  corpora.ensure_corpus_zip(name, path, download=cfg.get("download", True))
  return builder


def _text_corpus_builder(cfg: dict, data_dir: str, seq_len: int | None):
  del seq_len
  fields = {k: cfg[k] for k in CORPUS_CONFIG_FIELDS if cfg.get(k) is not None}
  config = corpora.TextCorpusConfig.make(path=cfg.get("path"), **fields)
  return corpora.TextCorpus(config=config, data_dir=data_dir, file_format="array_record")


def _vocab_size(cfg: dict) -> int:
  if cfg.get("name") == "text_corpus" and cfg.get("tokenizer"):
    return corpora.load_tokenizer(cfg["tokenizer"]).get_vocab_size(with_added_tokens=True)
  return 256


def _elements(builder, cfg: dict, *, split: str, seq_len: int, **shard) -> grain.MapDataset:
  tokens = split_tokens(builder, split, _vocab_size(cfg))
  return lm_dataset(tokens, train=split == "train", seq_len=seq_len,
                    eval_stride=cfg.get("eval_stride"), **shard)


for _name in corpora.CHAR_BUILDERS:
  registry.register(registry.Dataset(
      name=_name, splits=("train", "validation", "test"),
      builder=lambda cfg, data_dir, seq_len, name=_name: _char_builder(name, cfg, data_dir),
      elements=_elements, vocab_size=_vocab_size, num_labels=_vocab_size,
      fields=CHAR_FIELDS, doc=f"{_name}: characters as bytes, the paper's 90M/5M/5M split",
      element_spec=lm_element_spec))
registry.register(registry.Dataset(
    name="text_corpus", splits=("train", "validation"), builder=_text_corpus_builder,
    elements=_elements, vocab_size=_vocab_size, num_labels=_vocab_size,
    fields=TEXT_CORPUS_FIELDS, doc="a local text or JSONL file, bytes or tokenizer ids",
    element_spec=lm_element_spec))
