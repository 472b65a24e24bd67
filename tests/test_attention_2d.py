"""2-D neighbourhood + global attention (``attend`` with a ``Grid2D``) vs a dense float64
oracle built from an explicit mask, vs NATTEN, and its compiled memory."""

import functools
import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from longformer_jax import attention as attn
from longformer_jax.attention import grid2d

# Programs here are compiled once and run on tiny inputs: LLVM's optimisations (which
# change neither values nor buffer sizes) would cost more time than they save.
jit = functools.partial(jax.jit, compiler_options={"xla_backend_optimization_level": 0})


def natten_window_start(i, length, kernel, dilation):
  """First neighbour of position ``i`` of one axis, as NATTEN's reference kernels write
  it (``get_window_start``): written from there, not from our residue lines."""
  nb = kernel // 2
  if dilation <= 1:
    return max(i - nb, 0) + (i + nb >= length) * (length - i - nb - 1)
  if i - nb * dilation < 0:
    return i % dilation
  if i + nb * dilation >= length:
    imodd = i % dilation
    a = (length // dilation) * dilation
    b = length - a
    if imodd < b:
      return length - b + imodd - 2 * nb * dilation
    return a + imodd - kernel * dilation
  return i - nb * dilation


def neighbourhood_mask(grid: attn.Grid2D) -> np.ndarray:
  """(P, P) bool: patch a's neighbourhood holds patch b, one patch at a time."""
  h, w = grid.height, grid.width
  (kh, kw), (dh, dw) = grid.kernel, grid.dilation
  mask = np.zeros((h * w, h * w), bool)
  for i in range(h):
    for j in range(w):
      r0, c0 = natten_window_start(i, h, kh, dh), natten_window_start(j, w, kw, dw)
      for a in range(kh):
        for b in range(kw):
          mask[i * w + j, (r0 + a * dh) * w + c0 + b * dw] = True
  assert (mask.sum(1) == kh * kw).all()  # clamped: every patch sees a full kernel
  return mask


def oracle_masks(grid, valid, is_global):
  """(B, N, N) keys each local row may see and keys each global row may see."""
  p0 = grid.num_prefix
  near = np.zeros((valid.shape[1],) * 2, bool)
  near[p0:, p0:] = neighbourhood_mask(grid)
  key_ok = valid[:, None, :]
  local = key_ok & ((near[None] & ~is_global[:, None, :]) | is_global[:, None, :])
  return local, np.broadcast_to(key_ok, local.shape)


def dense_oracle(q, k, v, qg, kg, vg, local_ok, global_ok, valid, is_global):
  """float64 dense attention with the explicit (B, N, N) masks (jnp: autodiff gives the
  oracle's gradients)."""
  scale = 1.0 / math.sqrt(q.shape[-1])
  rows_global = is_global[:, None, :, None]  # (B, 1, N, 1)
  s = jnp.where(rows_global, jnp.einsum("bnhd,bmhd->bhnm", qg, kg),
                jnp.einsum("bnhd,bmhd->bhnm", q, k)) * scale
  ok = jnp.where(rows_global, global_ok[:, None], local_ok[:, None])
  s = jnp.where(ok, s, -jnp.inf)
  m = jax.lax.stop_gradient(jnp.where(ok.any(-1, keepdims=True), s.max(-1, keepdims=True), 0))
  p = jnp.where(ok, jnp.exp(s - m), 0.0)
  denom = p.sum(-1, keepdims=True)
  p = p / jnp.where(denom > 0, denom, 1.0)
  o = jnp.where(rows_global.swapaxes(1, 2), jnp.einsum("bhnm,bmhd->bnhd", p, vg),
                jnp.einsum("bhnm,bmhd->bnhd", p, v))
  return o * valid[:, :, None, None]


def ours(grid, valid, is_global, max_global, dtype=jnp.float32):
  """attend over the grid as a function of (q, k, v, q_g, k_g, v_g) in ``dtype``."""

  def f(*xs):
    q, k, v, qg, kg, vg = [x.astype(dtype) for x in xs]
    gidx = attn.global_index(jnp.asarray(is_global), max_global)
    return attn.attend(q, k, v, valid_BxN=jnp.asarray(valid),
                       is_global_BxN=jnp.asarray(is_global), gidx=gidx,
                       global_rows=attn.GlobalProjections(qg, kg, vg), window=0, grid=grid)
  return f


def value_and_vjp(f, arrays, cot, dtype):
  """f(*arrays) and its vjp with ``cot``, as numpy, from one compiled program."""
  run = jit(lambda xs, c: (f(*xs), jax.vjp(f, *xs)[1](c)))
  out, grads = run([jnp.asarray(a, dtype) for a in arrays], jnp.asarray(cot, dtype))
  return np.asarray(out), [np.asarray(g) for g in grads]


# name: (grid, spare global slots, batch, global positions of each example (the prefix is
# added), valid length of each example (others: all valid)).
CASES = {
    # borders clamped on a non-square grid, tiles that split both axes, no global token
    "clamped": (attn.Grid2D(5, 7, kernel=(3, 5), block=(2, 3)), 0, 2, [], []),
    # dilation with residue lines of unequal length, one global patch, padding
    "dilated": (attn.Grid2D(7, 9, kernel=(3, 3), dilation=(2, 3), block=(2, 2)), 0, 2,
                [[10], []], [60, 63]),
    # a CLS prefix, per-example global patches (one inside others' neighbourhoods),
    # padded patches; kernel as wide as the grid
    "prefix": (attn.Grid2D(5, 5, kernel=(3, 5), num_prefix=1, block=(8, 4)), 3, 3,
               [[0, 8, 9], [0, 20]], [22, 26]),
}


@pytest.mark.parametrize("name", list(CASES))
def test_matches_dense_oracle_values_and_grads(name):
  grid, extra, batch, global_rows, lengths = CASES[name]
  n, heads, dim = grid.num_prefix + grid.num_patches, 2, 4
  valid = np.ones((batch, n), bool)
  for e, length in enumerate(lengths):
    valid[e, length:] = False
  is_global = np.zeros((batch, n), bool)
  is_global[:, :grid.num_prefix] = True
  for e, positions in enumerate(global_rows):
    is_global[e, positions] = True
  is_global &= valid
  rng = np.random.default_rng(len(name))
  arrays = [rng.normal(size=(batch, n, heads, dim)) for _ in range(6)]
  cot = rng.normal(size=(batch, n, heads, dim))
  max_global = attn.count_global(is_global) + extra

  out, grads = value_and_vjp(ours(grid, valid, is_global, max_global), arrays, cot,
                             jnp.float32)
  local_ok, global_ok = oracle_masks(grid, valid, is_global)
  with jax.enable_x64(True):
    oracle = lambda *xs: dense_oracle(*xs, local_ok, global_ok, valid, is_global)
    ref, ref_grads = value_and_vjp(oracle, arrays, cot, jnp.float64)

  assert np.isfinite(out).all()
  np.testing.assert_allclose(out, ref, atol=1e-5, rtol=0)
  for g_name, g, r in zip(["q", "k", "v", "q_global", "k_global", "v_global"], grads, ref_grads):
    np.testing.assert_allclose(g, r, atol=1e-5, rtol=0,
                               err_msg=f"gradient of {g_name}")


def test_tiles_hold_every_neighbourhood():
  # The static tiling alone (no attention): each patch's query sits in one tile whose
  # near-mask row is exactly its NATTEN neighbourhood.
  for grid in [attn.Grid2D(11, 13, kernel=(5, 3), dilation=(2, 4), block=(3, 2)),
               attn.Grid2D(6, 6, kernel=(5, 5), block=(1, 1))]:
    tiles = grid2d.grid_tiles(grid)
    near = np.asarray(grid2d.near_mask(tiles))
    mask = neighbourhood_mask(grid)
    for p in range(grid.num_patches):
      tile, q = divmod(int(tiles.slot_P[p]), tiles.query_NbxQ.shape[1])
      keys = tiles.key_NbxS[tile][near[tile, q]]
      assert sorted(keys) == sorted(np.nonzero(mask[p])[0]), p


def test_bf16_inputs_keep_fp32_softmax():
  # A bf16 output of an fp32 softmax (one rounding of the probabilities, one of the
  # output) is within u (|exact| + sum_j p_j |v_j|), u = 2^-8, of the exact attention
  # of the same bf16 inputs (head dim 16: the 1/4 scale is exact in bf16).
  grid = attn.Grid2D(6, 6, kernel=(3, 3), num_prefix=1)
  rng = np.random.default_rng(0)
  xs = [np.asarray(jnp.asarray(rng.normal(size=(1, 37, 2, 16)), jnp.bfloat16), np.float64)
        for _ in range(6)]
  valid, is_global = np.ones((1, 37), bool), np.zeros((1, 37), bool)
  is_global[0, [0, 15]] = True
  low = jit(ours(grid, valid, is_global, 2, dtype=jnp.bfloat16))(*xs)
  assert low.dtype == jnp.bfloat16
  local_ok, global_ok = oracle_masks(grid, valid, is_global)
  with jax.enable_x64(True):
    oracle = jit(lambda *a: dense_oracle(*a, local_ok, global_ok, valid, is_global))
    exact = np.asarray(oracle(*xs))
    q, k, v, qg, kg, vg = xs
    bound = 2.0 ** -8 * (np.abs(exact) + np.asarray(oracle(q, k, abs(v), qg, kg, abs(vg))))
  assert np.max(np.abs(np.asarray(low, np.float64) - exact) / bound) <= 1.0


@pytest.mark.parametrize("kwargs,field", [
    (dict(kernel=(4, 3)), "kernel"), (dict(kernel=(3, 9)), "kernel"),
    (dict(kernel=(3, 5), dilation=(1, 2)), "kernel"), (dict(dilation=0), "dilation"),
    (dict(height=0), "height"), (dict(num_prefix=-1), "num_prefix")])
def test_bad_grid_is_named(kwargs, field):
  args = dict(height=5, width=8, kernel=(3, 3)) | kwargs
  with pytest.raises(ValueError, match=f"Grid2D.{field}"):
    attn.Grid2D(**args)


def test_bad_sequence_is_named():
  x = jnp.zeros((1, 10, 1, 4))
  call = lambda grid, is_global: attn.attend(
      x, x, x, valid_BxN=jnp.ones((1, 10), bool), is_global_BxN=is_global,
      gidx=attn.global_index(is_global, 1), global_rows=attn.GlobalProjections(x, x, x),
      window=0, grid=grid)
  no_global = jnp.zeros((1, 10), bool)
  with pytest.raises(ValueError, match="Grid2D.height"):  # 3 * 3 + 0 != 10
    call(attn.Grid2D(3, 3, kernel=3), no_global)
  prefixed = attn.Grid2D(3, 3, kernel=3, num_prefix=1)
  with pytest.raises(ValueError, match="Grid2D.num_prefix"):  # the prefix is not global
    call(prefixed, no_global)
  with pytest.raises(Exception, match="Grid2D.num_prefix"):  # ... found when it runs
    jax.block_until_ready(jit(lambda g: call(prefixed, g))(no_global))
  with pytest.raises(ValueError, match="causal"):
    attn.attend(x, x, x, valid_BxN=jnp.ones((1, 10), bool), is_global_BxN=no_global,
                gidx=None, global_rows=None, window=0, causal=True,
                grid=attn.Grid2D(3, 3, kernel=3, num_prefix=1))


def test_dropout_drops_and_stays_finite():
  grid = attn.Grid2D(5, 5, kernel=3, num_prefix=1)
  rng = np.random.default_rng(2)
  q, k, v = [jnp.asarray(rng.normal(size=(2, 26, 2, 4)), jnp.float32) for _ in range(3)]
  is_global = jnp.zeros((2, 26), bool).at[:, 0].set(True)

  @jit
  def run(key):
    return attn.attend(q, k, v, valid_BxN=jnp.ones((2, 26), bool), is_global_BxN=is_global,
                       gidx=attn.global_index(is_global, 1),
                       global_rows=attn.GlobalProjections(q, k, v), window=0, grid=grid,
                       dropout_rate=0.5, dropout_rng=key)

  # rbg keys: the same masks' statistics, a fraction of threefry's compile time.
  a, b = run(jax.random.key(0, impl="rbg")), run(jax.random.key(1, impl="rbg"))
  assert np.isfinite(np.asarray(a)).all() and not np.allclose(a, b)


@pytest.mark.filterwarnings("ignore::UserWarning", "ignore::FutureWarning")  # flex, eager
def test_matches_natten():
  """The neighbourhood part against NATTEN's own (PyTorch) neighbourhood attention,
  with a CLS prefix as its additional keys; no padding, no global patch."""
  torch = pytest.importorskip("torch")
  natten_functional = pytest.importorskip("natten.functional")
  grid = attn.Grid2D(7, 10, kernel=(5, 3), dilation=(1, 3), num_prefix=1, block=(4, 4))
  b, heads, dim, n = 2, 2, 8, 71
  rng = np.random.default_rng(1)
  q, k, v, qg, kg, vg = [rng.normal(size=(b, n, heads, dim)).astype(np.float32)
                         for _ in range(6)]
  valid, is_global = np.ones((b, n), bool), np.zeros((b, n), bool)
  is_global[:, 0] = True
  out = np.asarray(jit(ours(grid, valid, is_global, 1))(q, k, v, qg, kg, vg))
  grid_t = lambda x: torch.tensor(x[:, 1:].reshape(b, 7, 10, heads, dim))
  ref = natten_functional.na2d(grid_t(q), grid_t(k), grid_t(v), kernel_size=(5, 3),
                               dilation=(1, 3), additional_keys=torch.tensor(k[:, :1]),
                               additional_values=torch.tensor(v[:, :1]))
  np.testing.assert_allclose(out[:, 1:], ref.numpy().reshape(b, 70, heads, dim), atol=1e-5)


# ---- memory -------------------------------------------------------------------------


def _compiled_grad(height, width=16, heads=4, dim=16, kernel=(7, 7)):
  """A compiled forward + backward of attend over a (height, width) grid with a CLS."""
  grid = attn.Grid2D(height, width, kernel=kernel, num_prefix=1)
  n = grid.num_prefix + grid.num_patches

  def loss(q, k, v, qg, kg, vg):
    is_global = jnp.zeros((1, n), bool).at[0, 0].set(True)
    o = attn.attend(q, k, v, valid_BxN=jnp.ones((1, n), bool), is_global_BxN=is_global,
                    gidx=attn.global_index(is_global, 1),
                    global_rows=attn.GlobalProjections(qg, kg, vg), window=0, grid=grid)
    return jnp.sum(o ** 2)

  spec = jax.ShapeDtypeStruct((1, n, heads, dim), jnp.float32)
  return jit(jax.grad(loss, argnums=range(6))).lower(*[spec] * 6).compile()


def _largest_array(hlo_text: str) -> int:
  """Elements of the largest array any instruction of the compiled program holds."""
  dims = re.findall(r"(?:pred|s32|s64|u32|f32|bf16)\[([\d,]+)\]", hlo_text)
  return max(math.prod(int(x) for x in d.split(",")) for d in dims)


def test_memory_grows_linearly_and_nothing_is_quadratic():
  heights = [32, 128]
  compiled = [_compiled_grad(h) for h in heights]
  mem = [c.memory_analysis().temp_size_in_bytes for c in compiled]
  per_patch = [m / (h * 16) for m, h in zip(mem, heights)]
  # Linear: bytes per patch stay flat as the grid grows 4x (quadratic would grow 4x);
  # about 15 KB a patch, some five score arrays of 4 heads x 196 keys in fp32.
  assert max(per_patch) / min(per_patch) < 1.1, (heights, mem)
  # The largest array is the tiles' scores, (P, H, S) for the S = 14 x 14 keys a tile of
  # 8 x 8 queries reaches with a 7 x 7 kernel, far below one head's P x P scores.
  p = heights[-1] * 16
  largest = _largest_array(compiled[-1].as_text())
  assert largest <= p * 4 * 14 * 14 < p * p, (largest, p)
