"""The ``pallas`` backend of the banded attention: fused kernels, flash-attention style.

Forward: one program per (example, head, query block). It walks the span of keys
its block reaches in chunks of ``Q`` keys (``ceil(S / Q)`` chunks, never the whole
sequence), then the global keys, with an online fp32 softmax, and writes the
output and each row's log-sum-exp. Backward: a dq kernel over the same chunks, and
a dk/dv kernel per chunk of ``Q`` keys over the query blocks that reach it; the
global keys' gradients (a sum over every query) are small (N x G) XLA products.

Each ``pallas_call`` is lowered per platform: Triton on GPU, Mosaic on TPU, and
Pallas interpret mode elsewhere (CPU), so the same kernels are tested anywhere.
Operands and result as in ``attention_band.py``; scores, softmax and
accumulators are fp32 whatever the input dtype.

Not supported here (errors name the field): attention dropout and relative
positions. On GPU the block sizes must be powers of two (``check_shapes``).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from longformer_jax.attention_band import NEG_INF, Band, acc_dtype

_PLATFORMS = ("cuda", "rocm", "tpu")


def check_shapes(band: Band, head_dim: int, platform: str) -> None:
  """Raises a ValueError naming the field when ``platform``'s compiler can't tile these
  blocks: Triton (GPU) needs power-of-two tiles of at least 16."""
  if platform not in ("cuda", "rocm"):
    return
  for name, value in (("block_size (the query block, min(block_size, n rounded up to 8))",
                       band.q_block), ("the head dimension (hidden_size / num_heads)",
                                       head_dim)):
    if value < 16 or value & (value - 1):
      raise ValueError(f"attention_impl='pallas' on GPU needs {name} to be a power of "
                       f"two >= 16, got {value}")


def check_supported(dropout_rate: float, relative: bool) -> None:
  if dropout_rate > 0.0:
    raise NotImplementedError(
        "attention_impl='pallas' has no attention dropout: set "
        "attention_probs_dropout_prob=0 or use attention_impl='scan' / 'blocked'")
  if relative:
    raise NotImplementedError(
        "attention_impl='pallas' has no relative positions "
        "(position_embedding_type='relative_sinusoidal'): use attention_impl='scan' / "
        "'blocked'")


def _call(kernel, *, grid, in_specs, out_specs, out_shape, name):
  """``pallas_call`` compiled for the platform it runs on; interpreted on CPU."""
  from jax.experimental.pallas import tpu as pltpu
  from jax.experimental.pallas import triton as pltriton

  def build(interpret, params):
    return pl.pallas_call(kernel, grid=grid, in_specs=in_specs, out_specs=out_specs,
                          out_shape=out_shape, interpret=interpret, name=name,
                          compiler_params=params)

  gpu = build(False, pltriton.CompilerParams(num_warps=4, num_stages=2))
  tpu = build(False, pltpu.CompilerParams(
      dimension_semantics=("parallel",) * len(grid)))
  interpreted = build(True, None)

  def run(*args):
    return jax.lax.platform_dependent(*args, cuda=gpu, rocm=gpu, tpu=tpu,
                                      default=interpreted)
  return run


def _dot(a, b):
  return jnp.dot(a, b, preferred_element_type=acc_dtype(a.dtype))


def _dot_t(a, b, contract: int = 1):
  """a @ b.T (``contract=1``) or a.T @ b (``contract=0``), without a transpose."""
  return jax.lax.dot_general(a, b, (((contract,), (contract,)), ((), ())),
                             preferred_element_type=acc_dtype(a.dtype))


def _chunk_mask(band: Band, c, ok_1xQ):
  """(Q, Q) bool: key ``t = c*Q + col`` of a block's span is within reach of query
  ``row`` (``0 <= t - row <= left + right``) and a valid key."""
  qb = band.q_block
  t = c * qb + jax.lax.broadcasted_iota(jnp.int32, (qb, qb), 1)
  dist = t - jax.lax.broadcasted_iota(jnp.int32, (qb, qb), 0)
  return (dist >= 0) & (dist <= band.left + band.right) & (ok_1xQ != 0)


def _online(carry, s_QxK, mask_QxK, v_KxD):
  """One online-softmax update with masked scores (rows may have no key yet)."""
  o, m, l = carry
  s = jnp.where(mask_QxK, s_QxK, NEG_INF)
  m_new = jnp.maximum(m, s.max(-1, keepdims=True))
  p = jnp.where(mask_QxK, jnp.exp(s - m_new), 0.0)
  corr = jnp.exp(m - m_new)  # m <= m_new: 0 when m was NEG_INF and m_new is not
  return (corr * o + _dot(p.astype(v_KxD.dtype), v_KxD), m_new,
          corr * l + p.sum(-1, keepdims=True))


def _forward_kernel(q_ref, k_ref, v_ref, ok_ref, *refs, band: Band, chunks: int,
                    has_global: bool):
  gk_ref, gv_ref, gok_ref, o_ref, lse_ref = refs if has_global else (None,) * 3 + refs
  qb = band.q_block
  q = q_ref[...]
  start = pl.program_id(2) * qb

  def step(c, carry):
    keys = pl.ds(pl.multiple_of(start + c * qb, qb), qb)
    mask = _chunk_mask(band, c, ok_ref[:, keys])
    return _online(carry, _dot_t(q, k_ref[keys, :]), mask, v_ref[keys, :])

  f32 = acc_dtype(q.dtype)
  carry = (jnp.zeros(q.shape, f32), jnp.full((qb, 1), NEG_INF, f32), jnp.zeros((qb, 1), f32))
  carry = jax.lax.fori_loop(0, chunks, step, carry)
  if has_global:
    carry = _online(carry, _dot_t(q, gk_ref[...]), gok_ref[...] != 0, gv_ref[...])
  o, m, l = carry
  found = l > 0
  o_ref[...] = (o / jnp.where(found, l, 1.0)).astype(o_ref.dtype)
  lse_ref[...] = jnp.where(found, m + jnp.log(jnp.where(found, l, 1.0)), 0.0)


def _dq_kernel(q_ref, k_ref, v_ref, ok_ref, do_ref, lse_ref, delta_ref, *refs,
               band: Band, chunks: int, has_global: bool):
  gk_ref, gv_ref, gok_ref, dq_ref = refs if has_global else (None,) * 3 + refs
  qb = band.q_block
  q, do, lse, delta = q_ref[...], do_ref[...], lse_ref[...], delta_ref[...]
  start = pl.program_id(2) * qb

  def grad_scores(s, mask, v):
    p = jnp.where(mask, jnp.exp(s - lse), 0.0)
    return p * (_dot_t(do, v) - delta)

  def step(c, dq):
    keys = pl.ds(pl.multiple_of(start + c * qb, qb), qb)
    k = k_ref[keys, :]
    ds = grad_scores(_dot_t(q, k), _chunk_mask(band, c, ok_ref[:, keys]), v_ref[keys, :])
    return dq + _dot(ds.astype(k.dtype), k)

  dq = jax.lax.fori_loop(0, chunks, step, jnp.zeros(q.shape, acc_dtype(q.dtype)))
  if has_global:
    gk = gk_ref[...]
    ds = grad_scores(_dot_t(q, gk), gok_ref[...] != 0, gv_ref[...])
    dq = dq + _dot(ds.astype(gk.dtype), gk)
  dq_ref[...] = dq.astype(dq_ref.dtype)


def _dkv_kernel(q_ref, k_ref, v_ref, ok_ref, do_ref, lse_ref, delta_ref, dk_ref, dv_ref,
                *, band: Band, chunks: int):
  """Key chunk j is chunk c = j - i of query block i's span, for c < ``chunks``."""
  qb = band.q_block
  j = pl.program_id(2)
  k, v = k_ref[...], v_ref[...]
  ok = ok_ref[:, pl.ds(pl.multiple_of(j * qb, qb), qb)]

  def step(c, carry):
    dk, dv = carry
    i = j - c
    inside = (i >= 0) & (i < band.num_blocks)
    rows = pl.ds(pl.multiple_of(jnp.clip(i, 0, band.num_blocks - 1) * qb, qb), qb)
    q, do = q_ref[rows, :], do_ref[rows, :]
    mask = _chunk_mask(band, c, ok) & inside
    p = jnp.where(mask, jnp.exp(_dot_t(q, k) - lse_ref[rows, :]), 0.0)
    dv = dv + _dot_t(p.astype(do.dtype), do, contract=0)
    ds = p * (_dot_t(do, v) - delta_ref[rows, :])
    dk = dk + _dot_t(ds.astype(q.dtype), q, contract=0)
    return dk, dv

  zeros = jnp.zeros(k.shape, acc_dtype(k.dtype))
  dk, dv = jax.lax.fori_loop(0, chunks, step, (zeros, zeros))
  dk_ref[...], dv_ref[...] = dk.astype(dk_ref.dtype), dv.astype(dv_ref.dtype)


