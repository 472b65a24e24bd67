"""grain input pipelines over the prepared tfds datasets: one entry point, make_iterator.

``data_cfg`` (an ``ml_collections.ConfigDict`` or a dict) holds ``name`` (a
dataset of :mod:`.registry`: kv_recall, text8, enwik8, text_corpus, ...),
``data_dir`` (where tfds writes and reads prepared data, local or ``gs://``), the
dataset's own fields (see its module) and the read options ``num_threads`` and
``prefetch``.

A ``data_dir`` on a bucket: the array_record files tfds writes and grain reads are
read from local disk, so each host works in its own copy of the bucket's folder
(``fileio.cache_path(data_dir)``, under ``fileio.cache_dir()``). A dataset already
in the bucket is copied from it (the same bytes on every host, so every host reads
the same examples); one that is not is prepared by process 0 and uploaded
(``dataset_info.json`` last), while the other processes wait for it and copy it.

Batches are dicts of numpy arrays whose leading axis is the per-process batch
size; every element carries a ``weight`` (see each dataset for its fields).
Train iterators are a function of ``seed`` and the element index and repeat
forever unless ``num_epochs`` is set. Evaluation iterators make one pass and drop
nothing: examples past the end are copies with weight 0, so every shard yields the
same number of full batches.

:func:`batch_spec` gives the keys, shapes and dtypes of those batches from the
config alone, reading and preparing nothing (ahead-of-time compilation).

Iterators are grain ``DatasetIterator`` objects: ``get_state`` / ``set_state``
and ``grain.checkpoint.CheckpointSave`` / ``CheckpointRestore`` save and restore
the position exactly.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from typing import Any, Mapping

import grain
import jax
import numpy as np
import tensorflow_datasets as tfds

from longformer_jax import fileio
from longformer_jax.data import registry

log = logging.getLogger("longformer_jax")

DEFAULT_NUM_THREADS = 4
DEFAULT_PREFETCH = 8  # batches
# How long a process waits for process 0 to prepare a dataset into the bucket.
BUCKET_PREPARE_WAIT_S = 6 * 3600
DATASET_MARKER = "dataset_info.json"  # tfds's: a folder holding it is a prepared dataset


# ---- configuration ----------------------------------------------------------------


def _as_dict(data_cfg: Any) -> dict:
  if hasattr(data_cfg, "to_dict"):
    return dict(data_cfg.to_dict())
  if isinstance(data_cfg, Mapping):
    return dict(data_cfg)
  raise ValueError(f"data_cfg must be a ConfigDict or a dict, got {type(data_cfg).__name__}")


def data_config(config) -> dict:
  """``config.data`` with ``tokenizer`` taken from ``init_from_hf`` when it is None."""
  data = config.data.to_dict() if hasattr(config.data, "to_dict") else dict(config.data)
  if "tokenizer" in data and data["tokenizer"] is None and config.get("init_from_hf"):
    data["tokenizer"] = config.init_from_hf
  return data


def dataset_of(data_cfg) -> registry.Dataset:
  """The registered dataset named by ``data_cfg.name``."""
  return registry.get(_as_dict(data_cfg).get("name"))


def _data_dir(cfg: dict) -> str:
  """``config.data.data_dir`` as given (local or a bucket)."""
  data_dir = cfg.get("data_dir")
  if not data_dir:
    raise ValueError("config.data.data_dir (where prepared datasets live) is not set")
  return os.fspath(data_dir)


def local_data_dir(cfg: dict) -> str:
  """Where this host's tfds builders read and write: ``data_dir`` itself, or this host's
  copy of a bucket's ``data_dir``."""
  data_dir = _data_dir(cfg)
  return fileio.cache_path(data_dir) if fileio.is_remote(data_dir) else str(
      fileio.path(data_dir))


def bucket_folder(cfg: dict, local_dir: str) -> str | None:
  """The bucket folder a local dataset folder copies (None when data_dir is local)."""
  data_dir = _data_dir(cfg)
  if not fileio.is_remote(data_dir):
    return None
  rel = str(fileio.path(local_dir))[len(local_data_dir(cfg)):].strip("/")
  return str(fileio.join(data_dir, rel))


def fetch_prepared(cfg: dict, local_dir: str) -> bool:
  """Copies a dataset prepared in the bucket into ``local_dir`` (this host's copy) if
  the bucket has it complete; whether it did."""
  remote = bucket_folder(cfg, local_dir)
  if remote is None or not fileio.isfile(fileio.join(remote, DATASET_MARKER)):
    return False
  t0 = time.time()
  with fileio.staged_dir(local_dir, allow_existing=True) as tmp:
    fileio.copy_tree(remote, tmp)
  log.info("copied %s from %s in %.0fs", local_dir, remote, time.time() - t0)
  return True


def vocab_size(data_cfg) -> int:
  """Number of token ids of the dataset (ids are in [0, vocab_size))."""
  cfg = _as_dict(data_cfg)
  return registry.get(cfg.get("name")).vocab_size(cfg)


