"""The ``scan`` backend of the banded attention: one block of queries at a time.

A ``lax.scan`` over (example, query block): each step reads only the span of
keys its block reaches (one dynamic slice), so a step's scores stay cache-sized
and the program is small whatever the length. The backward pass is hand-written
(flash-attention style): it keeps q, k, v, the output and each row's
log-sum-exp, and recomputes the probabilities block by block. Operands and
result as in ``attention/band.py``.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name
import numpy as np

from longformer_jax.attention import relative_position as relpos
from longformer_jax.attention.band import (NEG_INF, Band, acc_dtype, band_mask,
                                           dropout_keep, unblock, widths)


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


def _step(band: Band, t, q, k, v, key_ok, gk, gv, global_ok, qr, rel) -> _Step:
  """Operands of step t = (example b, query block i), by dynamic slicing."""
  _, h, _, d = q.shape
  b, start = t // band.num_blocks, (t % band.num_blocks) * band.q_block
  take = lambda x, length: jax.lax.dynamic_slice(x, (b, 0, start, 0), (1, h, length, d))[0]
  oks = jax.lax.dynamic_slice(key_ok, (b, start), (1, band.span))
  mask = jnp.asarray(band_mask(band)) & oks
  gks = gvs = gmask = None
  if gk is not None:
    gks, gvs = gk[b], gv[b]
    gmask = jax.lax.dynamic_slice(global_ok, (b, start, 0), (1, band.q_block, gk.shape[2]))[0]
  qrs = None if qr is None else take(qr, band.q_block)
  return _Step(start, take(q, band.q_block), take(k, band.span), take(v, band.span), mask,
               gks, gvs, gmask, qrs, rel)


def _scores(s: _Step, h: int):
  """Head h's masked fp32 scores against the span and the global keys."""
  f32 = acc_dtype(s.q.dtype)
  sc = jnp.dot(s.q[h], s.k[h].T, preferred_element_type=f32)
  if s.qr is not None:  # + (q + v) . r(i - j), from the (Q, W) band of distances
    sc += relpos.skew(jnp.dot(s.qr[h], s.rel[h].T, preferred_element_type=f32), sc.shape[1])
  sc = jnp.where(s.mask, sc, NEG_INF)
  if s.gk is None:
    return sc, None
  sg = jnp.where(s.gmask, jnp.dot(s.q[h], s.gk[h].T, preferred_element_type=f32), NEG_INF)
  return sc, sg


def _keep(band: Band, rng, t, heads: int, score_widths):
  """Step t's dropout keep masks per head, with the edges of each score array in
  them; the backward pass regenerates them from (rng, t)."""
  if rng is None or band.dropout_rate == 0.0:
    return None
  return dropout_keep(band, rng, t, heads, score_widths), np.cumsum((0,) + score_widths)


def _apply_keep(keep, h, j, p):
  if keep is None or p is None:
    return p
  mask, edges = keep
  return p * mask[h, :, edges[j]:edges[j + 1]]


def _band_forward(band: Band, q, k, v, key_ok, gk, gv, global_ok, rng, qr, rel):
  """Scan over (example, query block): output (B*Nb, H, Q, D), log-sum-exp (B*Nb, H, Q).

  Heads are unrolled inside a step: each head's products are plain 2-D matrix
  products, which XLA:CPU runs faster than batched ones, and independent heads
  can run concurrently.
  """
  heads = q.shape[1]

  def step(_, t):
    s = _step(band, t, q, k, v, key_ok, gk, gv, global_ok, qr, rel)
    keep = _keep(band, rng, t, heads, widths(band, gk))
    outs, lses = [], []
    for h in range(heads):
      sc, sg = _scores(s, h)
      m = sc.max(-1) if sg is None else jnp.maximum(sc.max(-1), sg.max(-1))
      m = jnp.where(m > NEG_INF / 2, m, 0.0)[:, None]  # a row with no key gives 0 below
      p = jnp.exp(sc - m)
      pg = None if sg is None else jnp.exp(sg - m)
      denom = p.sum(-1) + (0.0 if pg is None else pg.sum(-1))
      p, pg = _apply_keep(keep, h, 0, p), _apply_keep(keep, h, 1, pg)
      o = jnp.dot(p.astype(v.dtype), s.v[h], preferred_element_type=acc_dtype(v.dtype))
      if pg is not None:
        o += jnp.dot(pg.astype(gv.dtype), s.gv[h], preferred_element_type=acc_dtype(v.dtype))
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
  heads, f32 = q.shape[1], acc_dtype(q.dtype)
  dot = functools.partial(jnp.dot, preferred_element_type=f32)

  def step(carry, xs):
    dk, dv, dgk, dgv, drel = carry
    t, do_t, o_t, lse_t = xs
    s = _step(band, t, q, k, v, key_ok, gk, gv, global_ok, qr, rel)
    keep = _keep(band, rng, t, heads, widths(band, gk))
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
  heads_major = lambda g: None if g is None else unblock(g, q.shape[0]).swapaxes(1, 2)
  return (heads_major(dq), cast(dk, k), cast(dv, v), None, cast(dgk, gk), cast(dgv, gv),
          None, None, heads_major(dqr), cast(drel, rel))


_band_core.defvjp(_band_core_fwd, _band_core_bwd)


def scan_core(band: Band, q, k, v, key_ok, gk, gv, global_ok, rng, qr, rel):
  """(B*Nb, H, Q, D) output of the scan backend (differentiable, hand-written VJP)."""
  return _band_core(band, q, k, v, key_ok, gk, gv, global_ok, rng, qr, rel)
