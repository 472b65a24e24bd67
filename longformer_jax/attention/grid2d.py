"""The local part of attention over a 2-D patch grid: neighbourhood + global keys.

Semantics (Vision Longformer's local attention, NATTEN's neighbourhood attention):

* The sequence is ``num_prefix`` tokens (a CLS token, ...), all global, then an
  H x W grid of patches in row-major order (:class:`Grid2D`).
* Patch (i, j) attends to a kh x kw neighbourhood of the grid. Along an axis of
  length L with kernel k and dilation d, the positions of one residue r = i mod d
  form a line of their own (r, r + d, r + 2d, ...); the neighbourhood is k
  consecutive members of that line, centred on i and shifted inwards at the ends
  (clamped, not cut), so every patch sees exactly kh * kw patches.
* Every patch also attends to every global key (``attention/global_tokens.py``),
  in the same softmax; a global patch inside a neighbourhood is counted once (it
  is removed from the neighbourhood). The global rows (prefix tokens and global
  patches) are computed and written over the patches' rows by ``attention.attend``.
* Padded keys are never attended to; padded rows give zeros, never NaN.

Blocks: the queries are tiled, per axis, into runs of Q consecutive members of one
residue line. Because a clamped start moves by at most one member per query, a
tile of Qr x Qc queries reaches only a span of Sr x Sc = (Qr + kh - 1) x
(Qc + kw - 1) keys, gathered with one static index; the tile's scores (Q, S) are
masked with the outer product of two per-axis tables. Memory is O(P * S) scores
and O(P * S / Q) gathered keys per head for P = H * W patches: nothing of size
P x P, forward or backward (plain autodiff of gathers). Scores and softmax are
fp32 whatever the input dtype; products with values accumulate in fp32.

Shape suffixes: B batch, N sequence (num_prefix + P), P patches, H heads, D head
dim, G global slots, Nb tiles, Q queries of a tile, S keys of a tile's span, T
tiles of one axis.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from longformer_jax.attention import global_tokens
from longformer_jax.attention.band import NEG_INF, acc_dtype
from longformer_jax.attention.global_tokens import (GlobalIndex, gather_tokens,
                                                    global_masks)


def _pair(value, name: str) -> tuple[int, int]:
  """(a, b) from an int (repeated) or a pair of ints; ``name`` names the field."""
  pair = (value, value) if isinstance(value, (int, np.integer)) else tuple(value)
  if len(pair) != 2 or not all(isinstance(x, (int, np.integer)) for x in pair):
    raise ValueError(f"Grid2D.{name} must be an int or a pair of ints, got {value!r}")
  return int(pair[0]), int(pair[1])


@dataclasses.dataclass(frozen=True)
class Grid2D:
  """A row-major grid of patches after ``num_prefix`` global tokens: the geometry of
  ``attention.attend`` for images (hashable, so static under ``jit``)."""

  height: int  # patch rows H
  width: int  # patch columns W
  kernel: tuple[int, int] = (7, 7)  # neighbourhood (rows, columns), odd each
  dilation: tuple[int, int] = (1, 1)  # step between neighbours (rows, columns)
  num_prefix: int = 0  # tokens before the grid (a CLS token...); each must be global
  block: tuple[int, int] = (8, 8)  # query tile (rows, columns): memory and speed only

  def __post_init__(self):
    for name in ("kernel", "dilation", "block"):
      object.__setattr__(self, name, _pair(getattr(self, name), name))
    for name in ("height", "width"):
      if not isinstance(getattr(self, name), (int, np.integer)) or getattr(self, name) < 1:
        raise ValueError(f"Grid2D.{name} must be a positive int, got {getattr(self, name)!r}")
    if not isinstance(self.num_prefix, (int, np.integer)) or self.num_prefix < 0:
      raise ValueError(f"Grid2D.num_prefix must be an int >= 0, got {self.num_prefix!r}")
    if min(self.dilation) < 1 or min(self.block) < 1:
      raise ValueError(f"Grid2D.dilation and Grid2D.block must be positive, got "
                       f"{self.dilation} and {self.block}")
    for k in self.kernel:
      if k < 1 or k % 2 == 0:
        raise ValueError(f"Grid2D.kernel must be odd and positive, got {self.kernel}")
    for axis, length, k, d in zip(("height", "width"), (self.height, self.width),
                                  self.kernel, self.dilation):
      if k * d > length:  # some residue line would be shorter than the kernel
        raise ValueError(f"Grid2D.kernel {self.kernel} x dilation {self.dilation} must fit "
                         f"in the grid: {k} * {d} > {axis} {length}")

  @property
  def num_patches(self) -> int:
    return self.height * self.width

  def check_length(self, n: int) -> None:
    """Raises unless a sequence of ``n`` tokens is this grid (prefix included)."""
    if self.num_prefix + self.num_patches != n:
      raise ValueError(f"Grid2D.height * width + num_prefix = {self.height} * {self.width} "
                       f"+ {self.num_prefix} must equal the sequence length {n}")


def neighbourhood_start(length: int, kernel: int, dilation: int) -> np.ndarray:
  """(L,) first neighbour of each position of one axis (the rest follow every
  ``dilation`` steps): centred on the position within its residue line, clamped."""
  pos = np.arange(length)
  residue, member = pos % dilation, pos // dilation
  line = (length - residue + dilation - 1) // dilation  # members of each one's line
  return residue + dilation * np.clip(member - kernel // 2, 0, line - kernel)


class AxisTiles(NamedTuple):
  """Static tiling of one axis of L positions; L itself stands for "no position"."""

  query_TxQ: np.ndarray  # int: the position of each query of each tile
  key_TxS: np.ndarray  # int: the position of each key of each tile's span
  near_TxQxS: np.ndarray  # bool: key s lies in query q's neighbourhood


def axis_tiles(length: int, kernel: int, dilation: int, block: int) -> AxisTiles:
  """Tiles of up to ``block`` consecutive members of one residue line, with the span
  of ``block + kernel - 1`` members their neighbourhoods reach."""
  longest = -(-length // dilation)
  q = min(block, longest)
  per_line, span = -(-longest // q), q + kernel - 1
  queries, keys, near = [], [], []
  for residue in range(dilation):
    members = len(range(residue, length, dilation))
    member = np.arange(per_line * q)
    start = np.clip(member - kernel // 2, 0, members - kernel)
    position = lambda m, r=residue, n=members: np.where(m < n, r + dilation * m, length)
    for t in range(per_line):
      own_Q = member[t * q:(t + 1) * q]
      span_S = start[t * q] + np.arange(span)  # starts rise by <= 1 per query
      offset_QxS = span_S[None, :] - start[own_Q][:, None]
      queries.append(position(own_Q))
      keys.append(position(span_S))
      near.append((own_Q[:, None] < members) & (offset_QxS >= 0) & (offset_QxS < kernel))
  return AxisTiles(np.stack(queries), np.stack(keys), np.stack(near))


class GridTiles(NamedTuple):
  """Static tiling of the grid: row tiles x column tiles; P stands for "no patch"."""

  query_NbxQ: np.ndarray  # int: the patch of each query of each tile
  key_NbxS: np.ndarray  # int: the patch of each key of each tile's span
  slot_P: np.ndarray  # int: where each patch's query lies among the Nb * Q of them
  rows: AxisTiles
  cols: AxisTiles


@functools.lru_cache(maxsize=64)
def grid_tiles(grid: Grid2D) -> GridTiles:
  """The tiles of ``grid`` (cached: built once per geometry, in numpy)."""
  h, w = grid.height, grid.width
  rows = axis_tiles(h, grid.kernel[0], grid.dilation[0], grid.block[0])
  cols = axis_tiles(w, grid.kernel[1], grid.dilation[1], grid.block[1])

  def patches(r_TrxA, c_TcxB):  # -> (Tr * Tc, A * B) row-major patch indices
    r, c = r_TrxA[:, None, :, None], c_TcxB[None, :, None, :]
    flat = np.where((r < h) & (c < w), r * w + c, h * w)
    return flat.reshape(r_TrxA.shape[0] * c_TcxB.shape[0], -1)

  query_NbxQ = patches(rows.query_TxQ, cols.query_TxQ)
  flat = query_NbxQ.ravel()
  slot_P = np.full(h * w, -1)
  slot_P[flat[flat < h * w]] = np.nonzero(flat < h * w)[0]
  assert (slot_P >= 0).all() and (flat < h * w).sum() == h * w  # each patch once
  return GridTiles(query_NbxQ, patches(rows.key_TxS, cols.key_TxS), slot_P, rows, cols)


def near_mask(tiles: GridTiles) -> jax.Array:
  """(Nb, Q, S) bool: key s of a tile's span is in query q's neighbourhood (the outer
  product of the per-axis tables, formed in the program rather than stored)."""
  r = jnp.asarray(tiles.rows.near_TxQxS)[:, None, :, None, :, None]
  c = jnp.asarray(tiles.cols.near_TxQxS)[None, :, None, :, None, :]
  return (r & c).reshape(tiles.query_NbxQ.shape + (tiles.key_NbxS.shape[1],))


def _patches(x_BxNx___, grid: Grid2D):
  """The patches' rows (B, P + 1, ...), row P zero / False: what "no patch" reads."""
  x = x_BxNx___[:, grid.num_prefix:]
  return jnp.pad(x, [(0, 0), (0, 1)] + [(0, 0)] * (x.ndim - 2))


