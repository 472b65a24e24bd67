"""Model outputs (registered pytrees with the reference's field names) and the
reference's losses for each head.

Outputs are ``flax.struct`` dataclasses: ``jax.jit`` and ``nnx.jit`` can return
them, and they read like the reference's (``out.logits``, ``out["logits"]``,
``out[0]`` for the first field that is set, ``out.to_tuple()``).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import struct

IGNORE_INDEX = -100  # labels with this value add nothing to the loss (torch's default)


class ModelOutput:
  """Dict-like reading of an output dataclass; fields that are None are absent."""

  def keys(self):
    return [f.name for f in dataclasses.fields(self) if getattr(self, f.name) is not None]

  def items(self):
    return [(k, getattr(self, k)) for k in self.keys()]

  def to_tuple(self):
    return tuple(v for _, v in self.items())

  def __getitem__(self, key):
    if isinstance(key, str):
      if key in _ENCODER_FIELDS and not hasattr(type(self), key):
        getattr(self, key)  # the AttributeError that says how to get it
      if key not in self.keys():
        raise KeyError(key)
      return getattr(self, key)
    return self.to_tuple()[key]

  def __contains__(self, key):
    return key in self.keys()

  def __getattr__(self, name):  # only reached for names that are not fields
    if name in _ENCODER_FIELDS:
      raise AttributeError(
          f"{type(self).__name__} (a task head's output) has no {name}: load the model "
          "with task='base' for the encoder's outputs, or call it with "
          "output_hidden_states=True and read hidden_states[-1]")
    raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")


_ENCODER_FIELDS = ("last_hidden_state", "pooler_output")


@struct.dataclass
class BaseModelOutput(ModelOutput):
  last_hidden_state: jax.Array  # (B, N, E)
  pooler_output: jax.Array | None = None  # (B, E)
  hidden_states: tuple | None = None  # L + 1 of (B, N, E)
  attentions: tuple | None = None  # L of (B, H, N, x + w + 1)
  global_attentions: tuple | None = None  # L of (B, H, N, x)


@struct.dataclass
class LogitsOutput(ModelOutput):
  loss: jax.Array | None = None
  logits: jax.Array | None = None
  hidden_states: tuple | None = None
  attentions: tuple | None = None
  global_attentions: tuple | None = None


@struct.dataclass
class QuestionAnsweringOutput(ModelOutput):
  loss: jax.Array | None = None
  start_logits: jax.Array | None = None  # (B, N)
  end_logits: jax.Array | None = None
  hidden_states: tuple | None = None
  attentions: tuple | None = None
  global_attentions: tuple | None = None


def extras(body: BaseModelOutput) -> dict:
  """The optional fields a head passes on from its body's output."""
  return dict(hidden_states=body.hidden_states, attentions=body.attentions,
              global_attentions=body.global_attentions)


# ---- losses (the reference's definitions) ------------------------------------------
def nll_terms(logits_XxC, labels_X, ignore_index: int = IGNORE_INDEX):
  """Per-label negative log-likelihoods (any leading shape X) and the mask of the
  labels that count (not ``ignore_index``); ignored terms are 0. A label outside
  [0, C) that is not ignored gives NaN (torch raises; a traced value cannot)."""
  logits_XxC = logits_XxC.astype(jnp.float32)
  labels_X = labels_X.astype(jnp.int32)
  num_classes = logits_XxC.shape[-1]
  keep_X = labels_X != ignore_index
  in_range_X = (labels_X >= 0) & (labels_X < num_classes)
  logp_XxC = jax.nn.log_softmax(logits_XxC, axis=-1)
  safe_X = jnp.where(in_range_X, labels_X, 0)
  nll_X = -jnp.take_along_axis(logp_XxC, safe_X[..., None], axis=-1)[..., 0]
  nll_X = jnp.where(in_range_X, nll_X, jnp.nan)
  return jnp.where(keep_X, nll_X, 0.0), keep_X


def bce_terms(logits_XxC, targets_XxC):
  """Per-entry binary cross-entropy with logits (the stable form torch uses)."""
  z = logits_XxC.astype(jnp.float32)
  y = targets_XxC.astype(jnp.float32)
  return jnp.maximum(z, 0) - z * y + jnp.log1p(jnp.exp(-jnp.abs(z)))


def cross_entropy(logits_NxC, labels_N, ignore_index: int = IGNORE_INDEX):
  """Mean negative log-likelihood over the labels that are not ``ignore_index``
  (NaN when every label is ignored, as in torch)."""
  nll_N, keep_N = nll_terms(logits_NxC, labels_N, ignore_index)
  return jnp.sum(nll_N) / jnp.sum(keep_N)


def _flat(x, trailing: int = 0):
  return x.reshape((-1,) + x.shape[x.ndim - trailing:] if trailing else (-1,))


def token_loss(logits_BxNxC, labels_BxN):
  """Masked-LM and token classification: cross-entropy over every labelled token."""
  return cross_entropy(_flat(logits_BxNxC, 1), _flat(labels_BxN))


def sequence_classification_loss(logits_BxC, labels, problem_type: str | None):
  """MSE (regression), cross-entropy (single label) or BCE with logits (multi-label);
  with ``problem_type=None`` chosen as the reference does: one label -> regression,
  integer labels -> single label, else multi-label."""
  num_labels = logits_BxC.shape[-1]
  labels = jnp.asarray(labels)
  if problem_type is None:
    if num_labels == 1:
      problem_type = "regression"
    elif jnp.issubdtype(labels.dtype, jnp.integer):
      problem_type = "single_label_classification"
    else:
      problem_type = "multi_label_classification"
  if problem_type == "regression":
    pred = logits_BxC.astype(jnp.float32)
    target = labels.astype(jnp.float32)
    if num_labels == 1:
      pred, target = jnp.squeeze(pred), jnp.squeeze(target)
    return jnp.mean((pred - target) ** 2)
  if problem_type == "single_label_classification":
    return cross_entropy(_flat(logits_BxC, 1), _flat(labels))
  return jnp.mean(bce_terms(logits_BxC, labels))


def span_loss(start_logits_BxN, end_logits_BxN, start_positions, end_positions):
  """Mean of the start and end cross-entropies; positions are clamped to [0, N] and
  position N (outside the sequence) is ignored, as in the reference."""
  n = start_logits_BxN.shape[1]

  def one(logits, pos):
    pos = jnp.clip(_flat(jnp.asarray(pos)), 0, n)
    return cross_entropy(logits, pos, ignore_index=n)

  return (one(start_logits_BxN, start_positions) + one(end_logits_BxN, end_positions)) / 2
