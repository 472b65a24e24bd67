"""Layer pieces with hand-written derivatives, against closed forms and autodiff."""

import jax
import jax.numpy as jnp
import numpy as np
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
