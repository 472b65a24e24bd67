"""One Longformer self-attention layer: ours vs dense JAX attention vs HF (PyTorch).

Layer: d_model 512, 8 heads, window 512, one global token (position 0), batch 1,
fp32, Q/K/V (and global Q/K/V) projections included. For each length n it
measures forward and forward+backward (of sum(out^2)) wall time, median over
repeats after a warm-up, and peak memory: the growth of the process's peak RSS
during the timed work (each measurement runs in its own process); for the JAX
versions the larger of that and XLA's compiled buffer plan (arguments + temps +
outputs). Dense attention is skipped where
its n x n scores cannot fit in memory.

    python experiments/bench_attention.py            # n = 1K ... 64K
    python experiments/bench_attention.py --quick    # n = 1K ... 4K

Writes experiments/results/bench_attention.{json,png} and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

D_MODEL, HEADS, WINDOW = 512, 8, 512
RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
MEMORY_BUDGET = 20 * 2**30  # bytes a dense run may plan to use on this machine
IMPLS = ("ours", "dense_jax", "hf_torch")


# ---- measurement helpers (run inside a worker process) ------------------------
def _rss_bytes(field: str) -> int:
  with open("/proc/self/status") as f:
    for line in f:
      if line.startswith(field + ":"):
        return int(line.split()[1]) * 1024
  raise RuntimeError(field)


def _reset_peak():
  with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # resets VmHWM (peak RSS) to the current RSS


def _timed(fn, repeats: int):
  fn()  # warm-up (and compile)
  base = _rss_bytes("VmRSS")
  _reset_peak()
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t0)
  return statistics.median(times), max(_rss_bytes("VmHWM") - base, 0)


def _jax_fns(impl: str, n: int):
  import jax
  import jax.numpy as jnp
  from flax import nnx
  from longformer_jax import attention as attn
  from longformer_jax import layers
  from longformer_jax.config import LongformerConfig

  cfg = LongformerConfig(hidden_size=D_MODEL, num_attention_heads=HEADS, num_hidden_layers=1,
                         attention_window=WINDOW, attention_probs_dropout_prob=0.0)
  with nnx.use_eager_sharding(False):
    module = layers.SelfAttention(cfg, 0, nnx.Rngs(0))
  module.eval()
  graphdef, params, rest = nnx.split(module, nnx.Param, ...)
  x = jax.random.normal(jax.random.key(1), (1, n, D_MODEL), jnp.float32)
  valid = jnp.ones((1, n), bool)
  is_global = jnp.zeros((1, n), bool).at[0, 0].set(True)

  def forward(params, x):
    if impl == "ours":
      gidx = attn.global_index(is_global, 1)
      return nnx.merge(graphdef, params, rest)(x, valid, is_global, gidx)
    m = nnx.merge(graphdef, params, rest)
    split = lambda t: t.reshape(1, n, HEADS, D_MODEL // HEADS)
    out = jax.nn.dot_product_attention(split(m.query(x)), split(m.key(x)), split(m.value(x)),
                                       implementation="xla")
    return out.reshape(1, n, D_MODEL)

  def loss(params, x):
    return jnp.sum(forward(params, x) ** 2)

  fwd = jax.jit(forward)
  fwd_bwd = jax.jit(jax.grad(loss, argnums=(0, 1)))
  plan = {}
  for name, f in (("fwd", fwd), ("fwd_bwd", fwd_bwd)):
    mem = f.lower(params, x).compile().memory_analysis()
    plan[name] = mem.temp_size_in_bytes + mem.argument_size_in_bytes + mem.output_size_in_bytes
  run = {"fwd": lambda: jax.block_until_ready(fwd(params, x)),
         "fwd_bwd": lambda: jax.block_until_ready(fwd_bwd(params, x))}
  return run, plan


def _hf_fns(n: int):
  import torch
  from transformers import LongformerConfig as HFConfig
  from transformers.models.longformer.modeling_longformer import LongformerSelfAttention

  torch.set_num_threads(os.cpu_count())
  cfg = HFConfig(hidden_size=D_MODEL, num_attention_heads=HEADS, attention_window=[WINDOW],
                 num_hidden_layers=1, attention_probs_dropout_prob=0.0)
  layer = LongformerSelfAttention(cfg, layer_id=0).eval()
  x = torch.randn(1, n, D_MODEL, requires_grad=True)
  mask = torch.zeros(1, n)
  mask[0, 0] = 10000.0  # > 0: global
  kw = dict(attention_mask=mask, is_index_masked=mask < 0, is_index_global_attn=mask > 0,
            is_global_attn=True)

  def fwd():
    with torch.no_grad():
      layer(x, **kw)

  def fwd_bwd():
    out = layer(x, **kw)[0]
    (out ** 2).sum().backward()
    layer.zero_grad(set_to_none=True)
    x.grad = None

  return {"fwd": fwd, "fwd_bwd": fwd_bwd}, {}


def worker(impl: str, n: int, repeats: int) -> dict:
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  run, plan = _hf_fns(n) if impl == "hf_torch" else _jax_fns(impl, n)
  if impl == "dense_jax" and plan["fwd_bwd"] > MEMORY_BUDGET:
    return dict(impl=impl, n=n, skipped=f"needs {plan['fwd_bwd'] / 2**30:.0f} GiB")
  out = dict(impl=impl, n=n)
  for name in ("fwd", "fwd_bwd"):
    t, rss = _timed(run[name], repeats)
    out[f"{name}_s"], out[f"{name}_rss_bytes"] = t, rss
    # XLA's allocator may keep warm-up buffers resident, hiding them from the
    # RSS growth; its compiled plan is exact, so JAX reports the larger of the two.
    out[f"{name}_peak_bytes"] = max(rss, plan.get(name, 0))
  return out


# ---- driver ------------------------------------------------------------------
def _run_worker(impl: str, n: int, repeats: int) -> dict:
  cmd = [sys.executable, os.path.abspath(__file__), "--worker", impl, str(n), str(repeats)]
  proc = subprocess.run(cmd, capture_output=True, text=True)
  if proc.returncode != 0:
    errors = [l for l in proc.stderr.splitlines() if "Error" in l.split(":")[0]]
    reason = errors[-1][:100] if errors else f"exit code {proc.returncode}"
    return dict(impl=impl, n=n, skipped=f"failed: {reason}")
  return json.loads(proc.stdout.strip().splitlines()[-1])


def _fmt_time(r, key):
  return f"{r[key]:.3f}" if key in r else "-"


def _fmt_mem(r, key):
  return f"{r[key] / 2**20:,.0f}" if key in r else "-"


def table(results: list[dict]) -> str:
  rows = ["| n | impl | fwd s | fwd+bwd s | fwd+bwd peak MiB |", "|---:|---|---:|---:|---:|"]
  for r in results:
    if "skipped" in r:
      rows.append(f"| {r['n']:,} | {r['impl']} | {r['skipped']} | | |")
      continue
    rows.append(f"| {r['n']:,} | {r['impl']} | {_fmt_time(r, 'fwd_s')} | "
                f"{_fmt_time(r, 'fwd_bwd_s')} | {_fmt_mem(r, 'fwd_bwd_peak_bytes')} |")
  return "\n".join(rows)


def plot(results: list[dict], path: str) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
  styles = {"ours": ("tab:blue", "o", "ours (blocked gathers)"),
            "dense_jax": ("tab:red", "s", "dense n² attention (JAX)"),
            "hf_torch": ("tab:green", "^", "HF LongformerSelfAttention (PyTorch)")}
  for impl, (color, marker, label) in styles.items():
    rs = [r for r in results if r["impl"] == impl and "skipped" not in r]
    if not rs:
      continue
    ns = [r["n"] for r in rs]
    axes[0].plot(ns, [r["fwd_bwd_s"] for r in rs], marker=marker, color=color, label=label)
    axes[1].plot(ns, [r["fwd_bwd_peak_bytes"] / 2**30 for r in rs], marker=marker,
                 color=color, label=label)
  for ax, title in zip(axes, ("forward+backward time (s)", "forward+backward peak memory (GiB)")):
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("sequence length n")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
  axes[0].legend(fontsize=8)
  fig.suptitle(f"One attention layer: d {D_MODEL}, {HEADS} heads, window {WINDOW}, "
               "one global token, fp32, CPU")
  fig.tight_layout()
  fig.savefig(path, dpi=120)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--quick", action="store_true", help="n = 1K, 2K, 4K only")
  parser.add_argument("--max-n", type=int, default=65536)
  parser.add_argument("--impls", default=",".join(IMPLS))
  parser.add_argument("--worker", nargs=3, help=argparse.SUPPRESS)
  parser.add_argument("--out", default=RESULTS)
  args = parser.parse_args()
  if args.worker:
    impl, n, repeats = args.worker[0], int(args.worker[1]), int(args.worker[2])
    print(json.dumps(worker(impl, n, repeats)))
    return

  impls = args.impls.split(",")
  try:
    import transformers  # noqa: F401
  except ImportError:
    print("transformers not installed: HF column skipped")
    impls = [i for i in impls if i != "hf_torch"]
  max_n = 4096 if args.quick else args.max_n
  sizes = [n for n in (1024, 2048, 4096, 8192, 16384, 32768, 65536) if n <= max_n]
  results = []
  for n in sizes:
    repeats = 5 if n <= 8192 else 3 if n <= 16384 else 2
    for impl in impls:
      t0 = time.time()
      r = _run_worker(impl, n, repeats)
      results.append(r)
      status = r.get("skipped") or (f"fwd {r['fwd_s']:.3f}s  fwd+bwd {r['fwd_bwd_s']:.3f}s  "
                                    f"peak {r['fwd_bwd_peak_bytes'] / 2**20:,.0f} MiB")
      print(f"[{time.time() - t0:5.1f}s] n={n:>6} {impl:<9} {status}", flush=True)

  print()
  print(table(results))
  ours = {r["n"]: r for r in results if r["impl"] == "ours" and "skipped" not in r}
  hf = {r["n"]: r for r in results if r["impl"] == "hf_torch" and "skipped" not in r}
  common = sorted(set(ours) & set(hf))
  if common:
    print("\nspeed-up of ours over HF (fwd+bwd), and memory ratio ours/HF:")
    for n in common:
      print(f"  n={n:>6}: {hf[n]['fwd_bwd_s'] / ours[n]['fwd_bwd_s']:.2f}x faster, "
            f"{ours[n]['fwd_bwd_peak_bytes'] / max(hf[n]['fwd_bwd_peak_bytes'], 1):.2f}x memory")
    slower = [n for n in common if n >= 4096 and ours[n]["fwd_bwd_s"] >= hf[n]["fwd_bwd_s"]]
    print("ours faster than HF at every n >= 4K:", "yes" if not slower else f"NO at {slower}")
  os.makedirs(args.out, exist_ok=True)
  with open(os.path.join(args.out, "bench_attention.json"), "w") as f:
    json.dump(results, f, indent=1)
  plot(results, os.path.join(args.out, "bench_attention.png"))
  print(f"\nwrote {args.out}/bench_attention.json and bench_attention.png")


if __name__ == "__main__":
  main()
