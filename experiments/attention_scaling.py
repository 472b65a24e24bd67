"""Memory and time of sliding-window attention against sequence length (Figure 1 of
the Longformer paper), forward and forward+backward, on CPU.

Four implementations of the same attention core (q, k, v given, no projections,
no global tokens): window w = 512 (256 keys each side, non-causal), batch 1,
8 heads, head dim 64, fp32.

* ``full``: dense n x n scores with the band masked out, softmax, product with v
  (JAX, jitted): O(n^2) memory and time.
* ``loop``: a naive loop, one query at a time (``jax.lax.map``, each query's 2r + 1
  keys a dynamic slice of the padded keys; jitted), its body rematerialised in the
  backward pass (``jax.checkpoint``: nothing n x w is stored): memory-lean, slow.
* ``chunks``: HF transformers' ``LongformerSelfAttention`` sliding-chunks core in
  PyTorch (``_sliding_chunks_query_key_matmul``, the padding-mask band, softmax,
  ``_sliding_chunks_matmul_attn_probs_value``), autograd for the backward: fast,
  about twice the memory the band needs (overlapping 2w chunks).
* ``ours``: ``longformer_jax.attention.longformer_attention`` (jitted).

Forward+backward is the gradient of sum(output * c) with respect to q, k and v,
for a fixed random c. Before any timing, the outputs and gradients of all four
at ``--check-n`` tokens are compared with a float64 dense reference (PyTorch); the
run stops if any differs by more than ``--tol``.

Protocol (as in ``benchmark.py``): each (implementation, length, mode) runs in a
fresh process: inputs, compile (JAX, ahead of time; PyTorch instead makes one
call at 512 tokens, its one-time costs), one warm-up call, the median wall time
of a few calls. Memory: the peak resident memory over those calls minus the
resident memory just before them, once freed heap pages are returned to the
system (``malloc_trim``) and the peak counter is reset (/proc/self/clear_refs;
if refused, the baseline is the peak so far). The framework, the inputs and the
compiler's transient memory (which alone outweighs the attention at short
lengths) are excluded; the peak minus the peak right after imports and inputs is
kept in the JSON (``mem_from_setup_bytes``). For JAX, the compiled program's
temporary allocation (``memory_analysis().temp_size_in_bytes``: exact) is
recorded too. ``full`` is not launched where its n x n buffers would exceed
``--max-gib``; a series stops where a step is predicted (from the last length:
linear, n^2 for ``full``) to exceed ``--step-cap`` seconds, or after a timeout.

    python experiments/attention_scaling.py           # 512 .. 32K tokens
    python experiments/attention_scaling.py --quick   # 512 .. 2K, a smoke test

Writes experiments/results/attention_scaling.{json,md,png} (``--out`` for another
stem) and prints one line per measurement.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time

import numpy as np

from common import RESULTS, cpu_name, peak_rss, timed, write_results
WINDOW, BATCH, HEADS, DIM = 512, 1, 8, 64
RADIUS = WINDOW // 2
NEG_INF = -1e30  # finite, so masked scores never give inf - inf
LENGTHS = (512, 1024, 2048, 4096, 8192, 16384, 32768)
QUICK_LENGTHS = (512, 1024, 2048)
IMPLS = ("full", "loop", "chunks", "ours")
MODES = ("fwd", "fwdbwd")
LABELS = {"full": "full n^2 attention (JAX)", "loop": "naive loop (JAX)",
          "chunks": "HF chunks (PyTorch)", "ours": "ours (longformer_attention, JAX)"}
SHORT = {"full": "full", "loop": "naive loop", "chunks": "HF chunks", "ours": "ours"}
MODE_LABELS = {"fwd": "forward", "fwdbwd": "forward+backward"}
# n x n fp32 buffers per head `full` holds at once (XLA's temp: 2 forward, 4 with backward).
FULL_BUFFERS = {"fwd": 2, "fwdbwd": 4}


# ---- the four implementations ------------------------------------------------
def full_attention(q_BxNxHxD, k_BxNxHxD, v_BxNxHxD):
  """Dense softmax attention restricted to the band |i - j| <= r: (B, N, H, D)."""
  import jax
  import jax.numpy as jnp

  n, d = q_BxNxHxD.shape[1], q_BxNxHxD.shape[-1]
  s_BxHxNxN = jnp.einsum("bnhd,bmhd->bhnm", q_BxNxHxD, k_BxNxHxD) / math.sqrt(d)
  pos_N = jnp.arange(n)
  band_NxN = jnp.abs(pos_N[:, None] - pos_N[None, :]) <= RADIUS
  p_BxHxNxN = jax.nn.softmax(jnp.where(band_NxN, s_BxHxNxN, NEG_INF), axis=-1)
  return jnp.einsum("bhnm,bmhd->bnhd", p_BxHxNxN, v_BxNxHxD)


def loop_attention(q_BxNxHxD, k_BxNxHxD, v_BxNxHxD):
  """The same band, one query position at a time: (B, N, H, D).

  Query i reads keys i - r .. i + r from keys padded by r on both sides. The
  body is rematerialised in the backward pass, so the loop stores only its
  outputs, never the per-query windows or probabilities.
  """
  import jax
  import jax.numpy as jnp

  n, d = q_BxNxHxD.shape[1], q_BxNxHxD.shape[-1]
  pad = [(0, 0), (RADIUS, RADIUS), (0, 0), (0, 0)]
  k_BxPxHxD, v_BxPxHxD = jnp.pad(k_BxNxHxD, pad), jnp.pad(v_BxNxHxD, pad)
  span = 2 * RADIUS + 1

  @jax.checkpoint
  def one(i):
    q_BxHxD = jax.lax.dynamic_index_in_dim(q_BxNxHxD, i, axis=1, keepdims=False)
    k_BxWxHxD = jax.lax.dynamic_slice_in_dim(k_BxPxHxD, i, span, axis=1)
    v_BxWxHxD = jax.lax.dynamic_slice_in_dim(v_BxPxHxD, i, span, axis=1)
    s_BxHxW = jnp.einsum("bhd,bwhd->bhw", q_BxHxD, k_BxWxHxD) / math.sqrt(d)
    key_W = i - RADIUS + jnp.arange(span)
    s_BxHxW = jnp.where((key_W >= 0) & (key_W < n), s_BxHxW, NEG_INF)
    return jnp.einsum("bhw,bwhd->bhd", jax.nn.softmax(s_BxHxW, axis=-1), v_BxWxHxD)

  return jax.lax.map(one, jnp.arange(n)).swapaxes(0, 1)


def ours_attention(q_BxNxHxD, k_BxNxHxD, v_BxNxHxD):
  """``longformer_attention`` over all-real tokens, no global ones: (B, N, H, D)."""
  import jax.numpy as jnp
  from longformer_jax import attention

  mask_BxN = jnp.ones(q_BxNxHxD.shape[:2], jnp.int32)
  return attention.longformer_attention(q_BxNxHxD, k_BxNxHxD, v_BxNxHxD,
                                        attention_mask=mask_BxN, window=WINDOW)


def hf_layer():
  """An HF ``LongformerSelfAttention`` whose sliding-chunks methods we call."""
  from transformers import LongformerConfig
  from transformers.models.longformer.modeling_longformer import LongformerSelfAttention

  cfg = LongformerConfig(hidden_size=HEADS * DIM, num_attention_heads=HEADS,
                         attention_window=[WINDOW], num_hidden_layers=1,
                         attention_probs_dropout_prob=0.0)
  return LongformerSelfAttention(cfg, layer_id=0).eval()


def chunks_attention(layer, q_BxNxHxD, k_BxNxHxD, v_BxNxHxD):
  """HF's local-attention path between its projections (PyTorch): (B, N, H, D)."""
  import torch

  r = layer.one_sided_attn_window_size
  batch, n = q_BxNxHxD.shape[:2]
  q = q_BxNxHxD / math.sqrt(q_BxNxHxD.shape[-1])
  s_BxNxHxW = layer._sliding_chunks_query_key_matmul(q, k_BxNxHxD, r)
  # HF adds the padding mask as a second banded product (no padding here: zeros).
  pad_BxNx1x1 = torch.zeros(batch, n, 1, 1, dtype=q.dtype)
  s_BxNxHxW += layer._sliding_chunks_query_key_matmul(
      torch.ones_like(pad_BxNx1x1), pad_BxNx1x1, r)
  p_BxNxHxW = torch.softmax(s_BxNxHxW, dim=-1, dtype=torch.float32)
  masked_BxNx1x1 = torch.zeros(batch, n, 1, 1, dtype=torch.bool)  # HF zeroes padded rows
  p_BxNxHxW = torch.masked_fill(p_BxNxHxW, masked_BxNx1x1, 0.0)
  return layer._sliding_chunks_matmul_attn_probs_value(p_BxNxHxW, v_BxNxHxD, r)


