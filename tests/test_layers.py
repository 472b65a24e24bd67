"""Layer pieces with hand-written derivatives, against closed forms and autodiff."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from longformer_jax import layers


def test_gelu_matches_torch_values_and_gradients():
  x = np.linspace(-8, 8, 2001)
  tx = torch.tensor(x, dtype=torch.float64, requires_grad=True)
  torch.nn.functional.gelu(tx).sum().backward()  # the erf form, in float64
  y, vjp = jax.vjp(layers.gelu_exact, jnp.asarray(x, jnp.float32))
  (dx,) = vjp(jnp.ones_like(y))
  np.testing.assert_allclose(np.asarray(y), torch.nn.functional.gelu(tx).detach().numpy(),
                             atol=2e-6)
  np.testing.assert_allclose(np.asarray(dx), tx.grad.numpy(), atol=2e-6)


def test_gelu_under_jit_in_bf16():
  x = jnp.linspace(-3, 3, 64, dtype=jnp.bfloat16)
  g = jax.jit(jax.grad(lambda v: jnp.sum(layers.gelu_exact(v).astype(jnp.float32))))(x)
  assert g.dtype == jnp.bfloat16
  ref = jax.grad(lambda v: jnp.sum(jax.nn.gelu(v, approximate=False)))(x.astype(jnp.float32))
  np.testing.assert_allclose(np.asarray(g, np.float32), np.asarray(ref), atol=1e-2)


@pytest.mark.parametrize("remat,scan", [("matmuls", True), ("matmuls", False), ("full", True)])
def test_remat_policies_keep_gradients(remat, scan):
  """Rematerialisation (the custom-VJP attention core included) changes memory, not
  gradients: same as no remat, to float rounding."""
  from flax import nnx
  from longformer_jax import model as model_lib
  from longformer_jax.config import LongformerConfig

  def grads(**kw):
    cfg = LongformerConfig(vocab_size=40, hidden_size=32, num_hidden_layers=2,
                           num_attention_heads=4, intermediate_size=48, attention_window=8,
                           max_position_embeddings=70, hidden_dropout_prob=0.0,
                           attention_probs_dropout_prob=0.0, max_global_tokens=2,
                           block_size=4, scan_layers=scan, **kw)
    graphdef, params, rest = nnx.split(model_lib.create_model(cfg, seed=0), nnx.Param, ...)
    ids = (jnp.arange(64, dtype=jnp.int32) % 37 + 3)[None]
    gmask = jnp.zeros_like(ids).at[0, 5].set(1)

    def loss(params):
      model = nnx.merge(graphdef, params, jax.tree.map(lambda x: x, rest))
      return jnp.sum(jnp.sin(model(ids, jnp.ones_like(ids), gmask).last_hidden_state))

    return jax.jit(jax.grad(loss))(params)

  for a, b in zip(jax.tree.leaves(grads(remat=remat)), jax.tree.leaves(grads())):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=2e-5, rtol=1e-5)
