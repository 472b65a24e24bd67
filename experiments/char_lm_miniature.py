"""The paper's character LM in miniature, offline: Table 2, staged training (section 4.2)
and the Table 4 ablation, on a text8-style corpus built from a dictionary package.

    apt-get download dict-gcide && dpkg-deb -x dict-gcide_*.deb gcide
    python experiments/corpora/text8_style.py gcide --out gcide8.zip     # 26.7M chars, 90/5/5
    python experiments/char_lm_miniature.py table2 --corpus gcide8.zip
    python experiments/char_lm_miniature.py ablation --corpus gcide8.zip
    python experiments/char_lm_miniature.py staged --corpus gcide8.zip
    (--quick: a few steps each, to check the plumbing)

The model is ``configs/char_lm.py``'s (pre-LN, relative sinusoidal positions inside
causal windows that grow with depth, dilation on 2 heads of the upper layers) shrunk to
a 2-core CPU (``Mini``): 4 layers, d 128, 4 heads, windows 16 -> 128 over depth,
sequences of 512 characters, no dropout (the runs see less than one epoch). The
evaluation is the paper's protocol at this scale: windows of 512 stepping by 128,
each scoring its last 128 characters (at least 384 of context).

* ``table2``: Kneser-Ney and Witten-Bell n-grams (orders 1-5) and xz, fitted on the
  train split, against the model, all scored on the same characters of the test split
  (the first ``Mini.test_batches`` batches of evaluation windows); the model's
  validation BPC curve next to the baselines.
* ``ablation``: Table 4: increasing / fixed / decreasing windows (dilation on), and
  dilation off (increasing windows), ``--seeds`` seeds each; mean and spread.
* ``staged``: two phases (256 then 512 characters, window doubled, LR halved, twice
  the batch in phase 1: the same characters per step) against one phase at 512, the
  same steps and characters in all.

Writes experiments/results/char_lm_{table2,ablation,staged}.{json,md,png}; runs
under ``--workdir`` (a finished run is not redone).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import logging
import os
import statistics
import sys
import time

import ngram
from common import RESULTS, cpu_name, load_config_module, write_results
from corpora import text8_style
from longformer_jax import train

char_lm = load_config_module("char_lm")
log = logging.getLogger("char_lm_miniature")


@dataclasses.dataclass(frozen=True)
class Mini:
  """The miniature: model shape, schedule and evaluation."""

  layers: int = 4
  hidden: int = 128
  heads: int = 4
  low: int = 16  # layer-0 window (phase 1)
  high: int = 128  # top-layer window
  seq_len: int = 512
  batch: int = 16
  lr: float = 2e-3
  steps: int = 1300  # table2
  staged_steps: int = 600  # each of the two runs
  ablation_steps: int = 260  # each of the 4 x seeds runs, at ablation_batch; no curve
  ablation_batch: int = 8
  eval_stride: int = 128
  eval_every: int = 200
  eval_batches: int = 6  # validation windows per curve point: eval_batches x batch
  test_batches: int = 40  # test windows scored by every row of table 2

  def quick(self) -> "Mini":
    return dataclasses.replace(self, steps=6, staged_steps=6, ablation_steps=4, eval_every=3,
                               eval_batches=1, test_batches=2)

  def scored_chars(self, batches: int) -> int:
    """Characters scored by the first ``batches`` batches of evaluation windows: the
    first window scores all of its targets, each later one ``eval_stride``."""
    windows = batches * self.batch
    return self.seq_len + (windows - 1) * self.eval_stride


def mini_config(corpus: str, data_dir: str, mini: Mini, *, window: str = "increasing",
                dilation: str = "on", seed: int = 0, staged: bool = False,
                steps: int | None = None, batch: int | None = None):
  """``configs/char_lm.py``'s paper architecture at the miniature's size; ``steps``
  (default ``mini.steps``) of ``batch`` (default ``mini.batch``) sequences in one
  phase, or two with ``staged``."""
  steps, batch = steps or mini.steps, batch or mini.batch
  c = char_lm.get_config(f"text8,cpu,window={window},dilation={dilation}")
  layers, heads = mini.layers, mini.heads
  c.model.update(
      num_hidden_layers=layers, hidden_size=mini.hidden, num_attention_heads=heads,
      intermediate_size=4 * mini.hidden,
      attention_window=char_lm.ablation_windows(layers, window, mini.low, mini.high),
      attention_dilation=char_lm.layer_dilations(layers, heads, dilation == "on"),
      hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, block_size=64)
  c.data.update(path=corpus, data_dir=data_dir, eval_stride=mini.eval_stride)
  c.seed = seed
  if staged:  # phase 1 at half the length, twice the batch, the windows halved
    c.model.attention_window = [max(w // 2, 1) for w in c.model.attention_window]
    phases = ((mini.seq_len // 2, mini.lr, 2 * batch, steps // 2, 1),
              (mini.seq_len, mini.lr / 2, batch, steps - steps // 2, 2))
  else:
    phases = ((mini.seq_len, mini.lr, batch, steps, 1),)
  c.phases = tuple(dict(seq_len=s, lr=lr, batch_size=b, steps=n, window_scale=w)
                   for s, lr, b, n, w in phases)
  c.seq_len, c.batch_size, c.train_steps = phases[0][0], phases[0][2], phases[0][3]
  c.optim.lr = phases[0][1]
  c.update(log_every=50, eval_every=mini.eval_every, eval_batches=mini.eval_batches,
           checkpoint_every=0, async_checkpoints=False)
  return c


def train_run(config, workdir: str) -> dict:
  """Trains ``config`` in ``workdir`` (skipped when finished): its metrics rows and time."""
  done = os.path.join(workdir, "finished.json")
  if os.path.exists(done):
    with open(done) as f:
      return json.load(f)
  t0 = time.time()
  final = train.train_and_evaluate(config, workdir)
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    rows = [json.loads(line) for line in f]
  out = dict(final=final, rows=rows, seconds=time.time() - t0)
  with open(done, "w") as f:
    json.dump(out, f)
  return out


def curve(rows: list[dict], key: str = "eval_bpc") -> list[tuple[int, float]]:
  return [(r["step"], r[key]) for r in rows if key in r]


def header(title: str, command: str) -> list[str]:
  return [f"# {title}", "", f"Command: `{command}`", "",
          f"Machine: {cpu_name()}, {os.cpu_count()} CPUs, JAX on CPU.", ""]


def report(args, stem: str, payload: dict, lines: list[str], figure) -> None:
  """Writes ``args.results``/STEM.{json,md,png} and prints the table."""
  write_results(stem, payload, lines, figure, command=args.command, bbox_inches="tight",
                out_dir=args.results)
  print("\n".join(lines))


# ---- table 2 --------------------------------------------------------------------
def table2(args, mini: Mini) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  splits = text8_style.split_text(args.corpus)
  scored = mini.scored_chars(mini.test_batches)
  held_out = splits["test"][:scored + 1]  # the characters the model's windows score
  t0 = time.time()
  ngram_rows = ngram.baseline_table(splits["train"], held_out, range(1, 6))
  xz = ngram.xz_bits_per_char(splits["train"], held_out)
  baseline_s = time.time() - t0
  config = mini_config(args.corpus, args.data_dir, mini)
  workdir = os.path.join(args.workdir, "table2")
  run = train_run(config, workdir)
  model_bpc = final_bpc(config, workdir, mini, "test")
  kn, wb = ngram.KNESER_NEY, ngram.WITTEN_BELL
  best = min(ngram_rows, key=lambda r: min(r[kn], r[wb]))
  best_bpc = min(best[kn], best[wb])
  lines = header("Table 2 in miniature: character LM vs n-grams and xz", args.command)
  lines += [f"Corpus: {os.path.basename(args.corpus)} (text8-style {args.corpus_name}, "
            f"{sum(len(s) for s in splits.values()):,} chars; train {len(splits['train']):,}). "
            f"All rows score the same {len(held_out) - 1:,} characters: the start of the "
            "test split that the model's first "
            f"{mini.test_batches * mini.batch} evaluation windows (512, stride 128) score.", "",
            "| model | test BPC |", "|---|---:|"]
  for r in ngram_rows:
    lines.append(f"| {r['order']}-gram Kneser-Ney / Witten-Bell | {r[kn]:.3f} / "
                 f"{r[wb]:.3f} |")
  lines += [f"| xz -9e, the test characters alone | {xz['alone']:.3f} |",
            f"| xz -9e, after the train split | {xz['conditional']:.3f} |",
            f"| **Longformer char-LM ({param_millions(config):.1f}M, {mini.steps} steps)** | "
            f"**{model_bpc:.3f}** |", "",
            f"Best n-gram: {best['order']}-gram at {best_bpc:.3f}; the model is "
            f"{'below' if model_bpc < best_bpc else 'NOT below'} it by "
            f"{best_bpc - model_bpc:+.3f} BPC.",
            f"Training: {run['seconds'] / 60:.1f} min ({mini.steps} steps of {mini.batch} x "
            f"{mini.seq_len} characters = {mini.steps * mini.batch * mini.seq_len / 1e6:.1f}M); "
            f"baselines {baseline_s / 60:.1f} min.", "",
            "![BPC curve](char_lm_table2.png)"]
  fig, ax = plt.subplots(figsize=(7, 4.2))
  steps, bpcs = zip(*curve(run["rows"]))
  ax.plot(steps, bpcs, "o-", label="Longformer char-LM (validation)")
  ax.axhline(best_bpc, color="C1", ls="--", label=f"best n-gram ({best['order']}-gram)")
  ax.axhline(xz["conditional"], color="C2", ls=":", label="xz after train")
  ax.set(xlabel="step", ylabel="bits per character",
         title=f"Char-LM in miniature ({args.corpus_name})")
  ax.legend()
  payload = dict(command=args.command, mini=dataclasses.asdict(mini), ngram=ngram_rows, xz=xz,
                 model_test_bpc=model_bpc, curve=curve(run["rows"]), seconds=run["seconds"],
                 scored_chars=len(held_out) - 1)
  report(args, "char_lm_table2", payload, lines, fig)


# ---- table 4 and staged training ----------------------------------------------------
ABLATION = (("increasing", "on"), ("fixed", "on"), ("decreasing", "on"), ("increasing", "off"))


def final_bpc(config, workdir: str, mini: Mini, split: str = "validation") -> float:
  """BPC on the first ``test_batches`` batches of ``split``'s evaluation windows."""
  config = copy.deepcopy(config)
  config.eval_batches = mini.test_batches
  return train.evaluate(config, workdir, split)["eval_bpc"]


