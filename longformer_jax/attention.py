"""Longformer attention as pure functions over arrays: sliding window + global.

Semantics (those of the reference checkpoints):

* ``window`` w is the full window. A local row i attends to keys i + d*k for
  ``-w/2 <= k <= w/2`` (d the head's dilation); in causal mode to ``-w <= k <= 0``.
* Global rows use their own projections Q_g, K_g, V_g and attend to every valid
  key (causal mode: every valid key at or before them).
* Every local row also attends to every global key, scored with the ordinary K/V,
  in the same softmax as its window; a global key inside the window is counted
  once (it is removed from the window).
* Padded keys are never attended to; padded query rows, and rows with nothing to
  attend to, give zeros (never NaN).

The local part is blocked: queries are split into blocks of ``block_size`` and
each block reads only the key blocks its window touches, gathered with static
slices. Memory and time are O(n * (w + block_size) + n * G) for G global slots;
nothing of size n x n exists, forward or backward. Scores and softmax are fp32
whatever the input dtype; products of probabilities and values accumulate in fp32.

Shape suffixes: B batch, N sequence, H heads, D head dim, G global slots,
Nb query blocks, Q block size, K keys per block window.
"""

from __future__ import annotations

import math
from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

# Finite stand-in for -inf: masked scores stay finite, so (masked - max) never
# becomes inf - inf and gradients never see NaN.
NEG_INF = -1e30
DEFAULT_BLOCK_SIZE = 128


class GlobalIndex(NamedTuple):
  """Positions of the global tokens of each example, padded to a static bound G."""

  index: jax.Array  # (B, G) int32; unused slots hold 0 so gathers stay in range
  valid: jax.Array  # (B, G) bool; False for unused slots


def global_index(is_global_BxN: jax.Array, max_global: int) -> GlobalIndex:
  """Static-shape list of global positions: the first ``max_global`` per example.

  Global tokens past the bound are not listed; callers check the count on the
  host (see :func:`count_global`) before tracing.
  """
  batch, n = is_global_BxN.shape
  is_global = is_global_BxN.astype(bool)
  rank_BxN = jnp.cumsum(is_global, axis=1, dtype=jnp.int32) - 1
  slot_BxN = jnp.where(is_global & (rank_BxN < max_global), rank_BxN, max_global)
  rows_BxN = jnp.broadcast_to(jnp.arange(batch)[:, None], (batch, n))
  pos_BxN = jnp.broadcast_to(jnp.arange(n, dtype=jnp.int32)[None], (batch, n))
  index_BxG = jnp.zeros((batch, max_global), jnp.int32).at[rows_BxN, slot_BxN].set(
      pos_BxN, mode="drop")
  count_B = jnp.minimum(is_global.sum(axis=1), max_global)
  valid_BxG = jnp.arange(max_global)[None, :] < count_B[:, None]
  return GlobalIndex(index_BxG, valid_BxG)


def count_global(is_global_BxN) -> int:
  """Largest number of global tokens in one example (host-side, concrete input)."""
  return int(np.asarray(is_global_BxN).astype(bool).sum(axis=1).max(initial=0))


def gather_tokens(x_BxNx___: jax.Array, gidx: GlobalIndex) -> jax.Array:
  """Rows of ``x`` at the global positions: (B, N, ...) -> (B, G, ...)."""
  idx = gidx.index.reshape(gidx.index.shape + (1,) * (x_BxNx___.ndim - 2))
  return jnp.take_along_axis(x_BxNx___, idx, axis=1)


def scatter_tokens(x_BxNx___: jax.Array, rows_BxGx___: jax.Array,
                   gidx: GlobalIndex) -> jax.Array:
  """``x`` with the rows at the (valid) global positions replaced by ``rows``."""
  batch, n = x_BxNx___.shape[:2]
  target_BxG = jnp.where(gidx.valid, gidx.index, n)  # n is out of range: dropped
  rows_idx = jnp.broadcast_to(jnp.arange(batch)[:, None], target_BxG.shape)
  return x_BxNx___.at[rows_idx, target_BxG].set(
      rows_BxGx___.astype(x_BxNx___.dtype), mode="drop")


