"""The attention backends (``attention_impl``) agree with each other through the whole
model, and the field is a run field: named in errors, kept out of config.json."""

import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import longformer_jax as lj
from longformer_jax import attention as attn
from longformer_jax.attention import band as attention_band
from longformer_jax.attention import pallas as attention_pallas
from longformer_jax import model as model_lib
from longformer_jax.config import LongformerConfig


def tiny_config(**kw):
  base = dict(vocab_size=40, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
              intermediate_size=48, attention_window=8, attention_dilation=((1, 2, 1, 3),) * 2,
              max_position_embeddings=80, hidden_dropout_prob=0.0,
              attention_probs_dropout_prob=0.0, max_global_tokens=3, block_size=8)
  base.update(kw)
  return LongformerConfig(**base)


def _inputs():
  rng = np.random.default_rng(0)
  b, n = 2, 45
  ids = rng.integers(3, 40, (b, n)).astype(np.int32)
  mask = np.ones((b, n), np.int32)
  mask[1, 30:] = 0
  ids[1, 30:] = 1
  gmask = np.zeros((b, n), np.int32)
  gmask[0, [0, 17, 40]] = 1
  gmask[1, 5] = 1
  return ids, mask, gmask


@functools.lru_cache(maxsize=None)  # the scan reference serves every comparison
@functools.lru_cache(maxsize=None)  # pallas without dropout serves two tests
def _outputs_and_grads(impl: str, dropout: float):
  cfg = tiny_config(attention_impl=impl, attention_probs_dropout_prob=dropout)
  model = model_lib.create_model(cfg, seed=0)
  if dropout:
    model.train()
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  ids, mask, gmask = _inputs()

  def loss(params):
    model = nnx.merge(graphdef, params, jax.tree.map(lambda x: x, rest))
    h = model(ids, mask, gmask, max_global_tokens=3).last_hidden_state
    return jnp.sum(jnp.sin(h) * mask[..., None]), h

  grads, hidden = jax.jit(jax.grad(loss, has_aux=True))(params)
  return hidden, grads


# blocked without dropout is the oracle suite's case; with dropout it also checks the masks
@pytest.mark.parametrize("impl,dropout", [("blocked", 0.3), ("pallas", 0.0)])
def test_model_backends_agree_with_scan(impl, dropout):
  """Same outputs and gradients in fp32 with global tokens, padding, dilation and
  (same rng, so the same masks) attention dropout."""
  out_scan, grads_scan = _outputs_and_grads("scan", dropout)
  out_blocked, grads_blocked = _outputs_and_grads(impl, dropout)
  np.testing.assert_allclose(np.asarray(out_blocked), np.asarray(out_scan), atol=1e-5, rtol=0)
  flat_scan = dict(nnx.to_flat_state(grads_scan))
  for path, g in nnx.to_flat_state(grads_blocked):
    ref = np.asarray(flat_scan[path][...])
    np.testing.assert_allclose(np.asarray(g[...]), ref, atol=1e-5, rtol=1e-5,
                               err_msg=str(path))


def test_banded_dropout_masks_are_the_scans():
  """The blocked backend draws each block's dropout mask as the scan does: same values
  and gradients, with global keys and a ragged last block."""
  rng = np.random.default_rng(2)
  b, n, h, d = 2, 21, 2, 4
  with jax.enable_x64(True):
    q, k, v = (jnp.asarray(rng.normal(size=(b, n, h, d))) for _ in range(3))
    gk, gv = (jnp.asarray(rng.normal(size=(b, 2, h, d))) for _ in range(2))
    key_ok = jnp.asarray(np.arange(n) != 7)[None].repeat(b, 0)
    g_ok = jnp.ones((b, n, 2), bool)

    def attn_sum(q, k, v, gk, gv):
      return jnp.sum(jnp.sin(attn.banded_attention(
          q, k, v, key_ok, left=3, right=3, block_size=8, global_k_BxGxHxD=gk,
          global_v_BxGxHxD=gv, global_ok_BxNxG=g_ok, impl="blocked")))

    def f(impl):
      return lambda q, k, v, gk, gv: jnp.sum(jnp.sin(attn.banded_attention(
          q, k, v, key_ok, left=3, right=3, block_size=8, global_k_BxGxHxD=gk,
          global_v_BxGxHxD=gv, global_ok_BxNxG=g_ok, dropout_rate=0.4,
          dropout_rng=jax.random.key(0), impl=impl)))

    args = (q, k, v, gk, gv)
    np.testing.assert_allclose(f("blocked")(*args), f("scan")(*args), atol=1e-12)
    assert abs(f("blocked")(*args) - attn_sum(*args)) > 1e-3  # dropout is on
    grads = [jax.grad(f(impl), argnums=range(5))(*args) for impl in ("scan", "blocked")]
    for name, a, r in zip(["q", "k", "v", "gk", "gv"], grads[1], grads[0]):
      np.testing.assert_allclose(a, r, atol=1e-12, err_msg=name)


