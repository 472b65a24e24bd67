"""The ``pallas`` backend of the banded attention: fused kernels, flash-attention style.

Forward: one program per (example, head, query block). It walks the span of keys
its block reaches in chunks of ``Q`` keys (``ceil(S / Q)`` chunks, never the whole
sequence), then the global keys, with an online fp32 softmax, and writes the
output and each row's log-sum-exp. Backward: a dq kernel over the same chunks, and
a dk/dv kernel per chunk of ``Q`` keys over the query blocks that reach it; the
global keys' gradients (a sum over every query) are small (N x G) XLA products.

Attention dropout (flash-attention style): no mask is stored. Each element's keep
bit is a counter-based hash of the dropout key and its position, recomputed
wherever it is needed (forward, dq, dk/dv kernels, the global keys' XLA
gradients). Element (example-head bh = b*H + h, query row i, key column j):

* row hash r(bh, i) = fmix(fmix(fmix(s0 ^ bh*C_H) ^ s1) ^ i*C_R), (s0, s1) two
  int32 words drawn from the key (``jax.random.bits``). It is computed in XLA
  as a (B, H, Nq, 1) int32 operand, read by the kernels like the log-sum-exp
  column: no scalars, the same on every platform;
* keep iff (fmix(r ^ j*C_K) >>> 8) >= round(rate * 2**24): one murmur3 finaliser
  (wrapping int32 multiplies, xor, logical shifts) per element.

Row i is the query row of the padded (B, H, Nq, D) queries; band key j the index
into the padded key array of ``attention/band.py`` (position p is ``j = p + left``
when the keys carry no halo); global key g is column ``-1 - g``, disjoint from the
band's. Dropout scales the normalised probabilities by 1 / (1 - rate) (the
softmax denominator and the saved log-sum-exp are those without dropout);
:func:`dropout_keep_mask` evaluates the same hash in XLA, for tests. The masks
differ from those of the ``scan`` / ``blocked`` backends (``jax.random``
per block): same distribution, other draws.

Each ``pallas_call`` is lowered per platform: Triton on GPU, Mosaic on TPU, and
Pallas interpret mode elsewhere (CPU), so the same kernels are tested anywhere.
Operands and result as in ``attention/band.py``; scores, softmax and
accumulators are fp32 whatever the input dtype.

Not supported here (errors name the field): relative positions. On GPU the
block sizes must be powers of two (``check_shapes``).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
import numpy as np

from longformer_jax.attention.band import NEG_INF, Band, acc_dtype

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


# The kernels hold one (example, head)'s whole key / query arrays in a TPU core's
# VMEM. The bound on :func:`vmem_bytes` (a conservative estimate: 18 MiB for
# longformer-base at 4,096 tokens, 66 MiB at 16,384) where "auto" stops picking them,
# set from compiles for v5e: 4,096 tokens compile, LED-large's 16,384 do not
# (CompileTimeScopedVmemOom).
TPU_VMEM_BYTES = 32 * 2 ** 20
# TPU v4 (and older) cores have 16 MiB of VMEM: longformer-base at 4,096 tokens needs
# 16.7 MiB there (the v4-128 compile), so the bound is lower.
_SMALL_VMEM_KINDS = ("TPU v2", "TPU v3", "TPU v4")


def vmem_limit(device_kind: str | None) -> int:
  """The :func:`vmem_bytes` bound for kernels on a TPU of ``device_kind``."""
  if device_kind and device_kind.startswith(_SMALL_VMEM_KINDS):
    return TPU_VMEM_BYTES // 2 - 2 ** 20
  return TPU_VMEM_BYTES


def vmem_bytes(seq_len: int, q_block: int, reach: int, head_dim: int, itemsize: int) -> int:
  """Estimated VMEM of the largest kernel (the dk/dv one) for a sequence of ``seq_len``:
  whole queries and output gradients of one (example, head), their log-sum-exp,
  delta and row-hash columns (each padded to 128 lanes of fp32), double-buffered, plus
  a block of keys and values."""
  q_block = min(q_block, -(-seq_len // 8) * 8)
  rows = -(-seq_len // q_block) * q_block + reach
  lanes = -(-head_dim // 128) * 128
  whole = 2 * rows * lanes * itemsize + 3 * rows * 128 * 4
  return 2 * whole + 4 * q_block * lanes * itemsize


def check_supported(relative: bool) -> None:
  if relative:
    raise NotImplementedError(
        "attention_impl='pallas' has no relative positions "
        "(position_embedding_type='relative_sinusoidal'): use attention_impl='scan' / "
        "'blocked'")


def _call(kernel, *, grid, in_specs, out_specs, out_shape, name, flops: float = 0.0,
          exps: float = 0.0):
  """``pallas_call`` compiled for the platform it runs on; interpreted on CPU. ``flops``
  and ``exps`` (its products' FLOPs and exponentials) go into the call's cost estimate,
  which XLA's analyses and ``hlo_cost.py`` read: a kernel is opaque to them."""
  from jax.experimental.pallas import tpu as pltpu
  from jax.experimental.pallas import triton as pltriton

  def build(interpret, params, cost=None):
    return pl.pallas_call(kernel, grid=grid, in_specs=in_specs, out_specs=out_specs,
                          out_shape=out_shape, interpret=interpret, name=name,
                          compiler_params=params, cost_estimate=cost)

  def run(*args):
    nbytes = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves((args, out_shape)))
    cost = None
    if all(jax.core.is_constant_dim(d) for d in (flops, exps, nbytes)):  # not symbolic
      cost = pl.CostEstimate(flops=int(flops), transcendentals=int(exps),
                             bytes_accessed=int(nbytes))
    gpu = build(False, pltriton.CompilerParams(num_warps=4, num_stages=2), cost)
    tpu = build(False, pltpu.CompilerParams(dimension_semantics=("parallel",) * len(grid)),
                cost)
    interpreted = build(True, None)
    return jax.lax.platform_dependent(*args, cuda=gpu, rocm=gpu, tpu=tpu,
                                      default=interpreted)
  return run


