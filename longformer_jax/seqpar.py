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


def _local_index(gidx: attn.GlobalIndex, offset, chunk: int) -> attn.GlobalIndex:
  """The global positions held by this device, as indices into its chunk."""
  local = gidx.index - offset
  here = gidx.valid & (local >= 0) & (local < chunk)
  return attn.GlobalIndex(jnp.where(here, local, 0), here)


def _gather_global(x_BxCx___, local: attn.GlobalIndex):
  """Rows at the global positions, from whichever device holds them: (B, G, ...)."""
  rows = attn.gather_tokens(x_BxCx___, local)
  here = local.valid.reshape(local.valid.shape + (1,) * (x_BxCx___.ndim - 2))
  return jax.lax.psum(jnp.where(here, rows, 0), AXIS)


def _merge(part: attn.GlobalPartial) -> attn.GlobalPartial:
  """Log-sum-exp merge of the devices' partial sums: each is rescaled to the row max
  over all devices, then summed."""
  m = jax.lax.stop_gradient(jax.lax.pmax(part.m, AXIS))
  w = jnp.where(part.l > 0, jnp.exp(part.m - m), 0.0)  # a device with no key adds 0
  return attn.GlobalPartial(m, jax.lax.psum(part.l * w, AXIS),
                            jax.lax.psum(part.px * w[..., None], AXIS),
                            jax.lax.psum(part.p * w, AXIS))


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
      mine = _local_index(g, offset, chunk)
      g_ok = jnp.broadcast_to(gvalid[:, None, :], (q.shape[0], chunk, gvalid.shape[1]))
      if causal:
        g_ok = g_ok & (gindex[:, None, :] <= pos_C[None, :, None])
      extra = dict(global_k_BxGxHxD=_gather_global(k, mine),
                   global_v_BxGxHxD=_gather_global(v, mine), global_ok_BxNxG=g_ok)
    out = attn.banded_attention(
        q, _halo(k, left, right, size), _halo(v, left, right, size),
        _halo(key_ok, left, right, size), left=left, right=right, block_size=block_size,
        dropout_rate=dropout_rate, dropout_rng=rng_band, halo=True, **extra)
    out = jnp.where(valid[:, :, None, None], out, 0).astype(v.dtype)
    if not use_global:
      return out
    wq, bq, wk, bk, wv, bv = params
    x_g = _gather_global(x, mine)
    qg = ((jnp.einsum("bge,ef->bgf", x_g, wq.astype(x.dtype)) + bq.astype(x.dtype)) * scale)
    qg = qg.reshape(qg.shape[:2] + (heads, dim)).astype(x.dtype)
    part = attn.global_partial_from_inputs(qg, x, wk, bk, valid_BxN=valid, gidx=g,
                                           causal=causal, pos_N=pos_C,
                                           dropout_rate=dropout_rate, dropout_rng=rng_rows)
    og = attn.global_output_from_inputs(_merge(part), wv, bv, x.dtype)
    return attn.scatter_tokens(out, og, mine)

  gindex = gvalid = None
  if use_global:
    gindex, gvalid = gidx.index, gidx.valid
  params = tuple(global_params) if use_global else None
  param_specs = (P(),) * 6 if use_global else None
  fn = jax.shard_map(local, mesh=mesh, out_specs=P(batch_axes, AXIS, None, None),
                     in_specs=specs + glob_specs + (param_specs, rng_spec), check_vma=False)
  return fn(q_BxNxHxD, k_BxNxHxD, v_BxNxHxD, x_BxNxE, valid_BxN, is_global_BxN, gindex,
            gvalid, params, dropout_rng)
