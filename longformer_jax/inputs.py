"""Model inputs: the reference's mask semantics, checks that name the field, padding.

Masks follow the reference: with ``m = attention_mask * (global_attention_mask + 1)``
(``attention_mask`` alone when no global mask is given), a token is padding where
``m < 1``, local where ``m == 1`` and global where ``m > 1``. So an
``attention_mask`` value of 2 marks a global token and negative values padding.

Shapes are checked always (they are static, also under ``jit``); values (ids in
range, positions, global counts) are checked on the host when the inputs are
concrete, and the global-slot bound also at run time (``attention.global_index``).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from longformer_jax import attention as attn
from longformer_jax import layers
from longformer_jax.config import LongformerConfig

MASK_NAMES = ("attention_mask", "global_attention_mask", "token_type_ids", "position_ids")


def is_concrete(x) -> bool:
  return x is not None and not isinstance(x, jax.core.Tracer)


def token_shape(arrays: dict, lead: int) -> tuple:
  """The (batch..., length) shape of the inputs; ``lead`` leading axes before the length
  (1: (B, N); 2: (B, C, N) for multiple choice)."""
  ids, embeds = arrays.get("input_ids"), arrays.get("inputs_embeds")
  if (ids is None) == (embeds is None):
    raise ValueError("pass exactly one of input_ids and inputs_embeds")
  layout = "(batch, length)" if lead == 1 else "(batch, choices, length)"
  if ids is not None:
    shape = tuple(np.shape(ids))
    if len(shape) != lead + 1:
      raise ValueError(f"input_ids must have shape {layout}, got {shape}")
  else:
    shape = tuple(np.shape(embeds))
    if len(shape) != lead + 2:
      raise ValueError(f"inputs_embeds must have shape {layout[:-1]}, hidden), got {shape}")
    shape = shape[:-1]
  if shape[-1] == 0:
    raise ValueError(f"the sequences are empty (length 0, shape {shape}): nothing to encode")
  return shape


def check_inputs(cfg: LongformerConfig, arrays: dict, lead: int = 1) -> tuple:
  """Shapes (always) and, for concrete inputs, values; errors name the field and the
  index. Returns the (batch..., length) shape."""
  shape = token_shape(arrays, lead)
  embeds = arrays.get("inputs_embeds")
  if embeds is not None and np.shape(embeds)[-1] != cfg.hidden_size:
    raise ValueError(f"inputs_embeds has width {np.shape(embeds)[-1]} but hidden_size="
                     f"{cfg.hidden_size}")
  for name in MASK_NAMES:
    m = arrays.get(name)
    if m is not None and tuple(np.shape(m)) != shape:
      source = "input_ids" if arrays.get("input_ids") is not None else "inputs_embeds"
      raise ValueError(f"{name} has shape {tuple(np.shape(m))} but {source} has "
                       f"{'shape' if source == 'input_ids' else 'token shape'} {shape}")
  bounds = dict(input_ids=(cfg.vocab_size, "vocab_size"),
                token_type_ids=(cfg.type_vocab_size, "type_vocab_size"),
                position_ids=(cfg.max_position_embeddings, "max_position_embeddings"))
  if cfg.relative_positions:  # positions are the tokens' distances: nothing to look up
    if arrays.get("position_ids") is not None:
      raise ValueError("position_ids: a model with position_embedding_type="
                       "'relative_sinusoidal' takes none (it attends by distance)")
    del bounds["position_ids"]
  for name, (bound, field) in bounds.items():
    x = arrays.get(name)
    if not is_concrete(x):
      continue
    x = np.asarray(x)
    if not np.issubdtype(x.dtype, np.integer):
      raise ValueError(f"{name} must be integers, got dtype {x.dtype}")
    if x.size and (x.min() < 0 or x.max() >= bound):
      bad = tuple(int(i) for i in np.argwhere((x < 0) | (x >= bound))[0])
      raise ValueError(f"{name}[{', '.join(map(str, bad))}] = {x[bad]} is out of range "
                       f"[0, {bound}) ({field}={bound})")
  if not cfg.relative_positions:
    _check_default_positions(cfg, arrays, shape)
  return shape


def _check_default_positions(cfg: LongformerConfig, arrays: dict, shape: tuple) -> None:
  """The positions the model derives (when ``position_ids`` is not given) must exist."""
  if arrays.get("position_ids") is not None:
    return
  ids, pad = arrays.get("input_ids"), cfg.pad_token_id
  if ids is None:
    top = shape[-1] + pad
  elif is_concrete(ids):
    top = int(np.max(np.cumsum(np.asarray(ids) != pad, axis=-1), initial=0)) + pad
  else:
    return
  if top >= cfg.max_position_embeddings:
    raise ValueError(f"sequence length {shape[-1]} needs position id {top}, beyond "
                     f"max_position_embeddings={cfg.max_position_embeddings}")


def merged_mask(attention_mask, global_attention_mask, xp=jnp):
  """The reference's merged mask (see the module docstring), float32; ``xp=np``
  computes it on the host (for concrete masks under a trace too)."""
  m = xp.asarray(attention_mask, xp.float32)
  if global_attention_mask is None:
    return m
  return m * (xp.asarray(global_attention_mask, xp.float32) + 1.0)


def host_global_count(attention_mask, global_attention_mask) -> int | None:
  """Largest number of global tokens in one sequence, when the masks are concrete."""
  if not all(x is None or is_concrete(x) for x in (attention_mask, global_attention_mask)):
    return None
  if global_attention_mask is None:
    return 0 if attention_mask is None else attn.count_global(
        (np.asarray(attention_mask, np.float32) > 1).reshape(-1, np.shape(attention_mask)[-1]))
  am = np.ones(np.shape(global_attention_mask)) if attention_mask is None else attention_mask
  m = merged_mask(am, global_attention_mask, xp=np)
  return attn.count_global((m > 1).reshape(-1, m.shape[-1]))


def global_slots(cfg: LongformerConfig, count: int | None, max_global_tokens: int | None,
                 exact: bool = False) -> int:
  """The static number of global slots G: the call's or the config's bound (checked
  against a concrete count), else the count rounded up to a power of two (few
  compiled shapes), or the count itself with ``exact``."""
  bound = max_global_tokens if max_global_tokens is not None else cfg.max_global_tokens
  if bound is not None:
    if count is not None:
      attn.check_global_bound(np.asarray([count]), bound)
    return bound
  if count is None:
    raise ValueError("max_global_tokens must be set (config or call) when the masks are "
                     "traced, e.g. under jax.jit: the number of global slots is static")
  return count if exact or count == 0 else 1 << (count - 1).bit_length()


@dataclasses.dataclass
class Inputs:
  """Model inputs after defaults and padding to a multiple of the window."""

  input_ids: Any  # (B, Np) or None
  inputs_embeds: Any  # (B, Np, E) or None
  valid: Any  # (B, Np) bool
  is_global: Any  # (B, Np) bool
  token_type_ids: Any
  position_ids: Any
  length: int  # N, before padding


def prepare_inputs(cfg: LongformerConfig, arrays: dict) -> Inputs:
  """Defaults, the reference's mask semantics and padding to a multiple of the window.

  ``arrays`` holds ``input_ids`` or ``inputs_embeds`` and optional masks, (B, N).
  """
  ids, embeds = arrays.get("input_ids"), arrays.get("inputs_embeds")
  b, n = token_shape(arrays, 1)
  am = arrays.get("attention_mask")
  m = merged_mask(jnp.ones((b, n), jnp.float32) if am is None else am,
                  arrays.get("global_attention_mask"))
  valid, is_global = m >= 1.0, m > 1.0
  tt = arrays.get("token_type_ids")
  tt = jnp.zeros((b, n), jnp.int32) if tt is None else jnp.asarray(tt, jnp.int32)
  pos = arrays.get("position_ids")
  if pos is not None:
    pos = jnp.asarray(pos, jnp.int32)
  elif ids is not None:
    pos = layers.position_ids_from_input_ids(jnp.asarray(ids, jnp.int32), cfg.pad_token_id)
  else:  # the reference numbers embedded inputs sequentially
    pos = jnp.broadcast_to(jnp.arange(n, dtype=jnp.int32) + cfg.pad_token_id + 1, (b, n))
  pad = (-n) % max(max(cfg.attention_window), 1)
  widths = ((0, 0), (0, pad))
  if ids is not None:
    ids = jnp.pad(jnp.asarray(ids, jnp.int32), widths, constant_values=cfg.pad_token_id)
  else:
    embeds = jnp.pad(jnp.asarray(embeds), widths + ((0, 0),))
  valid, is_global, tt = (jnp.pad(x, widths) for x in (valid, is_global, tt))
  pos = jnp.pad(pos, widths, constant_values=cfg.pad_token_id)
  return Inputs(ids, embeds, valid, is_global, tt, pos, n)
