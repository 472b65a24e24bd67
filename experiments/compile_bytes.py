"""Where a TPU step's HBM bytes go: one longformer-base layer, compiled for v5e.

One layer of longformer-base (d 768, 12 heads, d_ff 3,072, window 512, one global
token, bf16), one 4,096-token sequence per chip, batch 4 over ``v5e:2x2`` (FSDP),
forward + backward, layers unscanned, no remat; for each backend (``blocked``,
``pallas``):

* XLA's ``cost_analysis()['bytes accessed']`` and the loop-aware count of
  ``hlo_cost.py`` (which counts a sliced operand as its slices), with the ops that
  carry the most bytes;
* an analytical estimate of the traffic a fused implementation cannot avoid
  (:func:`analytical_bytes`): every activation the layer writes is written once and
  read once per use, weights read and gradients written, and, for ``blocked``, the
  (query x span) scores and probabilities it materialises;

and the roofline step time each figure gives. The compile report's roofline uses
the loop-aware count.

    python experiments/compile_bytes.py

Writes experiments/results/compile_bytes.{md,json}.
"""

from __future__ import annotations

import json
import os

os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")  # before jax loads: no TPU metadata server

from common import load_config, write_results  # noqa: E402
from longformer_jax import aot, topology, train  # noqa: E402

SEQ, BATCH, E, H, F, W, Q = 4096, 4, 768, 12, 3072, 512, 128
CHIPS = 4


def config(impl: str):
  c = load_config("default")  # the training library's config: swap model and shapes
  c.model.update(hidden_size=E, num_hidden_layers=1,
                 num_attention_heads=H, intermediate_size=F, attention_window=W,
                 max_position_embeddings=SEQ + 2, block_size=Q, dtype="bfloat16",
                 attention_impl=impl, remat="none", scan_layers=False,
                 attention_probs_dropout_prob=0.0)
  c.data.update(min_distance=1024)
  c.seq_len, c.batch_size = SEQ, BATCH
  c.mesh.update(data=1, fsdp=CHIPS)
  return c


def analytical_bytes(impl: str) -> dict:
  """Per chip, one sequence: the HBM traffic of one layer's forward + backward."""
  n, act = SEQ, 2  # bf16 activations
  weights = (4 * E * E + 3 * E * E + 2 * E * F) * 4  # fp32 params (+ global Q/K/V)
  # forward: x, q, k, v, attention out, projection out, LN, ffn in (N x F), ffn out, LN
  forward_acts = n * act * (9 * E + 2 * F)
  # each written once and read about twice (its consumer, and the backward pass); the
  # backward writes a gradient of each and reads it once
  activations = 3 * forward_acts + 2 * forward_acts
  params = 3 * weights  # read forward, read backward, gradient written
  scores = 0
  if impl == "blocked":  # (N x span) fp32 scores and probabilities per head, in HBM
    span = Q + W
    scores = n * span * H * 4 * (2 + 4)  # written + read forward, recomputed/read backward
  return {"weights": params, "activations": activations, "scores": scores,
          "total": params + activations + scores}


def main():
  target = topology.resolve("v5e:2x2")
  rows = []
  for impl in ("blocked", "pallas"):
    (step,) = aot.compile_steps(config(impl), "/tmp/compile_bytes", target, kinds=("train",))
    est = analytical_bytes(impl)
    chip = target.chip
    rows.append({"backend": impl, "xla_bytes": step["bytes"]["xla_cost_analysis"],
                 "hlo_bytes": step["bytes"]["hlo"], "analytical": est,
                 "flops_hlo": step["flops"]["hlo"], "flops_model": step["flops"]["analytical"],
                 "top_bytes": step["top_bytes"], "temp": step["memory"]["temp"],
                 "compute_s": step["flops"]["hlo"] / chip.peak_flops,
                 "xla_memory_s": step["bytes"]["xla_cost_analysis"] / chip.hbm_bandwidth,
                 "hlo_memory_s": step["bytes"]["hlo"] / chip.hbm_bandwidth,
                 "analytical_memory_s": est["total"] / chip.hbm_bandwidth})
    print(impl, json.dumps(rows[-1], default=float)[:600], flush=True)
  lines = ["# HBM bytes of one longformer-base layer on v5e, per chip", "",
           "    python experiments/compile_bytes.py", "",
           f"One layer (d {E}, {H} heads, d_ff {F}, window {W}, block {Q}, bf16), "
           f"{SEQ:,} tokens per chip, batch {BATCH} FSDP over v5e:2x2, fwd + bwd, no remat.",
           "", "| backend | FLOPs (hlo) | FLOPs (model) | bytes: XLA cost_analysis | bytes: "
           "loop-aware HLO | bytes: analytical | compute s | memory s (XLA / HLO / analytical) "
           "| temp GiB |", "|---|---|---|---|---|---|---|---|---|"]
  for r in rows:
    lines.append(f"| {r['backend']} | {r['flops_hlo']:.3g} | {r['flops_model']:.3g} "
                 f"| {r['xla_bytes']:.3g} | {r['hlo_bytes']:.3g} "
                 f"| {r['analytical']['total']:.3g} | {r['compute_s'] * 1e3:.2f} ms "
                 f"| {r['xla_memory_s'] * 1e3:.2f} / {r['hlo_memory_s'] * 1e3:.2f} / "
                 f"{r['analytical_memory_s'] * 1e3:.2f} ms | {r['temp'] / 2**30:.2f} |")
  for r in rows:
    lines += ["", f"Ops carrying the most bytes ({r['backend']}, loop-aware count):", "",
              "| op: source | bytes |", "|---|---|"]
    lines += [f"| {t['op']} | {t['bytes']:.3g} |" for t in r["top_bytes"]]
  write_results("compile_bytes", rows, lines, command="python experiments/compile_bytes.py")
  print("\n".join(lines))


if __name__ == "__main__":
  main()
