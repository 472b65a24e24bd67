"""Performance of longformer_jax against HF transformers (PyTorch), in one run.

Three levels, all fp32, batch 1, measured on the machine it runs on:

* ``ceiling``: the fp32 matrix-product ceiling of this machine under JAX (best
  GFLOP/s over a few large GEMM shapes), the yardstick for the attention level.
* ``model``: the paper-small LongformerModel (12 layers, d 512, 8 heads, d_ff
  2048, window 512, one global token, vocab 256), forward+backward of
  mean(last_hidden_state^2), for ours (``default``: the config's defaults, as
  ``from_hf`` gives them: layers under one scan and ``remat="matmuls"``, which keeps
  the outputs of the matrix products and the attention and recomputes layer norms,
  GELU and layout changes in the backward pass; ``scan``: the same without remat;
  ``loop``: a Python loop over layers without remat, the defaults before) and HF.
* ``api``: the forward of a model called eagerly (``model(ids, ...)``: host checks,
  then a cached compiled program) against the same call under ``nnx.jit`` and a
  functional ``jax.jit`` (merge inside), at a tiny size where Python overhead shows
  and at the paper-small size.
* ``attention``: one self-attention layer (projections included; ours and HF
  ``LongformerSelfAttention``) and our attention core alone (q, k, v given).
  Useful FLOPs count 2r+1 keys per local query (not the padded blocks) plus
  the global rows and keys; forward+backward counts 3x the forward.

Each measurement runs in a fresh process: one warm-up step (compiles), then
the median wall time of several steps, and the process's peak resident memory
(VmHWM: everything the process held, framework included).

    python experiments/benchmark.py           # model 4K-32K (HF at 4K, 8K), attention at 4K
    python experiments/benchmark.py --quick   # 4K only

Writes experiments/results/benchmark.{json,md,png} and prints the tables.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

from common import RESULTS, timed, write_results

D_MODEL, HEADS, D_FF, LAYERS, WINDOW, VOCAB = 512, 8, 2048, 12, 512, 256
TARGET_SPEEDUP, TARGET_MEMORY, TARGET_CEILING = 2.5, 0.5, 0.30


def _ceiling(repeats: int) -> dict:
  import jax
  import jax.numpy as jnp

  best = {}
  for m, k, n in ((4096, 512, 512), (4096, 512, 2048), (4096, 2048, 512), (2048, 2048, 2048)):
    a = jax.random.normal(jax.random.key(0), (m, k), jnp.float32)
    b = jax.random.normal(jax.random.key(1), (k, n), jnp.float32)
    f = jax.jit(lambda a, b: a @ b)
    r = timed(lambda: jax.block_until_ready(f(a, b)), repeats)
    best[f"{m}x{k}x{n}"] = 2 * m * k * n / r["step_s"] / 1e9
  return dict(gflops=max(best.values()), shapes=best)


_VARIANTS = {"default": {}, "scan": dict(scan_layers=True, remat="none"),
             "loop": dict(scan_layers=False, remat="none")}


def _ours_model(n: int, variant: str, repeats: int) -> dict:
  import jax
  import jax.numpy as jnp
  from flax import nnx
  from longformer_jax import model as model_lib
  from longformer_jax.compile.compile_options import compiler_options
  from longformer_jax.config import LongformerConfig

  cfg = LongformerConfig(
      vocab_size=VOCAB, hidden_size=D_MODEL, num_hidden_layers=LAYERS,
      num_attention_heads=HEADS, intermediate_size=D_FF, attention_window=WINDOW,
      max_position_embeddings=n + 2, hidden_dropout_prob=0.0,
      attention_probs_dropout_prob=0.0, max_global_tokens=1, **_VARIANTS[variant])
  graphdef, params, rest = nnx.split(model_lib.create_model(cfg), nnx.Param, ...)
  ids = jnp.full((1, n), 5, jnp.int32)
  mask, gmask = jnp.ones_like(ids), jnp.zeros_like(ids).at[:, 0].set(1)

  def loss(params, rest):
    model = nnx.merge(graphdef, params, rest)
    return jnp.mean(model(ids, mask, gmask).last_hidden_state ** 2)

  step = jax.jit(jax.grad(loss), compiler_options=compiler_options())
  plan = step.lower(params, rest).compile().memory_analysis()
  out = timed(lambda: jax.block_until_ready(step(params, rest)), repeats)
  out["xla_temp_bytes"] = plan.temp_size_in_bytes
  return out


def _hf_model(n: int, repeats: int) -> dict:
  import torch
  from transformers import LongformerConfig, LongformerModel

  torch.set_num_threads(os.cpu_count())
  torch.manual_seed(0)
  cfg = LongformerConfig(
      vocab_size=VOCAB, hidden_size=D_MODEL, num_hidden_layers=LAYERS,
      num_attention_heads=HEADS, intermediate_size=D_FF, attention_window=[WINDOW] * LAYERS,
      max_position_embeddings=n + 2, hidden_dropout_prob=0.0,
      attention_probs_dropout_prob=0.0)
  model = LongformerModel(cfg)
  ids = torch.full((1, n), 5)
  gmask = torch.zeros(1, n, dtype=torch.long)
  gmask[0, 0] = 1

  def step():
    out = model(input_ids=ids, attention_mask=torch.ones_like(ids),
                global_attention_mask=gmask).last_hidden_state
    (out ** 2).mean().backward()
    model.zero_grad(set_to_none=True)

  return timed(step, repeats)


def _api_call(n: int, how: str, repeats: int) -> dict:
  """Forward of a model called eagerly, under nnx.jit, or functionally under jax.jit."""
  import jax
  import jax.numpy as jnp
  import numpy as np
  from flax import nnx
  from longformer_jax import model as model_lib
  from longformer_jax.config import LongformerConfig

  layers, d = (2, 64) if n <= 512 else (LAYERS, D_MODEL)
  cfg = LongformerConfig(
      vocab_size=VOCAB, hidden_size=d, num_hidden_layers=layers, num_attention_heads=HEADS,
      intermediate_size=4 * d, attention_window=min(WINDOW, n // 4),
      max_position_embeddings=n + 2)
  model = model_lib.create_model(cfg)
  model.eval()
  ids = np.full((1, n), 5)
  mask, gmask = np.ones_like(ids), np.zeros_like(ids)
  gmask[:, 0] = 1
  if how == "eager":
    fn = lambda: model(ids, mask, gmask).last_hidden_state
  elif how == "nnx_jit":
    call = nnx.jit(lambda m, *a: m(*a, max_global_tokens=1).last_hidden_state)
    fn = lambda: call(model, ids, mask, gmask)
  else:
    graphdef, state = nnx.split(model)
    call = jax.jit(lambda st, *a: nnx.merge(graphdef, st)(*a, max_global_tokens=1)
                   .last_hidden_state)
    args = tuple(jnp.asarray(a) for a in (ids, mask, gmask))
    fn = lambda: call(state, *args)
  return timed(lambda: jax.block_until_ready(fn()), repeats)


def _ours_attention(n: int, what: str, repeats: int) -> dict:
  import jax
  import jax.numpy as jnp
  from flax import nnx
  from longformer_jax import attention as attn
  from longformer_jax import layers
  from longformer_jax.compile.compile_options import compiler_options
  from longformer_jax.config import LongformerConfig

  valid = jnp.ones((1, n), bool)
  is_global = jnp.zeros((1, n), bool).at[0, 0].set(True)
  gidx = attn.global_index(is_global, 1)
  if what == "layer":
    cfg = LongformerConfig(hidden_size=D_MODEL, num_attention_heads=HEADS,
                           num_hidden_layers=1, attention_window=WINDOW,
                           attention_probs_dropout_prob=0.0)
    with nnx.use_eager_sharding(False):
      module = layers.SelfAttention(cfg, 0, nnx.Rngs(0))
    module.eval()
    graphdef, params, rest = nnx.split(module, nnx.Param, ...)
    x = jax.random.normal(jax.random.key(1), (1, n, D_MODEL), jnp.float32)
    args = (params, x)
    fn = lambda params, x: nnx.merge(graphdef, params, rest)(x, valid, is_global, gidx)[0]
  else:  # the attention core: local band + global keys, q/k/v given
    dh = D_MODEL // HEADS
    args = tuple(jax.random.normal(jax.random.key(i), (1, n, HEADS, dh), jnp.float32)
                 for i in range(3))
    fn = lambda q, k, v: attn.local_attention(
        q, k, v, valid_BxN=valid, is_global_BxN=is_global, gidx=gidx, window=WINDOW)
  grad = jax.jit(jax.grad(lambda *a: jnp.sum(fn(*a) ** 2), argnums=tuple(range(len(args)))),
                 compiler_options=compiler_options())
  return timed(lambda: jax.block_until_ready(grad(*args)), repeats)


def _hf_attention(n: int, repeats: int) -> dict:
  import torch
  from transformers import LongformerConfig
  from transformers.models.longformer.modeling_longformer import LongformerSelfAttention

  torch.set_num_threads(os.cpu_count())
  cfg = LongformerConfig(hidden_size=D_MODEL, num_attention_heads=HEADS,
                         attention_window=[WINDOW], num_hidden_layers=1,
                         attention_probs_dropout_prob=0.0)
  layer = LongformerSelfAttention(cfg, layer_id=0)
  x = torch.randn(1, n, D_MODEL, requires_grad=True)
  mask = torch.zeros(1, n)
  mask[0, 0] = 10000.0  # > 0: global
  kw = dict(attention_mask=mask, is_index_masked=mask < 0, is_index_global_attn=mask > 0,
            is_global_attn=True)

  def step():
    (layer(x, **kw)[0] ** 2).sum().backward()
    layer.zero_grad(set_to_none=True)
    x.grad = None

  return timed(step, repeats)


def worker(kind: str, impl: str, n: int, repeats: int) -> dict:
  if kind == "ceiling":
    return dict(kind=kind, impl=impl, n=n, **_ceiling(repeats))
  if kind == "model":
    r = _hf_model(n, repeats) if impl == "hf" else _ours_model(n, impl, repeats)
  elif kind == "api":
    r = _api_call(n, impl, repeats)
  else:
    r = _hf_attention(n, repeats) if impl == "hf" else _ours_attention(n, impl, repeats)
  return dict(kind=kind, impl=impl, n=n, **r)


# ---- FLOP counts -------------------------------------------------------------
def attention_flops(n: int, layer: bool) -> float:
  """Useful forward+backward FLOPs of one attention layer with one global token."""
  dh, r = D_MODEL // HEADS, WINDOW // 2
  core = 2 * 2 * n * (2 * r + 1) * dh * HEADS  # local rows: QK^T and PV over 2r+1 keys
  core += 2 * 2 * n * dh * HEADS * 2  # global rows over n keys; local rows' global key
  proj = 3 * 2 * n * D_MODEL * D_MODEL if layer else 0  # Q, K, V
  return 3.0 * (core + proj)


# ---- driver ------------------------------------------------------------------
def run_worker(kind: str, impl: str, n: int, repeats: int, timeout: float) -> dict:
  cmd = [sys.executable, os.path.abspath(__file__), "--worker", kind, impl, str(n),
         str(repeats)]
  try:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
  except subprocess.TimeoutExpired:
    return dict(kind=kind, impl=impl, n=n, skipped=f"over {timeout:.0f} s")
  if proc.returncode != 0:
    errors = [l for l in proc.stderr.splitlines() if "Error" in l.split(":")[0]]
    reason = errors[-1][:100] if errors else f"exit code {proc.returncode} (out of memory?)"
    return dict(kind=kind, impl=impl, n=n, skipped=f"failed: {reason}")
  return json.loads(proc.stdout.strip().splitlines()[-1])


def _gib(b):
  return f"{b / 2**30:.2f}"


MODEL_NAMES = {"hf": "HF transformers (PyTorch)",
               "default": "ours, defaults (scan + remat matmuls)",
               "scan": "ours (scan, no remat)", "loop": "ours (layer loop, no remat)"}


def api_table(results: list[dict]) -> str:
  rows = ["| tokens | model | eager call ms | nnx.jit ms | jax.jit ms | eager / jax.jit |",
          "|---:|---|---:|---:|---:|---:|"]
  for n in sorted({r["n"] for r in results if r["kind"] == "api"}):
    by = {r["impl"]: r for r in results if r["kind"] == "api" and r["n"] == n
          and "skipped" not in r}
    if len(by) < 3:
      continue
    ms = {k: 1e3 * by[k]["step_s"] for k in ("eager", "nnx_jit", "jax_jit")}
    what = "2 layers, d 64" if n <= 512 else "paper-small"
    rows.append(f"| {n:,} | {what} | {ms['eager']:.1f} | {ms['nnx_jit']:.1f} | "
                f"{ms['jax_jit']:.1f} | {ms['eager'] / ms['jax_jit']:.2f}x |")
  return "\n".join(rows)


def model_table(results: list[dict]) -> str:
  hf = {r["n"]: r for r in results if r["kind"] == "model" and r["impl"] == "hf"
        and "skipped" not in r}
  rows = ["| tokens | implementation | fwd+bwd s/step | tokens/s | peak RSS GiB "
          "| speed vs HF | memory vs HF |", "|---:|---|---:|---:|---:|---:|---:|"]
  for r in (r for r in results if r["kind"] == "model"):
    name = MODEL_NAMES[r["impl"]]
    if "skipped" in r:
      rows.append(f"| {r['n']:,} | {name} | {r['skipped']} | | | | |")
      continue
    ref = hf.get(r["n"])
    speed = f"{ref['step_s'] / r['step_s']:.2f}x" if ref and r["impl"] != "hf" else ""
    mem = f"{r['peak_bytes'] / ref['peak_bytes']:.2f}x" if ref and r["impl"] != "hf" else ""
    rows.append(f"| {r['n']:,} | {name} | {r['step_s']:.2f} | {r['n'] / r['step_s']:,.0f} "
                f"| {_gib(r['peak_bytes'])} | {speed} | {mem} |")
  return "\n".join(rows)


def attention_table(results: list[dict], ceiling: float) -> str:
  rows = ["| tokens | what | fwd+bwd ms | useful GFLOP/s | % of matmul ceiling |",
          "|---:|---|---:|---:|---:|"]
  names = {"layer": "ours: attention layer (Q/K/V projections + attention)",
           "core": "ours: attention core (q, k, v given)",
           "hf": "HF LongformerSelfAttention (projections + attention)"}
  for r in (r for r in results if r["kind"] == "attention"):
    if "skipped" in r:
      rows.append(f"| {r['n']:,} | {names[r['impl']]} | {r['skipped']} | | |")
      continue
    flops = attention_flops(r["n"], layer=r["impl"] != "core")
    rate = flops / r["step_s"] / 1e9
    rows.append(f"| {r['n']:,} | {names[r['impl']]} | {r['step_s'] * 1e3:.0f} | {rate:.0f} "
                f"| {100 * rate / ceiling:.0f}% |")
  return "\n".join(rows)


def verdict(results: list[dict], ceiling: float) -> list[str]:
  get = lambda kind, impl, n: next((r for r in results if (r["kind"], r["impl"], r["n"])
                                    == (kind, impl, n) and "skipped" not in r), None)
  lines = []
  hf = get("model", "hf", 4096)
  for impl in ("default", "scan", "loop"):
    ours = get("model", impl, 4096)
    if hf and ours:
      speed, mem = hf["step_s"] / ours["step_s"], ours["peak_bytes"] / hf["peak_bytes"]
      ok = speed >= TARGET_SPEEDUP and mem <= TARGET_MEMORY
      lines.append(f"4K, ours ({impl}): {speed:.2f}x HF speed (target >= {TARGET_SPEEDUP}x), "
                   f"{mem:.2f}x HF memory (target <= {TARGET_MEMORY}x): "
                   f"{'met' if ok else 'NOT met'}")
  fastest = min((r for r in results if r["kind"] == "model" and r["n"] == 4096
                 and r["impl"] != "hf" and "skipped" not in r),
                key=lambda r: r["step_s"], default=None)
  if fastest and get("model", "default", 4096):
    lines.append(f"4K, fastest setting: {fastest['impl']} "
                 f"({get('model', 'default', 4096)['step_s'] / fastest['step_s']:.2f}x the "
                 "default's time)")
  big = get("model", "default", 32768)
  if big:
    fits = big["peak_bytes"] <= 24 * 10**9
    lines.append(f"32K, ours (defaults): peak {_gib(big['peak_bytes'])} GiB "
                 f"(target <= 24 GB): {'met' if fits else 'NOT met'}")
  core = get("attention", "core", 4096)
  layer = get("attention", "layer", 4096)
  for name, r in (("core", core), ("layer", layer)):
    if r:
      share = attention_flops(4096, name == "layer") / r["step_s"] / 1e9 / ceiling
      lines.append(f"attention {name} at 4K: {100 * share:.0f}% of the matmul ceiling "
                   f"(target >= {100 * TARGET_CEILING:.0f}%): "
                   f"{'met' if share >= TARGET_CEILING else 'NOT met'}")
  return lines


def plot(results: list[dict]):
  """The model level's throughput and memory against length, as a figure."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
  styles = {"hf": ("tab:green", "^"), "loop": ("tab:orange", "v"), "scan": ("tab:blue", "o"),
            "default": ("tab:purple", "s")}
  for impl, (color, marker) in styles.items():
    label = MODEL_NAMES[impl]
    rs = [r for r in results if r["kind"] == "model" and r["impl"] == impl
          and "skipped" not in r]
    if rs:
      ns = [r["n"] for r in rs]
      axes[0].plot(ns, [r["n"] / r["step_s"] for r in rs], marker=marker, color=color,
                   label=label)
      axes[1].plot(ns, [r["peak_bytes"] / 2**30 for r in rs], marker=marker, color=color,
                   label=label)
  axes[1].axhline(24e9 / 2**30, color="gray", ls="--", lw=1, label="24 GB")
  for ax, title in zip(axes, ("forward+backward tokens/s", "peak resident memory (GiB)")):
    ax.set_xscale("log", base=2)
    ax.set_xlabel("sequence length (tokens)")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
  axes[1].legend(fontsize=8)
  fig.suptitle("Paper-small Longformer (12 layers, d 512, window 512, 1 global), fp32, "
               "batch 1, CPU")
  fig.tight_layout()
  return fig


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--quick", action="store_true", help="4K tokens only")
  parser.add_argument("--accelerator", action="store_true",
                      help="bf16 backends on this process's GPU / TPU "
                      "(accelerator_benchmark.py); with --quick, 1K on any device")
  parser.add_argument("--sizes", default="4096,8192,16384,32768",
                      help="model-level lengths for ours (defaults)")
  parser.add_argument("--hf-sizes", default="4096,8192", help="model-level lengths for HF")
  parser.add_argument("--levels", default="ceiling,model,api,attention")
  parser.add_argument("--timeout", type=float, default=1800, help="seconds per measurement")
  parser.add_argument("--worker", nargs=4, help=argparse.SUPPRESS)
  parser.add_argument("--out", default=RESULTS)
  args = parser.parse_args()
  if args.worker:
    kind, impl, n, repeats = args.worker
    print(json.dumps(worker(kind, impl, int(n), int(repeats))))
    return
  if args.accelerator:  # its own process: accelerator_benchmark.py imports this module
    script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "accelerator_benchmark.py")
    sys.exit(subprocess.call([sys.executable, script] + (["--quick"] if args.quick else [])))

  try:
    import transformers  # noqa: F401
    have_hf = True
  except ImportError:
    print("transformers not installed: HF rows skipped")
    have_hf = False
  sizes = [4096] if args.quick else [int(s) for s in args.sizes.split(",")]
  hf_sizes = [4096] if args.quick else [int(s) for s in args.hf_sizes.split(",")]
  levels = args.levels.split(",")
  plan = []
  if "ceiling" in levels:
    plan.append(("ceiling", "jax", 0, 10))
  if "model" in levels:
    for n in sizes:
      repeats = 3 if n <= 8192 else 2
      if n == 4096:
        plan += [("model", "loop", n, repeats), ("model", "scan", n, repeats)]
      plan.append(("model", "default", n, repeats))
      if have_hf and n in hf_sizes:
        plan.append(("model", "hf", n, 2))
  if "api" in levels:
    plan += [("api", how, n, 20 if n <= 512 else 3) for n in (512, 4096)
             for how in ("eager", "nnx_jit", "jax_jit")]
  if "attention" in levels:
    plan += [("attention", "core", 4096, 7), ("attention", "layer", 4096, 7)]
    if have_hf:
      plan.append(("attention", "hf", 4096, 5))

  results, t_start = [], time.time()
  for i, (kind, impl, n, repeats) in enumerate(plan):
    t0 = time.time()
    r = run_worker(kind, impl, n, repeats, args.timeout)
    results.append(r)
    if "skipped" in r:
      status = r["skipped"]
    elif kind == "ceiling":
      status = f"{r['gflops']:.0f} GFLOP/s"
    else:
      status = f"{r['step_s']:.3f} s/step, peak {_gib(r['peak_bytes'])} GiB"
    print(f"[{i + 1}/{len(plan)} {time.time() - t0:6.1f}s] {kind:<9} {impl:<6} "
          f"n={n:>6}: {status}", flush=True)

  ceiling = next((r["gflops"] for r in results if r["kind"] == "ceiling"
                  and "skipped" not in r), float("nan"))
  report = [f"Matmul ceiling (fp32, JAX): {ceiling:.0f} GFLOP/s", "",
            model_table(results), "", api_table(results), "",
            attention_table(results, ceiling), ""]
  report += verdict(results, ceiling)
  report += ["", "GPU: unmeasured (no accelerator on the machine that ran this).",
             f"Total benchmark time: {(time.time() - t_start) / 60:.1f} min"]
  text = "\n".join(report)
  print("\n" + text)
  figure = (plot(results) if any(r["kind"] == "model" and "skipped" not in r
                                for r in results) else None)
  write_results("benchmark", dict(ceiling_gflops=ceiling, results=results), text, figure,
                out_dir=args.out)
  print(f"\nwrote {args.out}/benchmark.{{json,md,png}}")


if __name__ == "__main__":
  main()