def reference(q, k, v, c) -> dict:
  """Float64 dense banded attention and the gradients of sum(out * c) (PyTorch)."""
  import torch

  q, k, v = (torch.tensor(x, dtype=torch.float64, requires_grad=True) for x in (q, k, v))
  n = q.shape[1]
  s_BxHxNxN = torch.einsum("bnhd,bmhd->bhnm", q, k) / math.sqrt(q.shape[-1])
  pos_N = torch.arange(n)
  band_NxN = (pos_N[:, None] - pos_N[None, :]).abs() <= RADIUS
  p_BxHxNxN = torch.softmax(s_BxHxNxN.masked_fill(~band_NxN, -math.inf), dim=-1)
  out = torch.einsum("bhnm,bmhd->bnhd", p_BxHxNxN, v)
  (out * torch.from_numpy(c).double()).sum().backward()
  return {name: t.detach().numpy() for name, t in
          (("out", out), ("dq", q.grad), ("dk", k.grad), ("dv", v.grad))}


JAX_FNS = {"full": full_attention, "loop": loop_attention, "ours": ours_attention}


# ---- inside a worker process -------------------------------------------------
def _inputs(n: int) -> list[np.ndarray]:
  """q, k, v and the cotangent c, each (B, N, H, D) fp32, the same for every run."""
  rng = np.random.default_rng(0)
  return [rng.standard_normal((BATCH, n, HEADS, DIM), dtype=np.float32) for _ in range(4)]


