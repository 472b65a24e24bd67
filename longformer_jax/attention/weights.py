"""Attention probabilities for ``output_attentions`` (the reference's layouts), O(n).

The attention itself (``attention/__init__.py``) never forms probabilities outside a
block; these functions recompute them, for inspection, in the layouts of the
reference implementation:

* local rows: (B, H, N, G + w + 1): first the G global-key columns (slots in
  position order), then the window, column j holding key ``i + d * (j - left)``
  (``left`` = w/2, or w in causal mode; d the head's dilation). Keys outside the
  sequence, padded keys and global keys inside the window have probability 0;
  rows of global tokens and padding are all zero (their output comes from the
  global rows).
* global rows: (B, H, N, G): column g is the distribution of global slot g over
  every key; unused slots are zero.

Probabilities are fp32 and taken before dropout. Memory is that of the outputs,
O(N (w + G)) per head: keys are gathered in blocks of queries, never n x n.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from longformer_jax import attention as attn


def _window_scores(q_BxNxHxD, k_BxNxHxD, key_ok_BxN, left: int, right: int):
  """(B, H, N, left + right + 1) fp32 scores of key i - left + j, NEG_INF where masked.

  Queries go in blocks of Q = max(window, 8); block b reads the S = Q + w keys
  its rows reach, so the gathered keys are about (1 + w / Q) N, not N w.
  """
  batch, n, heads, dim = q_BxNxHxD.shape
  width = left + right + 1
  q_block = max(width - 1, 8)
  nb = -(-n // q_block)
  span = q_block + width - 1
  pad_q = nb * q_block - n
  q = jnp.pad(q_BxNxHxD, [(0, 0), (0, pad_q), (0, 0), (0, 0)])
  k = jnp.pad(k_BxNxHxD, [(0, 0), (left, pad_q + right), (0, 0), (0, 0)])
  ok = jnp.pad(key_ok_BxN, [(0, 0), (left, pad_q + right)])
  idx_NbxS = np.arange(nb)[:, None] * q_block + np.arange(span)[None, :]
  k_BxNbxSxHxD = k[:, idx_NbxS]
  q_BxNbxQxHxD = q.reshape(batch, nb, q_block, heads, dim)
  s_BxHxNbxQxS = jnp.einsum("bnqhd,bnshd->bhnqs", q_BxNbxQxHxD, k_BxNbxSxHxD,
                            preferred_element_type=jnp.float32)
  s_BxHxNbxQxS = jnp.where(ok[:, idx_NbxS][:, None, :, None, :], s_BxHxNbxQxS, attn.NEG_INF)
  band_QxW = np.arange(q_block)[:, None] + np.arange(width)[None, :]  # query s: keys s..s+w
  band = jnp.broadcast_to(jnp.asarray(band_QxW), s_BxHxNbxQxS.shape[:3] + band_QxW.shape)
  s_BxHxNbxQxW = jnp.take_along_axis(s_BxHxNbxQxS, band, axis=-1)
  return s_BxHxNbxQxW.reshape(batch, heads, nb * q_block, width)[:, :, :n]


def local_attention_probs(q_BxNxHxD, k_BxNxHxD, *, valid_BxN, is_global_BxN,
                          gidx: attn.GlobalIndex | None, window: int,
                          dilation: int | Sequence[int] = 1, causal: bool = False):
  """(B, H, N, G + w + 1) probabilities of the local rows (see the module docstring).

  ``q`` is pre-scaled, ``k`` the local keys (also scored for the global columns).
  """
  batch, n, heads, _ = q_BxNxHxD.shape
  left, right = attn.window_radii(window, causal)
  dil = attn.normalize_dilation(dilation, heads)
  key_ok_BxN = valid_BxN & ~is_global_BxN
  parts, order = [], []
  for d, hs in attn.dilation_groups(dil).items():
    sel = np.array(hs)
    s = _window_scores(attn.to_strided(q_BxNxHxD[:, :, sel], d),
                       attn.to_strided(k_BxNxHxD[:, :, sel], d),
                       attn.to_strided(key_ok_BxN, d), left, right)  # (B*d, h, M, W)
    s = attn.from_strided(jnp.moveaxis(s, 1, 2), d, n)  # (B, N, h, W)
    parts.append(jnp.moveaxis(s, 2, 1))
    order.extend(hs)
  s_BxHxNxW = jnp.concatenate(parts, axis=1)[:, np.argsort(order)]
  if gidx is not None:
    gk_BxGxHxD = attn.gather_tokens(k_BxNxHxD, gidx)
    sg_BxHxNxG = jnp.einsum("bnhd,bghd->bhng", q_BxNxHxD, gk_BxGxHxD,
                            preferred_element_type=jnp.float32)
    ok_BxNxG = attn.global_masks(gidx, valid_BxN, jnp.arange(n, dtype=jnp.int32),
                                 causal).keys_BxNxG
    s_BxHxNxW = jnp.concatenate(
        [jnp.where(ok_BxNxG[:, None], sg_BxHxNxG, attn.NEG_INF), s_BxHxNxW], axis=-1)
  m = jax.lax.stop_gradient(s_BxHxNxW.max(-1, keepdims=True))
  m = jnp.where(m > attn.NEG_INF / 2, m, 0.0)
  p = jnp.exp(s_BxHxNxW - m)
  total = p.sum(-1, keepdims=True)
  p = p / jnp.where(total > 0, total, 1.0)
  local_row_BxN = valid_BxN & ~is_global_BxN
  return jnp.where(local_row_BxN[:, None, :, None], p, 0.0)


def global_attention_probs(qg_BxGxHxD, kg_BxNxHxD, *, valid_BxN, gidx: attn.GlobalIndex,
                           causal: bool = False):
  """(B, H, N, G) probabilities of the global rows over every key (``qg`` pre-scaled,
  ``kg`` the global keys K_g of every token)."""
  s_BxHxGxN = jnp.einsum("bghd,bnhd->bhgn", qg_BxGxHxD, kg_BxNxHxD,
                         preferred_element_type=jnp.float32)
  p_BxHxGxN, _, l_BxHxG = attn.global_probs(
      s_BxHxGxN, valid_BxN=valid_BxN, gidx=gidx, causal=causal, dropout_rate=0.0,
      dropout_rng=None)
  p_BxHxGxN = p_BxHxGxN / jnp.where(l_BxHxG > 0, l_BxHxG, 1.0)[..., None]
  return jnp.swapaxes(p_BxHxGxN, 2, 3)