def _dot(a, b):
  return jnp.dot(a, b, preferred_element_type=acc_dtype(a.dtype))


def _dot_t(a, b, contract: int = 1):
  """a @ b.T (``contract=1``) or a.T @ b (``contract=0``), without a transpose."""
  return jax.lax.dot_general(a, b, (((contract,), (contract,)), ((), ())),
                             preferred_element_type=acc_dtype(a.dtype))


# Attention dropout: a counter-based hash (see the module docstring). Constants are
# written as their int32 values; int32 products wrap, on every platform.
_FMIX_1, _FMIX_2 = -2048144789, -1028477387  # 0x85ebca6b, 0xc2b2ae35 (murmur3's fmix32)
_MUL_HEAD, _MUL_ROW = 374761393, 668265263  # 0x165667b1, 0x27d4eb2f
_MUL_KEY = -1640531527  # 0x9e3779b9


def _shr(x, n: int):
  return jax.lax.shift_right_logical(x, np.int32(n))


def _fmix(x):
  """murmur3's 32-bit finaliser on int32 (a bijection; every input bit reaches every
  output bit)."""
  x = (x ^ _shr(x, 16)) * _FMIX_1
  x = (x ^ _shr(x, 13)) * _FMIX_2
  return x ^ _shr(x, 16)


def _threshold(rate: float) -> int:
  return int(round(rate * (1 << 24)))


def _keep(rows_Rx1, cols_1xK, rate: float):
  """(R, K) bool keep bits of row hashes x key columns (both int32)."""
  bits = _fmix(rows_Rx1 ^ (cols_1xK * _MUL_KEY))
  return _shr(bits, 8) >= _threshold(rate)