def _jax_program(impl: str, mode: str, arrays):
  """Compiles ``impl`` (its forward, or the q/k/v gradients) ahead of time; returns a
  call of it on fixed inputs, and the setup peak and XLA's temp size."""
  import jax
  import jax.numpy as jnp
  from longformer_jax.compile.compile_options import compiler_options

  fn = JAX_FNS[impl]
  q, k, v, c = (jax.device_put(a) for a in arrays)
  if mode == "fwd":
    args, f = (q, k, v), fn
  else:  # c is an argument: a closed-over array would become a compile-time constant
    args = (q, k, v, c)
    f = jax.grad(lambda q, k, v, c: jnp.sum(fn(q, k, v) * c), argnums=(0, 1, 2))
  jax.block_until_ready(args)
  info = dict(setup_peak_bytes=peak_rss())
  compiled = jax.jit(f, compiler_options=compiler_options()).lower(*args).compile()
  try:
    info["xla_temp_bytes"] = int(compiled.memory_analysis().temp_size_in_bytes)
  except Exception:  # a backend without the analysis
    info["xla_temp_bytes"] = None
  return lambda: jax.block_until_ready(compiled(*args)), info


def _torch_program(mode: str, arrays):
  """The HF chunks step (under no_grad for the forward), and its setup info."""
  import torch

  torch.set_num_threads(os.cpu_count())
  layer = hf_layer()
  q, k, v, c = (torch.from_numpy(a) for a in arrays)
  if mode == "fwd":
    def step():
      with torch.no_grad():
        chunks_attention(layer, q, k, v)
  else:
    for t in (q, k, v):
      t.requires_grad_(True)

    def step():
      (chunks_attention(layer, q, k, v) * c).sum().backward()
      for t in (q, k, v):
        t.grad = None
  info = dict(setup_peak_bytes=peak_rss())
  # One call at the smallest length pays PyTorch's one-time costs (thread pool,
  # kernel caches) outside the measurement; XLA pays its own while compiling.
  small = [torch.from_numpy(a[:, :WINDOW]).requires_grad_(True) for a in arrays[:3]]
  chunks_attention(layer, *small).sum().backward()
  return step, info


def _baseline() -> tuple[int, bool]:
  """Returns freed heap pages to the system and resets the peak resident memory
  (Linux >= 4.0): (resident memory now, True); without the reset, (the peak so far,
  False)."""
  import ctypes
  import gc

  gc.collect()
  try:
    ctypes.CDLL("libc.so.6").malloc_trim(0)
  except (OSError, AttributeError):  # not glibc
    pass
  try:
    with open("/proc/self/clear_refs", "w") as f:
      f.write("5")
  except OSError:
    return peak_rss(), False
  with open("/proc/self/status") as f:
    return next(int(l.split()[1]) * 1024 for l in f if l.startswith("VmRSS:")), True