class _Layout:
  """Kernel operands from the backend's: keys padded to whole chunks, global slots to
  a power of two (>= 16), masks as int32, one (row, 1) column per log-sum-exp."""

  def __init__(self, band: Band, q, gk):
    self.band, self.batch, self.heads, self.nq, self.dim = band, *q.shape
    self.chunks = -(-band.span // band.q_block)  # key chunks in a block's span
    self.key_blocks = band.num_blocks + self.chunks - 1
    self.nk = self.key_blocks * band.q_block
    self.g = 0 if gk is None else int(max(16, pl.next_power_of_2(gk.shape[2])))

  def keys(self, x_BxHxNkxD):
    return jnp.pad(x_BxHxNkxD, [(0, 0), (0, 0), (0, self.nk - x_BxHxNkxD.shape[2]), (0, 0)])

  def key_ok(self, key_ok_BxNk):
    ok = jnp.pad(key_ok_BxNk.astype(jnp.int32), [(0, 0), (0, self.nk - key_ok_BxNk.shape[1])])
    return ok[:, None]  # (B, 1, Nk)

  def globals_(self, gk, gv, global_ok):
    pad = self.g - gk.shape[2]
    slots = lambda x: jnp.pad(x, [(0, 0), (0, 0), (0, pad), (0, 0)])
    return slots(gk), slots(gv), jnp.pad(global_ok.astype(jnp.int32), [(0, 0), (0, 0), (0, pad)])

  # BlockSpecs over grids (B, H, blocks)
  def rows(self, size):
    return pl.BlockSpec((None, None, size, self.dim), lambda b, h, i: (b, h, i, 0))

  def whole(self, length, width=None):
    return pl.BlockSpec((None, None, length, width or self.dim), lambda b, h, i: (b, h, 0, 0))

  def column(self):
    return pl.BlockSpec((None, None, self.band.q_block, 1), lambda b, h, i: (b, h, i, 0))

  def ok_whole(self):
    return pl.BlockSpec((None, 1, self.nk), lambda b, h, i: (b, 0, 0))

  def global_specs(self):
    qb = self.band.q_block
    return [self.whole(self.g), self.whole(self.g),
            pl.BlockSpec((None, qb, self.g), lambda b, h, i: (b, i, 0))]

  def out(self, dtype, width=None, length=None):
    return jax.ShapeDtypeStruct((self.batch, self.heads, length or self.nq, width or self.dim),
                                dtype)


def _forward(band: Band, q, k, v, key_ok, gk, gv, global_ok):
  """(B, H, Nq, D) output and (B, H, Nq, 1) fp32 log-sum-exp."""
  lay = _Layout(band, q, gk)
  qb, has_global = band.q_block, gk is not None
  args = [q, lay.keys(k), lay.keys(v), lay.key_ok(key_ok)]
  specs = [lay.rows(qb), lay.whole(lay.nk), lay.whole(lay.nk), lay.ok_whole()]
  if has_global:
    args += lay.globals_(gk, gv, global_ok)
    specs += lay.global_specs()
  kernel = functools.partial(_forward_kernel, band=band, chunks=lay.chunks,
                             has_global=has_global)
  return _call(kernel, grid=(lay.batch, lay.heads, band.num_blocks), in_specs=specs,
               out_specs=[lay.rows(qb), lay.column()],
               out_shape=[lay.out(v.dtype), lay.out(acc_dtype(q.dtype), width=1)],
               name="longformer_band_forward")(*args)


def _backward(band: Band, res, do):
  q, k, v, key_ok, gk, gv, global_ok, o, lse = res
  lay = _Layout(band, q, gk)
  qb, has_global = band.q_block, gk is not None
  f32 = acc_dtype(q.dtype)
  delta = jnp.sum(do.astype(f32) * o.astype(f32), -1, keepdims=True)  # (B, H, Nq, 1)
  keys = [lay.keys(k), lay.keys(v), lay.key_ok(key_ok)]
  args = [q, *keys, do, lse, delta]
  specs = [lay.rows(qb), lay.whole(lay.nk), lay.whole(lay.nk), lay.ok_whole(),
           lay.rows(qb), lay.column(), lay.column()]
  if has_global:
    args += lay.globals_(gk, gv, global_ok)
    specs += lay.global_specs()
  dq = _call(functools.partial(_dq_kernel, band=band, chunks=lay.chunks,
                               has_global=has_global),
             grid=(lay.batch, lay.heads, band.num_blocks), in_specs=specs,
             out_specs=lay.rows(qb), out_shape=lay.out(q.dtype),
             name="longformer_band_dq")(*args)
  dk, dv = _call(functools.partial(_dkv_kernel, band=band, chunks=lay.chunks),
                 grid=(lay.batch, lay.heads, lay.key_blocks),
                 in_specs=[lay.whole(lay.nq), lay.rows(qb), lay.rows(qb), lay.ok_whole(),
                           lay.whole(lay.nq), lay.whole(lay.nq, 1), lay.whole(lay.nq, 1)],
                 out_specs=[lay.rows(qb), lay.rows(qb)],
                 out_shape=[lay.out(k.dtype, length=lay.nk), lay.out(v.dtype, length=lay.nk)],
                 name="longformer_band_dkv")(q, *keys, do, lse, delta)
  nk = k.shape[2]
  dk, dv = dk[:, :, :nk], dv[:, :, :nk]
  dgk = dgv = None
  if has_global:
    dgk, dgv = _global_key_grads(q, gk, gv, global_ok, do, lse, delta)
  return dq, dk, dv, None, dgk, dgv, None


def _global_key_grads(q, gk, gv, global_ok, do, lse, delta):
  """The global keys' and values' gradients: (N, G) products summed over every query
  (the dq kernel adds the queries' share)."""
  f32 = acc_dtype(q.dtype)
  s = jnp.einsum("bhnd,bhgd->bhng", q, gk, preferred_element_type=f32)
  p = jnp.where(global_ok[:, None], jnp.exp(s - lse), 0.0)
  dv = jnp.einsum("bhng,bhnd->bhgd", p.astype(do.dtype), do, preferred_element_type=f32)
  ds = p * (jnp.einsum("bhnd,bhgd->bhng", do, gv, preferred_element_type=f32) - delta)
  dk = jnp.einsum("bhng,bhnd->bhgd", ds.astype(q.dtype), q, preferred_element_type=f32)
  return dk.astype(gk.dtype), dv.astype(gv.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _band(band, q, k, v, key_ok, gk, gv, global_ok):
  return _forward(band, q, k, v, key_ok, gk, gv, global_ok)[0]


def _band_fwd(band, q, k, v, key_ok, gk, gv, global_ok):
  o, lse = _forward(band, q, k, v, key_ok, gk, gv, global_ok)
  return o, (q, k, v, key_ok, gk, gv, global_ok, o, lse)


_band.defvjp(_band_fwd, _backward)


def pallas_core(band: Band, q, k, v, key_ok, gk, gv, global_ok, rng, qr, rel):
  """(B*Nb, H, Q, D) output of the pallas backend (fused kernels, see the docstring)."""
  check_supported(band.dropout_rate if rng is not None else 0.0, qr is not None)
  check_shapes(band, q.shape[-1], jax.default_backend())
  batch, heads, _, dim = q.shape
  o = _band(band, q, k, v, key_ok, gk, gv, global_ok)
  o = o.reshape(batch, heads, band.num_blocks, band.q_block, dim).swapaxes(1, 2)
  return o.reshape(batch * band.num_blocks, heads, band.q_block, dim)