def _global_columns(count: int, shape=None):
  """Key columns of the global keys 0..count-1: -1, -2, ... (band keys are >= 0)."""
  shape = shape or (1, count)
  return -1 - jax.lax.broadcasted_iota(jnp.int32, shape, len(shape) - 1)


def _row_hashes(rng, batch: int, heads: int, num_rows: int):
  """(B, H, num_rows, 1) int32 row hashes of the dropout key ``rng``."""
  seed = jax.lax.bitcast_convert_type(jax.random.bits(rng, (2,), jnp.uint32), jnp.int32)
  bh = jnp.arange(batch * heads, dtype=jnp.int32).reshape(batch, heads, 1, 1)
  rows = jnp.arange(num_rows, dtype=jnp.int32).reshape(1, 1, num_rows, 1)
  head = _fmix(_fmix(seed[0] ^ (bh * _MUL_HEAD)) ^ seed[1])
  return _fmix(head ^ (rows * _MUL_ROW))


def dropout_keep_mask(rng, rate: float, batch: int, heads: int, num_rows: int,
                      num_keys: int, num_global: int = 0):
  """The pallas backend's dropout masks, evaluated in XLA with the kernels' hash:
  (B, H, num_rows, num_keys) over the band keys and (B, H, num_rows, num_global) over
  the global keys, fp32, kept elements ``1 / (1 - rate)``, dropped ones 0.

  Coordinates are the kernels' (module docstring): row i is query position i of
  ``attention.banded_attention``'s call, column j of the first mask the key at
  index j of its padded key array (key position p is j = p + left, left capped at
  Nb*Q - 1, when the keys carry no halo), column g of the second global key g.
  ``rng`` is the key that call receives (``dropout_rng``)."""
  rows = _row_hashes(rng, batch, heads, num_rows)
  band = _keep(rows, jnp.arange(num_keys, dtype=jnp.int32)[None], rate)
  glob = _keep(rows, _global_columns(num_global), rate)
  scale = 1.0 / (1.0 - rate)
  return band.astype(jnp.float32) * scale, glob.astype(jnp.float32) * scale


def _chunk_mask(band: Band, c, ok_1xQ):
  """(Q, Q) bool: key ``t = c*Q + col`` of a block's span is within reach of query
  ``row`` (``0 <= t - row <= left + right``) and a valid key."""
  qb = band.q_block
  t = c * qb + jax.lax.broadcasted_iota(jnp.int32, (qb, qb), 1)
  dist = t - jax.lax.broadcasted_iota(jnp.int32, (qb, qb), 0)
  return (dist >= 0) & (dist <= band.left + band.right) & (ok_1xQ != 0)


def _key_columns(first, qb: int):
  """(1, Q) int32 columns of the Q keys from index ``first`` of the key array."""
  return first + jax.lax.broadcasted_iota(jnp.int32, (1, qb), 1)


def _online(carry, s_QxK, mask_QxK, v_KxD, keep_QxK=None):
  """One online-softmax update with masked scores (rows may have no key yet). The
  denominator takes every probability, the output only the kept ones (unscaled)."""
  o, m, l = carry
  s = jnp.where(mask_QxK, s_QxK, NEG_INF)
  m_new = jnp.maximum(m, s.max(-1, keepdims=True))
  p = jnp.where(mask_QxK, jnp.exp(s - m_new), 0.0)
  corr = jnp.exp(m - m_new)  # m <= m_new: 0 when m was NEG_INF and m_new is not
  pv = p if keep_QxK is None else jnp.where(keep_QxK, p, 0.0)
  return (corr * o + _dot(pv.astype(v_KxD.dtype), v_KxD), m_new,
          corr * l + p.sum(-1, keepdims=True))


def _dropped(keep, x, rate: float):
  """``x`` times the scaled keep mask (``x`` itself without dropout)."""
  return x if keep is None else jnp.where(keep, x, 0.0) * (1.0 / (1.0 - rate))


