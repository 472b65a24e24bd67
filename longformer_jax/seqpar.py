"""Sequence parallelism: self-attention over a sequence split on the ``sequence`` mesh axis.

Each device holds a contiguous chunk of C = N / P positions. Under
``jax.shard_map`` a device

* receives only the ``left`` / ``right`` edge rows of keys and values from its
  two neighbours (``ppermute``), and runs the banded attention of its own
  queries against its chunk plus those halos;
* collects the global tokens' keys and values with a ``psum`` of masked local
  gathers (each global position lives on exactly one device), so every local
  row sees every global key;
* computes the global rows' partial softmax over its own keys and merges the
  partials across devices by log-sum-exp (``pmax`` of the row maxima, ``psum``
  of the rescaled numerators and denominators).

Nothing of length N is materialised on a device: memory per device is that of
an N / P sequence plus the halos. Gradients come from autodiff through the
collectives. Requires C >= the window reach (one neighbour per side) and
dilation 1.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, PartitionSpec as P

from longformer_jax import attention as attn

AXIS = "sequence"


def _halo(x_BxCx___, left: int, right: int, size: int):
  """(B, C, ...) -> (B, left + C + right, ...) with the neighbours' edge rows
  (zeros / False past the ends of the sequence)."""
  parts = []
  dtype = x_BxCx___.dtype
  x = x_BxCx___.astype(jnp.int8) if dtype == jnp.bool_ else x_BxCx___
  if left:
    parts.append(jax.lax.ppermute(x[:, -left:], AXIS, [(i, i + 1) for i in range(size - 1)]))
  parts.append(x)
  if right:
    parts.append(jax.lax.ppermute(x[:, :right], AXIS, [(i + 1, i) for i in range(size - 1)]))
  return jnp.concatenate(parts, axis=1).astype(dtype)


def _gather_global(x_BxCx___, gidx: attn.GlobalIndex, offset):
  """Rows at the global positions, from whichever device holds them: (B, G, ...)."""
  c = x_BxCx___.shape[1]
  local = gidx.index - offset
  here = gidx.valid & (local >= 0) & (local < c)
  idx = jnp.clip(local, 0, c - 1).reshape(local.shape + (1,) * (x_BxCx___.ndim - 2))
  rows = jnp.take_along_axis(x_BxCx___, idx, axis=1)
  here = here.reshape(here.shape + (1,) * (x_BxCx___.ndim - 2))
  return jax.lax.psum(jnp.where(here, rows, 0), AXIS)


def _global_rows(qg_BxGxHxD, x_BxCxE, wk, bk, wv, bv, *, valid_BxC, gidx, pos_C, causal,
                 dropout_rate, dropout_rng):
  """The global rows (K_g, V_g never formed): a partial softmax over this device's
  keys, merged across devices by log-sum-exp."""
  dt = x_BxCxE.dtype
  acc = jnp.promote_types(dt, jnp.float32)
  u_BxGxHxE = jnp.einsum("ehd,bghd->bghe", wk.astype(dt), qg_BxGxHxD,
                         preferred_element_type=acc).astype(dt)
  c_BxHxGx1 = jnp.einsum("hd,bghd->bhg", bk.astype(acc), qg_BxGxHxD.astype(acc))[..., None]
  s_BxHxGxC = jnp.einsum("bghe,bce->bhgc", u_BxGxHxE, x_BxCxE,
                         preferred_element_type=acc) + c_BxHxGx1
  ok = (valid_BxC[:, None, :] & gidx.valid[:, :, None])[:, None]
  if causal:
    ok = ok & (pos_C[None, None, None, :] <= gidx.index[:, None, :, None])
  s_BxHxGxC = jnp.where(ok, s_BxHxGxC, attn.NEG_INF)
  m_BxHxG = attn._safe_max(s_BxHxGxC)
  p_BxHxGxC = jnp.exp(s_BxHxGxC - m_BxHxG[..., None])
  l_BxHxG = p_BxHxGxC.sum(-1)
  p_BxHxGxC = attn._dropout(p_BxHxGxC, dropout_rate, dropout_rng)
  px_BxHxGxE = jnp.einsum("bhgc,bce->bhge", p_BxHxGxC.astype(dt), x_BxCxE,
                          preferred_element_type=acc)
  psum_BxHxG = p_BxHxGxC.sum(-1)
  # log-sum-exp merge: rescale each device's partial sums to the global row max.
  m_all = jax.lax.stop_gradient(jax.lax.pmax(m_BxHxG, AXIS))
  w_BxHxG = jnp.where(l_BxHxG > 0, jnp.exp(m_BxHxG - m_all), 0.0)
  l_BxHxG = jax.lax.psum(l_BxHxG * w_BxHxG, AXIS)
  px_BxHxGxE = jax.lax.psum(px_BxHxGxE * w_BxHxG[..., None], AXIS)
  psum_BxHxG = jax.lax.psum(psum_BxHxG * w_BxHxG, AXIS)
  o_BxGxHxD = jnp.einsum("bhge,ehd->bghd", px_BxHxGxE.astype(dt), wv.astype(dt),
                         preferred_element_type=acc)
  o_BxGxHxD = o_BxGxHxD + jnp.swapaxes(psum_BxHxG, 1, 2)[..., None] * bv.astype(acc)
  denom = jnp.swapaxes(l_BxHxG, 1, 2)[..., None]
  return (o_BxGxHxD / jnp.where(denom > 0, denom, 1.0)).astype(dt)


def self_attention(q_BxNxHxD, k_BxNxHxD, v_BxNxHxD, x_BxNxE, global_params, *, valid_BxN,
                   is_global_BxN, gidx: attn.GlobalIndex | None, window: int, causal: bool,
                   block_size: int, mesh: Mesh, batch_axes, dropout_rate: float = 0.0,
                   dropout_rng=None):
  """Longformer self-attention with the sequence split over ``mesh``'s ``sequence`` axis.

  ``q`` is pre-scaled; ``global_params`` = (W_qg (E, H*D), b_qg, W_kg (E, H, D),
  b_kg (H, D), W_vg, b_vg), used only when ``gidx`` is given. ``batch_axes``:
  the mesh axes of the batch dimension. Returns (B, N, H, D), sequence-sharded.
  """
  size = mesh.shape[AXIS]
  n, heads, dim = q_BxNxHxD.shape[1:]
  left, right = attn.window_radii(window, causal)
  if n % size:
    raise ValueError(f"sequence parallelism: {n} tokens do not split over {size} devices "
                     "(mesh axis 'sequence')")
  chunk = n // size
  if max(left, right) > chunk:
    raise ValueError(f"sequence parallelism: window reach {max(left, right)} exceeds the "
                     f"{chunk} tokens per device; use fewer 'sequence' devices or a longer "
                     "sequence")
  scale = 1.0 / (dim ** 0.5)
  use_global = gidx is not None and gidx.index.shape[1] > 0
  seq = P(batch_axes, AXIS)
  specs = (P(batch_axes, AXIS, None, None),) * 3 + (P(batch_axes, AXIS, None), seq, seq)
  glob_specs = (P(batch_axes, None), P(batch_axes, None)) if use_global else (None, None)
  rng_spec = P() if dropout_rng is not None else None

  def local(q, k, v, x, valid, is_global, gindex, gvalid, params, rng):
    i = jax.lax.axis_index(AXIS)
    offset = i * chunk
    pos_C = offset + jnp.arange(chunk, dtype=jnp.int32)
    rng_band = rng_rows = None
    if rng is not None:
      rng_band, rng_rows = jax.random.split(jax.random.fold_in(rng, i))
    key_ok = valid & ~is_global
    extra = {}
    if use_global:
      g = attn.GlobalIndex(gindex, gvalid)
      g_ok = jnp.broadcast_to(gvalid[:, None, :], (q.shape[0], chunk, gvalid.shape[1]))
      if causal:
        g_ok = g_ok & (gindex[:, None, :] <= pos_C[None, :, None])
      extra = dict(global_k_BxGxHxD=_gather_global(k, g, offset),
                   global_v_BxGxHxD=_gather_global(v, g, offset), global_ok_BxNxG=g_ok)
    out = attn.banded_attention(
        q, _halo(k, left, right, size), _halo(v, left, right, size),
        _halo(key_ok, left, right, size), left=left, right=right, block_size=block_size,
        dropout_rate=dropout_rate, dropout_rng=rng_band, halo=True, **extra)
    out = jnp.where(valid[:, :, None, None], out, 0).astype(v.dtype)
    if not use_global:
      return out
    wq, bq, wk, bk, wv, bv = params
    x_g = _gather_global(x, g, offset)
    qg = ((jnp.einsum("bge,ef->bgf", x_g, wq.astype(x.dtype)) + bq.astype(x.dtype)) * scale)
    qg = qg.reshape(qg.shape[:2] + (heads, dim)).astype(x.dtype)
    og = _global_rows(qg, x, wk, bk, wv, bv, valid_BxC=valid, gidx=g, pos_C=pos_C,
                      causal=causal, dropout_rate=dropout_rate, dropout_rng=rng_rows)
    local_idx = gindex - offset
    target = jnp.where(gvalid & (local_idx >= 0) & (local_idx < chunk), local_idx, chunk)
    rows = jnp.broadcast_to(jnp.arange(q.shape[0])[:, None], target.shape)
    return out.at[rows, target].set(og.astype(out.dtype), mode="drop")

  gindex = gvalid = None
  if use_global:
    gindex, gvalid = gidx.index, gidx.valid
  params = tuple(global_params) if use_global else None
  param_specs = (P(),) * 6 if use_global else None
  fn = jax.shard_map(local, mesh=mesh, out_specs=P(batch_axes, AXIS, None, None),
                     in_specs=specs + glob_specs + (param_specs, rng_spec), check_vma=False)
  return fn(q_BxNxHxD, k_BxNxHxD, v_BxNxHxD, x_BxNxE, valid_BxN, is_global_BxN, gindex,
            gvalid, params, dropout_rng)
