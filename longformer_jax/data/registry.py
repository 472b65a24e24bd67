"""The dataset registry: one :class:`Dataset` per name, looked up by ``data_cfg.name``.

A dataset module defines its tfds builder and how a prepared split becomes
unbatched grain elements, then registers one ``Dataset``. The pipeline
(:mod:`.pipeline`) only ever goes through :func:`get`; adding a dataset is one
module and a config, no edit here.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

# The arguments a Dataset's ``elements`` receives beside (builder, cfg, split):
# seq_len, seed, shard_index, shard_count, num_epochs.


@dataclasses.dataclass(frozen=True)
class Dataset:
  """What the pipeline needs to know of one dataset.

  * ``builder(cfg, data_dir, seq_len)``: its tfds builder (not prepared).
  * ``elements(builder, cfg, split=, seq_len=, seed=, shard_index=, shard_count=,
    num_epochs=)``: a ``grain.MapDataset`` of unbatched elements of one shard
    (dicts of numpy arrays, each with a ``weight``).
  * ``vocab_size(cfg)`` / ``num_labels(cfg)``: what the model config takes from the
    data when ``config.model`` leaves them at -1.
  * ``label_names(cfg)``: the classes in id order, for datasets with named labels.
  * ``fields``: the dataset's own ``data_cfg`` fields (besides name, data_dir and the
    read options), for error messages and documentation.
  * ``element_spec(cfg, split=, seq_len=, model_cfg=)``: ``{name: (shape, dtype)}`` of
    one element, exactly as ``elements`` makes them, from the config alone (no data,
    no tokenizer; ``model_cfg``, the resolved model config or None, gives sizes the
    data would). What ``pipeline.batch_spec`` returns, with the batch axis.
  """

  name: str
  splits: tuple[str, ...]
  builder: Callable[[dict, str, int | None], Any]
  elements: Callable[..., Any]
  vocab_size: Callable[[dict], int]
  num_labels: Callable[[dict], int]
  fields: tuple[str, ...] = ()
  doc: str = ""
  label_names: Callable[[dict], tuple] | None = None
  element_spec: Callable[..., dict] | None = None


DATASETS: dict[str, Dataset] = {}


def register(dataset: Dataset) -> Dataset:
  if dataset.name in DATASETS:
    raise ValueError(f"dataset {dataset.name!r} is registered twice")
  DATASETS[dataset.name] = dataset
  return dataset


def get(name: str) -> Dataset:
  if name not in DATASETS:
    raise ValueError(f"config.data.name={name!r} is not one of {sorted(DATASETS)}")
  return DATASETS[name]
