"""The global side of Longformer attention, as pure functions over arrays.

Global tokens are listed per example in a static number G of slots
(:func:`global_index`). Each global row attends to every valid key with its own
projections Q_g, K_g, V_g (causal mode: keys at or before it), in one fp32
softmax; the sums of that softmax (:class:`GlobalPartial`) can be taken over a
part of the keys and merged by log-sum-exp, which is how a sequence split over
devices computes them (``attention/seqpar.py``). The local rows' side (every row also sees
every global key) is in ``attention/__init__.py``, which composes the two.

Shape suffixes as in ``attention/__init__.py``.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from longformer_jax.attention.band import NEG_INF, acc_dtype


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


# Off only while tracing a program that can hold no host callback (a serialised
# export); that program returns its global counts for its caller to check instead.
_RUNTIME_CHECKS = contextvars.ContextVar("runtime_global_checks", default=True)


@contextlib.contextmanager
def counts_checked_by_caller():
  """Traced code here leaves the run-time global-bound check to its caller."""
  token = _RUNTIME_CHECKS.set(False)
  try:
    yield
  finally:
    _RUNTIME_CHECKS.reset(token)


def check_global_bound(count_B, max_global: int) -> None:
  """Raises when some example has more than ``max_global`` global tokens: eagerly
  for concrete counts, else when the compiled computation runs."""
  if not isinstance(count_B, jax.core.Tracer):
    worst = int(np.max(np.asarray(count_B), initial=0))
    if worst > max_global:
      raise _global_overflow_error(worst, max_global)
    return
  if not _RUNTIME_CHECKS.get():
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


class GlobalMasks(NamedTuple):
  """The two ways rows and global tokens see each other (causal order included)."""

  keys_BxNxG: jax.Array  # bool: global key g may join row n's window softmax
  rows_BxGxN: jax.Array  # bool: global row g may attend to key n


def global_masks(gidx: GlobalIndex, valid_BxN, pos_N, causal: bool) -> GlobalMasks:
  """Which global keys each row sees, and which keys each global row sees, for
  rows / keys at positions ``pos_N``; causal: only keys at or before the query."""
  (batch, slots), n = gidx.index.shape, pos_N.shape[0]
  slot_Bx1xG, pos_1xNx1 = gidx.index[:, None, :], pos_N[None, :, None]
  keys_BxNxG = jnp.broadcast_to(gidx.valid[:, None, :], (batch, n, slots))
  rows_BxNxG = keys_BxNxG & valid_BxN[:, :, None]
  if causal:  # key position <= query position
    keys_BxNxG = keys_BxNxG & (slot_Bx1xG <= pos_1xNx1)
    rows_BxNxG = rows_BxNxG & (pos_1xNx1 <= slot_Bx1xG)
  return GlobalMasks(keys_BxNxG, jnp.swapaxes(rows_BxNxG, 1, 2))


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


def global_probs(s_BxHxGxN, *, valid_BxN, gidx: GlobalIndex, causal: bool,
                  dropout_rate: float, dropout_rng, pos_N=None):
  """Masked softmax numerators of the global rows, dropout applied, with the row max
  and the row sum before dropout: (B, H, G, N), (B, H, G), (B, H, G).

  ``pos_N``: the keys' positions (default 0..N-1; a sequence shard passes its own).
  """
  if pos_N is None:
    pos_N = jnp.arange(s_BxHxGxN.shape[-1], dtype=jnp.int32)
  ok_BxGxN = global_masks(gidx, valid_BxN, pos_N, causal).rows_BxGxN
  s_BxHxGxN = jnp.where(ok_BxGxN[:, None], s_BxHxGxN, NEG_INF)
  m_BxHxG = _safe_max(s_BxHxGxN)
  p_BxHxGxN = jnp.exp(s_BxHxGxN - m_BxHxG[..., None])
  l_BxHxG = p_BxHxGxN.sum(axis=-1)
  return _dropout(p_BxHxGxN, dropout_rate, dropout_rng), m_BxHxG, l_BxHxG


def _per_row(x_BxHxG):
  """(B, H, G) row statistics -> (B, G, H, 1), to scale (B, G, H, D) outputs."""
  return jnp.swapaxes(x_BxHxG, 1, 2)[..., None]


def _safe_div(o_BxGxHxD, l_BxHxG):  # rows with no key stay 0
  return o_BxGxHxD / _per_row(jnp.where(l_BxHxG > 0, l_BxHxG, 1.0))


class GlobalPartial(NamedTuple):
  """Unnormalised sums of the global rows over some keys (all, or one shard's)."""

  m: jax.Array  # (B, H, G) row max of the scores the sums are relative to
  l: jax.Array  # (B, H, G) sum of exp(s - m), before dropout: the softmax denominator
  px: jax.Array  # (B, H, G, F) sum of p v (F = D), or of p x (F = E), dropout applied
  p: jax.Array  # (B, H, G) sum of p, dropout applied


def global_partial(q_BxGxHxD, k_BxNxHxD, v_BxNxHxD, *, valid_BxN, gidx: GlobalIndex,
                   causal: bool = False, pos_N=None, dropout_rate: float = 0.0,
                   dropout_rng=None) -> GlobalPartial:
  """The global rows' softmax sums over the keys ``k`` / values ``v`` (K_g, V_g);
  ``q`` pre-scaled. Finish with :func:`global_output`."""
  acc = acc_dtype(v_BxNxHxD.dtype)
  s_BxHxGxN = jnp.einsum("bghd,bnhd->bhgn", q_BxGxHxD, k_BxNxHxD,
                         preferred_element_type=acc)
  p_BxHxGxN, m_BxHxG, l_BxHxG = global_probs(
      s_BxHxGxN, valid_BxN=valid_BxN, gidx=gidx, causal=causal, pos_N=pos_N,
      dropout_rate=dropout_rate, dropout_rng=dropout_rng)
  pv_BxHxGxD = jnp.einsum("bhgn,bnhd->bhgd", p_BxHxGxN.astype(v_BxNxHxD.dtype), v_BxNxHxD,
                          preferred_element_type=acc)
  return GlobalPartial(m_BxHxG, l_BxHxG, pv_BxHxGxD, p_BxHxGxN.sum(axis=-1))


def global_output(part: GlobalPartial, dtype):
  """(B, G, H, D) outputs from the sums of :func:`global_partial`: (p v) / l."""
  return _safe_div(jnp.swapaxes(part.px, 1, 2), part.l).astype(dtype)


def global_attention(q_BxGxHxD, k_BxNxHxD, v_BxNxHxD, *, valid_BxN, gidx: GlobalIndex,
                     causal: bool = False, dropout_rate: float = 0.0, dropout_rng=None):
  """Output of the global rows: each attends to every valid key (its own Q_g/K_g/V_g).

  ``q`` (pre-scaled) holds the global rows only. Returns (B, G, H, D); unused
  slots are zero.
  """
  part = global_partial(q_BxGxHxD, k_BxNxHxD, v_BxNxHxD, valid_BxN=valid_BxN, gidx=gidx,
                        causal=causal, dropout_rate=dropout_rate, dropout_rng=dropout_rng)
  return global_output(part, v_BxNxHxD.dtype)


def global_partial_from_inputs(q_BxGxHxD, x_BxNxE, wk_ExHxD, bk_HxD, *, valid_BxN,
                               gidx: GlobalIndex, causal: bool = False, pos_N=None,
                               dropout_rate: float = 0.0, dropout_rng=None) -> GlobalPartial:
  """The global rows' softmax sums over the keys of ``x``, with K_g = x Wk + bk never
  formed: scores are x (Wk q) + bk.q. Finish with :func:`global_output_from_inputs`."""
  dt = x_BxNxE.dtype
  acc = acc_dtype(dt)
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
                         preferred_element_type=acc_dtype(dtype))
  o_BxGxHxD = o_BxGxHxD + _per_row(part.p) * bv_HxD.astype(acc_dtype(dtype))
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


