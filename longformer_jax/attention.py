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

The local part is blocked: a scan over blocks of ``block_size`` queries, each
reading only the contiguous span of keys its window reaches (one dynamic
slice). Memory and time are O(n * (w + block_size) + n * G) for G global slots;
nothing of size n x n exists, forward or backward. Scores and softmax are fp32
whatever the input dtype; products of probabilities and values accumulate in fp32.

Shape suffixes: B batch, N sequence, H heads, D head dim, G global slots,
Nb query blocks, Q block size, S keys in a block's span, E model width.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name
import numpy as np

from longformer_jax import relative_position as relpos

# Finite stand-in for -inf: masked scores stay finite, so (masked - max) never
# becomes inf - inf and gradients never see NaN.
NEG_INF = -1e30
DEFAULT_BLOCK_SIZE = 128


class GlobalIndex(NamedTuple):
  """Positions of the global tokens of each example, padded to a static bound G."""

  index: jax.Array  # (B, G) int32; unused slots hold 0 so gathers stay in range
  valid: jax.Array  # (B, G) bool; False for unused slots


def global_index(is_global_BxN: jax.Array, max_global: int) -> GlobalIndex | None:
  """Static-shape list of global positions, in order, padded to ``max_global``.

  An example with more global tokens than ``max_global`` slots cannot be
  attended exactly (its extra tokens would leave every window yet fill no
  slot), so it raises: a ``ValueError`` for concrete input, and at run time
  under ``jit`` (a host callback that fires only then). None when
  ``max_global`` is 0 and nothing is global.
  """
  batch, n = is_global_BxN.shape
  is_global = is_global_BxN.astype(bool)
  check_global_bound(is_global.sum(axis=1), max_global)
  if max_global == 0:
    return None
  rank_BxN = jnp.cumsum(is_global, axis=1, dtype=jnp.int32) - 1
  slot_BxN = jnp.where(is_global & (rank_BxN < max_global), rank_BxN, max_global)
  rows_BxN = jnp.broadcast_to(jnp.arange(batch)[:, None], (batch, n))
  pos_BxN = jnp.broadcast_to(jnp.arange(n, dtype=jnp.int32)[None], (batch, n))
  index_BxG = jnp.zeros((batch, max_global), jnp.int32).at[rows_BxN, slot_BxN].set(
      pos_BxN, mode="drop")
  count_B = jnp.minimum(is_global.sum(axis=1), max_global)
  valid_BxG = jnp.arange(max_global)[None, :] < count_B[:, None]
  return GlobalIndex(index_BxG, valid_BxG)


def _global_overflow_error(count: int, max_global: int) -> ValueError:
  return ValueError(
      f"global_attention_mask marks {count} tokens in one example (attention_mask values "
      f"> 1 count as global too) but max_global_tokens={max_global}; raise "
      "max_global_tokens")


def _raise_global_overflow(count, max_global: int):
  raise _global_overflow_error(int(count), max_global)


def check_global_bound(count_B, max_global: int) -> None:
  """Raises when some example has more than ``max_global`` global tokens: eagerly
  for concrete counts, else when the compiled computation runs."""
  if not isinstance(count_B, jax.core.Tracer):
    worst = int(np.max(np.asarray(count_B), initial=0))
    if worst > max_global:
      raise _global_overflow_error(worst, max_global)
    return
  worst = jnp.max(count_B, initial=0)
  jax.lax.cond(worst > max_global,
               lambda: jax.debug.callback(
                   functools.partial(_raise_global_overflow, max_global=max_global), worst),
               lambda: None)


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


class _Band(NamedTuple):
  """Static description of one banded attention call (hashable: a custom_vjp arg)."""

  q_block: int  # queries per step
  num_blocks: int  # steps per example
  left: int  # reach to the left / right, in positions (already capped)
  right: int
  dropout_rate: float

  @property
  def span(self) -> int:
    return self.q_block + self.left + self.right


def _acc(dtype):
  """Accumulation / softmax dtype: fp32, or the input's if wider."""
  return jnp.promote_types(dtype, jnp.float32)


def _band_mask(band: _Band) -> np.ndarray:
  """(Q, S) bool: key t of a step's span is within reach of query s.

  A step's span starts ``left`` positions before its first query, so query s
  reaches keys t with 0 <= t - s <= left + right, the same for every step.
  """
  rel = np.arange(band.span)[None, :] - np.arange(band.q_block)[:, None]
  return (rel >= 0) & (rel <= band.left + band.right)


