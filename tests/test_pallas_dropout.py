"""Attention dropout in the ``pallas`` backend's kernels: keep bits hashed in-kernel
from the key and the position, checked against a float64 dense reference fed the
same mask (``attention.pallas.dropout_keep_mask``), and the mask's statistics."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from longformer_jax import attention as attn
from longformer_jax.attention import pallas as attention_pallas

RATE = 0.3


def dense_reference(q, k, v, key_ok, gk, gv, g_ok, keep_band, keep_glob, left, right):
  """float64 banded + global attention with an explicit (N x (N + G)) mask, dropout
  applied to the normalised probabilities: torch tensors (B, N, H, D), ``q``
  pre-scaled; ``keep_*`` (B, H, N, N) / (B, H, N, G), scaled by 1 / (1 - rate)."""
  n = q.shape[1]
  rel = torch.arange(n)[None, :] - torch.arange(n)[:, None]  # key - query
  band_ok = (rel >= -left) & (rel <= right)
  ok = torch.cat([band_ok[None, None] & key_ok[:, None, None, :],
                  g_ok[:, None]], dim=-1)  # (B, 1, N, N + G)
  s = torch.cat([torch.einsum("bihd,bjhd->bhij", q, k),
                 torch.einsum("bihd,bghd->bhig", q, gk)], dim=-1)
  s = torch.where(ok, s, torch.full_like(s, -1e300))
  m = s.max(dim=-1, keepdim=True).values.detach()
  p = torch.exp(s - m) * ok
  denom = p.sum(-1, keepdim=True)
  p = p / torch.where(denom > 0, denom, torch.ones_like(denom))
  p = p * torch.cat([keep_band, keep_glob], dim=-1)
  return (torch.einsum("bhij,bjhd->bihd", p[..., :n], v)
          + torch.einsum("bhig,bghd->bihd", p[..., n:], gv))


def _case(seed, b=2, n=37, h=2, d=8, g=3):
  rng = np.random.default_rng(seed)
  q = rng.normal(size=(b, n, h, d)) / math.sqrt(d)
  k, v = rng.normal(size=(2, b, n, h, d))
  gk, gv = rng.normal(size=(2, b, g, h, d))
  key_ok = rng.random((b, n)) > 0.2
  key_ok[1, 30:] = False  # a padded tail
  g_ok = rng.random((b, n, g)) > 0.3
  g_ok[0, 3] = False  # a row with no global key
  g_ok[1, :, 2] = False  # a global slot no row sees
  cot = rng.normal(size=(b, n, h, d))
  return (q, k, v, gk, gv), key_ok, g_ok, cot


@pytest.mark.parametrize("left,right", [(5, 5), (6, 0)], ids=["two-sided", "causal"])
def test_pallas_dropout_matches_dense_reference(left, right):
  """Values and gradients (q, k, v, global k, global v) of the kernels with dropout
  equal a float64 dense reference given the mask of ``dropout_keep_mask``."""
  arrays, key_ok, g_ok, cot = _case(left + right)
  b, n, h, _ = arrays[0].shape
  g = arrays[3].shape[1]
  block = 8
  key = jax.random.key(7)

  def ours(q, k, v, gk, gv):
    return attn.banded_attention(q, k, v, jnp.asarray(key_ok), left=left, right=right,
                                 block_size=block, global_k_BxGxHxD=gk,
                                 global_v_BxGxHxD=gv, global_ok_BxNxG=jnp.asarray(g_ok),
                                 dropout_rate=RATE, dropout_rng=key, impl="pallas")

  out, vjp = jax.vjp(jax.jit(ours), *[jnp.asarray(a, jnp.float32) for a in arrays])
  grads = vjp(jnp.asarray(cot, jnp.float32))

  # the kernels' coordinates: rows = query positions, key position p at p + left
  nq = -(-n // block) * block
  shift = min(left, nq - 1)
  keep_band, keep_glob = attention_pallas.dropout_keep_mask(key, RATE, b, h, nq,
                                                            nq + left + right, g)
  keep_band = np.asarray(keep_band)[:, :, :n, shift:shift + n]
  keep_glob = np.asarray(keep_glob)[:, :, :n]
  assert 0 < (keep_band == 0).mean() < 1 and 0 < (keep_glob == 0).mean() < 1

  targs = [torch.tensor(a, dtype=torch.float64, requires_grad=True) for a in arrays]
  t = lambda x: torch.tensor(np.asarray(x, np.float64))
  ref = dense_reference(*targs[:3], torch.tensor(key_ok), *targs[3:], torch.tensor(g_ok),
                        t(keep_band), t(keep_glob), left, right)
  ref.backward(torch.tensor(cot))
  no_drop = dense_reference(*targs[:3], torch.tensor(key_ok), *targs[3:],
                            torch.tensor(g_ok), t(np.ones_like(keep_band)),
                            t(np.ones_like(keep_glob)), left, right)

  assert not np.allclose(ref.detach().numpy(), no_drop.detach().numpy(), atol=1e-2)
  np.testing.assert_allclose(np.asarray(out), ref.detach().numpy(), atol=1e-5, rtol=0)
  for name, got, want in zip(["q", "k", "v", "global k", "global v"], grads, targs):
    np.testing.assert_allclose(np.asarray(got), want.grad.numpy(), atol=1e-5, rtol=0,
                               err_msg=f"gradient of {name}")


def test_dropout_mask_statistics():
  """Keep fraction within 4 binomial standard deviations of 1 - rate (also over
  pairs of neighbouring keys, which should be independent); the same key draws the
  same mask, another key another one."""
  shape = dict(batch=2, heads=4, num_rows=256, num_keys=256, num_global=16)
  for rate in (0.1, RATE):
    band, glob = attention_pallas.dropout_keep_mask(jax.random.key(0), rate, **shape)
    keep = np.concatenate([np.asarray(band), np.asarray(glob)], -1)
    assert set(np.unique(keep)) == {0.0, np.float32(1.0 / (1.0 - rate))}
    kept = keep > 0
    for p, draws in ((1 - rate, kept), ((1 - rate) ** 2, kept[..., 1:] & kept[..., :-1])):
      sd = math.sqrt(p * (1 - p) / draws.size)
      assert abs(draws.mean() - p) < 4 * sd, (rate, draws.mean(), p)

  masks = [np.concatenate([np.asarray(x) > 0 for x in attention_pallas.dropout_keep_mask(
      key, RATE, **shape)], -1) for key in (jax.random.key(0), jax.random.key(0),
                                            jax.random.key(1))]
  np.testing.assert_array_equal(masks[0], masks[1])
  differ = (masks[0] != masks[2]).mean()
  assert abs(differ - 2 * RATE * (1 - RATE)) < 0.01  # independent draws
  # every example-head draws its own mask
  assert (masks[0][0, 0] != masks[0][0, 1]).mean() > 0.3
  assert (masks[0][0, 0] != masks[0][1, 0]).mean() > 0.3