class GlobalProjections(NamedTuple):
  """The global rows' own projections of every token, (B, N, H, D) each (unscaled).

  Global rows are handed to ``attention.attend`` as an object with three methods:
  ``query`` (their Q_g), ``partial`` (their softmax sums over the keys at hand) and
  ``output`` (the rows from the merged sums); :class:`GlobalWeights` is the other.
  """

  q_BxNxHxD: jax.Array
  k_BxNxHxD: jax.Array
  v_BxNxHxD: jax.Array

  def query(self, gather, gidx: GlobalIndex):
    """(B, G, H, D) Q_g of the global tokens; ``gather`` as ``WholeSequence.gather``."""
    return gather(self.q_BxNxHxD, gidx)

  def partial(self, q_BxGxHxD, **kw) -> GlobalPartial:
    """:func:`global_partial` of the pre-scaled ``q`` (keyword arguments as there)."""
    return global_partial(q_BxGxHxD, self.k_BxNxHxD, self.v_BxNxHxD, **kw)

  def output(self, part: GlobalPartial):
    """(B, G, H, D) global rows from their (merged) sums."""
    return global_output(part, self.v_BxNxHxD.dtype)


class GlobalWeights(NamedTuple):
  """The global rows from the layer input and the weights of Q_g, K_g, V_g.

  K_g and V_g of every token are formed only when that is the cheaper way: with
  G * H < E (a handful of global tokens) the scores are x (Wk q) + bk.q and the
  outputs (p x) Wv + bv sum(p) (:func:`global_attention_from_inputs`).
  """

  x_BxNxE: jax.Array
  wq_ExHxD: jax.Array
  bq_HxD: jax.Array
  wk_ExHxD: jax.Array
  bk_HxD: jax.Array
  wv_ExHxD: jax.Array
  bv_HxD: jax.Array

  def _factored(self, slots: int) -> bool:
    return slots * self.wk_ExHxD.shape[1] < self.x_BxNxE.shape[-1]

  def _project(self, w_ExHxD, b_HxD, x_BxNxE):
    dt = x_BxNxE.dtype
    return jnp.einsum("bne,ehd->bnhd", x_BxNxE, w_ExHxD.astype(dt)) + b_HxD.astype(dt)

  def query(self, gather, gidx: GlobalIndex):
    """(B, G, H, D) Q_g of the global tokens; ``gather`` as ``WholeSequence.gather``."""
    return self._project(self.wq_ExHxD, self.bq_HxD, gather(self.x_BxNxE, gidx))

  def partial(self, q_BxGxHxD, **kw) -> GlobalPartial:
    x = self.x_BxNxE
    if self._factored(q_BxGxHxD.shape[1]):
      return global_partial_from_inputs(q_BxGxHxD, x, self.wk_ExHxD, self.bk_HxD, **kw)
    return global_partial(q_BxGxHxD, self._project(self.wk_ExHxD, self.bk_HxD, x),
                          self._project(self.wv_ExHxD, self.bv_HxD, x), **kw)

  def output(self, part: GlobalPartial):
    dt = self.x_BxNxE.dtype
    if self._factored(part.m.shape[2]):
      return global_output_from_inputs(part, self.wv_ExHxD, self.bv_HxD, dt)
    return global_output(part, dt)
