"""Table 5 in miniature (paper section 5): a masked LM pretrained at 128 positions,
extended to 1,024, offline on the King James Bible.

1. A small Longformer MLM over bytes, pretrained at 128 positions with a window of
   32: the "RoBERTa". (The paper's 512-position RoBERTa got a window of 512. Here a
   window as wide as the sequence kept the MLM on the unigram plateau for the whole
   budget, 3.96 bits per masked token after 1,100 steps; a window of 32 leaves it
   within 300 steps.)
2. Its position table extended to 1,024 positions (``convert.extend_checkpoint``):
   the new rows drawn at random, or the 128 learned rows copied over and over.
3. From the copied checkpoint, MLM training continues at 1,024 tokens for a few
   steps and for more (the paper's +2K and +65K updates), or with every weight but
   the position table frozen (``optim.trainable``: "only new positions trained").

Every row is scored in bits per masked token on the whole validation split, the 128
model on sequences of 128 and the others on sequences of 1,024, each averaged over
``eval_seeds`` draws of the masks (the 1,024 rows share their masks).

    python experiments/position_extension.py --kjv kjv.txt          # about 16 min
    python experiments/position_extension.py --kjv kjv.txt --quick  # plumbing only

(``corpora/kjv_tasks.py`` has the corpus recipe; the train chapters are the text.) Writes
experiments/results/position_extension.{json,md,png}; runs under ``--workdir``,
where a finished stage is not redone.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import statistics
import time

import numpy as np

import char_lm_miniature
import long_document_recipe as recipe
from common import cpu_name, write_results
from corpora import kjv_tasks
from longformer_jax import convert, train, workdir

log = logging.getLogger("position_extension")


@dataclasses.dataclass(frozen=True)
class Settings:
  hidden_size: int = 128
  layers: int = 2
  heads: int = 4
  window: int = 32
  short_len: int = 128
  long_len: int = 1024
  mlm_steps: int = 1200  # pretraining at short_len
  mlm_lr: float = 2e-3  # linear decay after 10% warm-up
  lr: float = 2e-4  # continued training at long_len: poly3 after 10% warm-up
  tokens_per_step: int = 4096  # batches of 32 x 128, then 4 x 1,024
  few_steps: int = 100
  more_steps: int = 500
  eval_every: int = 100
  eval_seeds: int = 3

  def quick(self) -> "Settings":
    return dataclasses.replace(self, mlm_steps=20, few_steps=2, more_steps=4, eval_every=2,
                               eval_seeds=1)


def mlm_config(s: Settings, checkpoint: str, text: str, work: str, *, seq_len: int,
               steps: int = 0, trainable: str = "", seed: int = 0):
  """``configs/mlm.py:cpu`` (byte tokens) on ``text``: the architecture from
  ``checkpoint``, or with none a fresh model of ``s``'s shape at ``seq_len``
  positions, pretrained with ``s.mlm_lr``."""
  c = recipe.config_file("mlm.py").get_config("cpu")
  c.init_from_hf = checkpoint
  c.model.update(hidden_size=s.hidden_size, num_hidden_layers=s.layers,
                 num_attention_heads=s.heads, intermediate_size=4 * s.hidden_size,
                 attention_window=s.window, max_position_embeddings=seq_len + 2,
                 block_size=64, max_global_tokens=0)
  c.data.update(path=text, data_dir=os.path.join(work, "data"))
  c.seq_len, c.batch_size, c.seed = seq_len, s.tokens_per_step // seq_len, seed
  c.train_steps = max(steps, 1)
  lr, schedule = (s.lr, "poly3") if checkpoint else (s.mlm_lr, "linear")
  c.optim.update(lr=lr, warmup_steps=max(1, steps // 10), schedule=schedule,
                 trainable=trainable)
  c.eval_every = c.checkpoint_every = s.eval_every
  c.log_every, c.eval_batches, c.async_checkpoints = s.eval_every, 8, False  # the curve
  return c


def score(config, workdir: str, seeds: int) -> dict:
  """Bits per masked token on the whole validation split, one value per mask draw."""
  values = []
  for seed in range(seeds):
    c = config.copy_and_resolve_references()
    c.seed, c.eval_batches = seed, 0  # all of it
    values.append(train.evaluate(c, workdir, "validation")["eval_bits_per_token"])
  return dict(values=values, mean=statistics.mean(values))


def train_once(name: str, config, work: str) -> dict:
  """Trains ``config`` (once) in ``work/runs/name``: its validation curve and time."""
  run_dir = os.path.join(work, "runs", name)
  run = char_lm_miniature.train_run(config, run_dir)
  return dict(curve=char_lm_miniature.curve(run["rows"], "eval_bits_per_token"),
              seconds=run["seconds"], workdir=run_dir)


SHORT = "128 positions (the \"RoBERTa\")"
PAPER = {SHORT: (1.846, 1.496),
         "random new positions": (10.299, 8.738), "copied positions": (1.957, 1.597),
         "copied + few steps": (1.753, 1.414), "copied + more steps": (1.705, 1.358),
         "only the positions trained": (1.850, 1.504)}


def run(s: Settings, kjv: str, work: str) -> dict:
  os.makedirs(work, exist_ok=True)
  text = recipe.prepare_text(kjv_tasks.read_verses(kjv), work)
  at = lambda ckpt, seq_len, **kw: mlm_config(s, ckpt, text, work, seq_len=seq_len, **kw)
  short = os.path.join(work, f"mlm-{s.short_len}")
  pretraining = train_once("pretrain", at("", s.short_len, steps=s.mlm_steps), work)
  if not os.path.exists(short):
    workdir.export_hf(pretraining["workdir"], short)
  extended = {}
  for init in convert.NEW_POSITIONS:
    extended[init] = os.path.join(work, f"mlm-{s.long_len}-{init}")
    if not os.path.exists(extended[init]):
      convert.extend_checkpoint(short, extended[init], s.long_len, new_positions=init)
  rows, curves = {}, {"pretraining (128 positions)": pretraining["curve"]}
  for name, ckpt, seq_len in ((SHORT, short, s.short_len),
                              ("random new positions", extended["random"], s.long_len),
                              ("copied positions", extended["copy"], s.long_len)):
    # a workdir without checkpoints: the init_from_hf model is scored
    empty = os.path.join(work, "runs", "untrained-" + os.path.basename(ckpt))
    rows[name] = score(at(ckpt, seq_len), empty, s.eval_seeds)
  rows[SHORT]["seconds"] = pretraining["seconds"]
  for name, steps, trainable in (("copied + few steps", s.few_steps, ""),
                                 ("copied + more steps", s.more_steps, ""),
                                 ("only the positions trained", s.more_steps,
                                  "position_embeddings")):
    config = at(extended["copy"], s.long_len, steps=steps, trainable=trainable)
    result = train_once(name.replace(" ", "-"), config, work)
    rows[name] = dict(score(config, result["workdir"], s.eval_seeds), steps=steps,
                      seconds=result["seconds"])
    curves[name] = result["curve"]
  for name, row in rows.items():
    log.info("%s: %.3f bits per token %s", name, row["mean"], row["values"])
  return dict(rows=rows, curves=curves, **unigram(text))


def unigram(text: str) -> dict:
  """Bits per byte of the validation split under add-one byte counts of the train split
  (the split ``configs/mlm.py``'s text corpus makes)."""
  from longformer_jax.data import corpora
  fraction = recipe.VALIDATION_FRACTION
  stream = corpora.tokenize_corpus(corpora.TextCorpusConfig.make(
      path=text, validation_fraction=fraction))[0].astype(np.int64)
  cut = int(round(len(stream) * (1 - fraction)))
  counts = np.bincount(stream[:cut], minlength=256) + 1.0
  bits = -np.log2(counts / counts.sum())[stream[cut:]].mean()
  return dict(unigram_bits=float(bits), validation_tokens=len(stream) - cut)


def report(s: Settings, out: dict, command: str, seconds: float) -> None:
  rows, curves = out["rows"], out["curves"]
  lines = [f"# Table 5 in miniature: extending a 128-position MLM to {s.long_len:,}", "",
           f"Command: `{command}` ({seconds / 60:.0f} min on {os.cpu_count()}-core "
           f"{cpu_name()})", "",
           f"Model: {s.layers} layers, d {s.hidden_size}, {s.heads} heads, byte tokens, "
           f"window {s.window}; pretrained {s.mlm_steps} steps of "
           f"{s.tokens_per_step // s.short_len} x {s.short_len} tokens on the KJV train "
           f"chapters (LR {s.mlm_lr:g}, linear decay). Continued training: batches of "
           f"{s.tokens_per_step // s.long_len} x {s.long_len} (the same tokens per step), "
           f"LR {s.lr:g}, poly3 after 10% warm-up. Bits per masked token on the validation "
           f"split ({out['validation_tokens']:,} bytes), mean over {s.eval_seeds} mask "
           f"draws; a unigram model of the train split's bytes scores "
           f"{out['unigram_bits']:.3f} there.", "",
           "| model | positions | bits per token (mean) | per mask draw | paper base / "
           "large |", "|---|---:|---:|---|---|"]
  for name, row in rows.items():
    n = s.short_len if name.startswith("128") else s.long_len
    paper = "{:.3f} / {:.3f}".format(*PAPER[name])
    lines.append(f"| {name}{' (' + str(row['steps']) + ' steps)' if 'steps' in row else ''} "
                 f"| {n:,} | {row['mean']:.3f} | "
                 f"{', '.join(f'{v:.3f}' for v in row['values'])} | {paper} |")
  order = sorted(rows, key=lambda k: rows[k]["mean"], reverse=True)
  paper_order = sorted(PAPER, key=lambda k: PAPER[k][0], reverse=True)
  lines += ["", "Worst to best here: " + " > ".join(order) + ".",
            "Paper's order: " + " > ".join(paper_order) + ".",
            "Same order as the paper." if order == paper_order else
            "The order differs from the paper's where the two lines differ.", "",
            "![Table 5](position_extension.png)"]
  write_results("position_extension",
                dict(command=command, settings=dataclasses.asdict(s), seconds=seconds, **out),
                lines, plot(rows, curves), command=command, dpi=110)
  print("\n".join(lines))


def plot(rows: dict, curves: dict):
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, (bars, lines) = plt.subplots(1, 2, figsize=(12, 4.5))
  names = list(rows)
  means = [rows[n]["mean"] for n in names]
  near = [m for n, m in zip(names, means) if n != "random new positions"]
  lo, hi = min(means) - 0.15, max(near) + 0.25  # the random row runs off the axis
  bars.barh(range(len(names)), [m - lo for m in means], left=lo, color="tab:blue")
  bars.set_yticks(range(len(names)), names)
  bars.invert_yaxis()
  bars.set_xlim(lo, hi)
  bars.set_xlabel("validation bits per masked token (lower is better)")
  for i, m in enumerate(means):
    bars.text(min(m, hi), i, f" {m:.3f}" if m <= hi else f"{m:.3f} \u2192 ", va="center",
              ha="left" if m <= hi else "right", color="black" if m <= hi else "white")
  for name, pts in curves.items():
    if pts and not name.startswith("pretraining"):
      lines.plot(*zip(*pts), "o-", label=name, markersize=3)
  for name, style in (("copied positions", ":"), (SHORT, "--")):
    lines.axhline(rows[name]["mean"], ls=style, color="gray", label=name)
  lines.set(xlabel="continued training step", ylabel="bits per masked token (8 batches)",
            title="Continued from the copied positions, at 1,024")
  lines.legend(fontsize=8)
  fig.tight_layout()
  return fig


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--kjv", required=True, help="the verses file (see corpora/kjv_tasks.py)")
  p.add_argument("--workdir", default="/tmp/position_extension")
  p.add_argument("--quick", action="store_true")
  args = p.parse_args(argv)
  logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
  import jax  # the scoring programs repeat across checkpoints: compile each once
  jax.config.update("jax_compilation_cache_dir", os.path.join(args.workdir, "jit_cache"))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
  s = Settings().quick() if args.quick else Settings()
  work = os.path.join(args.workdir, "quick") if args.quick else args.workdir
  t0 = time.time()
  out = run(s, args.kjv, work)
  command = "python experiments/position_extension.py --kjv kjv.txt" + (
      " --quick" if args.quick else "")
  if args.quick:
    print(json.dumps(out["rows"], indent=1))
  else:
    report(s, out, command, time.time() - t0)


if __name__ == "__main__":
  main()
