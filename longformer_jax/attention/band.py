"""What the banded-attention backends share: the static description of one call.

A backend (``attention/scan.py``, ``attention/blocked.py``) computes, for every
block of ``q_block`` queries, one softmax over the contiguous span of keys the
block reaches plus the global keys. Every backend takes the same operands, laid
out by ``attention.banded_attention``:

* ``q`` (B, H, Nb*Q, D), pre-scaled; ``k``, ``v`` (B, H, Nb*Q + left + right, D):
  block i's span is keys i*Q .. i*Q + S - 1 (S = Q + left + right);
* ``key_ok`` (B, Nb*Q + left + right) bool;
* ``gk``, ``gv`` (B, H, G, D) and ``global_ok`` (B, Nb*Q, G), or None;
* ``rng``: a dropout key, or None;
* ``qr`` (B, H, Nb*Q, D), pre-scaled, and ``rel`` (H, W, D), or None: relative
  positions (``attention/relative_position.py``);

and returns the output as (B*Nb, H, Q, D) in ``v``'s dtype.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

# Finite stand-in for -inf: masked scores stay finite, so (masked - max) never
# becomes inf - inf and gradients never see NaN.
NEG_INF = -1e30


class Band(NamedTuple):
  """Static description of one banded attention call (hashable: a custom_vjp arg)."""

  q_block: int  # queries per block
  num_blocks: int  # blocks per example
  left: int  # reach to the left / right, in positions (already capped)
  right: int
  dropout_rate: float

  @property
  def span(self) -> int:
    return self.q_block + self.left + self.right


def acc_dtype(dtype):
  """Accumulation / softmax dtype: fp32, or the input's if wider."""
  return jnp.promote_types(dtype, jnp.float32)


def band_mask(band: Band) -> np.ndarray:
  """(Q, S) bool: key t of a block's span is within reach of query s.

  A block's span starts ``left`` positions before its first query, so query s
  reaches keys t with 0 <= t - s <= left + right, the same for every block.
  """
  rel = np.arange(band.span)[None, :] - np.arange(band.q_block)[:, None]
  return (rel >= 0) & (rel <= band.left + band.right)


def widths(band: Band, gk) -> tuple[int, ...]:
  """Score widths of a block: its span, then the global keys (if any)."""
  return (band.span,) + (() if gk is None else (gk.shape[2],))


def dropout_keep(band: Band, rng, t, heads: int, score_widths: tuple[int, ...]):
  """(H, Q, sum(widths)) fp32 dropout keep mask of block t = example * Nb + block,
  scaled by 1 / (1 - rate): a function of (rng, t) alone, so every backend (and a
  backward pass) draws the same mask for the same block."""
  shape = (heads, band.q_block, sum(score_widths))
  keep = jax.random.bernoulli(jax.random.fold_in(rng, t), 1.0 - band.dropout_rate, shape)
  return keep.astype(jnp.float32) / (1.0 - band.dropout_rate)


def unblock(x_BNbxHxQxD, batch: int):
  """(B*Nb, H, Q, D) block outputs -> (B, Nb*Q, H, D)."""
  _, h, qb, d = x_BNbxHxQxD.shape
  x = x_BNbxHxQxD.reshape(batch, -1, h, qb, d).swapaxes(2, 3)
  return x.reshape(batch, -1, h, d)
