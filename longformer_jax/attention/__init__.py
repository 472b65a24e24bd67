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

:func:`attend` is the one entry point: the model, the sequence-parallel path
(``attention/seqpar.py``) and :func:`longformer_attention` all call it. The local part is
blocked: each block of ``block_size`` queries reads only the contiguous span of
keys its window reaches, so memory and time are O(n * (w + block_size) + n * G)
for G global slots; nothing of size n x n exists, forward or backward. How the
blocks are run is a named backend (``attention_impl``): ``scan`` (one block at a
time, ``attention/scan.py``) or ``blocked`` (all at once, ``attention/blocked.py``).
Scores and softmax are fp32 whatever the input dtype; products of probabilities
and values accumulate in fp32.

Shape suffixes: B batch, N sequence, H heads, D head dim, G global slots,
Nb query blocks, Q block size, S keys in a block's span, E model width.
"""

from __future__ import annotations

import functools
import math
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from longformer_jax.attention import blocked as attention_blocked
from longformer_jax.attention import grid2d
from longformer_jax.attention import pallas as attention_pallas
from longformer_jax.attention import scan as attention_scan
from longformer_jax.attention import relative_position as relpos
from longformer_jax.attention.band import NEG_INF, Band, unblock  # noqa: F401
from longformer_jax.attention.grid2d import Grid2D  # noqa: F401
# The global side, re-exported: callers see one attention module.
from longformer_jax.attention.global_tokens import (  # noqa: F401
    GlobalIndex, GlobalMasks, GlobalPartial, GlobalProjections, GlobalWeights,
    check_global_bound, count_global, gather_tokens, global_attention,
    global_attention_from_inputs, global_index, global_masks, global_output,
    global_output_from_inputs, global_partial, global_partial_from_inputs, global_probs,
    scatter_tokens)

DEFAULT_BLOCK_SIZE = 128


def window_radii(window: int, causal: bool) -> tuple[int, int]:
  """(left, right) reach of a local row, in (dilated) steps."""
  if window < 0 or (not causal and window % 2):
    raise ValueError(
        f"attention_window must be a non-negative even number, got {window}")
  return (window, 0) if causal else (window // 2, window // 2)


# The backends of the banded part, by name: same operands, same result
# (``attention/band.py``), checked against one float64 oracle.
_BACKENDS = {"scan": attention_scan.scan_core, "blocked": attention_blocked.blocked_core,
             "pallas": attention_pallas.pallas_core}
ATTENTION_IMPLS = ("auto", "scan", "blocked", "pallas")


def check_impl(impl: str) -> None:
  """Raises unless ``impl`` names an available backend ("auto" is not resolved here)."""
  if impl not in ATTENTION_IMPLS:
    raise ValueError(f"attention_impl={impl!r} is not one of {ATTENTION_IMPLS}")


def resolve_impl(impl: str, platform: str | None = None, *, relative: bool = False,
                 kernel_vmem: int = 0, device_kind: str | None = None) -> str:
  """The backend ``impl`` names on ``platform`` (default: the default backend's).

  "auto": ``scan`` on CPU, where a loop over cache-sized blocks is fastest;
  ``pallas`` on TPU unless the scores take ``relative`` positions (which the
  kernels lack) or the kernels' VMEM (``kernel_vmem``, ``attention_pallas.vmem_bytes``)
  exceeds what a core of ``device_kind`` (default: this host's) holds: fused kernels
  that keep scores in VMEM;
  ``blocked`` otherwise (GPU, and those cases on TPU), one large batched product.
  """
  check_impl(impl)
  if impl != "auto":
    return impl
  platform = platform or jax.default_backend()
  if platform == "cpu":
    return "scan"
  if platform == "tpu" and device_kind is None:
    device_kind = jax.devices()[0].device_kind
  if (platform == "tpu" and not relative
      and kernel_vmem <= attention_pallas.vmem_limit(device_kind)):
    return "pallas"
  return "blocked"


def banded_attention(q_BxNxHxD, k_BxNxHxD, v_BxNxHxD, key_ok_BxN, *, left: int,
                     right: int, block_size: int, global_k_BxGxHxD=None,
                     global_v_BxGxHxD=None, global_ok_BxNxG=None,
                     dropout_rate: float = 0.0, dropout_rng=None, halo: bool = False,
                     rel_q_BxNxHxD=None, rel_HxWxD=None, impl: str = "auto"):
  """Banded attention of one dilation group (positions already contiguous).

  Row i attends to keys j with ``i - left <= j <= i + right`` and
  ``key_ok[j]``, plus the extra (global) keys where ``global_ok[i, g]``, all in
  one softmax. ``q`` is pre-scaled. Returns (B, N, H, D) in ``v``'s dtype.

  With ``rel_q`` (pre-scaled) and ``rel`` (row o + left for key j = i + o, W =
  left + right + 1 rows), the score of (i, j) gains ``rel_q[i] . rel[j - i + left]``
  (``attention/relative_position.py``).

  With ``halo``, ``k``, ``v`` and ``key_ok`` already hold ``left`` positions
  before the N queries and ``right`` after them (a sequence shard plus its
  neighbours' edges, see ``attention/seqpar.py``); otherwise keys beyond the ends are absent.

  Queries go in blocks of ``block_size``, each reading the contiguous span of
  ``block_size + left + right`` keys it reaches; ``impl`` names the backend that
  runs the blocks (:func:`resolve_impl`).
  """
  core = _BACKENDS[resolve_impl(
      impl, relative=rel_HxWxD is not None, kernel_vmem=attention_pallas.vmem_bytes(
          q_BxNxHxD.shape[1], block_size, left + right, q_BxNxHxD.shape[-1],
          q_BxNxHxD.dtype.itemsize))]
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
  band = Band(q_block, nb, left, right, float(dropout_rate))
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
  o = core(band, q, k, v, key_ok, gk, gv, g_ok, rng, qr, rel)
  return unblock(o, batch)[:, :n]



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


class WholeSequence:
  """Where the keys of :func:`attend` live: here, the whole sequence.

  ``seqpar.SequenceShard`` overrides these for one device's chunk of a sequence
  split over devices: its halo of neighbours' keys, the global rows gathered from
  every device, the global rows' partial sums merged across devices.
  """

  halo = False  # keys arrive extended by the window's reach (``banded_attention``)

  def positions(self, n: int) -> jax.Array:
    """(N,) int32 positions of the rows held here."""
    return jnp.arange(n, dtype=jnp.int32)

  def extend(self, x_BxNx___, left: int, right: int):
    """Keys (or their masks) with the ``left`` / ``right`` rows beyond the ends."""
    del left, right
    return x_BxNx___

  def gather(self, x_BxNx___, gidx: GlobalIndex):
    """(B, G, ...) rows at the global positions."""
    return gather_tokens(x_BxNx___, gidx)

  def here(self, gidx: GlobalIndex) -> GlobalIndex:
    """The global positions held here, as indices into the rows held here."""
    return gidx

  def merge(self, part: GlobalPartial) -> GlobalPartial:
    """The global rows' softmax sums over every key, from the sums over the keys here."""
    return part

  def rng(self, key):
    """The dropout key of the rows held here."""
    return key


WHOLE = WholeSequence()


def local_attention(q_BxNxHxD, k_BxNxHxD, v_BxNxHxD, *, valid_BxN, is_global_BxN,
                    gidx: GlobalIndex | None, window: int,
                    dilation: int | Sequence[int] = 1, causal: bool = False,
                    block_size: int = DEFAULT_BLOCK_SIZE, impl: str = "auto",
                    dropout_rate: float = 0.0, dropout_rng=None,
                    relative: relpos.RelativePositions | None = None,
                    seq: WholeSequence = WHOLE):
  """Output of the local rows: window (minus global and padded keys) + global keys.

  ``q`` is pre-scaled. Rows at global positions are computed too (:func:`attend`
  overwrites them with the global rows); padded rows are zero. With ``relative``,
  ``q`` holds the content queries (q + u) and the scores gain the relative-position
  term (``attention/relative_position.py``; no global tokens then).
  """
  n, heads = q_BxNxHxD.shape[1:3]
  left, right = window_radii(window, causal)
  dil = normalize_dilation(dilation, heads)
  use_global = gidx is not None and gidx.index.shape[1] > 0
  if use_global and relative is not None:
    raise ValueError("relative positions are defined for local attention only: "
                     "global_attention_mask must mark no token (max_global_tokens=0)")
  if seq.halo and set(dil) != {1}:
    raise ValueError(f"sequence parallelism needs attention_dilation 1, got {dil}")
  glob = None
  if use_global:  # every row's softmax also takes the global keys, scored with K / V
    glob = (seq.gather(k_BxNxHxD, gidx), seq.gather(v_BxNxHxD, gidx),
            global_masks(gidx, valid_BxN, seq.positions(n), causal).keys_BxNxG)
  band = functools.partial(banded_attention, left=left, right=right, block_size=block_size,
                           impl=impl, dropout_rate=dropout_rate, halo=seq.halo)
  groups = dilation_groups(dil)
  rngs = (list(jax.random.split(dropout_rng, len(groups))) if dropout_rng is not None
          else [None] * len(groups))
  outputs, order = [], []
  for (d, hs), rng in zip(groups.items(), rngs):
    pick = (lambda x: x) if len(hs) == heads else (lambda x, hs=hs: x[:, :, np.array(hs)])
    outputs.append(_dilation_group(
        band, d, pick, q_BxNxHxD, k_BxNxHxD, v_BxNxHxD, valid_BxN & ~is_global_BxN, glob,
        relative, seq, rng))
    order.extend(hs)
  o_BxNxHxD = outputs[0] if len(outputs) == 1 else jnp.concatenate(outputs, axis=2)
  if order != sorted(order):
    o_BxNxHxD = o_BxNxHxD[:, :, np.argsort(order)]
  return jnp.where(valid_BxN[:, :, None, None], o_BxNxHxD, 0).astype(v_BxNxHxD.dtype)


def _dilation_group(band: Callable, d: int, pick: Callable, q, k, v, key_ok_BxN, glob,
                    relative, seq: WholeSequence, rng):
  """:func:`banded_attention` of the heads ``pick`` selects, all of dilation ``d``:
  positions regrouped by residue mod d so that their windows are contiguous."""
  n = q.shape[1]
  left, right = band.keywords["left"], band.keywords["right"]
  strided = lambda x: to_strided(x, d)
  keys = lambda x: seq.extend(strided(x), left, right)
  extra = {}
  if glob is not None:
    gk, gv, g_ok = glob
    repeat = lambda x: x if d == 1 else jnp.repeat(x, d, axis=0)  # one per residue
    extra = dict(global_k_BxGxHxD=repeat(pick(gk)), global_v_BxGxHxD=repeat(pick(gv)),
                 global_ok_BxNxG=strided(g_ok))
  if relative is not None:
    w_r = pick(relative.w_r_ExHxD[None])[0]
    extra = dict(rel_q_BxNxHxD=strided(pick(relative.q_BxNxHxD)),
                 rel_HxWxD=relpos.band_table(w_r, left=left, right=right, dilation=d,
                                             dtype=k.dtype))
  o = band(strided(pick(q)), keys(pick(k)), keys(pick(v)), keys(key_ok_BxN),
           dropout_rng=rng, **extra)
  return from_strided(o, d, n)


def attend(q_BxNxHxD, k_BxNxHxD, v_BxNxHxD, *, valid_BxN, is_global_BxN,
           gidx: GlobalIndex | None, global_rows: GlobalProjections | GlobalWeights | None,
           window: int, dilation: int | Sequence[int] = 1, causal: bool = False,
           block_size: int = DEFAULT_BLOCK_SIZE, impl: str = "auto",
           dropout_rate: float = 0.0, dropout_rng=None,
           relative: relpos.RelativePositions | None = None, seq: WholeSequence = WHOLE,
           grid: Grid2D | None = None):
  """Longformer self-attention: the local rows (window + global keys), then the
  global rows (``global_rows``: their Q_g, K_g, V_g) written over them.

  ``q``, ``k``, ``v`` (B, N, H, D) are unscaled; so are ``relative.q_BxNxHxD``
  (then ``q`` holds q + u) and the global queries. ``gidx`` lists the global
  tokens (:func:`global_index`), ``is_global_BxN`` marks them. ``impl`` names
  the banded backend (:func:`resolve_impl`). ``seq`` says where the keys live
  (the whole sequence, or a device's chunk of it: ``attention/seqpar.py``). ``grid``
  makes the sequence a 2-D patch grid whose local rows attend to a neighbourhood
  (``attention/grid2d.py``) instead of a window (``window``, ``dilation`` and ``impl``
  are not read then). Returns (B, N, H, D) in ``v``'s dtype (or the global rows', if
  wider), padded rows zero.
  """
  check_impl(impl)
  scale = 1.0 / math.sqrt(q_BxNxHxD.shape[-1])
  scaled = lambda t: (t * scale).astype(t.dtype)
  rng_local = rng_global = None
  if dropout_rng is not None:
    rng_local, rng_global = jax.random.split(seq.rng(dropout_rng))
  if relative is not None:
    relative = relative._replace(q_BxNxHxD=scaled(relative.q_BxNxHxD))
  if grid is not None:
    out = grid2d.local_attention(
        scaled(q_BxNxHxD), k_BxNxHxD, v_BxNxHxD, grid=grid, valid_BxN=valid_BxN,
        is_global_BxN=is_global_BxN, gidx=gidx, causal=causal,
        relative=relative is not None, split=seq is not WHOLE,
        dropout_rate=dropout_rate, dropout_rng=rng_local)
  else:
    out = local_attention(
        scaled(q_BxNxHxD), k_BxNxHxD, v_BxNxHxD, valid_BxN=valid_BxN,
        is_global_BxN=is_global_BxN, gidx=gidx, window=window, dilation=dilation,
        causal=causal, block_size=block_size, impl=impl, dropout_rate=dropout_rate,
        dropout_rng=rng_local, relative=relative, seq=seq)
  if gidx is None or gidx.index.shape[1] == 0:
    return out
  if global_rows is None:
    raise ValueError("global tokens need the global rows' projections (q_global, "
                     "k_global, v_global)")
  qg_BxGxHxD = scaled(global_rows.query(seq.gather, gidx))
  part = global_rows.partial(qg_BxGxHxD, valid_BxN=valid_BxN, gidx=gidx, causal=causal,
                             pos_N=seq.positions(q_BxNxHxD.shape[1]),
                             dropout_rate=dropout_rate, dropout_rng=rng_global)
  og_BxGxHxD = global_rows.output(seq.merge(part))
  out = out.astype(jnp.promote_types(out.dtype, og_BxGxHxD.dtype))
  return scatter_tokens(out, og_BxGxHxD, seq.here(gidx))


def longformer_attention(q, k, v, q_global=None, k_global=None, v_global=None, *,
                         attention_mask, global_attention_mask=None, window: int,
                         dilation: int | Sequence[int] = 1, causal: bool = False,
                         block_size: int = DEFAULT_BLOCK_SIZE,
                         max_global: int | None = None, dropout_rate: float = 0.0,
                         dropout_rng=None, relative_q=None, relative_w=None,
                         impl: str = "auto"):
  """:func:`attend` from per-token projections and HF-style masks.

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
    impl: the banded backend, "auto" | "scan" | "blocked" (:func:`resolve_impl`).

  Returns:
    (B, N, H, D) in ``v``'s dtype.
  """
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
  relative = None
  if relative_q is not None:
    relative = relpos.RelativePositions(relative_q.astype(q.dtype), relative_w)
  global_rows = None
  if q_global is not None:
    global_rows = GlobalProjections(q_global, k_global, v_global)
  return attend(q, k, v, valid_BxN=valid_BxN, is_global_BxN=is_global_BxN,
                gidx=global_index(is_global_BxN, max_global), global_rows=global_rows,
                window=window, dilation=dilation, causal=causal, block_size=block_size,
                impl=impl, dropout_rate=dropout_rate, dropout_rng=dropout_rng,
                relative=relative)