class _Step(NamedTuple):
  """One step's operands: a block of queries of one example, all heads."""

  start: jax.Array  # first query position
  q: jax.Array  # (H, Q, D)
  k: jax.Array  # (H, S, D) the span of keys the block reaches
  v: jax.Array  # (H, S, D)
  mask: jax.Array  # (Q, S)
  gk: jax.Array | None  # (H, G, D) this example's global keys / values
  gv: jax.Array | None
  gmask: jax.Array | None  # (Q, G)
  qr: jax.Array | None  # (H, Q, D) relative-position queries (q + v)
  rel: jax.Array | None  # (H, W, D) the band's projected sinusoids


def _step(band: _Band, t, q, k, v, key_ok, gk, gv, global_ok, qr, rel) -> _Step:
  """Operands of step t = (example b, query block i), by dynamic slicing."""
  _, h, _, d = q.shape
  b, start = t // band.num_blocks, (t % band.num_blocks) * band.q_block
  take = lambda x, length: jax.lax.dynamic_slice(x, (b, 0, start, 0), (1, h, length, d))[0]
  oks = jax.lax.dynamic_slice(key_ok, (b, start), (1, band.span))
  mask = jnp.asarray(_band_mask(band)) & oks
  gks = gvs = gmask = None
  if gk is not None:
    gks, gvs = gk[b], gv[b]
    gmask = jax.lax.dynamic_slice(global_ok, (b, start, 0), (1, band.q_block, gk.shape[2]))[0]
  qrs = None if qr is None else take(qr, band.q_block)
  return _Step(start, take(q, band.q_block), take(k, band.span), take(v, band.span), mask,
               gks, gvs, gmask, qrs, rel)


def _scores(s: _Step, h: int):
  """Head h's masked fp32 scores against the span and the global keys."""
  f32 = _acc(s.q.dtype)
  sc = jnp.dot(s.q[h], s.k[h].T, preferred_element_type=f32)
  if s.qr is not None:  # + (q + v) . r(i - j), from the (Q, W) band of distances
    sc += relpos.skew(jnp.dot(s.qr[h], s.rel[h].T, preferred_element_type=f32), sc.shape[1])
  sc = jnp.where(s.mask, sc, NEG_INF)
  if s.gk is None:
    return sc, None
  sg = jnp.where(s.gmask, jnp.dot(s.q[h], s.gk[h].T, preferred_element_type=f32), NEG_INF)
  return sc, sg


def _keep(band: _Band, rng, t, heads: int, widths):
  """Step t's dropout keep masks (scaled by 1 / (1 - rate)) per head, one per score
  array; the backward pass regenerates them from (rng, t)."""
  if rng is None or band.dropout_rate == 0.0:
    return None
  shape = (heads, band.q_block, sum(widths))
  keep = jax.random.bernoulli(jax.random.fold_in(rng, t), 1.0 - band.dropout_rate, shape)
  keep = keep.astype(jnp.float32) / (1.0 - band.dropout_rate)
  return keep, np.cumsum((0,) + tuple(widths))


def _apply_keep(keep, h, j, p):
  if keep is None or p is None:
    return p
  mask, edges = keep
  return p * mask[h, :, edges[j]:edges[j + 1]]


def _widths(band, gk):  # score widths per step: the span, then the global keys
  return (band.span,) + (() if gk is None else (gk.shape[2],))