def spread(values: list[float]) -> float:
  return max(values) - min(values) if len(values) > 1 else 0.0


def ablation(args, mini: Mini) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  results, seconds = {}, 0.0
  for seed in range(args.seeds):
    for window, dilation in ABLATION:
      config = mini_config(args.corpus, args.data_dir, mini, window=window,
                           dilation=dilation, seed=seed, steps=mini.ablation_steps,
                           batch=mini.ablation_batch)
      config.eval_every = mini.ablation_steps  # the final evaluation only
      workdir = os.path.join(args.workdir, f"ablation-{window}-{dilation}-{seed}")
      seconds += train_run(config, workdir)["seconds"]
      results.setdefault((window, dilation), []).append(final_bpc(config, workdir, mini))
  base = results[ABLATION[0]]
  lines = header("Table 4 in miniature: window growth and dilation", args.command)
  lines += [f"Each run: phase-1 shape ({mini.seq_len} characters, windows {mini.low} -> "
            f"{mini.high} over {mini.layers} layers), {mini.ablation_steps} steps of "
            f"{mini.ablation_batch} sequences, seeds "
            f"0-{args.seeds - 1}; validation BPC on {mini.scored_chars(mini.test_batches):,} "
            "characters. Spread: max - min over seeds. A difference counts when it exceeds "
            "the larger of the two spreads.", "",
            "| windows | dilation on 2 heads | BPC per seed | mean | spread | vs increasing, "
            "dilated | exceeds spread? |", "|---|---|---|---:|---:|---:|---|"]
  for (window, dilation), vals in results.items():
    cells = [window, dilation, ", ".join(f"{v:.3f}" for v in vals),
             f"{statistics.mean(vals):.3f}", f"{spread(vals):.3f}", "", ""]
    if (window, dilation) != ABLATION[0]:
      diff = statistics.mean(vals) - statistics.mean(base)
      cells[5] = f"{diff:+.3f}"
      cells[6] = ("n/a (1 seed)" if len(vals) < 2 else
                  "yes" if abs(diff) > max(spread(vals), spread(base)) else "no")
    lines.append("| " + " | ".join(cells) + " |")
  lines += ["", "Paper (text8 dev, 150K steps): decreasing 1.24, fixed 1.23, increasing 1.21; "
            "no dilation 1.21, dilation on 2 heads 1.20.", "",
            f"Training time: {seconds / 60:.1f} min in all.", "",
            "![ablation](char_lm_ablation.png)"]
  fig, ax = plt.subplots(figsize=(7, 4))
  for i, (key, vals) in enumerate(results.items()):
    ax.scatter([i] * len(vals), vals, color="C0")
    ax.errorbar([i], [statistics.mean(vals)], fmt="_", color="C3", markersize=20)
  ax.set_xticks(range(len(results)), [f"{w}\ndilation {d}" for w, d in results])
  ax.set(ylabel="validation BPC", title="Table 4 in miniature (dots: seeds; bar: mean)")
  payload = dict(command=args.command, mini=dataclasses.asdict(mini), seconds=seconds,
                 results={f"{w},{d}": v for (w, d), v in results.items()})
  report(args, "char_lm_ablation", payload, lines, fig)