def _split(refs, dropout: bool, has_global: bool):
  """(row hashes, (global k, v, ok), rest) of a kernel's trailing refs."""
  refs = list(refs)
  rows = refs.pop(0) if dropout else None
  glob = tuple(refs.pop(0) for _ in range(3)) if has_global else (None,) * 3
  return rows, glob, refs


def _forward_kernel(q_ref, k_ref, v_ref, ok_ref, *refs, band: Band, chunks: int,
                    has_global: bool):
  rate = band.dropout_rate
  rows_ref, (gk_ref, gv_ref, gok_ref), (o_ref, lse_ref) = _split(refs, rate > 0, has_global)
  qb = band.q_block
  q = q_ref[...]
  first_block = pl.program_id(2)  # the span of query block i starts at key block i
  start = first_block * qb
  rows = None if rows_ref is None else rows_ref[...]  # (Q, 1) int32
  keep = lambda cols: None if rows is None else _keep(rows, cols, rate)

  def step(c, carry):
    block = first_block + c  # key blocks are indexed whole: no unaligned slices
    mask = _chunk_mask(band, c, ok_ref[block])
    return _online(carry, _dot_t(q, k_ref[block]), mask, v_ref[block],
                   keep(_key_columns(start + c * qb, qb)))

  f32 = acc_dtype(q.dtype)
  carry = (jnp.zeros(q.shape, f32), jnp.full((qb, 1), NEG_INF, f32), jnp.zeros((qb, 1), f32))
  carry = jax.lax.fori_loop(0, chunks, step, carry)
  if has_global:
    carry = _online(carry, _dot_t(q, gk_ref[...]), gok_ref[...] != 0, gv_ref[...],
                    keep(_global_columns(gk_ref.shape[0])))
  o, m, l = carry
  found = l > 0
  if rows is not None:  # o holds the kept probabilities' share: rescale it
    o = o * (1.0 / (1.0 - rate))
  o_ref[...] = (o / jnp.where(found, l, 1.0)).astype(o_ref.dtype)
  lse_ref[...] = jnp.where(found, m + jnp.log(jnp.where(found, l, 1.0)), 0.0)


def _dq_kernel(q_ref, k_ref, v_ref, ok_ref, do_ref, lse_ref, delta_ref, *refs,
               band: Band, chunks: int, has_global: bool):
  """dS = P * (M * dO V^T - delta), M the scaled keep mask: with dropout, delta =
  rowsum(dO * O) is still rowsum(P * M * dO V^T), O being the dropped-out output."""
  rate = band.dropout_rate
  rows_ref, (gk_ref, gv_ref, gok_ref), (dq_ref,) = _split(refs, rate > 0, has_global)
  qb = band.q_block
  q, do, lse, delta = q_ref[...], do_ref[...], lse_ref[...], delta_ref[...]
  first_block = pl.program_id(2)  # the span of query block i starts at key block i
  start = first_block * qb
  rows = None if rows_ref is None else rows_ref[...]
  keep = lambda cols: None if rows is None else _keep(rows, cols, rate)

  def grad_scores(s, mask, v, keep):
    p = jnp.where(mask, jnp.exp(s - lse), 0.0)
    return p * (_dropped(keep, _dot_t(do, v), rate) - delta)

  def step(c, dq):
    block = first_block + c
    k = k_ref[block]
    ds = grad_scores(_dot_t(q, k), _chunk_mask(band, c, ok_ref[block]), v_ref[block],
                     keep(_key_columns(start + c * qb, qb)))
    return dq + _dot(ds.astype(k.dtype), k)

  dq = jax.lax.fori_loop(0, chunks, step, jnp.zeros(q.shape, acc_dtype(q.dtype)))
  if has_global:
    gk = gk_ref[...]
    ds = grad_scores(_dot_t(q, gk), gok_ref[...] != 0, gv_ref[...],
                     keep(_global_columns(gk.shape[0])))
    dq = dq + _dot(ds.astype(gk.dtype), gk)
  dq_ref[...] = dq.astype(dq_ref.dtype)


