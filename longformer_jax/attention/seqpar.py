"""Attention under ``shard_map``: sequence parallelism, and kernels per device.

:func:`self_attention` splits a sequence over the ``sequence`` mesh axis;
:func:`heads_parallel` runs each device's examples and heads on their own, which
kernels XLA cannot partition (the ``pallas`` backend) need on any sharded mesh.

Sequence parallelism:

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

The composition is :func:`attention.attend`'s, run inside ``shard_map`` with
:class:`SequenceShard` saying where the keys live. Nothing of length N is
materialised on a device: memory per device is that of an N / P sequence plus
the halos. Gradients come from autodiff through the collectives. Requires C >=
the window reach (one neighbour per side) and dilation 1.
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


class SequenceShard(attn.WholeSequence):
  """Where the keys live inside ``shard_map``: this device's chunk of C positions,
  its neighbours' edge rows, and the global rows held on every device."""

  halo = True

  def __init__(self, size: int, chunk: int):
    self.size, self.chunk = size, chunk
    self.index = jax.lax.axis_index(AXIS)
    self.offset = self.index * chunk

  def positions(self, n: int):
    return self.offset + jnp.arange(n, dtype=jnp.int32)

  def extend(self, x_BxCx___, left: int, right: int):
    return _halo(x_BxCx___, left, right, self.size)

  def gather(self, x_BxCx___, gidx: attn.GlobalIndex):
    return _gather_global(x_BxCx___, self.here(gidx))

  def here(self, gidx: attn.GlobalIndex) -> attn.GlobalIndex:
    return _local_index(gidx, self.offset, self.chunk)

  def merge(self, part: attn.GlobalPartial) -> attn.GlobalPartial:
    return _merge(part)

  def rng(self, key):
    return jax.random.fold_in(key, self.index)


def _check_split(n: int, size: int, left: int, right: int, dilation, relative) -> int:
  """The tokens per device; raises for what the split cannot run."""
  if relative is not None:
    raise ValueError("sequence parallelism (mesh sequence > 1) does not support relative "
                     "positions (position_embedding_type='relative_sinusoidal')")
  if any(d != 1 for d in dilation):
    raise ValueError(f"sequence parallelism needs attention_dilation 1, got {dilation}")
  if n % size:
    raise ValueError(f"sequence parallelism: {n} tokens do not split over {size} devices "
                     "(mesh axis 'sequence')")
  chunk = n // size
  if max(left, right) > chunk:
    raise ValueError(f"sequence parallelism: window reach {max(left, right)} exceeds the "
                     f"{chunk} tokens per device; use fewer 'sequence' devices or a longer "
                     "sequence")
  return chunk


def _global_specs(gidx, global_rows, index_spec, rows_spec, what: str):
  """(gidx, global rows, their shard_map specs); all None without global tokens."""
  if gidx is None or gidx.index.shape[1] == 0:
    return None, None, None, None
  if not isinstance(global_rows, attn.GlobalWeights):
    raise TypeError(f"{what} takes the global rows as attention.GlobalWeights")
  return gidx, global_rows, attn.GlobalIndex(index_spec, index_spec), rows_spec


