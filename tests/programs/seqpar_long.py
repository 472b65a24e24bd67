"""A 131,072-token forward+backward split over 8 devices; prints a JSON line with
the per-device temp memory of the split and the whole step."""

import json, time
import jax, jax.numpy as jnp, numpy as np
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P
from longformer_jax import model as M, sharding as sh
from longformer_jax.config import LongformerConfig

n = 131072
cfg = LongformerConfig(vocab_size=64, hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                       intermediate_size=128, attention_window=256, max_position_embeddings=n + 2,
                       hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
                       max_global_tokens=1, scan_layers=True, remat="full")
graphdef, params, rest = nnx.split(M.create_model(cfg, seed=0), nnx.Param, ...)
ids = (np.arange(n, dtype=np.int32) % 60 + 3)[None]
mask, gmask = np.ones_like(ids), np.zeros_like(ids)
gmask[0, 0] = 1

def loss(params, ids, mask, gmask, graphdef=graphdef):
  model = nnx.merge(graphdef, params, jax.tree.map(lambda x: x, rest))
  return jnp.mean(model(ids, mask, gmask, max_global_tokens=1).last_hidden_state ** 2)

step = jax.jit(jax.value_and_grad(loss))
whole = step.lower(params, ids, mask, gmask).compile().memory_analysis().temp_size_in_bytes
mesh = sh.make_mesh({"sequence": 8})
args = [jax.device_put(a, NamedSharding(mesh, P(None, "sequence"))) for a in (ids, mask, gmask)]
split_graphdef = nnx.split(M.create_model(cfg, seed=0,
                                          partitioning=sh.Partitioning(mesh, sh.DEFAULT_RULES)),
                           nnx.Param, ...)[0]
step = jax.jit(jax.value_and_grad(lambda *a: loss(*a, graphdef=split_graphdef)))
compiled = step.lower(params, *args).compile()
split = compiled.memory_analysis().temp_size_in_bytes
t0 = time.time()
value, grads = step(params, *args)
value = float(value)
seconds = time.time() - t0
finite = all(bool(jnp.isfinite(x).all()) for x in jax.tree.leaves(grads))
print(json.dumps(dict(whole=whole, split=split, loss=value, finite=finite, seconds=seconds)))