@pytest.mark.parametrize("impl,error", [("flash", ValueError), ("Blocked", ValueError)])
def test_unavailable_attention_impl_is_named(impl, error):
  with pytest.raises(error, match="attention_impl"):
    tiny_config(attention_impl=impl)
  x = jnp.ones((1, 8, 2, 4))
  with pytest.raises(error, match="attention_impl"):
    attn.longformer_attention(x, x, x, attention_mask=np.ones((1, 8), np.int32), window=2,
                              impl=impl)


def test_auto_is_scan_on_cpu():
  assert attn.resolve_impl("auto") == ("scan" if jax.default_backend() == "cpu"
                                       else "blocked")


def test_attention_impl_is_a_run_field(tmp_path):
  """Not written to config.json; ``from_hf`` takes it as an override."""
  cfg = tiny_config(attention_impl="scan", attention_dilation=None)  # transformers has none
  model = model_lib.create_model(cfg, seed=0)
  lj.to_hf(model, tmp_path / "hf")
  with open(tmp_path / "hf" / "config.json") as f:
    assert "attention_impl" not in json.load(f)
  loaded = lj.from_hf(tmp_path / "hf", attention_impl="blocked", max_global_tokens=3)
  assert loaded.config.attention_impl == "blocked"
  ids, mask, gmask = _inputs()
  np.testing.assert_allclose(np.asarray(loaded(ids, mask, gmask).last_hidden_state),
                             np.asarray(model(ids, mask, gmask).last_hidden_state),
                             atol=1e-5, rtol=0)


def test_pallas_trains_with_dropout_under_jit():
  """The kernels' attention dropout through the whole model in train mode, under jit:
  finite outputs and gradients, and dropout is on (its masks are the kernels' own
  hash, not the scan's draws: ``tests/test_pallas_dropout.py`` checks them)."""
  hidden, grads = _outputs_and_grads("pallas", 0.1)
  assert np.isfinite(np.asarray(hidden)).all()
  for path, g in nnx.to_flat_state(grads):
    assert np.isfinite(np.asarray(g[...])).all(), path
  assert any(np.abs(np.asarray(g[...])).max() > 0 for _, g in nnx.to_flat_state(grads))
  hidden_eval, _ = _outputs_and_grads("pallas", 0.0)
  assert not np.allclose(np.asarray(hidden), np.asarray(hidden_eval), atol=1e-4)


def test_pallas_refuses_relative_positions():
  cfg = tiny_config(attention_impl="pallas", position_embedding_type="relative_sinusoidal",
                    max_global_tokens=0, attention_dilation=None)
  model = model_lib.create_model(cfg, seed=0)
  ids, mask, _ = _inputs()
  with pytest.raises(NotImplementedError, match="position_embedding_type"):
    jax.jit(lambda ids, mask: model(ids, mask).last_hidden_state)(ids, mask)


@pytest.mark.parametrize("q_block,head_dim,field", [(40, 64, "block_size"),
                                                    (64, 8, "head dimension")])
def test_pallas_gpu_tiles_are_checked(q_block, head_dim, field):
  band = attention_band.Band(q_block, 4, 8, 8, 0.0)
  attention_pallas.check_shapes(band, 64, "cpu")  # interpret mode takes any tile
  attention_pallas.check_shapes(attention_band.Band(64, 4, 8, 8, 0.0), 64, "cuda")
  with pytest.raises(ValueError, match=field):
    attention_pallas.check_shapes(band, head_dim, "cuda")
