"""The attention backends on an accelerator: achieved TFLOP/s and % of bf16 peak.

bf16, batch 1, paper-small shapes (8 heads of 64, window 512, one global token),
forward + backward of sum(out^2), at 4K-64K tokens:

* ``core``: our attention core (local band + global keys, q/k/v given) for every
  backend (``scan``, ``blocked``, ``pallas``), against ``jax.nn.dot_product_attention``
  with ``local_window_size=(256, 256)`` (cuDNN on GPU where it applies, else XLA;
  no global token) and dense attention (n x n).
* ``model``: the paper-small LongformerModel (12 layers, d 512) for every backend.

Useful FLOPs count only the work the result needs: 2r+1 keys per local query plus
the global rows and keys (dense: n keys per query); forward + backward is 3x the
forward. Peak: the device's dense bf16 rate from its data sheet (``PEAK_BF16``).

    python experiments/benchmark.py --accelerator            # 4K-64K
    python experiments/benchmark.py --accelerator --quick    # core at 1K: plumbing, runs on CPU
    python experiments/accelerator_benchmark.py [--quick]    # the same, called directly

Writes experiments/results/accelerator_<device>.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import re

from benchmark import D_MODEL, HEADS, LAYERS, WINDOW, attention_flops
from common import timed, write_results

# Dense bf16 tensor-core / MXU peak, FLOP/s, by device kind (data sheets; no sparsity).
PEAK_BF16 = {"H100 PCIe": 756e12, "H100": 989e12, "H200": 989e12, "A100": 312e12,
             "L4": 121e12, "TPU v4": 275e12, "TPU v5 lite": 197e12, "TPU v5e": 197e12,
             "TPU v5p": 459e12, "TPU v6": 918e12}
IMPLS = ("scan", "blocked", "pallas")


def peak_flops(kind: str) -> float | None:
  for name, peak in PEAK_BF16.items():  # the most specific name first
    if name in kind:
      return peak
  return None


def _qkv(n: int):
  import jax
  import jax.numpy as jnp
  shape = (1, n, HEADS, D_MODEL // HEADS)
  return tuple(jax.random.normal(jax.random.key(i), shape, jnp.bfloat16) for i in range(3))


def _core_step(n: int, impl: str):
  """A jitted fwd+bwd of one attention core and its arguments."""
  import jax
  import jax.numpy as jnp
  from longformer_jax import attention as attn
  valid = jnp.ones((1, n), bool)
  if impl in IMPLS:
    is_global = valid & (jnp.arange(n) == 0)
    gidx = attn.global_index(is_global, 1)
    fn = lambda q, k, v: attn.local_attention(
        q, k, v, valid_BxN=valid, is_global_BxN=is_global, gidx=gidx, window=WINDOW,
        impl=impl)
  else:  # "cudnn window", "xla window", "xla dense", "cudnn dense"
    backend, kind = impl.split()
    window = (WINDOW // 2, WINDOW // 2) if kind == "window" else None
    fn = lambda q, k, v: jax.nn.dot_product_attention(
        q, k, v, local_window_size=window, implementation=backend)
  loss = lambda *a: jnp.sum(fn(*a).astype(jnp.float32) ** 2)
  return jax.jit(jax.grad(loss, argnums=(0, 1, 2))), _qkv(n)


def _model_step(n: int, impl: str):
  import jax
  import jax.numpy as jnp
  from flax import nnx
  from longformer_jax import model as model_lib
  from longformer_jax.config import LongformerConfig
  cfg = LongformerConfig(vocab_size=256, hidden_size=D_MODEL, num_hidden_layers=LAYERS,
                         num_attention_heads=HEADS, intermediate_size=4 * D_MODEL,
                         attention_window=WINDOW, max_position_embeddings=n + 2,
                         hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
                         max_global_tokens=1, dtype="bfloat16", attention_impl=impl)
  graphdef, params, rest = nnx.split(model_lib.create_model(cfg), nnx.Param, ...)
  ids = jnp.full((1, n), 5, jnp.int32)
  mask, gmask = jnp.ones_like(ids), jnp.zeros_like(ids).at[:, 0].set(1)

  def loss(params):
    out = nnx.merge(graphdef, params, rest)(ids, mask, gmask).last_hidden_state
    return jnp.mean(out.astype(jnp.float32) ** 2)
  return jax.jit(jax.grad(loss)), (params,)


def useful_flops(level: str, impl: str, n: int) -> float:
  dh = D_MODEL // HEADS
  if level == "core":
    if impl.endswith("dense"):
      return 3.0 * 2 * 2 * n * n * dh * HEADS
    return attention_flops(n, layer=False)
  params = LAYERS * (4 * D_MODEL * D_MODEL + 2 * 4 * D_MODEL * D_MODEL)  # attn + FFN
  return 6.0 * params * n + LAYERS * attention_flops(n, layer=False)


def measure(level: str, impl: str, n: int, repeats: int, peak: float | None) -> dict:
  import jax
  row = dict(level=level, impl=impl, n=n)
  try:
    step, args = (_core_step if level == "core" else _model_step)(n, impl)
    r = timed(lambda: jax.block_until_ready(step(*args)), repeats)
  except Exception as err:  # out of memory, or no cuDNN kernel for this case
    return dict(row, skipped=re.sub(r"\s+", " ", str(err))[:120])
  tflops = useful_flops(level, impl, n) / r["step_s"] / 1e12
  return dict(row, step_s=r["step_s"], tflops=tflops,
              peak_pct=None if peak is None else 100 * tflops * 1e12 / peak)


def table(rows: list[dict], device: str, peak: float | None) -> str:
  peak_s = "unknown" if peak is None else f"{peak / 1e12:.0f} TFLOP/s"
  lines = [f"# Attention backends on {device} (bf16 peak {peak_s})", "",
           "fwd+bwd, batch 1, 8 heads of 64, window 512, one global token (ours).", "",
           "| level | backend | tokens | step (ms) | useful TFLOP/s | % of peak |",
           "|---|---|---:|---:|---:|---:|"]
  for r in rows:
    if "skipped" in r:
      lines.append(f"| {r['level']} | {r['impl']} | {r['n']:,} | — | — | {r['skipped']} |")
      continue
    pct = "—" if r["peak_pct"] is None else f"{r['peak_pct']:.1f}"
    lines.append(f"| {r['level']} | {r['impl']} | {r['n']:,} | {1e3 * r['step_s']:.2f} | "
                 f"{r['tflops']:.2f} | {pct} |")
  return "\n".join(lines) + "\n"


def main(quick: bool = False, sizes: str = "4096,8192,16384,32768,65536") -> None:
  import jax
  dev = jax.devices()[0]
  device, peak = dev.device_kind, peak_flops(dev.device_kind)
  on_gpu = dev.platform == "gpu"
  refs = (["cudnn window", "cudnn dense"] if on_gpu else []) + ["xla window", "xla dense"]
  ns = [1024] if quick else [int(s) for s in sizes.split(",")]
  levels = (("core", IMPLS + tuple(refs)),) + (() if quick else (("model", IMPLS),))
  rows = []
  for n in ns:
    for level, impls in levels:
      for impl in impls:
        rows.append(measure(level, impl, n, 2 if quick else 5, peak))
        print(json.dumps(rows[-1]), flush=True)
  text = table(rows, device, peak)
  print(text)
  if quick:
    return
  write_results("accelerator_" + re.sub(r"\W+", "_", device).strip("_"),
                dict(device=device, peak_bf16=peak, rows=rows), text)


if __name__ == "__main__":
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--quick", action="store_true", help="core at 1K only (any device)")
  main(quick=parser.parse_args().quick)