def measure(impl: str, n: int, mode: str, repeats: int, max_gib: float) -> dict:
  """Time and memory of one (implementation, length, mode), see the module doc."""
  arrays = _inputs(n)
  if impl == "chunks":
    step, info = _torch_program(mode, arrays)
  else:
    step, info = _jax_program(impl, mode, arrays)
    if (info["xla_temp_bytes"] or 0) > max_gib * 2**30:
      return dict(skipped=f"needs {info['xla_temp_bytes'] / 2**30:.3g} GiB (XLA temp) "
                  f"> {max_gib:g} GiB", **info)
  ready_peak = peak_rss()
  base, reset = _baseline()
  r = timed(step, repeats)
  r.update(info, base_bytes=base, peak_reset=reset, mem_bytes=r["peak_bytes"] - base,
           mem_from_setup_bytes=max(r["peak_bytes"], ready_peak) - info["setup_peak_bytes"])
  return r


def check(n: int) -> dict:
  """Max abs difference of each implementation's output and q/k/v gradients from the
  float64 reference at ``n`` tokens, and the library versions."""
  import jax
  import torch
  import transformers

  q, k, v, c = _inputs(n)
  ref = reference(q, k, v, c)
  diff = lambda got: {name: float(np.max(np.abs(np.asarray(g, np.float64) - ref[name])))
                      for name, g in zip(("out", "dq", "dk", "dv"), got)}
  diffs = {}
  for impl, fn in JAX_FNS.items():
    def out_and_grads(q, k, v, c, fn=fn):
      out, vjp = jax.vjp(fn, q, k, v)
      return (out,) + vjp(c)
    diffs[impl] = diff(jax.jit(out_and_grads)(q, k, v, c))
  tq, tk, tv = (torch.tensor(x, requires_grad=True) for x in (q, k, v))
  out = chunks_attention(hf_layer(), tq, tk, tv)
  (out * torch.from_numpy(c)).sum().backward()
  diffs["chunks"] = diff(t.detach().numpy() for t in (out, tq.grad, tk.grad, tv.grad))
  return dict(n=n, diffs=diffs, versions=dict(
      jax=jax.__version__, torch=torch.__version__, transformers=transformers.__version__,
      backend=jax.default_backend(), cpus=os.cpu_count(), torch_threads=os.cpu_count()))


# ---- driver ------------------------------------------------------------------
def run_worker(argv: list[str], timeout: float) -> dict:
  """Runs this file with ``--worker argv`` in a fresh process; its last stdout line."""
  cmd = [sys.executable, os.path.abspath(__file__), "--worker"] + argv
  try:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
  except subprocess.TimeoutExpired:
    return dict(skipped=f"timeout > {timeout:.0f} s")
  if proc.returncode != 0:
    errors = [l for l in proc.stderr.splitlines() if "Error" in l.split(":")[0]]
    reason = errors[-1][:120] if errors else f"exit code {proc.returncode} (out of memory?)"
    return dict(skipped=f"failed: {reason}")
  return json.loads(proc.stdout.strip().splitlines()[-1])


def full_gib(n: int, mode: str) -> float:
  """Estimated memory of ``full``'s n x n buffers, GiB."""
  return FULL_BUFFERS[mode] * BATCH * HEADS * n * n * 4 / 2**30


def plan_point(impl: str, mode: str, n: int, done: list[dict], args) -> tuple[str | None, int]:
  """(reason to skip or None, repeats) for the next point of one (impl, mode) series,
  from the results so far of that series (ascending lengths)."""
  if impl == "full" and full_gib(n, mode) > args.max_gib:
    return f"skipped: would need ~{full_gib(n, mode):.3g} GiB (> {args.max_gib:g})", 0
  if done and "skipped" in done[-1]:
    return "skipped: stopped at a shorter length", 0
  if not done:
    return None, args.repeats
  # Time grows as n^2 for `full` and as n for the others.
  last = done[-1]
  predicted = last["step_s"] * (n / last["n"]) ** (2 if impl == "full" else 1)
  if predicted > args.step_cap:
    return f"skipped: a step would take ~{predicted:.3g} s (> {args.step_cap:g} s)", 0
  return None, max(1, min(args.repeats, int(args.point_s / predicted)))