def _dkv_kernel(q_ref, k_ref, v_ref, ok_ref, do_ref, lse_ref, delta_ref, *refs,
                band: Band, chunks: int):
  """Key chunk j is chunk c = j - i of query block i's span, for c < ``chunks``."""
  rate = band.dropout_rate
  rows_ref, _, (dk_ref, dv_ref) = _split(refs, rate > 0, False)
  qb = band.q_block
  j = pl.program_id(2)
  k, v = k_ref[...], v_ref[...]
  ok = ok_ref[j]
  cols = _key_columns(j * qb, qb)

  def step(c, carry):
    dk, dv = carry
    i = j - c
    inside = (i >= 0) & (i < band.num_blocks)
    block = jnp.clip(i, 0, band.num_blocks - 1)  # query rows indexed by whole blocks
    q, do = q_ref[block], do_ref[block]
    keep = None if rows_ref is None else _keep(rows_ref[block], cols, rate)
    mask = _chunk_mask(band, c, ok) & inside
    p = jnp.where(mask, jnp.exp(_dot_t(q, k) - lse_ref[block]), 0.0)
    dv = dv + _dot_t(_dropped(keep, p, rate).astype(do.dtype), do, contract=0)
    ds = p * (_dropped(keep, _dot_t(do, v), rate) - delta_ref[block])
    dk = dk + _dot_t(ds.astype(q.dtype), q, contract=0)
    return dk, dv

  zeros = jnp.zeros(k.shape, acc_dtype(k.dtype))
  dk, dv = jax.lax.fori_loop(0, chunks, step, (zeros, zeros))
  dk_ref[...], dv_ref[...] = dk.astype(dk_ref.dtype), dv.astype(dv_ref.dtype)