def _band_forward(band: _Band, q, k, v, key_ok, gk, gv, global_ok, rng, qr, rel):
  """Scan over (example, query block): output (B*Nb, H, Q, D), log-sum-exp (B*Nb, H, Q).

  Heads are unrolled inside a step: each head's products are plain 2-D matrix
  products, which XLA:CPU runs faster than batched ones, and independent heads
  can run concurrently.
  """
  heads = q.shape[1]

  def step(_, t):
    s = _step(band, t, q, k, v, key_ok, gk, gv, global_ok, qr, rel)
    keep = _keep(band, rng, t, heads, _widths(band, gk))
    outs, lses = [], []
    for h in range(heads):
      sc, sg = _scores(s, h)
      m = sc.max(-1) if sg is None else jnp.maximum(sc.max(-1), sg.max(-1))
      m = jnp.where(m > NEG_INF / 2, m, 0.0)[:, None]  # a row with no key gives 0 below
      p = jnp.exp(sc - m)
      pg = None if sg is None else jnp.exp(sg - m)
      denom = p.sum(-1) + (0.0 if pg is None else pg.sum(-1))
      p, pg = _apply_keep(keep, h, 0, p), _apply_keep(keep, h, 1, pg)
      o = jnp.dot(p.astype(v.dtype), s.v[h], preferred_element_type=_acc(v.dtype))
      if pg is not None:
        o += jnp.dot(pg.astype(gv.dtype), s.gv[h], preferred_element_type=_acc(v.dtype))
      ok = denom > 0
      safe = jnp.where(ok, denom, 1.0)
      outs.append((o / safe[:, None]).astype(v.dtype))
      lses.append(jnp.where(ok, m[:, 0] + jnp.log(safe), 0.0))
    return None, (jnp.stack(outs), jnp.stack(lses))

  steps = q.shape[0] * band.num_blocks
  return jax.lax.scan(step, None, jnp.arange(steps))[1]


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _band_core(band, q, k, v, key_ok, gk, gv, global_ok, rng, qr, rel):
  return _band_forward(band, q, k, v, key_ok, gk, gv, global_ok, rng, qr, rel)[0]


def _band_core_fwd(band, q, k, v, key_ok, gk, gv, global_ok, rng, qr, rel):
  o, lse = _band_forward(band, q, k, v, key_ok, gk, gv, global_ok, rng, qr, rel)
  # Named so that a remat policy can keep them instead of re-running the forward scan.
  o, lse = checkpoint_name(o, "attention_core"), checkpoint_name(lse, "attention_core")
  return o, (q, k, v, key_ok, gk, gv, global_ok, rng, qr, rel, o, lse)


def _band_core_bwd(band, res, do):
  """Flash-attention style: recomputes each step's probabilities from the saved
  log-sum-exp; the key/value gradients of a step's span are added into padded
  accumulators carried through the scan."""
  q, k, v, key_ok, gk, gv, global_ok, rng, qr, rel, o, lse = res
  heads, f32 = q.shape[1], _acc(q.dtype)
  dot = functools.partial(jnp.dot, preferred_element_type=f32)

  def step(carry, xs):
    dk, dv, dgk, dgv, drel = carry
    t, do_t, o_t, lse_t = xs
    s = _step(band, t, q, k, v, key_ok, gk, gv, global_ok, qr, rel)
    keep = _keep(band, rng, t, heads, _widths(band, gk))
    delta = jnp.sum(do_t.astype(f32) * o_t.astype(f32), axis=-1)[..., None]  # (H, Q, 1)
    dq, dks, dvs, dgks, dgvs, dqr, drels = [], [], [], [], [], [], []
    for h in range(heads):
      sc, sg = _scores(s, h)
      do_h = do_t[h]
      p = jnp.exp(sc - lse_t[h][:, None])
      pd = _apply_keep(keep, h, 0, p)
      dvs.append(dot(pd.astype(do_h.dtype).T, do_h))
      dp = _apply_keep(keep, h, 0, dot(do_h, s.v[h].T))
      ds = (p * (dp - delta[h])).astype(q.dtype)
      dq_h = dot(ds, s.k[h])
      dks.append(dot(ds.T, s.q[h]))
      if qr is not None:  # the skewed position scores, back to (Q, W) by distance
        dp_pos = relpos.unskew(ds, rel.shape[1])
        dqr.append(dot(dp_pos, s.rel[h]).astype(qr.dtype))
        drels.append(dot(dp_pos.T, s.qr[h]))
      if sg is not None:
        pg = jnp.exp(sg - lse_t[h][:, None])
        dpg = _apply_keep(keep, h, 1, dot(do_h, s.gv[h].T))
        dsg = (pg * (dpg - delta[h])).astype(q.dtype)
        dq_h += dot(dsg, s.gk[h])
        dgks.append(dot(dsg.T, s.q[h]))
        dgvs.append(dot(_apply_keep(keep, h, 1, pg).astype(do_h.dtype).T, do_h))
      dq.append(dq_h.astype(q.dtype))
    b = t // band.num_blocks

    def add(acc, rows):
      at = (b, 0, s.start, 0)
      cur = jax.lax.dynamic_slice(acc, at, (1,) + rows.shape)
      return jax.lax.dynamic_update_slice(acc, cur + rows[None], at)

    dk, dv = add(dk, jnp.stack(dks)), add(dv, jnp.stack(dvs))
    if gk is not None:
      dgk = dgk.at[b].add(jnp.stack(dgks))
      dgv = dgv.at[b].add(jnp.stack(dgvs))
    if qr is not None:
      drel = drel + jnp.stack(drels)
    return (dk, dv, dgk, dgv, drel), (jnp.stack(dq), jnp.stack(dqr) if dqr else None)

  zeros = lambda x: None if x is None else jnp.zeros(x.shape, f32)
  carry = (zeros(k), zeros(v), zeros(gk), zeros(gv), zeros(rel))
  steps = q.shape[0] * band.num_blocks
  (dk, dv, dgk, dgv, drel), (dq, dqr) = jax.lax.scan(step, carry,
                                                     (jnp.arange(steps), do, o, lse))
  cast = lambda g, x: None if x is None else g.astype(x.dtype)
  heads_major = lambda g: None if g is None else _unblock(g, q.shape[0]).swapaxes(1, 2)
  return (heads_major(dq), cast(dk, k), cast(dv, v), None, cast(dgk, gk), cast(dgv, gv),
          None, None, heads_major(dqr), cast(drel, rel))