def num_labels(data_cfg) -> int:
  """Classes of the dataset's labels (the vocab size for language modelling)."""
  cfg = _as_dict(data_cfg)
  return registry.get(cfg.get("name")).num_labels(cfg)


def label_names(data_cfg) -> tuple:
  """The dataset's classes in id order (ids as names where it has none)."""
  cfg = _as_dict(data_cfg)
  dataset = registry.get(cfg.get("name"))
  if dataset.label_names is None:
    return tuple(range(dataset.num_labels(cfg)))
  return tuple(dataset.label_names(cfg))


# ---- tfds builders ----------------------------------------------------------------


def get_builder(data_cfg, *, seq_len: int | None = None) -> tfds.core.DatasetBuilder:
  """The tfds builder named by ``data_cfg`` (not prepared; see :func:`prepare`)."""
  cfg = _as_dict(data_cfg)
  return registry.get(cfg.get("name")).builder(cfg, local_data_dir(cfg), seq_len)


def prepare(data_cfg, *, seq_len: int | None = None) -> tfds.core.DatasetBuilder:
  """Builds the dataset's array_record files under ``data_dir`` if absent; returns the builder.

  Processes sharing a ``data_dir`` take turns: the first builds, the others wait
  and reuse its files. A preparation that fails removes the folders it created.
  With ``data_dir`` on a bucket see the module docstring.
  """
  cfg = _as_dict(data_cfg)
  builder = get_builder(cfg, seq_len=seq_len)
  if builder.is_prepared():
    return builder
  root = local_data_dir(cfg)
  created = fileio.first_missing(root, builder.data_dir)
  lock = fileio.join(root, ".locks", f"{builder.name}-{builder.builder_config.name}.lock")
  try:
    with fileio.file_lock(lock):
      builder = get_builder(cfg, seq_len=seq_len)
      if not builder.is_prepared():
        _prepare_or_fetch(cfg, builder)
        builder = get_builder(cfg, seq_len=seq_len)
  except BaseException:
    if created is not None:
      fileio.rmtree(created)
    raise
  return builder


def _prepare_or_fetch(cfg: dict, builder) -> None:
  """Prepares ``builder``'s dataset here, or copies it from the bucket: at once when the
  bucket has it, after process 0 has uploaded it on the other processes."""
  remote = bucket_folder(cfg, builder.data_dir)
  if remote is None:
    download_and_prepare(builder)
    return
  if fetch_prepared(cfg, builder.data_dir):
    return
  if jax.process_index() != 0:
    fileio.wait_for(fileio.join(remote, DATASET_MARKER), what="the dataset process 0 prepares",
                    timeout_s=BUCKET_PREPARE_WAIT_S)
    fetch_prepared(cfg, builder.data_dir)
    return
  download_and_prepare(builder)
  t0 = time.time()
  fileio.copy_tree(builder.data_dir, remote, last=(DATASET_MARKER,))
  log.info("uploaded it to %s in %.0fs", remote, time.time() - t0)


def download_and_prepare(builder, *, download_dir: str | None = None,
                         manual_dir: str | None = None) -> None:
  """tfds's preparation as array_record files, announced with the folder it fills; tfds's
  progress bars only on a terminal (a log file would keep their redraws)."""
  if not sys.stderr.isatty():
    tfds.disable_progress_bar()
  name = f"{builder.name}/{builder.builder_config.name}"
  log.info("preparing %s in %s", name, builder.data_dir)
  # tfds prints its own two lines on stdout (sizes it often does not know, even right
  # before an error): the log's lines above and below say it once, on stderr.
  builder._log_download_bytes = builder._log_download_done = lambda: None
  t0 = time.time()
  builder.download_and_prepare(
      file_format="array_record",
      download_dir=download_dir,
      download_config=tfds.download.DownloadConfig(manual_dir=manual_dir,
                                                   try_download_gcs=False))
  counts = ", ".join(f"{split} {info.num_examples:,}"
                     for split, info in builder.info.splits.items())
  log.info("prepared %s in %.0fs: %s examples", name, time.time() - t0, counts)


def stored_examples(data_cfg, split: str, *, seq_len: int | None = None):
  """Random access to a split's prepared examples (what eval rows' ``example_index``
  points at, for tasks that score per example)."""
  return prepare(data_cfg, seq_len=seq_len).as_data_source()[split]


# ---- shared pieces of the datasets' pipelines ----------------------------------------


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


def _check_args(dataset: registry.Dataset, split: str, seq_len: int, batch_size: int,
                seed: int, shard_index: int, shard_count: int, num_epochs: int | None) -> None:
  """Raises ValueError naming the first bad argument."""
  if split not in dataset.splits:
    raise ValueError(f"split={split!r} is not one of {dataset.splits} of {dataset.name}")
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