def staged(args, mini: Mini) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  runs = {}
  for name, is_staged in (("staged", True), ("single phase", False)):
    config = mini_config(args.corpus, args.data_dir, mini, staged=is_staged,
                         steps=mini.staged_steps)
    workdir = os.path.join(args.workdir, "staged" if is_staged else "single")
    run = train_run(config, workdir)
    runs[name] = dict(run=run, bpc=final_bpc(config, workdir, mini))
  steps = mini.staged_steps
  half = steps // 2
  lines = header("Staged training vs one phase, in miniature (paper section 4.2)",
                 args.command)
  lines += [f"Both: {steps} steps of {mini.batch * mini.seq_len:,} characters. Staged: "
            f"{half} steps at {mini.seq_len // 2} characters (batch {2 * mini.batch}, windows "
            f"halved, LR {mini.lr:g}), then {steps - half} at {mini.seq_len} (batch "
            f"{mini.batch}, windows doubled, LR halved). One phase: {steps} steps at "
            f"{mini.seq_len}, LR {mini.lr:g}. Validation BPC at {mini.seq_len} characters "
            f"on {mini.scored_chars(mini.test_batches):,} characters.", "",
            "| schedule | validation BPC | training time |", "|---|---:|---:|"]
  for name, r in runs.items():
    lines.append(f"| {name} | {r['bpc']:.3f} | {r['run']['seconds'] / 60:.1f} min |")
  lines += ["", "![staged](char_lm_staged.png)"]
  fig, ax = plt.subplots(figsize=(7, 4))
  for name, r in runs.items():
    steps, bpcs = zip(*curve(r["run"]["rows"]))
    ax.plot(steps, bpcs, "o-", label=name)
  ax.axvline(half, color="gray", ls=":", label="staged: phase 2 starts")
  ax.set(xlabel="step", ylabel="validation BPC (the phase's length)",
         title="Staged vs one phase, equal characters")
  ax.legend()
  payload = dict(command=args.command, mini=dataclasses.asdict(mini),
                 runs={k: dict(bpc=v["bpc"], seconds=v["run"]["seconds"],
                               curve=curve(v["run"]["rows"])) for k, v in runs.items()})
  report(args, "char_lm_staged", payload, lines, fig)


