"""Relative sinusoidal positions inside the banded attention vs a dense float64 oracle
(torch autograd) of the Transformer-XL score, written from the formula."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from longformer_jax import attention as attn
from longformer_jax.attention import relative_position as relpos


def sinusoids_f64(t, dim):
  """[sin(t f), cos(t f)], f = 10000^(-2i/dim), for a tensor of distances t."""
  inv_freq = 1.0 / (10000.0 ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim))
  angle = t.to(torch.float64)[..., None] * inv_freq
  return torch.cat([torch.sin(angle), torch.cos(angle)], dim=-1)


def dense_relative_oracle(q, k, v, u, vb, w_r, valid, window, dilation, causal):
  """softmax over allowed j of ((q_i + u) . k_j + (q_i + v) . W_r sincos(i - j)) / sqrt(D).

  q, k, v (B, N, H, D); u, vb (H, D); w_r (E, H, D). Allowed: j - i a multiple of the
  head's dilation within the window (causal: w steps back), key valid. Padded rows 0.
  """
  b, n, h, d = q.shape
  scale = 1.0 / math.sqrt(d)
  i = torch.arange(n)[:, None]
  j = torch.arange(n)[None, :]
  r_NxNxE = sinusoids_f64(i - j, w_r.shape[0])  # every pair's distance: n x n
  out = torch.zeros_like(q)
  for head in range(h):
    dil = dilation[head]
    steps_ok = (j - i) % dil == 0
    if causal:
      in_window = steps_ok & (j <= i) & (i - j <= window * dil)
    else:
      in_window = steps_ok & ((j - i).abs() <= (window // 2) * dil)
    r_NxNxD = r_NxNxE @ w_r[:, head]
    for e in range(b):
      ok = in_window & valid[e][None, :]
      s = ((q[e, :, head] + u[head]) @ k[e, :, head].T
           + torch.einsum("id,ijd->ij", q[e, :, head] + vb[head], r_NxNxD)) * scale
      s = torch.where(ok, s, torch.full_like(s, -1e300))
      p = torch.exp(s - s.max(dim=-1, keepdim=True).values.detach()) * ok
      denom = p.sum(-1, keepdim=True)
      p = p / torch.where(denom > 0, denom, torch.ones_like(denom))
      out[e, :, head] = (p @ v[e, :, head]) * valid[e][:, None]
  return out


def random_case(seed):
  rng = np.random.default_rng(seed)
  b, h = int(rng.integers(1, 3)), int(rng.choice([1, 2, 3]))
  d, e = int(rng.choice([4, 8])), int(rng.choice([6, 8, 16]))
  n = int(rng.integers(5, 70))
  causal = bool(rng.random() < 0.5)
  window = (int(rng.integers(0, 30)) if causal
            else int(rng.choice([0, 2, 4, 6, 10, 16, 32, 200])))
  dilation = tuple(int(x) for x in rng.choice([1, 1, 2, 3], size=h))
  block = int(rng.choice([1, 3, 4, 8, 16, 64]))
  valid = np.ones((b, n), bool)
  for row in range(1, b):
    valid[row, int(rng.integers(1, n + 1)):] = False
  return dict(shape=(b, n, h, d), e=e, causal=causal, window=window, dilation=dilation,
              block=block, valid=valid, rng=rng)


@pytest.mark.parametrize("impl", ["scan", "blocked"])
@pytest.mark.parametrize("seed", range(10))
def test_relative_attention_matches_dense_oracle_values_and_grads(seed, impl):
  c = random_case(seed)
  rng, (_, _, h, d) = c["rng"], c["shape"]
  arrays = [rng.normal(size=c["shape"]) for _ in range(3)]
  arrays += [rng.normal(size=(h, d)), rng.normal(size=(h, d)),
             rng.normal(size=(c["e"], h, d)) / math.sqrt(c["e"])]
  cot = rng.normal(size=c["shape"])

  def ours(q, k, v, u, vb, w_r):
    return attn.longformer_attention(
        q + u, k, v, attention_mask=c["valid"].astype(np.int32), window=c["window"],
        dilation=c["dilation"], causal=c["causal"], block_size=c["block"],
        relative_q=q + vb, relative_w=w_r, impl=impl)

  out, vjp = jax.vjp(jax.jit(ours), *[jnp.asarray(a, jnp.float32) for a in arrays])
  grads = vjp(jnp.asarray(cot, jnp.float32))

  tarrays = [torch.tensor(a, dtype=torch.float64, requires_grad=True) for a in arrays]
  ref = dense_relative_oracle(*tarrays, torch.tensor(c["valid"]), c["window"],
                              c["dilation"], c["causal"])
  ref.backward(torch.tensor(cot))
  np.testing.assert_allclose(np.asarray(out), ref.detach().numpy(), atol=2e-5, rtol=0)
  for name, g, t in zip(["q", "k", "v", "u", "v_bias", "w_r"], grads, tarrays):
    np.testing.assert_allclose(np.asarray(g), t.grad.numpy(), atol=5e-5, rtol=1e-5,
                               err_msg=f"gradient of {name}")


def test_skew_places_each_distance_and_unskew_is_its_adjoint():
  rng = np.random.default_rng(0)
  q, w = 5, 4
  span = q + w - 1
  p = rng.normal(size=(q, w)).astype(np.float32)
  s = np.asarray(relpos.skew(jnp.asarray(p), span))
  want = np.zeros((q, span))
  for row in range(q):
    want[row, row:row + w] = p[row]
  np.testing.assert_array_equal(s, want)
  g = rng.normal(size=(q, span)).astype(np.float32)  # <skew(p), g> = <p, unskew(g)>
  np.testing.assert_allclose((s * g).sum(), (p * np.asarray(relpos.unskew(jnp.asarray(g), w))).sum(),
                             rtol=1e-5)


def test_relative_positions_refuse_global_tokens():
  x = jnp.ones((1, 8, 2, 4))
  gmask = np.zeros((1, 8), np.int32)
  gmask[0, 0] = 1
  with pytest.raises(ValueError, match="max_global_tokens=0"):
    attn.longformer_attention(x, x, x, x, x, x, attention_mask=np.ones((1, 8), np.int32),
                              global_attention_mask=gmask, window=4, relative_q=x,
                              relative_w=jnp.ones((6, 2, 4)))


def char_lm_config(**kw):
  from longformer_jax.config import LongformerConfig
  base = dict(vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
              intermediate_size=64, attention_window=(4, 6),
              attention_dilation=((1, 1, 2, 2), (1, 2, 1, 3)), causal=True,
              position_embedding_type="relative_sinusoidal", pre_layer_norm=True,
              hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, block_size=8)
  base.update(kw)
  return LongformerConfig(**base)


def test_relative_char_lm_depends_only_on_the_window_contents():
  """No absolute position anywhere: a causal model's logits at a token are those of the
  same text with its start cut off, once the token's receptive field lies inside both
  (sum over layers of window x largest dilation = 4 x 2 + 6 x 3); nearer the cut they
  differ (the field is truncated), so the check can fail."""
  from longformer_jax import model as model_lib
  model = model_lib.create_model(char_lm_config(), "causal_lm", seed=0)
  ids = np.random.default_rng(0).integers(3, 50, size=(1, 70)).astype(np.int32)
  cut, field = 13, 4 * 2 + 6 * 3
  whole, tail = np.asarray(model(ids).logits), np.asarray(model(ids[:, cut:]).logits)
  np.testing.assert_allclose(whole[0, cut + field:], tail[0, field:], atol=1e-5, rtol=0)
  assert np.abs(whole[0, cut:cut + field] - tail[0, :field]).max() > 1e-3


def test_relative_char_lm_refuses_what_it_cannot_run(tmp_path):
  from longformer_jax import convert
  from longformer_jax import model as model_lib
  with pytest.raises(ValueError, match="max_global_tokens"):
    char_lm_config(max_global_tokens=2)
  model = model_lib.create_model(char_lm_config(), "causal_lm", seed=0)
  ids = np.full((1, 16), 7, np.int32)
  with pytest.raises(ValueError, match="position_ids"):
    model(ids, position_ids=np.arange(16)[None] + 2)
  gmask = np.zeros((1, 16), np.int32)
  gmask[0, 0] = 1
  with pytest.raises(ValueError, match="max_global_tokens"):
    model(ids, global_attention_mask=gmask)
  with pytest.raises(ValueError, match="output_attentions"):
    model(ids, output_attentions=True)
  with pytest.raises(ValueError, match="save_native"):
    convert.to_hf(model, tmp_path / "hf", allow_unsupported=True)
  assert not (tmp_path / "hf").exists()
  assert model_lib.create_model(char_lm_config(), "causal_lm").longformer.embeddings \
      .position_embeddings is None
