"""Sequence-parallel forward and gradients against one device; prints a JSON line.

Arguments: LAYOUT (e.g. ``sequence=8`` or ``data=2,sequence=4``) [--causal]
[--impl=NAME] (the split run's attention backend; the reference runs ``scan``). Run
with 8 (fake CPU) devices.
"""

import json
import sys
import jax, jax.numpy as jnp, numpy as np
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P
from longformer_jax import model as M, sharding as sh
from longformer_jax.config import LongformerConfig

layout = {k: int(v) for k, v in (kv.split("=") for kv in sys.argv[1].split(","))}
causal = "--causal" in sys.argv[2:]
impl = next((a.split("=", 1)[1] for a in sys.argv[2:] if a.startswith("--impl=")), "scan")
cfg = LongformerConfig(vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                       intermediate_size=48, attention_window=[8, 12], max_position_embeddings=200,
                       hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
                       max_global_tokens=4, block_size=4, causal=causal)
graphdef, params, rest = nnx.split(M.create_model(cfg, seed=0), nnx.Param, ...)
rng = np.random.default_rng(0)
b, n = 2, 192
ids = rng.integers(3, 50, (b, n)).astype(np.int32)
mask = np.ones((b, n), np.int32); mask[1, 150:] = 0
gmask = np.zeros((b, n), np.int32); gmask[0, [0, 37, 90]] = 1; gmask[1, 100] = 1

def fns(graphdef, rest):
  def hidden(params, ids, mask, gmask):
    model = nnx.merge(graphdef, params, jax.tree.map(lambda x: x, rest))
    return model(ids, mask, gmask, max_global_tokens=4).last_hidden_state

  def loss(params, ids, mask, gmask):
    return jnp.sum(jnp.sin(hidden(params, ids, mask, gmask)) * mask[..., None])

  return jax.jit(hidden), jax.jit(jax.grad(loss))

f, g = fns(graphdef, rest)
ref_out, ref_grads = f(params, ids, mask, gmask), g(params, ids, mask, gmask)
result = {}
for layout in (layout,):
  mesh = sh.make_mesh(layout)
  batch = NamedSharding(mesh, P(("data", "fsdp"), "sequence"))
  args = [jax.device_put(a, batch) for a in (ids, mask, gmask)]
  split_model = nnx.split(M.create_model(cfg.replace(attention_impl=impl), seed=0,
                                         partitioning=sh.Partitioning(mesh, sh.DEFAULT_RULES)),
                          nnx.Param, ...)
  f, g = fns(split_model[0], split_model[2])
  text = f.lower(params, *args).as_text()
  out, grads = f(params, *args), g(params, *args)
  # gradient error, relative where a parameter's gradient is larger than 1 (some,
  # like the key biases, are exactly 0 in exact arithmetic: rounding noise there)
  diffs = jax.tree.leaves(jax.tree.map(
      lambda a, b: float(jnp.abs(a - b).max() / jnp.maximum(jnp.abs(b).max(), 1.0)),
      grads, ref_grads))
  name = "x".join(map(str, layout.values()))
  result[name] = dict(out=float(jnp.abs(out - ref_out).max()), grad=max(diffs),
                      shard_map="shard_map" in text or "sdy.manual_computation" in text,
                      ppermute="collective_permute" in text)
print(json.dumps(result))