def window_radii(window: int, causal: bool) -> tuple[int, int]:
  """(left, right) reach of a local row, in (dilated) steps."""
  if window < 0 or (not causal and window % 2):
    raise ValueError(
        f"attention_window must be a non-negative even number, got {window}")
  return (window, 0) if causal else (window // 2, window // 2)


def _dropout(p, rate, rng):
  if rng is None or rate == 0.0:
    return p
  keep = jax.random.bernoulli(rng, 1.0 - rate, p.shape)
  return jnp.where(keep, p / (1.0 - rate), 0.0)


def _safe_max(*scores):
  """Row max over several score arrays, 0 where a row is entirely masked."""
  m = scores[0].max(axis=-1)
  for s in scores[1:]:
    m = jnp.maximum(m, s.max(axis=-1))
  m = jnp.where(m > NEG_INF / 2, m, 0.0)
  return jax.lax.stop_gradient(m)  # softmax does not depend on the shift


def _blocks_in_window(x_BxNbxQx___, lo: int, hi: int, fill):
  """Concatenate, for each block, blocks [i - lo, i + hi] along the block axis.

  (B, Nb, Q, ...) -> (B, Nb, (lo + hi + 1) * Q, ...); out-of-range blocks hold
  ``fill``. Static slices only: the gather is a few pads and slices.
  """
  nb = x_BxNbxQx___.shape[1]
  pad = [(0, 0)] * x_BxNbxQx___.ndim
  pad[1] = (lo, hi)
  padded = jnp.pad(x_BxNbxQx___, pad, constant_values=fill)
  return jnp.concatenate([padded[:, j:j + nb] for j in range(lo + hi + 1)], axis=2)


def _band(q_block: int, lo: int, hi: int, left: int, right: int) -> np.ndarray:
  """(Q, K) bool: key slot t of a block window is within reach of query slot s."""
  s = np.arange(q_block)[:, None]
  t = np.arange((lo + hi + 1) * q_block)[None, :]
  rel = t - lo * q_block - s
  return (rel >= -left) & (rel <= right)


def banded_attention(q_BxNxHxD, k_BxNxHxD, v_BxNxHxD, key_ok_BxN, *, left: int,
                     right: int, block_size: int, global_k_BxGxHxD=None,
                     global_v_BxGxHxD=None, global_ok_BxNxG=None,
                     dropout_rate: float = 0.0, dropout_rng=None):
  """Banded attention of one dilation group (positions already contiguous).

  Row i attends to keys j with ``i - left <= j <= i + right`` and
  ``key_ok[j]``, plus the extra (global) keys where ``global_ok[i, g]``, all in
  one softmax. ``q`` is pre-scaled. Returns (B, N, H, D) in ``v``'s dtype.
  """
  batch, n, heads, dim = q_BxNxHxD.shape
  q_block = min(block_size, -(-n // 8) * 8)
  nb = -(-n // q_block)
  pad_n = nb * q_block - n
  lo = min(-(-left // q_block), nb - 1)
  hi = min(-(-right // q_block), nb - 1)

  def blocks(x, fill=0):
    x = jnp.pad(x, [(0, 0), (0, pad_n)] + [(0, 0)] * (x.ndim - 2), constant_values=fill)
    return x.reshape((batch, nb, q_block) + x.shape[2:])

  q_BxNbxQxHxD = blocks(q_BxNxHxD)
  k_BxNbxKxHxD = _blocks_in_window(blocks(k_BxNxHxD), lo, hi, 0)
  v_BxNbxKxHxD = _blocks_in_window(blocks(v_BxNxHxD), lo, hi, 0)
  ok_BxNbxK = _blocks_in_window(blocks(key_ok_BxN, False), lo, hi, False)
  band_QxK = jnp.asarray(_band(q_block, lo, hi, left, right))
  mask_BxNbx1xQxK = (band_QxK[None, None] & ok_BxNbxK[:, :, None, :])[:, :, None]

  s_BxNbxHxQxK = jnp.einsum("bnqhd,bnkhd->bnhqk", q_BxNbxQxHxD, k_BxNbxKxHxD,
                            preferred_element_type=jnp.float32)
  s_BxNbxHxQxK = jnp.where(mask_BxNbx1xQxK, s_BxNbxHxQxK, NEG_INF)
  scores = [s_BxNbxHxQxK]
  if global_k_BxGxHxD is not None:
    g_ok_BxNbx1xQxG = blocks(global_ok_BxNxG, False)[:, :, None]
    sg_BxNbxHxQxG = jnp.einsum("bnqhd,bghd->bnhqg", q_BxNbxQxHxD, global_k_BxGxHxD,
                               preferred_element_type=jnp.float32)
    scores.append(jnp.where(g_ok_BxNbx1xQxG, sg_BxNbxHxQxG, NEG_INF))

  m_BxNbxHxQ = _safe_max(*scores)
  probs = [jnp.exp(s - m_BxNbxHxQ[..., None]) for s in scores]
  denom_BxNbxHxQ = sum(p.sum(axis=-1) for p in probs)
  rngs = (list(jax.random.split(dropout_rng, len(probs))) if dropout_rng is not None
          else [None] * len(probs))
  probs = [_dropout(p, dropout_rate, r).astype(v_BxNxHxD.dtype) for p, r in zip(probs, rngs)]

  o_BxNbxQxHxD = jnp.einsum("bnhqk,bnkhd->bnqhd", probs[0], v_BxNbxKxHxD,
                            preferred_element_type=jnp.float32)
  if global_k_BxGxHxD is not None:
    o_BxNbxQxHxD += jnp.einsum("bnhqg,bghd->bnqhd", probs[1], global_v_BxGxHxD,
                               preferred_element_type=jnp.float32)
  denom_BxNbxQxHx1 = jnp.swapaxes(denom_BxNbxHxQ, 2, 3)[..., None]
  o_BxNbxQxHxD = o_BxNbxQxHxD / jnp.where(denom_BxNbxQxHx1 > 0, denom_BxNbxQxHx1, 1.0)
  o = o_BxNbxQxHxD.reshape(batch, nb * q_block, heads, dim)[:, :n]
  return o.astype(v_BxNxHxD.dtype)


def _to_strided(x_BxNx___, d: int):
  """Split positions by residue mod d: (B, N, ...) -> (B*d, ceil(N/d), ...)."""
  batch, n = x_BxNx___.shape[:2]
  m = -(-n // d)
  x = jnp.pad(x_BxNx___, [(0, 0), (0, m * d - n)] + [(0, 0)] * (x_BxNx___.ndim - 2))
  x = x.reshape((batch, m, d) + x.shape[2:])
  return jnp.swapaxes(x, 1, 2).reshape((batch * d, m) + x.shape[3:])


def _from_strided(x_BdxMx___, d: int, n: int):
  """Inverse of :func:`_to_strided`."""
  bd, m = x_BdxMx___.shape[:2]
  x = x_BdxMx___.reshape((bd // d, d, m) + x_BdxMx___.shape[2:])
  return jnp.swapaxes(x, 1, 2).reshape((bd // d, m * d) + x.shape[3:])[:, :n]


def normalize_dilation(dilation: int | Sequence[int], heads: int) -> tuple[int, ...]:
  """Per-head dilation tuple from an int or a sequence of length ``heads``."""
  if isinstance(dilation, (int, np.integer)):
    dilation = (int(dilation),) * heads
  dilation = tuple(int(d) for d in dilation)
  if len(dilation) != heads or min(dilation) < 1:
    raise ValueError(
        f"attention_dilation must be a positive int or one positive int per head "
        f"({heads} heads), got {dilation}")
  return dilation


def local_attention(q_BxNxHxD, k_BxNxHxD, v_BxNxHxD, *, valid_BxN, is_global_BxN,
                    gidx: GlobalIndex | None, window: int,
                    dilation: int | Sequence[int] = 1, causal: bool = False,
                    block_size: int = DEFAULT_BLOCK_SIZE, dropout_rate: float = 0.0,
                    dropout_rng=None):
  """Output of the local rows: window (minus global and padded keys) + global keys.

  ``q`` is pre-scaled. Rows at global positions are computed too (callers
  overwrite them with :func:`global_attention`); padded rows are zero.
  """
  batch, n, heads, _ = q_BxNxHxD.shape
  left, right = window_radii(window, causal)
  dil = normalize_dilation(dilation, heads)
  key_ok_BxN = valid_BxN & ~is_global_BxN
  pos_N = jnp.arange(n, dtype=jnp.int32)

  use_global = gidx is not None and gidx.index.shape[1] > 0
  if use_global:
    gk_BxGxHxD = gather_tokens(k_BxNxHxD, gidx)
    gv_BxGxHxD = gather_tokens(v_BxNxHxD, gidx)
    g_ok_BxNxG = jnp.broadcast_to(gidx.valid[:, None, :], (batch, n, gidx.valid.shape[1]))
    if causal:
      g_ok_BxNxG = g_ok_BxNxG & (gidx.index[:, None, :] <= pos_N[None, :, None])

  groups: dict[int, list[int]] = {}
  for h, d in enumerate(dil):
    groups.setdefault(d, []).append(h)
  rngs = (list(jax.random.split(dropout_rng, len(groups))) if dropout_rng is not None
          else [None] * len(groups))

  outputs, order = [], []
  for (d, hs), rng in zip(groups.items(), rngs):
    sel = (lambda x: x) if len(hs) == heads else (lambda x, hs=hs: x[:, :, np.array(hs)])
    q, k, v = sel(q_BxNxHxD), sel(k_BxNxHxD), sel(v_BxNxHxD)
    extra = {}
    if use_global:
      extra = dict(global_k_BxGxHxD=sel(gk_BxGxHxD), global_v_BxGxHxD=sel(gv_BxGxHxD),
                   global_ok_BxNxG=g_ok_BxNxG)
    if d == 1:
      o = banded_attention(q, k, v, key_ok_BxN, left=left, right=right,
                           block_size=block_size, dropout_rate=dropout_rate,
                           dropout_rng=rng, **extra)
    else:
      if use_global:
        extra = dict(global_k_BxGxHxD=jnp.repeat(extra["global_k_BxGxHxD"], d, axis=0),
                     global_v_BxGxHxD=jnp.repeat(extra["global_v_BxGxHxD"], d, axis=0),
                     global_ok_BxNxG=_to_strided(g_ok_BxNxG, d))
      o = banded_attention(_to_strided(q, d), _to_strided(k, d), _to_strided(v, d),
                           _to_strided(key_ok_BxN, d), left=left, right=right,
                           block_size=block_size, dropout_rate=dropout_rate,
                           dropout_rng=rng, **extra)
      o = _from_strided(o, d, n)
    outputs.append(o)
    order.extend(hs)
  o_BxNxHxD = outputs[0] if len(outputs) == 1 else jnp.concatenate(outputs, axis=2)
  if order != sorted(order):
    o_BxNxHxD = o_BxNxHxD[:, :, np.argsort(order)]
  return jnp.where(valid_BxN[:, :, None, None], o_BxNxHxD, 0).astype(v_BxNxHxD.dtype)


def global_attention(q_BxGxHxD, k_BxNxHxD, v_BxNxHxD, *, valid_BxN, gidx: GlobalIndex,
                     causal: bool = False, dropout_rate: float = 0.0, dropout_rng=None):
  """Output of the global rows: each attends to every valid key (its own Q_g/K_g/V_g).

  ``q`` (pre-scaled) holds the global rows only. Returns (B, G, H, D); unused
  slots are zero.
  """
  n = k_BxNxHxD.shape[1]
  s_BxHxGxN = jnp.einsum("bghd,bnhd->bhgn", q_BxGxHxD, k_BxNxHxD,
                         preferred_element_type=jnp.float32)
  ok_Bx1xGxN = (valid_BxN[:, None, :] & gidx.valid[:, :, None])[:, None]
  if causal:
    ok_Bx1xGxN = ok_Bx1xGxN & (jnp.arange(n)[None, None, None, :]
                               <= gidx.index[:, None, :, None])
  s_BxHxGxN = jnp.where(ok_Bx1xGxN, s_BxHxGxN, NEG_INF)
  p_BxHxGxN = jnp.exp(s_BxHxGxN - _safe_max(s_BxHxGxN)[..., None])
  denom_BxHxG = p_BxHxGxN.sum(axis=-1)
  p_BxHxGxN = _dropout(p_BxHxGxN, dropout_rate, dropout_rng).astype(v_BxNxHxD.dtype)
  o_BxGxHxD = jnp.einsum("bhgn,bnhd->bghd", p_BxHxGxN, v_BxNxHxD,
                         preferred_element_type=jnp.float32)
  denom_BxGxHx1 = jnp.swapaxes(denom_BxHxG, 1, 2)[..., None]
  o_BxGxHxD = o_BxGxHxD / jnp.where(denom_BxGxHx1 > 0, denom_BxGxHx1, 1.0)
  return o_BxGxHxD.astype(v_BxNxHxD.dtype)


def longformer_attention(q, k, v, q_global=None, k_global=None, v_global=None, *,
                         attention_mask, global_attention_mask=None, window: int,
                         dilation: int | Sequence[int] = 1, causal: bool = False,
                         block_size: int = DEFAULT_BLOCK_SIZE,
                         max_global: int | None = None, dropout_rate: float = 0.0,
                         dropout_rng=None):
  """Full Longformer self-attention from per-token projections.

  Args:
    q, k, v: (B, N, H, D) local projections (unscaled).
    q_global, k_global, v_global: (B, N, H, D) global projections; needed when
      ``global_attention_mask`` marks any token.
    attention_mask: (B, N), nonzero for real tokens, 0 for padding.
    global_attention_mask: (B, N), 1 for global tokens, 0 for local; None: none.
    window: full attention window w (even unless causal).
    dilation: int or one int per head.
    causal: left-only window (w keys to the left, plus the token itself).
    block_size: query block size; independent of the window.
    max_global: static bound G on global tokens per example; None takes the
      count from a concrete ``global_attention_mask``.
    dropout_rate, dropout_rng: dropout on attention probabilities.

  Returns:
    (B, N, H, D) in ``v``'s dtype.
  """
  dim = q.shape[-1]
  scale = 1.0 / math.sqrt(dim)
  valid_BxN = jnp.asarray(attention_mask) != 0
  if global_attention_mask is None:
    is_global_BxN = jnp.zeros_like(valid_BxN)
    max_global = 0
  else:
    is_global_BxN = (jnp.asarray(global_attention_mask) != 0) & valid_BxN
    if max_global is None:
      if isinstance(is_global_BxN, jax.core.Tracer):
        raise ValueError("max_global must be given when global_attention_mask is traced")
      max_global = count_global(is_global_BxN)
  gidx = global_index(is_global_BxN, max_global) if max_global > 0 else None
  rng_local = rng_global = None
  if dropout_rng is not None:
    rng_local, rng_global = jax.random.split(dropout_rng)
  out = local_attention((q * scale).astype(q.dtype), k, v, valid_BxN=valid_BxN,
                        is_global_BxN=is_global_BxN, gidx=gidx, window=window,
                        dilation=dilation, causal=causal, block_size=block_size,
                        dropout_rate=dropout_rate, dropout_rng=rng_local)
  if gidx is None:
    return out
  qg = (gather_tokens(q_global, gidx) * scale).astype(q_global.dtype)
  og = global_attention(qg, k_global, v_global, valid_BxN=valid_BxN, gidx=gidx,
                        causal=causal, dropout_rate=dropout_rate, dropout_rng=rng_global)
  return scatter_tokens(out, og, gidx)