def _dropout(p, rate: float, rng):
  if rng is None or rate == 0.0:
    return p
  keep = jax.random.bernoulli(rng, 1.0 - rate, p.shape)
  return jnp.where(keep, p / (1.0 - rate), 0.0)


def tiled_attention(q_BxNxHxD, k_BxNxHxD, v_BxNxHxD, key_ok_BxN, *, grid: Grid2D,
                    global_k_BxGxHxD=None, global_v_BxGxHxD=None, global_ok_BxNxG=None,
                    dropout_rate: float = 0.0, dropout_rng=None):
  """(B, P, H, D) outputs of the patches: softmax over their neighbourhood (keys where
  ``key_ok``) and the global keys where ``global_ok``. ``q`` is pre-scaled."""
  tiles = grid_tiles(grid)
  batch, _, heads, dim = q_BxNxHxD.shape
  f32 = acc_dtype(q_BxNxHxD.dtype)
  q_BxNbxQxHxD = _patches(q_BxNxHxD, grid)[:, tiles.query_NbxQ]
  k_BxNbxSxHxD = _patches(k_BxNxHxD, grid)[:, tiles.key_NbxS]
  v_BxNbxSxHxD = _patches(v_BxNxHxD, grid)[:, tiles.key_NbxS]
  ok_BxNbxQxS = near_mask(tiles)[None] & _patches(key_ok_BxN, grid)[:, tiles.key_NbxS][:, :, None]
  s_BxNbxHxQxS = jnp.einsum("bnqhd,bnshd->bnhqs", q_BxNbxQxHxD, k_BxNbxSxHxD,
                            preferred_element_type=f32)
  scores = [jnp.where(ok_BxNbxQxS[:, :, None], s_BxNbxHxQxS, NEG_INF)]
  if global_k_BxGxHxD is not None:
    sg_BxNbxHxQxG = jnp.einsum("bnqhd,bghd->bnhqg", q_BxNbxQxHxD, global_k_BxGxHxD,
                               preferred_element_type=f32)
    ok_BxNbxQxG = _patches(global_ok_BxNxG, grid)[:, tiles.query_NbxQ]
    scores.append(jnp.where(ok_BxNbxQxG[:, :, None], sg_BxNbxHxQxG, NEG_INF))
  m = functools.reduce(jnp.maximum, [s.max(-1) for s in scores])
  # A row with no key gives 0 below; the softmax does not depend on the shift.
  m = jax.lax.stop_gradient(jnp.where(m > NEG_INF / 2, m, 0.0))[..., None]
  probs = [jnp.exp(s - m) for s in scores]
  denom_BxNbxHxQ = sum(p.sum(-1) for p in probs)
  rngs = ([None] * len(probs) if dropout_rng is None
          else list(jax.random.split(dropout_rng, len(probs))))
  probs = [_dropout(p, dropout_rate, rng) for p, rng in zip(probs, rngs)]
  o = jnp.einsum("bnhqs,bnshd->bnhqd", probs[0].astype(v_BxNbxSxHxD.dtype), v_BxNbxSxHxD,
                 preferred_element_type=f32)
  if global_k_BxGxHxD is not None:
    o += jnp.einsum("bnhqg,bghd->bnhqd", probs[1].astype(global_v_BxGxHxD.dtype),
                    global_v_BxGxHxD, preferred_element_type=f32)
  safe = jnp.where(denom_BxNbxHxQ > 0, denom_BxNbxHxQ, 1.0)[..., None]
  o_BxNbxQxHxD = jnp.swapaxes(o / safe, 2, 3).astype(v_BxNxHxD.dtype)
  return o_BxNbxQxHxD.reshape(batch, -1, heads, dim)[:, tiles.slot_P]


