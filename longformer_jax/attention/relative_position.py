"""Transformer-XL relative sinusoidal positions inside the banded attention.

The score of query i and key j is (Dai et al. 2019, without memory)::

    (q_i + u) . k_j  +  (q_i + v) . r(i - j),    r(t) = W_r sin_cos(t)

with u, v learned per head and W_r a learned projection of the sinusoids of
the distance. Within a band only 2r + 1 distances occur per head (r the radius;
times the head's dilation), so the position term of a block of queries is one
(Q, W) product with a (W, D) table per head, skewed into the (Q, S) layout of
the block's span of keys: nothing of size n x n exists, forward or backward.

Shape suffixes as in ``attention/__init__.py``; W the band width (left + right + 1).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np


class RelativePositions(NamedTuple):
  """The position side of the scores: queries (q + v) and the projection W_r."""

  q_BxNxHxD: jax.Array  # (q + v), scaled like the content queries
  w_r_ExHxD: jax.Array  # W_r split by head; E the sinusoids' width (the model width)


def sinusoids(distance_W, dim: int) -> jax.Array:
  """(W, dim) fp32 [sin(t f), cos(t f)] of distances t, f = 10000^(-2i/dim) (Transformer-XL)."""
  inv_freq = 1.0 / (10000.0 ** (np.arange(0, dim, 2, dtype=np.float64) / dim))
  angle_WxF = jnp.asarray(distance_W, jnp.float32)[:, None] * inv_freq.astype(np.float32)
  return jnp.concatenate([jnp.sin(angle_WxF), jnp.cos(angle_WxF)], axis=-1)


def band_table(w_r_ExHxD, *, left: int, right: int, dilation: int, dtype) -> jax.Array:
  """(H, W, D) projected sinusoids of a band, row o + left for the key at j = i + d*o
  (o from -left to right): the distance i - j is -d*o."""
  offsets_W = np.arange(-left, right + 1)
  emb_WxE = sinusoids(-dilation * offsets_W, w_r_ExHxD.shape[0])
  return jnp.einsum("we,ehd->hwd", emb_WxE.astype(dtype), w_r_ExHxD.astype(dtype),
                    preferred_element_type=jnp.promote_types(dtype, jnp.float32)).astype(dtype)


def skew(p___xQxW, span: int):
  """(..., Q, W) scores by offset -> (..., Q, S) by key of the span: out[s, t] =
  p[s, t - s] for 0 <= t - s < W (else 0); S = Q + W - 1. Row s of a flat (Q, S + 1)
  layout starts one column later than row s - 1's, which is exactly the shift."""
  *lead, q, w = p___xQxW.shape
  padded = jnp.pad(p___xQxW, [(0, 0)] * len(lead) + [(0, 0), (0, span + 1 - w)])
  flat = padded.reshape(tuple(lead) + (q * (span + 1),))
  return flat[..., :q * span].reshape(tuple(lead) + (q, span))


def unskew(g_QxS, width: int):
  """Adjoint of :func:`skew`: (Q, S) -> (Q, W) with out[s, o] = g[s, s + o]."""
  q, span = g_QxS.shape
  flat = jnp.pad(g_QxS.reshape(-1), (0, q))
  return flat.reshape(q, span + 1)[:, :width]