def param_millions(config) -> float:
  from longformer_jax import model as model_lib
  cfg = train.model_config(config, train.resolve_phases(config)[0])
  return model_lib.param_count(cfg, "causal_lm") / 1e6


def corpus_name(path: str) -> str:
  """The default name of a text8-style zip: ``gcide8.zip`` gives ``GCIDE``."""
  stem = os.path.basename(path).split(".")[0]
  return stem if stem == "text8" else stem.removesuffix("8").upper()


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("experiment", choices=("table2", "ablation", "staged"))
  p.add_argument("--corpus", required=True, help="text8-style zip (corpora/text8_style.py)")
  p.add_argument("--corpus-name", help="the corpus as the tables name it (default: the zip's "
                 "name without a trailing 8, upper-cased: gcide8.zip gives GCIDE)")
  p.add_argument("--workdir", default="/tmp/char_lm_miniature")
  p.add_argument("--seeds", type=int, default=2)
  p.add_argument("--quick", action="store_true")
  args = p.parse_args(argv)
  args.command = "python experiments/char_lm_miniature.py " + " ".join(
      a if not a.startswith("/") else os.path.basename(a) for a in (argv or sys.argv[1:]))
  args.corpus_name = args.corpus_name or corpus_name(args.corpus)
  args.data_dir = os.path.join(args.workdir, "data")
  logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
  mini = Mini().quick() if args.quick else Mini()
  args.results = RESULTS
  if args.quick:  # results beside the runs, not over the committed ones
    args.workdir = args.results = os.path.join(args.workdir, "quick")
  {"table2": table2, "ablation": ablation, "staged": staged}[args.experiment](args, mini)


if __name__ == "__main__":
  main()