def correctness(args) -> dict:
  """Runs the check in a worker, prints it, and stops the run if any difference is too big."""
  r = run_worker(["check", str(args.check_n)], args.timeout)
  if "skipped" in r:
    raise SystemExit(f"correctness check did not run: {r['skipped']}")
  print(f"correctness at n={r['n']:,} (max abs difference from a float64 dense reference):")
  bad = []
  for impl in IMPLS:
    d = r["diffs"][impl]
    print(f"  {SHORT[impl]:<10} " + "  ".join(f"{k} {v:.1e}" for k, v in d.items()), flush=True)
    bad += [f"{impl} {k} {v:.2e}" for k, v in d.items() if not v <= args.tol]
  if bad:
    raise SystemExit(f"correctness check FAILED (tolerance {args.tol:g}): " + ", ".join(bad))
  return r


def sweep(args, lengths, impls) -> list[dict]:
  """All measurements, one worker each, printing one line per measurement."""
  results, series = [], {(i, m): [] for i in impls for m in MODES}
  total = len(lengths) * len(series)
  for n in lengths:
    for impl in impls:
      for mode in MODES:
        done = series[(impl, mode)]
        skip, repeats = plan_point(impl, mode, n, done, args)
        t0 = time.time()
        argv = ["measure", impl, str(n), mode, str(repeats), str(args.max_gib)]
        r = dict(skipped=skip) if skip else run_worker(argv, args.timeout)
        r.update(impl=impl, n=n, mode=mode)
        done.append(r)
        results.append(r)
        if "skipped" in r:
          status = r["skipped"]
        else:
          temp = r.get("xla_temp_bytes")
          status = (f"{1e3 * r['step_s']:10.1f} ms  {r['mem_bytes'] / 2**20:8.1f} MiB"
                    + (f"  (XLA temp {temp / 2**20:.1f} MiB)" if temp is not None else "")
                    + f"  x{len(r['times_s'])}")
        print(f"[{len(results):>2}/{total} {time.time() - t0:5.1f}s] {n:>6} "
              f"{SHORT[impl]:<10} {mode:<6} {status}", flush=True)
  return results


# ---- report ------------------------------------------------------------------
def short_reason(reason: str) -> str:
  """A few words from a skip reason: 'needs ~16 GiB', 'step ~90 s', 'timeout > 300 s'."""
  reason = reason.removeprefix("skipped: ")
  for long, short in (("would need ", "needs "), ("a step would take ", "step ")):
    if reason.startswith(long):
      reason = short + reason[len(long):]
  return "" if reason.startswith("stopped") else reason.split(" (")[0].split(":")[0]


def mode_table(results: list[dict], mode: str, impls) -> str:
  """Markdown: rows length, columns each implementation's time (ms) and memory (MiB)."""
  head = "| tokens | " + " | ".join(f"{SHORT[i]} ms | {SHORT[i]} MiB" for i in impls) + " |"
  rows = [head, "|---:|" + "---:|---:|" * len(impls)]
  by = {(r["impl"], r["n"]): r for r in results if r["mode"] == mode}
  for n in sorted({r["n"] for r in results}):
    cells = []
    for impl in impls:
      r = by.get((impl, n))
      if r is None or "skipped" in r:
        cells += [short_reason(r["skipped"]) if r else "", ""]
      else:
        cells += [f"{1e3 * r['step_s']:,.1f}", f"{r['mem_bytes'] / 2**20:,.1f}"]
    rows.append(f"| {n:,} | " + " | ".join(cells) + " |")
  return "\n".join(rows)


def xla_table(results: list[dict], impls) -> str:
  """Markdown: the compiled JAX programs' temporary allocation (MiB) per length."""
  cols = [(i, m) for i in impls if i != "chunks" for m in MODES]
  rows = ["| tokens | " + " | ".join(f"{SHORT[i]} {MODE_LABELS[m]}" for i, m in cols) + " |",
          "|---:|" + "---:|" * len(cols)]
  by = {(r["impl"], r["mode"], r["n"]): r for r in results}
  for n in sorted({r["n"] for r in results}):
    cells = []
    for impl, mode in cols:
      temp = by.get((impl, mode, n), {}).get("xla_temp_bytes")
      cells.append("" if temp is None else f"{temp / 2**20:,.1f}")
    rows.append(f"| {n:,} | " + " | ".join(cells) + " |")
  return "\n".join(rows)