def self_attention(q_BxNxHxD, k_BxNxHxD, v_BxNxHxD, *, valid_BxN, is_global_BxN,
                   gidx: attn.GlobalIndex | None, global_rows: attn.GlobalWeights | None,
                   window: int, dilation=1, causal: bool = False,
                   block_size: int = attn.DEFAULT_BLOCK_SIZE, impl: str = "auto",
                   dropout_rate: float = 0.0, dropout_rng=None, relative=None, mesh: Mesh,
                   batch_axes):
  """:func:`attention.attend` with the sequence split over ``mesh``'s ``sequence`` axis.

  Same arguments (``global_rows`` as weights: each device sees its own tokens
  only), plus ``batch_axes``, the mesh axes of the batch dimension. Returns
  (B, N, H, D), sequence-sharded.
  """
  size = mesh.shape[AXIS]
  n, heads = q_BxNxHxD.shape[1:3]
  left, right = attn.window_radii(window, causal)
  chunk = _check_split(n, size, left, right, attn.normalize_dilation(dilation, heads),
                       relative)
  rows = P(batch_axes, AXIS, None, None)
  seq = P(batch_axes, AXIS)
  gidx, global_rows, gidx_spec, rows_spec = _global_specs(
      gidx, global_rows, P(batch_axes, None),
      attn.GlobalWeights(P(batch_axes, AXIS, None), *(P(),) * 6), "sequence parallelism")
  rng_spec = P() if dropout_rng is not None else None

  def local(q, k, v, valid, is_global, gidx, global_rows, rng):
    return attn.attend(q, k, v, valid_BxN=valid, is_global_BxN=is_global, gidx=gidx,
                       global_rows=global_rows, window=window, causal=causal,
                       block_size=block_size, impl=impl, dropout_rate=dropout_rate,
                       dropout_rng=rng, seq=SequenceShard(size, chunk))

  fn = jax.shard_map(local, mesh=mesh, out_specs=rows, check_vma=False,
                     in_specs=(rows,) * 3 + (seq, seq, gidx_spec, rows_spec, rng_spec))
  return fn(q_BxNxHxD, k_BxNxHxD, v_BxNxHxD, valid_BxN, is_global_BxN, gidx, global_rows,
            dropout_rng)


def heads_parallel(q_BxNxHxD, k_BxNxHxD, v_BxNxHxD, *, valid_BxN, is_global_BxN,
                   gidx: attn.GlobalIndex | None, global_rows: attn.GlobalWeights | None,
                   mesh: Mesh, batch_axes, head_axes, dropout_rng=None, **kwargs):
  """:func:`attention.attend` inside ``shard_map`` over the batch and head axes.

  Kernels (the ``pallas`` backend's Mosaic / Triton calls) cannot be partitioned
  by XLA; every example and head attends independently, so each device runs them
  on its own examples and heads. ``batch_axes`` / ``head_axes``: the mesh axes of
  those dimensions (None: replicated). Same arguments and result as ``attend``;
  the dropout key is folded with the device's shard, so shards draw their own
  masks.
  """
  dilation = attn.normalize_dilation(kwargs.pop("dilation", 1), q_BxNxHxD.shape[2])
  if len(set(dilation)) > 1:  # per-head dilations would need each device's share
    head_axes = None
  else:
    dilation = dilation[0]
  rows = P(batch_axes, None, head_axes, None)
  seq = P(batch_axes, None)
  w, b = P(None, head_axes, None), P(head_axes, None)
  gidx, global_rows, gidx_spec, rows_spec = _global_specs(
      gidx, global_rows, seq, attn.GlobalWeights(P(batch_axes, None, None), w, b, w, b, w, b),
      "sharded attention")
  rng_spec = P() if dropout_rng is not None else None
  axes = tuple(a for group in (batch_axes, head_axes) if group is not None
               for a in ((group,) if isinstance(group, str) else group))

  def local(q, k, v, valid, is_global, gidx, global_rows, rng):
    if rng is not None and axes:
      rng = jax.random.fold_in(rng, jax.lax.axis_index(axes))
    return attn.attend(q, k, v, valid_BxN=valid, is_global_BxN=is_global, gidx=gidx,
                       global_rows=global_rows, dilation=dilation, dropout_rng=rng,
                       **kwargs)

  fn = jax.shard_map(local, mesh=mesh, out_specs=rows, check_vma=False,
                     in_specs=(rows,) * 3 + (seq, seq, gidx_spec, rows_spec, rng_spec))
  return fn(q_BxNxHxD, k_BxNxHxD, v_BxNxHxD, valid_BxN, is_global_BxN, gidx, global_rows,
            dropout_rng)