_band_core.defvjp(_band_core_fwd, _band_core_bwd)


def _unblock(x_BNbxHxQxD, batch: int):
  """(B*Nb, H, Q, D) step outputs -> (B, Nb*Q, H, D)."""
  _, h, qb, d = x_BNbxHxQxD.shape
  x = x_BNbxHxQxD.reshape(batch, -1, h, qb, d).swapaxes(2, 3)
  return x.reshape(batch, -1, h, d)


def banded_attention(q_BxNxHxD, k_BxNxHxD, v_BxNxHxD, key_ok_BxN, *, left: int,
                     right: int, block_size: int, global_k_BxGxHxD=None,
                     global_v_BxGxHxD=None, global_ok_BxNxG=None,
                     dropout_rate: float = 0.0, dropout_rng=None, halo: bool = False,
                     rel_q_BxNxHxD=None, rel_HxWxD=None):
  """Banded attention of one dilation group (positions already contiguous).

  Row i attends to keys j with ``i - left <= j <= i + right`` and
  ``key_ok[j]``, plus the extra (global) keys where ``global_ok[i, g]``, all in
  one softmax. ``q`` is pre-scaled. Returns (B, N, H, D) in ``v``'s dtype.

  With ``rel_q`` (pre-scaled) and ``rel`` (row o + left for key j = i + o, W =
  left + right + 1 rows), the score of (i, j) gains ``rel_q[i] . rel[j - i + left]``
  (``relative_position.py``).

  With ``halo``, ``k``, ``v`` and ``key_ok`` already hold ``left`` positions
  before the N queries and ``right`` after them (a sequence shard plus its
  neighbours' edges, see ``seqpar.py``); otherwise keys beyond the ends are absent.

  A scan over blocks of ``block_size`` queries: each step reads the contiguous
  span of ``block_size + left + right`` keys its queries reach (a dynamic
  slice), so a step's scores stay cache-sized. The backward pass is hand-written
  (flash-attention style): it keeps q, k, v, the output and each row's
  log-sum-exp, and recomputes the probabilities block by block.
  """
  batch, n, heads, dim = q_BxNxHxD.shape
  q_block = min(block_size, -(-n // 8) * 8)
  nb = -(-n // q_block)
  pad_n = nb * q_block - n
  reach = (left, right)
  if not halo:  # nothing lies beyond the ends: reach at most the padded length
    left, right = min(left, nb * q_block - 1), min(right, nb * q_block - 1)
  elif k_BxNxHxD.shape[1] != n + left + right:
    raise ValueError(f"halo keys: expected {n} + {left} + {right} positions, got "
                     f"{k_BxNxHxD.shape[1]}")
  rel = None
  if rel_HxWxD is not None:  # the table's rows within the (capped) reach
    if rel_HxWxD.shape[1] != sum(reach) + 1:
      raise ValueError(f"rel_HxWxD has {rel_HxWxD.shape[1]} rows for a band of "
                       f"{reach[0]} + {reach[1]} + 1")
    rel = rel_HxWxD[:, reach[0] - left:reach[0] + right + 1]
  band = _Band(q_block, nb, left, right, float(dropout_rate))
  before, after = (0, pad_n) if halo else (left, pad_n + right)  # key padding

  def heads_major(x, before, after):
    x = jnp.swapaxes(x, 1, 2)  # (B, H, N, D)
    return jnp.pad(x, [(0, 0), (0, 0), (before, after), (0, 0)])

  q = heads_major(q_BxNxHxD, 0, pad_n)
  k = heads_major(k_BxNxHxD, before, after)
  v = heads_major(v_BxNxHxD, before, after)
  key_ok = jnp.pad(key_ok_BxN, [(0, 0), (before, after)])
  gk = gv = g_ok = None
  if global_k_BxGxHxD is not None:
    gk, gv = jnp.swapaxes(global_k_BxGxHxD, 1, 2), jnp.swapaxes(global_v_BxGxHxD, 1, 2)
    g_ok = jnp.pad(global_ok_BxNxG, [(0, 0), (0, pad_n), (0, 0)])
  rng = dropout_rng if dropout_rate > 0.0 else None
  qr = None if rel is None else heads_major(rel_q_BxNxHxD, 0, pad_n)
  o = _band_core(band, q, k, v, key_ok, gk, gv, g_ok, rng, qr, rel)
  return _unblock(o, batch)[:, :n]


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


def dilation_groups(dilation: tuple[int, ...]) -> dict[int, list[int]]:
  """{dilation: [heads with it]}, in order of first appearance."""
  groups: dict[int, list[int]] = {}
  for h, d in enumerate(dilation):
    groups.setdefault(d, []).append(h)
  return groups


def to_strided(x_BxNx___, d: int):
  """Positions regrouped by residue mod ``d`` (a dilated window becomes contiguous)."""
  return x_BxNx___ if d == 1 else _to_strided(x_BxNx___, d)


def from_strided(x_BdxMx___, d: int, n: int):
  """Inverse of :func:`to_strided`."""
  return x_BdxMx___ if d == 1 else _from_strided(x_BdxMx___, d, n)


def local_attention(q_BxNxHxD, k_BxNxHxD, v_BxNxHxD, *, valid_BxN, is_global_BxN,
                    gidx: GlobalIndex | None, window: int,
                    dilation: int | Sequence[int] = 1, causal: bool = False,
                    block_size: int = DEFAULT_BLOCK_SIZE, dropout_rate: float = 0.0,
                    dropout_rng=None, relative: relpos.RelativePositions | None = None):
  """Output of the local rows: window (minus global and padded keys) + global keys.

  ``q`` is pre-scaled. Rows at global positions are computed too (callers
  overwrite them with :func:`global_attention`); padded rows are zero. With
  ``relative``, ``q`` holds the content queries (q + u) and the scores gain the
  relative-position term (``relative_position.py``; no global tokens then).
  """
  batch, n, heads, _ = q_BxNxHxD.shape
  left, right = window_radii(window, causal)
  dil = normalize_dilation(dilation, heads)
  key_ok_BxN = valid_BxN & ~is_global_BxN
  pos_N = jnp.arange(n, dtype=jnp.int32)

  use_global = gidx is not None and gidx.index.shape[1] > 0
  if use_global and relative is not None:
    raise ValueError("relative positions are defined for local attention only: "
                     "global_attention_mask must mark no token (max_global_tokens=0)")
  if use_global:
    gk_BxGxHxD = gather_tokens(k_BxNxHxD, gidx)
    gv_BxGxHxD = gather_tokens(v_BxNxHxD, gidx)
    g_ok_BxNxG = jnp.broadcast_to(gidx.valid[:, None, :], (batch, n, gidx.valid.shape[1]))
    if causal:
      g_ok_BxNxG = g_ok_BxNxG & (gidx.index[:, None, :] <= pos_N[None, :, None])

  groups = dilation_groups(dil)
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
    if relative is not None:
      w_r = relative.w_r_ExHxD[:, np.array(hs)] if len(hs) < heads else relative.w_r_ExHxD
      extra = dict(rel_q_BxNxHxD=to_strided(sel(relative.q_BxNxHxD), d),
                   rel_HxWxD=relpos.band_table(w_r, left=left, right=right, dilation=d,
                                               dtype=k.dtype))
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


def global_probs(s_BxHxGxN, *, valid_BxN, gidx: GlobalIndex, causal: bool,
                  dropout_rate: float, dropout_rng, pos_N=None):
  """Masked softmax numerators of the global rows, dropout applied, with the row max
  and the row sum before dropout: (B, H, G, N), (B, H, G), (B, H, G).

  ``pos_N``: the keys' positions (default 0..N-1; a sequence shard passes its own).
  """
  if pos_N is None:
    pos_N = jnp.arange(s_BxHxGxN.shape[-1])
  ok_Bx1xGxN = (valid_BxN[:, None, :] & gidx.valid[:, :, None])[:, None]
  if causal:
    ok_Bx1xGxN = ok_Bx1xGxN & (pos_N[None, None, None, :] <= gidx.index[:, None, :, None])
  s_BxHxGxN = jnp.where(ok_Bx1xGxN, s_BxHxGxN, NEG_INF)
  m_BxHxG = _safe_max(s_BxHxGxN)
  p_BxHxGxN = jnp.exp(s_BxHxGxN - m_BxHxG[..., None])
  l_BxHxG = p_BxHxGxN.sum(axis=-1)
  return _dropout(p_BxHxGxN, dropout_rate, dropout_rng), m_BxHxG, l_BxHxG


def _per_row(x_BxHxG):
  """(B, H, G) row statistics -> (B, G, H, 1), to scale (B, G, H, D) outputs."""
  return jnp.swapaxes(x_BxHxG, 1, 2)[..., None]


def _safe_div(o_BxGxHxD, l_BxHxG):  # rows with no key stay 0
  return o_BxGxHxD / _per_row(jnp.where(l_BxHxG > 0, l_BxHxG, 1.0))


def global_attention(q_BxGxHxD, k_BxNxHxD, v_BxNxHxD, *, valid_BxN, gidx: GlobalIndex,
                     causal: bool = False, dropout_rate: float = 0.0, dropout_rng=None):
  """Output of the global rows: each attends to every valid key (its own Q_g/K_g/V_g).

  ``q`` (pre-scaled) holds the global rows only. Returns (B, G, H, D); unused
  slots are zero.
  """
  acc = _acc(v_BxNxHxD.dtype)
  s_BxHxGxN = jnp.einsum("bghd,bnhd->bhgn", q_BxGxHxD, k_BxNxHxD,
                         preferred_element_type=acc)
  p_BxHxGxN, _, l_BxHxG = global_probs(
      s_BxHxGxN, valid_BxN=valid_BxN, gidx=gidx, causal=causal,
      dropout_rate=dropout_rate, dropout_rng=dropout_rng)
  o_BxGxHxD = jnp.einsum("bhgn,bnhd->bghd", p_BxHxGxN.astype(v_BxNxHxD.dtype), v_BxNxHxD,
                         preferred_element_type=acc)
  return _safe_div(o_BxGxHxD, l_BxHxG).astype(v_BxNxHxD.dtype)


class GlobalPartial(NamedTuple):
  """Unnormalised sums of the global rows over some keys (all, or one shard's)."""

  m: jax.Array  # (B, H, G) row max of the scores the sums are relative to
  l: jax.Array  # (B, H, G) sum of exp(s - m), before dropout: the softmax denominator
  px: jax.Array  # (B, H, G, E) sum of p x, dropout applied
  p: jax.Array  # (B, H, G) sum of p, dropout applied


def global_partial_from_inputs(q_BxGxHxD, x_BxNxE, wk_ExHxD, bk_HxD, *, valid_BxN,
                               gidx: GlobalIndex, causal: bool = False, pos_N=None,
                               dropout_rate: float = 0.0, dropout_rng=None) -> GlobalPartial:
  """The global rows' softmax sums over the keys of ``x``, with K_g = x Wk + bk never
  formed: scores are x (Wk q) + bk.q. Finish with :func:`global_output_from_inputs`."""
  dt = x_BxNxE.dtype
  acc = _acc(dt)
  u_BxGxHxE = jnp.einsum("ehd,bghd->bghe", wk_ExHxD.astype(dt), q_BxGxHxD,
                         preferred_element_type=acc).astype(dt)
  c_BxHxGx1 = jnp.einsum("hd,bghd->bhg", bk_HxD.astype(acc),
                         q_BxGxHxD.astype(acc))[..., None]
  s_BxHxGxN = jnp.einsum("bghe,bne->bhgn", u_BxGxHxE, x_BxNxE,
                         preferred_element_type=acc) + c_BxHxGx1
  p_BxHxGxN, m_BxHxG, l_BxHxG = global_probs(
      s_BxHxGxN, valid_BxN=valid_BxN, gidx=gidx, causal=causal, pos_N=pos_N,
      dropout_rate=dropout_rate, dropout_rng=dropout_rng)
  px_BxHxGxE = jnp.einsum("bhgn,bne->bhge", p_BxHxGxN.astype(dt), x_BxNxE,
                          preferred_element_type=acc)
  return GlobalPartial(m_BxHxG, l_BxHxG, px_BxHxGxE, p_BxHxGxN.sum(axis=-1))


def global_output_from_inputs(part: GlobalPartial, wv_ExHxD, bv_HxD, dtype):
  """(B, G, H, D) outputs from the sums: ((p x) Wv + bv sum(p)) / l, V_g never formed."""
  o_BxGxHxD = jnp.einsum("bhge,ehd->bghd", part.px.astype(dtype), wv_ExHxD.astype(dtype),
                         preferred_element_type=_acc(dtype))
  o_BxGxHxD = o_BxGxHxD + _per_row(part.p) * bv_HxD.astype(_acc(dtype))
  return _safe_div(o_BxGxHxD, part.l).astype(dtype)


def global_attention_from_inputs(q_BxGxHxD, x_BxNxE, wk_ExHxD, bk_HxD, wv_ExHxD, bv_HxD, *,
                                 valid_BxN, gidx: GlobalIndex, causal: bool = False,
                                 dropout_rate: float = 0.0, dropout_rng=None):
  """:func:`global_attention` with K_g = x Wk + bk and V_g = x Wv + bv never formed.

  A global row's scores are x (Wk q) + bk.q, and its output is (p x) Wv + bv sum(p):
  O(N E G H) work instead of the O(N E H D) of projecting every token, the
  better choice while G * H < E (a handful of global tokens). Same values and
  masking as :func:`global_attention`.
  """
  part = global_partial_from_inputs(q_BxGxHxD, x_BxNxE, wk_ExHxD, bk_HxD, valid_BxN=valid_BxN,
                                    gidx=gidx, causal=causal, dropout_rate=dropout_rate,
                                    dropout_rng=dropout_rng)
  return global_output_from_inputs(part, wv_ExHxD, bv_HxD, x_BxNxE.dtype)


def longformer_attention(q, k, v, q_global=None, k_global=None, v_global=None, *,
                         attention_mask, global_attention_mask=None, window: int,
                         dilation: int | Sequence[int] = 1, causal: bool = False,
                         block_size: int = DEFAULT_BLOCK_SIZE,
                         max_global: int | None = None, dropout_rate: float = 0.0,
                         dropout_rng=None, relative_q=None, relative_w=None):
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
    relative_q, relative_w: Transformer-XL relative positions (no global tokens):
      ``relative_q`` (B, N, H, D) the position queries q + v (unscaled; ``q`` then
      holds q + u), ``relative_w`` (E, H, D) the projection W_r of the sinusoids.

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
  gidx = global_index(is_global_BxN, max_global)
  rng_local = rng_global = None
  if dropout_rng is not None:
    rng_local, rng_global = jax.random.split(dropout_rng)
  relative = None
  if relative_q is not None:
    relative = relpos.RelativePositions((relative_q * scale).astype(q.dtype), relative_w)
  out = local_attention((q * scale).astype(q.dtype), k, v, valid_BxN=valid_BxN,
                        is_global_BxN=is_global_BxN, gidx=gidx, window=window,
                        dilation=dilation, causal=causal, block_size=block_size,
                        dropout_rate=dropout_rate, dropout_rng=rng_local, relative=relative)
  if gidx is None:
    return out
  qg = (gather_tokens(q_global, gidx) * scale).astype(q_global.dtype)
  og = global_attention(qg, k_global, v_global, valid_BxN=valid_BxN, gidx=gidx,
                        causal=causal, dropout_rate=dropout_rate, dropout_rng=rng_global)
  return scatter_tokens(out, og, gidx)
