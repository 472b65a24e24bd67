"""Longformer models and task heads (flax.nnx), numerically those of HF transformers.

Every model is called as ``model(input_ids, attention_mask=None,
global_attention_mask=None, token_type_ids=None, position_ids=None)`` with numpy
or jax arrays of shape (B, N) ((B, C, N) for multiple choice), and returns an
output dataclass with the reference's field names. Concrete inputs are checked
on the host first (clear errors naming the field); under ``jit`` set
``config.max_global_tokens`` so the number of global slots is static.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from longformer_jax import attention as attn
from longformer_jax import layers
from longformer_jax import sharding as sh
from longformer_jax.config import LongformerConfig


class ModelOutput:
  """Dataclass outputs that can also be read like a dict (``out["logits"]``)."""

  def __getitem__(self, key):
    return getattr(self, key)

  def keys(self):
    return [f.name for f in dataclasses.fields(self) if getattr(self, f.name) is not None]


@dataclasses.dataclass
class BaseModelOutput(ModelOutput):
  last_hidden_state: jax.Array
  pooler_output: jax.Array | None = None


@dataclasses.dataclass
class LogitsOutput(ModelOutput):
  logits: jax.Array


@dataclasses.dataclass
class QuestionAnsweringOutput(ModelOutput):
  start_logits: jax.Array
  end_logits: jax.Array


def _is_concrete(x) -> bool:
  return x is not None and not isinstance(x, jax.core.Tracer)


@dataclasses.dataclass
class Inputs:
  """Model inputs after defaults, checks and padding to a multiple of the window."""

  input_ids: Any
  attention_mask: Any
  global_attention_mask: Any
  token_type_ids: Any
  position_ids: Any
  length: int  # before padding
  max_global: int


def check_inputs(cfg: LongformerConfig, input_ids, **masks) -> None:
  """Host-side validation of concrete inputs; raises ValueError naming the field."""
  shape = np.shape(input_ids)
  if len(shape) != 2:
    raise ValueError(f"input_ids must have shape (batch, length), got {shape}")
  for name, m in masks.items():
    if m is not None and np.shape(m) != shape:
      raise ValueError(f"{name} has shape {np.shape(m)} but input_ids has shape {shape}")
  ranges = dict(input_ids=(input_ids, cfg.vocab_size, "vocab_size"),
                token_type_ids=(masks.get("token_type_ids"), cfg.type_vocab_size,
                                "type_vocab_size"),
                position_ids=(masks.get("position_ids"), cfg.max_position_embeddings,
                              "max_position_embeddings"))
  for name, (x, bound, field) in ranges.items():
    if not _is_concrete(x):
      continue
    x = np.asarray(x)
    if not np.issubdtype(x.dtype, np.integer):
      raise ValueError(f"{name} must be integers, got dtype {x.dtype}")
    if x.size and (x.min() < 0 or x.max() >= bound):
      bad = np.argwhere((x < 0) | (x >= bound))[0]
      raise ValueError(f"{name}[{bad[0]}, {bad[1]}] = {x[tuple(bad)]} is out of range "
                       f"[0, {bound}) ({field}={bound})")


def prepare_inputs(cfg: LongformerConfig, input_ids, attention_mask=None,
                   global_attention_mask=None, token_type_ids=None, position_ids=None,
                   max_global_tokens=None) -> Inputs:
  """Defaults, host checks (when concrete), and padding to a multiple of the window."""
  if _is_concrete(input_ids):
    check_inputs(cfg, input_ids, attention_mask=attention_mask,
                 global_attention_mask=global_attention_mask,
                 token_type_ids=token_type_ids, position_ids=position_ids)
  ids = jnp.asarray(input_ids, jnp.int32)
  b, n = ids.shape
  am = jnp.ones((b, n), jnp.int32) if attention_mask is None else jnp.asarray(attention_mask)
  gm = (jnp.zeros((b, n), jnp.int32) if global_attention_mask is None
        else jnp.asarray(global_attention_mask))
  tt = jnp.zeros((b, n), jnp.int32) if token_type_ids is None else jnp.asarray(token_type_ids)

  g = max_global_tokens if max_global_tokens is not None else cfg.max_global_tokens
  is_global = (gm != 0) & (am != 0)
  if _is_concrete(gm) and _is_concrete(am):  # numpy: under a jit trace jnp ops give tracers
    count = attn.count_global((np.asarray(gm) != 0) & (np.asarray(am) != 0))
    if g is None:
      g = 0 if count == 0 else 1 << (count - 1).bit_length()  # few distinct shapes
    elif count > g:
      raise ValueError(f"global_attention_mask marks {count} tokens in one example but "
                       f"max_global_tokens={g}; raise max_global_tokens")
  elif g is None:
    raise ValueError("max_global_tokens must be set (config or call) when the masks are "
                     "traced, e.g. under jax.jit")

  multiple = max(max(cfg.attention_window), 1)
  pad = (-n) % multiple
  pos = (layers.position_ids_from_input_ids(ids, cfg.pad_token_id) if position_ids is None
         else jnp.asarray(position_ids, jnp.int32))
  if _is_concrete(pos) and n + pad and int(jnp.max(pos)) >= cfg.max_position_embeddings:
    raise ValueError(f"sequence length {n} needs position id {int(jnp.max(pos))}, beyond "
                     f"max_position_embeddings={cfg.max_position_embeddings}")
  if pad:
    widths = ((0, 0), (0, pad))
    ids = jnp.pad(ids, widths, constant_values=cfg.pad_token_id)
    am, gm, tt = (jnp.pad(x, widths) for x in (am, gm, tt))
    pos = jnp.pad(pos, widths, constant_values=cfg.pad_token_id)
  return Inputs(ids, am, gm, tt, pos, n, g)


class LongformerModel(nnx.Module):
  """Embeddings + encoder (+ pooler); returns ``last_hidden_state``, ``pooler_output``."""

  def __init__(self, cfg: LongformerConfig, *, rngs: nnx.Rngs, add_pooling_layer: bool = True):
    self.config = cfg
    self.embeddings = layers.Embeddings(cfg, rngs)
    self.encoder = layers.Encoder(cfg, rngs)
    self.pooler = layers.Pooler(cfg, rngs) if add_pooling_layer else None

  def __call__(self, input_ids, attention_mask=None, global_attention_mask=None,
               token_type_ids=None, position_ids=None, *, max_global_tokens=None):
    x = prepare_inputs(self.config, input_ids, attention_mask, global_attention_mask,
                       token_type_ids, position_ids, max_global_tokens)
    valid_BxN = x.attention_mask != 0
    is_global_BxN = (x.global_attention_mask != 0) & valid_BxN
    gidx = attn.global_index(is_global_BxN, x.max_global) if x.max_global else None
    h_BxNxD = self.embeddings(x.input_ids, x.token_type_ids, x.position_ids)
    h_BxNxD = self.encoder(h_BxNxD, valid_BxN, is_global_BxN, gidx)[:, :x.length]
    pooled = self.pooler(h_BxNxD) if self.pooler is not None else None
    return BaseModelOutput(h_BxNxD, pooled)


def _first_sep(input_ids_BxN, sep_token_id: int, task: str):
  """Index of the first separator of each row; error if a concrete row has none."""
  is_sep = jnp.asarray(input_ids_BxN) == sep_token_id
  if _is_concrete(input_ids_BxN) and not bool(jnp.all(jnp.any(is_sep, axis=1))):
    row = int(jnp.argmin(jnp.any(is_sep, axis=1)))
    raise ValueError(f"input_ids[{row}] has no sep_token_id={sep_token_id}, needed to place "
                     f"the default global attention for {task}; pass global_attention_mask")
  return jnp.argmax(is_sep, axis=1)


class LongformerForMaskedLM(nnx.Module):
  """LM head (dense, gelu, LayerNorm, decoder tied to the word embeddings) -> ``logits``."""

  def __init__(self, cfg: LongformerConfig, *, rngs: nnx.Rngs):
    self.config = cfg
    self.longformer = LongformerModel(cfg, rngs=rngs, add_pooling_layer=False)
    self.lm_head = LMHead(cfg, rngs)

  def __call__(self, input_ids, attention_mask=None, global_attention_mask=None,
               token_type_ids=None, position_ids=None, *, max_global_tokens=None):
    h = self.longformer(input_ids, attention_mask, global_attention_mask, token_type_ids,
                        position_ids, max_global_tokens=max_global_tokens).last_hidden_state
    return LogitsOutput(self.lm_head(h, self.longformer.embeddings.word_embeddings))


class LMHead(nnx.Module):
  def __init__(self, cfg: LongformerConfig, rngs: nnx.Rngs):
    self.dense = layers.dense(cfg, cfg.hidden_size, cfg.hidden_size, rngs)
    self.layer_norm = layers.layer_norm(cfg, rngs)
    self.bias = nnx.Param(jnp.zeros((cfg.vocab_size,), jnp.float32))
    self.act = layers.activation("gelu")

  def __call__(self, h_BxNxD, word_embeddings: nnx.Embed):
    x = self.layer_norm(self.act(self.dense(h_BxNxD)))
    return word_embeddings.attend(x).astype(jnp.float32) + self.bias[...]


class LongformerForSequenceClassification(nnx.Module):
  """Classifier on the first token (global by default) -> ``logits`` (B, num_labels)."""

  def __init__(self, cfg: LongformerConfig, *, rngs: nnx.Rngs):
    self.config = cfg
    self.longformer = LongformerModel(cfg, rngs=rngs, add_pooling_layer=False)
    self.classifier = ClassificationHead(cfg, rngs)

  def __call__(self, input_ids, attention_mask=None, global_attention_mask=None,
               token_type_ids=None, position_ids=None, *, max_global_tokens=None):
    if global_attention_mask is None:
      global_attention_mask = jnp.zeros(jnp.shape(input_ids), jnp.int32).at[:, 0].set(1)
    h = self.longformer(input_ids, attention_mask, global_attention_mask, token_type_ids,
                        position_ids, max_global_tokens=max_global_tokens).last_hidden_state
    return LogitsOutput(self.classifier(h))


class ClassificationHead(nnx.Module):
  def __init__(self, cfg: LongformerConfig, rngs: nnx.Rngs):
    self.dense = layers.dense(cfg, cfg.hidden_size, cfg.hidden_size, rngs)
    self.out_proj = layers.dense(cfg, cfg.hidden_size, cfg.num_labels, rngs, (sh.EMBED, sh.LABELS))
    self.dropout = nnx.Dropout(cfg.hidden_dropout_prob, rngs=rngs)

  def __call__(self, h_BxNxD):
    x = jnp.tanh(self.dense(self.dropout(h_BxNxD[:, 0])))
    return self.out_proj(self.dropout(x)).astype(jnp.float32)


class LongformerForTokenClassification(nnx.Module):
  """Per-token classifier -> ``logits`` (B, N, num_labels)."""

  def __init__(self, cfg: LongformerConfig, *, rngs: nnx.Rngs):
    self.config = cfg
    self.longformer = LongformerModel(cfg, rngs=rngs, add_pooling_layer=False)
    self.dropout = nnx.Dropout(cfg.hidden_dropout_prob, rngs=rngs)
    self.classifier = layers.dense(cfg, cfg.hidden_size, cfg.num_labels, rngs,
                                   (sh.EMBED, sh.LABELS))

  def __call__(self, input_ids, attention_mask=None, global_attention_mask=None,
               token_type_ids=None, position_ids=None, *, max_global_tokens=None):
    h = self.longformer(input_ids, attention_mask, global_attention_mask, token_type_ids,
                        position_ids, max_global_tokens=max_global_tokens).last_hidden_state
    return LogitsOutput(self.classifier(self.dropout(h)).astype(jnp.float32))


class LongformerForQuestionAnswering(nnx.Module):
  """Span head -> ``start_logits``, ``end_logits``; question tokens global by default.

  The default global mask marks every token before the first ``sep_token_id``
  (the question, in the ``<s> question </s></s> context </s>`` layout).
  """

  def __init__(self, cfg: LongformerConfig, *, rngs: nnx.Rngs):
    if cfg.num_labels != 2:
      raise ValueError(f"question answering needs num_labels=2 (start, end), got "
                       f"{cfg.num_labels}")
    self.config = cfg
    self.longformer = LongformerModel(cfg, rngs=rngs, add_pooling_layer=False)
    self.qa_outputs = layers.dense(cfg, cfg.hidden_size, cfg.num_labels, rngs,
                                   (sh.EMBED, sh.LABELS))

  def __call__(self, input_ids, attention_mask=None, global_attention_mask=None,
               token_type_ids=None, position_ids=None, *, max_global_tokens=None):
    if global_attention_mask is None:
      sep_B = _first_sep(input_ids, self.config.sep_token_id, "question answering")
      n = jnp.shape(input_ids)[1]
      global_attention_mask = (jnp.arange(n)[None, :] < sep_B[:, None]).astype(jnp.int32)
    h = self.longformer(input_ids, attention_mask, global_attention_mask, token_type_ids,
                        position_ids, max_global_tokens=max_global_tokens).last_hidden_state
    logits = self.qa_outputs(h).astype(jnp.float32)
    return QuestionAnsweringOutput(logits[..., 0], logits[..., 1])


class LongformerForMultipleChoice(nnx.Module):
  """Input (B, C, N); pooled output -> one score per choice -> ``logits`` (B, C).

  The default global mask marks every token after the first separator pair.
  """

  def __init__(self, cfg: LongformerConfig, *, rngs: nnx.Rngs):
    self.config = cfg
    self.longformer = LongformerModel(cfg, rngs=rngs, add_pooling_layer=True)
    self.dropout = nnx.Dropout(cfg.hidden_dropout_prob, rngs=rngs)
    self.classifier = layers.dense(cfg, cfg.hidden_size, 1, rngs, (sh.EMBED, sh.LABELS))

  def __call__(self, input_ids, attention_mask=None, global_attention_mask=None,
               token_type_ids=None, position_ids=None, *, max_global_tokens=None):
    shape = jnp.shape(input_ids)
    if len(shape) != 3:
      raise ValueError(f"input_ids must have shape (batch, choices, length), got {shape}")
    b, c, n = shape

    def flat(x):
      if x is None:
        return None
      if jnp.shape(x) != shape:
        raise ValueError(f"mask of shape {jnp.shape(x)} does not match input_ids {shape}")
      return jnp.reshape(x, (b * c, n))

    ids = flat(input_ids)
    if global_attention_mask is None:
      sep = _first_sep(ids, self.config.sep_token_id, "multiple choice")
      global_attention_mask = (jnp.arange(n)[None, :] > sep[:, None] + 1).astype(jnp.int32)
    else:
      global_attention_mask = flat(global_attention_mask)
    pooled = self.longformer(ids, flat(attention_mask), global_attention_mask,
                             flat(token_type_ids), flat(position_ids),
                             max_global_tokens=max_global_tokens).pooler_output
    return LogitsOutput(self.classifier(self.dropout(pooled)).astype(jnp.float32).reshape(b, c))


# task name -> (class, HF architecture name)
TASKS = {
    "base": (LongformerModel, "LongformerModel"),
    "masked_lm": (LongformerForMaskedLM, "LongformerForMaskedLM"),
    "sequence_classification": (LongformerForSequenceClassification,
                                "LongformerForSequenceClassification"),
    "token_classification": (LongformerForTokenClassification,
                             "LongformerForTokenClassification"),
    "question_answering": (LongformerForQuestionAnswering, "LongformerForQuestionAnswering"),
    "multiple_choice": (LongformerForMultipleChoice, "LongformerForMultipleChoice"),
}


def task_of_architecture(arch: str) -> str:
  for task, (_, name) in TASKS.items():
    if name == arch:
      return task
  raise ValueError(f"architecture {arch!r} is not a Longformer architecture; known: "
                   f"{[name for _, name in TASKS.values()]}")


def create_model(cfg: LongformerConfig, task: str = "base", seed: int = 0):
  """A randomly initialised model for ``task`` (see ``TASKS``)."""
  if task not in TASKS:
    raise ValueError(f"task={task!r} is not one of {sorted(TASKS)}")
  with nnx.use_eager_sharding(False):  # shardings are applied by the caller (train.py)
    return TASKS[task][0](cfg, rngs=nnx.Rngs(params=seed, dropout=seed + 1))