def _split(results: list[dict], impl: str, mode: str):
  """A series' measured points by length, and its first skipped point (or None)."""
  rs = sorted((r for r in results if (r["impl"], r["mode"]) == (impl, mode)),
              key=lambda r: r["n"])
  return [r for r in rs if "skipped" not in r], next((r for r in rs if "skipped" in r), None)


def stops(results: list[dict]) -> list[str]:
  """One line per (implementation, mode) that stops before the longest length."""
  lines = []
  for impl in IMPLS:
    for mode in MODES:
      ran, first = _split(results, impl, mode)
      if first is not None:
        last = f"last run at {ran[-1]['n']:,}" if ran else "never run"
        lines.append(f"{SHORT[impl]} {MODE_LABELS[mode]}: {last}; at {first['n']:,}: "
                     f"{first['skipped'].removeprefix('skipped: ')}")
  return lines


COLORS = {"full": "tab:red", "loop": "tab:orange", "chunks": "tab:green", "ours": "tab:blue"}


def plot(results: list[dict]):
  """Memory and time against length, log-log: color per implementation, solid
  forward, dashed forward+backward, an X where a series stops early."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  from matplotlib.lines import Line2D
  from matplotlib.ticker import FuncFormatter, LogFormatter

  fig, axes = plt.subplots(1, 2, figsize=(12, 5))
  lengths = sorted({r["n"] for r in results})
  longest = lengths[-1]
  for impl in IMPLS:
    for mode in MODES:
      rs, first = _split(results, impl, mode)
      ls = "-" if mode == "fwd" else "--"
      for ax, value in ((axes[0], lambda r: r["mem_bytes"] / 2**20),
                        (axes[1], lambda r: 1e3 * r["step_s"])):
        pts = [(r["n"], value(r)) for r in rs if value(r) > 0]  # log scale: drop zeros
        if not pts:
          continue
        ax.plot(*zip(*pts), ls=ls, marker="o", ms=4, color=COLORS[impl])
        if first is not None and pts[-1][0] < longest:
          ax.plot(*pts[-1], marker="X", ms=11, color=COLORS[impl], mec="black")
          right = pts[-1][0] ** 2 > longest * min(lengths)  # past the middle: text left
          ax.annotate(f"{MODE_LABELS[mode]}: {short_reason(first['skipped'])}", pts[-1],
                      xytext=(-9 if right else 9, 0), textcoords="offset points",
                      ha="right" if right else "left", va="center", fontsize=7,
                      color=COLORS[impl])
  titles = ("memory: peak resident during the calls (MiB)", "time per call (ms)")
  for ax, title in zip(axes, titles):
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(FuncFormatter(lambda y, _: f"{y:g}"))
    # Minor ticks labelled only over a narrow range, as plain numbers.
    ax.yaxis.set_minor_formatter(LogFormatter(labelOnlyBase=False, minor_thresholds=(1, 0.5)))
    ax.set_xticks(lengths, [f"{n // 1024}K" if n >= 1024 else str(n) for n in lengths])
    ax.set_xlabel("sequence length (tokens)")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
  ran = {r["impl"] for r in results}
  handles = [Line2D([], [], color=COLORS[i], lw=2, label=LABELS[i]) for i in IMPLS if i in ran]
  handles += [Line2D([], [], color="gray", ls="-", label="forward"),
              Line2D([], [], color="gray", ls="--", label="forward+backward"),
              Line2D([], [], color="gray", ls="", marker="X", ms=9, mec="black",
                     label="last length run (longer: skipped)")]
  fig.legend(handles=handles, fontsize=8, loc="lower center", ncol=4)
  fig.suptitle(f"Sliding-window attention core, w = {WINDOW}, batch {BATCH}, {HEADS} heads, "
               f"head dim {DIM}, fp32, CPU")
  fig.tight_layout(rect=(0, 0.1, 1, 1))
  return fig


def command() -> str:
  return " ".join(["python experiments/attention_scaling.py"] + sys.argv[1:])


def report(args, check_r: dict, results: list[dict], impls, minutes: float) -> str:
  """The markdown report."""
  ver = check_r["versions"]
  diffs = ["| implementation | output | dq | dk | dv |", "|---|---:|---:|---:|---:|"]
  diffs += ["| " + " | ".join([LABELS[i]] + [f"{check_r['diffs'][i][k]:.1e}" for k in
                                             ("out", "dq", "dk", "dv")]) + " |" for i in IMPLS]
  text = [
      "# Attention memory and time against sequence length (paper Figure 1)", "",
      f"Command: `{command()}`", "", f"![memory and time]({os.path.basename(args.out)}.png)", "",
      f"CPU: {cpu_name()}; {ver['cpus']} cores. Device: CPU only (JAX backend "
      f"{ver['backend']}; PyTorch with {ver['torch_threads']} threads). jax {ver['jax']}, "
      f"torch {ver['torch']}, transformers {ver['transformers']}.", "",
      f"Attention core only (q, k, v given), window {WINDOW} ({RADIUS} keys each side), "
      f"batch {BATCH}, {HEADS} heads, head dim {DIM}, fp32, no global tokens. "
      "Forward+backward: gradients of sum(output * c) for q, k, v.", "",
      f"Correctness at {check_r['n']:,} tokens, max abs difference from a float64 dense "
      f"reference (tolerance {args.tol:g}):", "", "\n".join(diffs), "",
      "Each point runs in a fresh process: compile (JAX, ahead of time; PyTorch makes "
      "one call at 512 tokens instead), one warm-up call, then the median of up to "
      f"{args.repeats} calls (fewer where they would take over {args.point_s:g} s). "
      "Memory (MiB): peak resident memory over the calls minus the resident memory "
      "just before them, with freed heap returned to the system and the peak counter "
      "reset: framework, inputs and compiler excluded. `mem_from_setup_bytes` in the "
      "JSON is the peak minus the peak right after imports and inputs, compiler "
      "included.", ""]
  for mode in MODES:
    text += [f"## {MODE_LABELS[mode]}", "", mode_table(results, mode, impls), ""]
  if any(i != "chunks" for i in impls):
    text += ["## XLA temporary allocation of the compiled JAX programs (MiB, exact)", "",
             xla_table(results, impls), ""]
  text += ["## Where a series stops", ""] + [f"- {l}" for l in stops(results) or ["none"]]
  text += ["", f"Budgets: `full` launched only below ~{args.max_gib:g} GiB of n x n "
           f"buffers; a step predicted over {args.step_cap:g} s is skipped; "
           f"{args.timeout:g} s per measurement.", f"Total time: {minutes:.1f} min", ""]
  return "\n".join(text)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--quick", action="store_true", help="512 .. 2K tokens")
  parser.add_argument("--lengths", help="comma-separated lengths (multiples of 512)")
  parser.add_argument("--impls", default=",".join(IMPLS))
  parser.add_argument("--repeats", type=int, default=5, help="most timed calls per point")
  parser.add_argument("--point-s", type=float, default=20,
                      help="fewer repeats where they would take longer than this")
  parser.add_argument("--step-cap", type=float, default=60, help="seconds per call")
  parser.add_argument("--max-gib", type=float, default=12, help="memory budget of `full`")
  parser.add_argument("--timeout", type=float, default=300, help="seconds per measurement")
  parser.add_argument("--check-n", type=int, default=1024)
  parser.add_argument("--tol", type=float, default=1e-4)
  parser.add_argument("--out", default=os.path.join(RESULTS, "attention_scaling"),
                      help="result stem: writes STEM.json, STEM.md, STEM.png")
  parser.add_argument("--worker", nargs="+", help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.worker:
    what, *a = args.worker
    print(json.dumps(check(int(a[0])) if what == "check" else
                     measure(a[0], int(a[1]), a[2], int(a[3]), float(a[4]))))
    return

  lengths = (QUICK_LENGTHS if args.quick else
             tuple(int(s) for s in args.lengths.split(",")) if args.lengths else LENGTHS)
  impls = tuple(i for i in IMPLS if i in args.impls.split(","))
  t_start = time.time()
  check_r = correctness(args)
  results = sweep(args, lengths, impls)
  minutes = (time.time() - t_start) / 60
  text = report(args, check_r, results, impls, minutes)
  print("\n" + text)
  write_results(os.path.abspath(args.out),
                dict(command=command(), check=check_r, results=results, minutes=minutes,
                     settings=dict(window=WINDOW, batch=BATCH, heads=HEADS, head_dim=DIM)),
                text, plot(results), command=command())
  print(f"wrote {args.out}.{{json,md,png}}")


if __name__ == "__main__":
  main()
