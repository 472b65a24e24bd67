"""The ``blocked`` backend of the banded attention: every query block at once.

Each block's span of keys is gathered with one static index, (B, H, Nb, S, D),
and all blocks' scores (B, H, Nb, Q, S) go through one fp32 softmax together
with the global keys' scores (B, H, Nb, Q, G). There is no loop, so an
accelerator runs the whole band as a few large batched products. Memory is
O(N (w + Q) + N G) per head, the gathered keys about (1 + w / Q) N rows: nothing
of size N x N. Gradients are plain autodiff of this computation (its
intermediates are of the same size). Dropout draws the same mask per block as
the ``scan`` backend (``band.dropout_keep``). Operands and result as
in ``attention/band.py``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from longformer_jax.attention import relative_position as relpos
from longformer_jax.attention.band import (NEG_INF, Band, acc_dtype, band_mask,
                                           dropout_keep, widths)


def _span_index(band: Band) -> np.ndarray:
  """(Nb, S) key positions of each block's span."""
  return (np.arange(band.num_blocks)[:, None] * band.q_block
          + np.arange(band.span)[None, :])


def _keep_masks(band: Band, rng, batch: int, heads: int, score_widths):
  """Every block's dropout keep mask, (B, H, Nb, Q, sum(widths)), the scan's block by
  block (block t = example * Nb + block), split by score array."""
  steps = jnp.arange(batch * band.num_blocks)
  keep = jax.vmap(lambda t: dropout_keep(band, rng, t, heads, score_widths))(steps)
  keep = keep.reshape((batch, band.num_blocks) + keep.shape[1:]).swapaxes(1, 2)
  edges = np.cumsum((0,) + score_widths)
  return [keep[..., edges[j]:edges[j + 1]] for j in range(len(score_widths))]


def _scores(band: Band, q_BxHxNbxQxD, k_BxHxNbxSxD, ok_BxNbxQxS, qr, rel):
  """(B, H, Nb, Q, S) fp32 masked scores of the spans, position term included."""
  f32 = acc_dtype(q_BxHxNbxQxD.dtype)
  s = jnp.einsum("bhiqd,bhisd->bhiqs", q_BxHxNbxQxD, k_BxHxNbxSxD,
                 preferred_element_type=f32)
  if qr is not None:  # + (q + v) . r(i - j), from the (Q, W) band of distances
    qr_BxHxNbxQxD = qr.reshape(q_BxHxNbxQxD.shape)
    pos_BxHxNbxQxW = jnp.einsum("bhiqd,hwd->bhiqw", qr_BxHxNbxQxD, rel,
                                preferred_element_type=f32)
    s = s + relpos.skew(pos_BxHxNbxQxW, band.span)
  return jnp.where(ok_BxNbxQxS[:, None], s, NEG_INF)


def blocked_core(band: Band, q, k, v, key_ok, gk, gv, global_ok, rng, qr, rel):
  """(B*Nb, H, Q, D) output of the blocked backend (see the module docstring)."""
  batch, heads, _, dim = q.shape
  nb, qb = band.num_blocks, band.q_block
  f32 = acc_dtype(q.dtype)
  idx_NbxS = _span_index(band)
  q_BxHxNbxQxD = q.reshape(batch, heads, nb, qb, dim)
  k_BxHxNbxSxD, v_BxHxNbxSxD = k[:, :, idx_NbxS], v[:, :, idx_NbxS]
  ok_BxNbxQxS = jnp.asarray(band_mask(band))[None, None] & key_ok[:, idx_NbxS][:, :, None]
  scores = [_scores(band, q_BxHxNbxQxD, k_BxHxNbxSxD, ok_BxNbxQxS, qr, rel)]
  if gk is not None:
    sg_BxHxNbxQxG = jnp.einsum("bhiqd,bhgd->bhiqg", q_BxHxNbxQxD, gk,
                               preferred_element_type=f32)
    ok_BxNbxQxG = global_ok.reshape(batch, nb, qb, -1)
    scores.append(jnp.where(ok_BxNbxQxG[:, None], sg_BxHxNbxQxG, NEG_INF))
  m = scores[0].max(-1)
  for s in scores[1:]:
    m = jnp.maximum(m, s.max(-1))
  # A row with no key gives 0 below; the softmax does not depend on the shift.
  m = jax.lax.stop_gradient(jnp.where(m > NEG_INF / 2, m, 0.0))[..., None]
  probs = [jnp.exp(s - m) for s in scores]
  denom_BxHxNbxQ = sum(p.sum(-1) for p in probs)
  if rng is not None and band.dropout_rate > 0.0:
    keeps = _keep_masks(band, rng, batch, heads, widths(band, gk))
    probs = [p * keep for p, keep in zip(probs, keeps)]
  o = jnp.einsum("bhiqs,bhisd->bhiqd", probs[0].astype(v.dtype), v_BxHxNbxSxD,
                 preferred_element_type=f32)
  if gk is not None:
    o += jnp.einsum("bhiqg,bhgd->bhiqd", probs[1].astype(gv.dtype), gv,
                    preferred_element_type=f32)
  safe = jnp.where(denom_BxHxNbxQ > 0, denom_BxHxNbxQ, 1.0)[..., None]
  o_BxHxNbxQxD = (o / safe).astype(v.dtype)
  return o_BxHxNbxQxD.swapaxes(1, 2).reshape(batch * nb, heads, qb, dim)
