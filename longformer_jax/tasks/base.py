"""The task protocol and its registry.

A task bundles everything the training library needs to know of one kind of
problem: the model head it trains, the static checks of its config, its loss and
metric sums on a batch, and how sums become metrics. Evaluation that needs more
than sums (span decoding, aggregation over windows, entity matching) also lives
on the task: ``eval_step`` returns per-example rows beside the sums, and ``score``
turns a split's rows into metrics and predictions.

Metric sums are ``{name: (sum, count)}`` so they can be added over micro-batches,
devices and eval batches before dividing (:func:`finalize`).

Adding a task is one module: subclass :class:`Task`, decorate it with
:func:`register`, import the module in ``tasks/__init__.py``.
"""

from __future__ import annotations

from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from longformer_jax.data import pipeline
from longformer_jax.data.documents import as_text as text  # noqa: F401  (for the tasks)

TASKS: dict[str, type["Task"]] = {}


def register(cls: type["Task"]) -> type["Task"]:
  if cls.name in TASKS:
    raise ValueError(f"task {cls.name!r} is registered twice")
  TASKS[cls.name] = cls
  return cls


def get(name: str) -> type["Task"]:
  if name not in TASKS:
    raise ValueError(f"config.task={name!r} is not one of {sorted(TASKS)}")
  return TASKS[name]


def build(config) -> "Task":
  """The task of an experiment config (``config.task``), with its options."""
  return get(config.task).from_config(config)


class Task:
  """One kind of problem; see the module docstring.

  Class attributes: ``name`` (``config.task``), ``family`` (the model family,
  ``families.get``), ``head`` (a key of its ``TASKS``: ``model.TASKS`` for the
  Longformer, ``led.TASKS`` for the LED), ``needs_global_bound`` (the batch marks global tokens, so
  ``config.model.max_global_tokens`` must fix their static count), ``named_labels``
(the data names its classes: exports carry them as ``id2label``).
  """

  name: ClassVar[str] = ""
  family: ClassVar[str] = "longformer"
  head: ClassVar[str] = ""
  needs_global_bound: ClassVar[bool] = False
  named_labels: ClassVar[bool] = False  # the data's label names go into exported configs

  def __init__(self, label_names=()):
    self.label_names = tuple(label_names)

  @classmethod
  def from_config(cls, config) -> "Task":
    """The task of an experiment config; tasks with ``named_labels`` get the data's."""
    if cls.named_labels:
      return cls(pipeline.label_names(config.data))
    return cls()

  def check_config(self, config) -> None:
    """Raises ValueError naming the field of a config this task cannot run."""
    model = config.get("model") or {}
    if self.needs_global_bound and model.get("max_global_tokens") is None:
      raise ValueError("config.model.max_global_tokens must be set for training: the number "
                       "of global slots is a static shape")

  def check_model(self, model_cfg, data_cfg: dict) -> None:
    """Raises ValueError naming the field where the model cannot take the data."""
    del model_cfg, data_cfg

  def model_fields(self, data_cfg) -> dict[str, Any]:
    """Model config fields this task takes from the data where ``config.model`` has -1
    (or None): e.g. ``num_labels``. The vocabulary size is always the data's."""
    del data_cfg
    return {}

  def loss_and_metrics(self, model, batch: dict, *, key=None, no_global: bool = False):
    """(mean loss, {name: (sum, count)}) of one batch; ``key`` for random masking.
    Tasks define this or :meth:`sums_and_rows`."""
    sums, _ = self.sums_and_rows(model, batch, key=key, no_global=no_global)
    return mean_of(sums["loss"]), sums

  def sums_and_rows(self, model, batch: dict, *, key=None, no_global: bool = False):
    """(metric sums with ``loss``, rows): ``rows`` are per-example arrays (B, ...)
    that :meth:`score` turns into metrics and predictions, {} when sums suffice.
    Under jit the rows cost nothing where only the loss is used (training)."""
    return self.loss_and_metrics(model, batch, key=key, no_global=no_global)[1], {}

  def eval_step(self, model, batch: dict, *, key=None, no_global: bool = False):
    return self.sums_and_rows(model, batch, key=key, no_global=no_global)

  def score(self, rows: dict, examples) -> tuple[dict, list[dict]]:
    """(metrics, predictions ``{id, prediction, gold}``) from the rows of a whole
    split (numpy, every process's, padding rows included with weight 0) and the
    split's stored examples (random access by ``example_index``)."""
    raise NotImplementedError(f"task {self.name!r} has no per-example evaluation")

  def finalize(self, sums: dict) -> dict:
    return finalize(sums)


# ---- helpers shared by the tasks --------------------------------------------------


def position_ids(batch: dict, pad_token_id: int):
  """RoBERTa positions from the attention mask (token ids may equal the pad id in LMs)."""
  mask = batch["attention_mask"].astype(jnp.int32)
  return jnp.cumsum(mask, axis=-1) * mask + pad_token_id


def forward(model, batch: dict, *, no_global: bool = False, input_ids=None, **kwargs):
  """The model on a batch's inputs (``input_ids`` replaced if given), global tokens
  dropped with ``no_global``; extra keyword arguments (labels...) pass through."""
  gmask = batch.get("global_attention_mask")
  if no_global and gmask is not None:
    gmask = jnp.zeros_like(gmask)
  ids = batch["input_ids"] if input_ids is None else input_ids
  cfg = model.config
  positions = None if cfg.relative_positions else position_ids(batch, cfg.pad_token_id)
  return model(ids, batch["attention_mask"], gmask, position_ids=positions, **kwargs)


def weighted(terms, weight):
  """(sum of terms x weight, sum of weight) with the weight broadcast from the left."""
  w = weight.astype(jnp.float32).reshape(weight.shape + (1,) * (terms.ndim - weight.ndim))
  w = jnp.broadcast_to(w, terms.shape)
  return (terms * w).sum(), w.sum()


def mean_of(pair) -> jax.Array:
  total, count = pair
  return total / jnp.maximum(count, 1.0)


def finalize(sums: dict) -> dict:
  """{name: (sum, count)} -> {name: sum / count} as Python floats."""
  return {k: float(s) / max(float(c), 1.0) for k, (s, c) in jax.device_get(sums).items()}


def eval_rows(batch: dict, **arrays) -> dict:
  """Per-example rows: ``arrays`` with the batch's ``example_index`` and ``weight``;
  {} for batches of examples that have no index (generated data, loss-only calls)."""
  if "example_index" not in batch:
    return {}
  return dict(arrays, example_index=batch["example_index"], weight=batch["weight"])


def live_rows(rows: dict, *fields):
  """(example_index, *fields) of each eval row that is not padding (weight > 0)."""
  for i in np.flatnonzero(np.asarray(rows["weight"]) > 0):
    yield (int(rows["example_index"][i]), *(rows[f][i] for f in fields))