class _Layout:
  """Kernel operands from the backend's: keys padded to whole chunks, global slots to
  a power of two (>= 16), masks as int32, one (row, 1) column per log-sum-exp (and
  per row hash)."""

  def __init__(self, band: Band, q, gk):
    self.band, self.batch, self.heads, self.nq, self.dim = band, *q.shape
    self.chunks = -(-band.span // band.q_block)  # key chunks in a block's span
    self.key_blocks = band.num_blocks + self.chunks - 1
    self.nk = self.key_blocks * band.q_block
    self.g = 0 if gk is None else int(max(16, pl.next_power_of_2(gk.shape[2])))

  def keys(self, x_BxHxNkxD):
    """(B, H, key blocks, Q, D): kernels index whole blocks of Q keys, so every load is
    tile-aligned (Mosaic cannot prove a dynamic slice of Q < 128 lanes aligned)."""
    x = jnp.pad(x_BxHxNkxD, [(0, 0), (0, 0), (0, self.nk - x_BxHxNkxD.shape[2]), (0, 0)])
    return self.blocked(x)

  def blocked(self, x_BxHxNxW):
    b, h, n, w = x_BxHxNxW.shape
    return x_BxHxNxW.reshape(b, h, n // self.band.q_block, self.band.q_block, w)

  def key_ok(self, key_ok_BxNk):
    ok = jnp.pad(key_ok_BxNk.astype(jnp.int32), [(0, 0), (0, self.nk - key_ok_BxNk.shape[1])])
    return ok.reshape(self.batch, self.key_blocks, 1, self.band.q_block)  # (B, Nkb, 1, Q)

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

  def blocks_whole(self, count, width=None):
    """All ``count`` blocks of Q rows of one (example, head), indexed in-kernel."""
    return pl.BlockSpec((None, None, count, self.band.q_block, width or self.dim),
                        lambda b, h, i: (b, h, 0, 0, 0))

  def block(self):
    """Block i of Q rows of a blocked (B, H, blocks, Q, D) operand."""
    return pl.BlockSpec((None, None, None, self.band.q_block, self.dim),
                        lambda b, h, i: (b, h, i, 0, 0))

  def ok_whole(self):
    return pl.BlockSpec((None, self.key_blocks, 1, self.band.q_block),
                        lambda b, h, i: (b, 0, 0, 0))

  def global_specs(self):
    qb = self.band.q_block
    return [self.whole(self.g), self.whole(self.g),
            pl.BlockSpec((None, qb, self.g), lambda b, h, i: (b, i, 0))]

  def cost(self, programs: int, products: int, global_products: int = 0) -> dict:
    """``_call``'s cost of ``programs`` programs, each running ``products`` (Q x Q x D)
    products per key chunk and ``global_products`` (Q x G x D) ones (G padded)."""
    qb, d = self.band.q_block, self.dim
    flops = programs * (self.chunks * products * 2 * qb * qb * d
                        + global_products * 2 * qb * self.g * d)
    return dict(flops=flops, exps=programs * (self.chunks * qb * qb
                                              + (qb * self.g if global_products else 0)))

  def out(self, dtype, width=None, length=None):
    return jax.ShapeDtypeStruct((self.batch, self.heads, length or self.nq, width or self.dim),
                                dtype)


def _forward(band: Band, q, k, v, key_ok, gk, gv, global_ok, rows):
  """(B, H, Nq, D) output and (B, H, Nq, 1) fp32 log-sum-exp."""
  lay = _Layout(band, q, gk)
  qb, has_global = band.q_block, gk is not None
  args = [q, lay.keys(k), lay.keys(v), lay.key_ok(key_ok)]
  specs = [lay.rows(qb), lay.blocks_whole(lay.key_blocks), lay.blocks_whole(lay.key_blocks),
           lay.ok_whole()]
  if rows is not None:
    args.append(rows)
    specs.append(lay.column())
  if has_global:
    args += lay.globals_(gk, gv, global_ok)
    specs += lay.global_specs()
  kernel = functools.partial(_forward_kernel, band=band, chunks=lay.chunks,
                             has_global=has_global)
  return _call(kernel, grid=(lay.batch, lay.heads, band.num_blocks), in_specs=specs,
               out_specs=[lay.rows(qb), lay.column()],
               out_shape=[lay.out(v.dtype), lay.out(acc_dtype(q.dtype), width=1)],
               name="longformer_band_forward",
               **lay.cost(lay.batch * lay.heads * band.num_blocks, 2, 2 * has_global))(*args)


def _backward(band: Band, res, do):
  q, k, v, key_ok, gk, gv, global_ok, rows, o, lse = res
  lay = _Layout(band, q, gk)
  qb, has_global = band.q_block, gk is not None
  f32 = acc_dtype(q.dtype)
  # rowsum(dO * O), O the output after dropout: see _dq_kernel
  delta = jnp.sum(do.astype(f32) * o.astype(f32), -1, keepdims=True)  # (B, H, Nq, 1)
  keys = [lay.keys(k), lay.keys(v), lay.key_ok(key_ok)]
  args = [q, *keys, do, lse, delta]
  specs = [lay.rows(qb), lay.blocks_whole(lay.key_blocks), lay.blocks_whole(lay.key_blocks),
           lay.ok_whole(), lay.rows(qb), lay.column(), lay.column()]
  hashes, hash_specs = ([], []) if rows is None else ([rows], [lay.column()])
  dq_args, dq_specs = args + hashes, specs + hash_specs
  if has_global:
    dq_args += lay.globals_(gk, gv, global_ok)
    dq_specs += lay.global_specs()
  dq = _call(functools.partial(_dq_kernel, band=band, chunks=lay.chunks,
                               has_global=has_global),
             grid=(lay.batch, lay.heads, band.num_blocks), in_specs=dq_specs,
             out_specs=lay.rows(qb), out_shape=lay.out(q.dtype), name="longformer_band_dq",
             **lay.cost(lay.batch * lay.heads * band.num_blocks, 3, 3 * has_global))(*dq_args)
  nb = band.num_blocks
  rows_whole, column_whole = lay.blocks_whole(nb), lay.blocks_whole(nb, 1)
  dk, dv = _call(functools.partial(_dkv_kernel, band=band, chunks=lay.chunks),
                 grid=(lay.batch, lay.heads, lay.key_blocks),
                 in_specs=[rows_whole, lay.block(), lay.block(), lay.ok_whole(), rows_whole,
                           column_whole, column_whole] + [column_whole] * len(hashes),
                 out_specs=[lay.rows(qb), lay.rows(qb)],
                 out_shape=[lay.out(k.dtype, length=lay.nk), lay.out(v.dtype, length=lay.nk)],
                 name="longformer_band_dkv",
                 **lay.cost(lay.batch * lay.heads * lay.key_blocks, 4))(
                     *map(lay.blocked, (q,)), *keys, *map(lay.blocked, (do, lse, delta)),
                     *map(lay.blocked, hashes))
  nk = k.shape[2]
  dk, dv = dk[:, :, :nk], dv[:, :, :nk]
  dgk = dgv = None
  if has_global:
    dgk, dgv = _global_key_grads(band, q, gk, gv, global_ok, do, lse, delta, rows)
  return dq, dk, dv, None, dgk, dgv, None, None


def _global_key_grads(band: Band, q, gk, gv, global_ok, do, lse, delta, rows):
  """The global keys' and values' gradients: (N, G) products summed over every query
  (the dq kernel adds the queries' share); with dropout, the kernels' keep bits of
  the global columns, from the same hash."""
  f32, rate = acc_dtype(q.dtype), band.dropout_rate
  keep = None
  if rows is not None:
    keep = _keep(rows, _global_columns(gk.shape[2], (1, 1, 1, gk.shape[2])), rate)
  s = jnp.einsum("bhnd,bhgd->bhng", q, gk, preferred_element_type=f32)
  p = jnp.where(global_ok[:, None], jnp.exp(s - lse), 0.0)
  dv = jnp.einsum("bhng,bhnd->bhgd", _dropped(keep, p, rate).astype(do.dtype), do,
                  preferred_element_type=f32)
  dp = jnp.einsum("bhnd,bhgd->bhng", do, gv, preferred_element_type=f32)
  ds = p * (_dropped(keep, dp, rate) - delta)
  dk = jnp.einsum("bhng,bhnd->bhgd", ds.astype(q.dtype), q, preferred_element_type=f32)
  return dk.astype(gk.dtype), dv.astype(gv.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _band(band, q, k, v, key_ok, gk, gv, global_ok, rows):
  return _forward(band, q, k, v, key_ok, gk, gv, global_ok, rows)[0]


def _band_fwd(band, q, k, v, key_ok, gk, gv, global_ok, rows):
  o, lse = _forward(band, q, k, v, key_ok, gk, gv, global_ok, rows)
  return o, (q, k, v, key_ok, gk, gv, global_ok, rows, o, lse)


_band.defvjp(_band_fwd, _backward)


def pallas_core(band: Band, q, k, v, key_ok, gk, gv, global_ok, rng, qr, rel):
  """(B*Nb, H, Q, D) output of the pallas backend (fused kernels, see the docstring)."""
  check_supported(qr is not None)
  check_shapes(band, q.shape[-1], jax.default_backend())
  batch, heads, nq, dim = q.shape
  rows = None
  if rng is None or band.dropout_rate <= 0.0:
    band = band._replace(dropout_rate=0.0)  # the kernels' one switch
  else:
    rows = _row_hashes(rng, batch, heads, nq)
  o = _band(band, q, k, v, key_ok, gk, gv, global_ok, rows)
  o = o.reshape(batch, heads, band.num_blocks, band.q_block, dim).swapaxes(1, 2)
  return o.reshape(batch * band.num_blocks, heads, band.q_block, dim)