def eval_dataset(n: int, fn, shard_index: int, shard_count: int,
                 num_epochs: int | None) -> grain.MapDataset:
  """One pass (or num_epochs) over this shard's share of n elements, ``fn(g, weight)``."""
  index = ShardedEvalIndex(n, shard_index, shard_count)
  ds = grain.MapDataset.range(len(index)).map(index).map(Star(fn))
  return ds.repeat(num_epochs or 1)


class Indexed:
  """A random-access source whose examples carry their ``example_index``."""

  def __init__(self, source):
    self.source = source

  def __len__(self) -> int:
    return len(self.source)

  def __getitem__(self, index: int) -> dict:
    return dict(self.source[int(index)], example_index=int(index))


class Lookup:
  """(global index, weight) -> ``element(source[index], weight)``."""

  def __init__(self, source, element):
    self.source, self.element = source, element

  def __call__(self, g: int, weight: float) -> dict:
    return self.element(self.source[g], weight)


def example_dataset(source, element, *, split: str, seed: int, shard_index: int,
                    shard_count: int, num_epochs: int | None) -> grain.MapDataset:
  """Unbatched elements of one shard over a random-access source of stored examples;
  ``element(example, weight)`` makes the model inputs of one.

  Train: the examples reshuffled each epoch from ``seed``, as one global stream;
  shard i takes its elements i, i + shard_count, ... Consecutive global batches
  therefore hold the same examples whatever the number of shards (processes).
  Other splits: one pass (see :func:`eval_dataset`).
  """
  n = len(source)
  if split != "train":
    return eval_dataset(n, Lookup(source, element), shard_index, shard_count, num_epochs)
  if n < shard_count:
    raise ValueError(f"shard_count={shard_count} exceeds the {n} train examples")
  epochs = forever_epochs(n) if num_epochs is None else num_epochs
  ds = grain.MapDataset.source(source).shuffle(seed=seed).repeat(epochs)
  ds = ds.slice(slice(shard_index, len(ds) - len(ds) % shard_count, shard_count))
  return ds.map(element)


# Training streams repeat "forever": 2**62 elements, not grain's repeat(None) length of
# sys.maxsize, which a batch of 1 overflows (len() of it raises OverflowError).
FOREVER = 1 << 62


def forever_epochs(n: int) -> int:
  """Epochs of ``n`` elements that make a stream of about :data:`FOREVER` elements."""
  return max(FOREVER // max(n, 1), 1)


def make_iterator(data_cfg, *, split: str, seq_len: int, batch_size: int, seed: int,
                  shard_index: int = 0, shard_count: int = 1,
                  num_epochs: int | None = None) -> grain.DatasetIterator:
  """A checkpointable iterator of this process's batches (see the module docstring).

  Prepares the tfds dataset under ``data_cfg.data_dir`` when needed. ``batch_size``
  is per process; ``shard_index`` / ``shard_count`` pick this process's disjoint
  share. ``num_epochs``: None repeats train forever and makes one eval pass.
  """
  cfg = _as_dict(data_cfg)
  dataset = registry.get(cfg.get("name"))
  _check_args(dataset, split, seq_len, batch_size, seed, shard_index, shard_count, num_epochs)
  builder = prepare(cfg, seq_len=seq_len)
  ds = dataset.elements(builder, cfg, split=split, seq_len=seq_len, seed=seed,
                        shard_index=shard_index, shard_count=shard_count,
                        num_epochs=num_epochs)
  ds = ds.batch(batch_size, batch_fn=PadBatch(batch_size))
  options = grain.ReadOptions(num_threads=cfg.get("num_threads") or DEFAULT_NUM_THREADS,
                              prefetch_buffer_size=cfg.get("prefetch") or DEFAULT_PREFETCH)
  return iter(ds.to_iter_dataset(options))


def batch_spec(data_cfg, model_cfg=None, *, split: str, seq_len: int,
               batch_size: int) -> dict[str, jax.ShapeDtypeStruct]:
  """The structure of :func:`make_iterator`'s batches of ``split`` at ``seq_len``,
  without reading, preparing or tokenising anything: ``{name:
  jax.ShapeDtypeStruct((batch_size, ...), dtype)}`` with exactly its batches' keys,
  shapes and dtypes. ``batch_size`` is the leading axis (the global batch for the
  arrays a jitted step takes). ``model_cfg`` (the resolved model config, or None)
  gives sizes the data would otherwise give (a multi-label dataset's classes).

  Raises ValueError naming the argument or config field where the config alone
  does not fix a shape, or that :func:`make_iterator` would refuse.
  """
  cfg = _as_dict(data_cfg)
  dataset = registry.get(cfg.get("name"))
  _check_args(dataset, split, seq_len, batch_size, 0, 0, 1, None)
  if dataset.element_spec is None:
    raise ValueError(f"dataset {dataset.name!r} declares no element_spec (registry.Dataset): "
                     "its batches' structure is only known from its data")
  spec = dataset.element_spec(cfg, split=split, seq_len=seq_len, model_cfg=model_cfg)
  return {k: jax.ShapeDtypeStruct((batch_size, *shape), np.dtype(dtype))
          for k, (shape, dtype) in spec.items()}