def _raise_prefix_not_global(count, num_prefix: int):
  raise ValueError(f"Grid2D.num_prefix: the {num_prefix} prefix tokens must be global "
                   f"(is_global_BxN) wherever valid; {int(count)} are not")


def check_prefix_global(grid: Grid2D, valid_BxN, is_global_BxN) -> None:
  """Raises unless every valid prefix token is global: eagerly for concrete masks,
  else when the compiled computation runs (unless traced under
  ``global_tokens.counts_checked_by_caller``, as the global-token bound)."""
  p = grid.num_prefix
  local_BxP = valid_BxN[:, :p] & ~is_global_BxN[:, :p]
  if not isinstance(local_BxP, jax.core.Tracer):
    if np.asarray(local_BxP).any():
      _raise_prefix_not_global(np.asarray(local_BxP).sum(), p)
    return
  if not global_tokens._RUNTIME_CHECKS.get():  # a program that holds no host callback
    return
  count = local_BxP.sum()
  jax.lax.cond(count > 0, lambda: jax.debug.callback(
      functools.partial(_raise_prefix_not_global, num_prefix=p), count), lambda: None)


def local_attention(q_BxNxHxD, k_BxNxHxD, v_BxNxHxD, *, grid: Grid2D, valid_BxN,
                    is_global_BxN, gidx: GlobalIndex | None, causal: bool = False,
                    relative: bool = False, split: bool = False,
                    dropout_rate: float = 0.0, dropout_rng=None):
  """(B, N, H, D) output of the local rows of a grid: neighbourhood (minus global and
  padded keys) + global keys. ``q`` is pre-scaled. Prefix rows and padded rows are
  zero; rows of global patches are computed too (``attention.attend`` overwrites
  them). ``causal``, ``relative`` (positions) and ``split`` (a sequence over devices)
  have no 2-D meaning here and raise."""
  for name, used in (("causal", causal), ("relative positions", relative),
                     ("sequence parallelism", split)):
    if used:
      raise ValueError(f"{name} is not available with a Grid2D geometry")
  n = valid_BxN.shape[1]
  grid.check_length(n)
  if grid.num_prefix:
    check_prefix_global(grid, valid_BxN, is_global_BxN)
  extra = {}
  if gidx is not None and gidx.index.shape[1] > 0:
    pos_N = jnp.arange(n, dtype=jnp.int32)
    extra = dict(global_k_BxGxHxD=gather_tokens(k_BxNxHxD, gidx),
                 global_v_BxGxHxD=gather_tokens(v_BxNxHxD, gidx),
                 global_ok_BxNxG=global_masks(gidx, valid_BxN, pos_N, False).keys_BxNxG)
  o_BxPxHxD = tiled_attention(q_BxNxHxD, k_BxNxHxD, v_BxNxHxD, valid_BxN & ~is_global_BxN,
                              grid=grid, dropout_rate=dropout_rate, dropout_rng=dropout_rng,
                              **extra)
  o_BxNxHxD = jnp.pad(o_BxPxHxD, [(0, 0), (grid.num_prefix, 0), (0, 0), (0, 0)])
  return jnp.where(valid_BxN[:, :, None, None], o_BxNxHxD, 0).astype(v_BxNxHxD.dtype)
