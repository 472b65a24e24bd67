"""Does a from-scratch LED read its input? A probe of the summarisation miniature.

``summarization_miniature.py`` trains a small LED on manual pages whose summaries do not
depend on the page (its wrong-page control scores the same ROUGE). This script trains
the miniature's model for a few hundred steps under a few variants and, every
``--probe-every`` steps, measures on 64 held-out training pages:

* held-out summary NLL given the right page, and given the next page (the gap between
  the two is what reading the page is worth; 0 means the decoder ignores the encoder);
* encoder spread: the standard deviation across pages of the encoder's output at
  positions 1-19, averaged over features (0 means the encoder maps every page to the
  same states).

Variants (``--only NAME`` runs some):

* ``zero-bias``: the miniature as it is (LR 1e-3, ``final_logits_bias`` zero).
* ``zero-bias-lr1e-4``: a tenth of the learning rate.
* ``unigram-bias``: ``final_logits_bias`` set to the log unigram frequencies of the
  training summaries before the first step.
* ``description-128``: a self-supervised target instead of the summary, the first
  sentence of the page's DESCRIPTION (at most 24 words; the page still contains it),
  from 128-token inputs, with the unigram bias of those targets. The probe still
  scores summaries; the table adds the NLL of the DESCRIPTION targets.

    python experiments/summarization_probe.py --corpus manpages   # about 11 min

Writes experiments/results/summarization_probe.{md,json,png}.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import time

import numpy as np

import jax.numpy as jnp
import optax
from flax import nnx

from common import cpu_name, write_results
from longformer_jax import families, tokenization, train
from longformer_jax.data import documents
from longformer_jax.data.summarization import SummarizationElement
from longformer_jax.led import shift_tokens_right
from longformer_jax.tasks.seq2seq import smoothed_terms
from summarization_miniature import (Settings, description, read_jsonl,
                                     sentences, tokenizer)
from summarization_miniature import config as miniature_config

SETTINGS = Settings(d_model=128, ffn=512, seq_len=256, window=32)  # the miniature's run
PAGES, HELD_OUT, BATCH, TARGET = 2048, 64, 16, 32


@dataclasses.dataclass(frozen=True)
class Variant:
  lr: float = 1e-3
  bias: bool = False  # final_logits_bias := log unigram frequencies of the targets
  target: str = "summary"  # or "description"
  input_len: int = 256


VARIANTS = {
    "zero-bias": Variant(),
    "zero-bias-lr1e-4": Variant(lr=1e-4),
    "unigram-bias": Variant(bias=True),
    "description-128": Variant(bias=True, target="description", input_len=128),
}


def load_pages(corpus: str, tok) -> list[dict]:
  """Token ids of the first ``PAGES`` training pages: the page, its summary, and the
  first sentence of its DESCRIPTION (at most 24 words)."""
  def encode(text: str) -> list[int]:
    return tok.encode(text, add_special_tokens=False).ids
  pages = []
  for i, r in enumerate(read_jsonl(os.path.join(corpus, "train.jsonl"))[:PAGES]):
    first = sentences(description(r["document"]))[:1]
    pages.append(dict(input_ids=encode(r["document"]), summary=encode(r["summary"]),
                      description=encode(" ".join(first[0].split()[:24]) if first else ""),
                      example_index=i))
  return pages


def arrays(pages: list[dict], target: str, input_len: int, specials) -> tuple:
  """(ids, mask, global mask, labels) as the summarization dataset builds them, the
  labels from ``target``."""
  element = SummarizationElement(input_len, TARGET, specials)
  rows = [element(dict(p, summary_ids=p[target])) for p in pages]
  return tuple(np.stack([r[k] for r in rows]) for k in
               ("input_ids", "attention_mask", "global_attention_mask", "labels"))


def build_model(tok_dir: str, corpus: str, work: str):
  """The miniature's LED (``summarization_miniature.config``), random init."""
  c = miniature_config(SETTINGS, corpus, tok_dir, work)
  cfg = train.model_config(c, train.resolve_phases(c)[0])
  return families.of_config(cfg).create_model(cfg, "conditional_generation", 0)


def losses(model, ids, mask, globals_, labels):
  dec = shift_tokens_right(labels, model.config.pad_token_id,
                           model.config.decoder_start_token_id)
  out = model(ids, mask, globals_, decoder_input_ids=dec, max_global_tokens=1)
  loss, nll, _, counted = smoothed_terms(out.logits, labels, 0.1)
  return loss.sum() / counted.sum(), nll.sum() / counted.sum()


@nnx.jit
def train_step(model, opt, ids, mask, globals_, labels):
  grad_fn = nnx.value_and_grad(lambda m: losses(m, ids, mask, globals_, labels)[0])
  loss, grads = grad_fn(model)
  opt.update(model, grads)
  return loss


@nnx.jit
def probe(model, ids, mask, globals_, labels):
  """(NLL given the right page, NLL given the next page, encoder spread)."""
  right = losses(model, ids, mask, globals_, labels)[1]
  other = losses(model, jnp.roll(ids, 1, 0), jnp.roll(mask, 1, 0), globals_, labels)[1]
  states, _ = model.led.encode(ids, mask, globals_, max_global_tokens=1)
  return right, other, states[:, 1:20].std(0).mean()


def measure(model, held: tuple, target_labels=None) -> dict:
  """The probe on the held-out pages (summary labels in ``held``); with
  ``target_labels``, also the NLL of the variant's own targets."""
  model.eval()
  right, other, spread = probe(model, *held)
  row = dict(nll_right=float(right), nll_other=float(other), gap=float(other - right),
             spread=float(spread))
  if target_labels is not None:
    right, other, _ = probe(model, *held[:3], target_labels)
    row.update(target_nll_right=float(right), target_nll_other=float(other))
  return row


def run_variant(name: str, variant: Variant, pages: list[dict], specials, new_model,
                steps: int, every: int) -> list:
  model = new_model()
  ids, mask, globals_, labels = arrays(pages, variant.target, variant.input_len, specials)
  held = arrays(pages[:HELD_OUT], "summary", variant.input_len, specials)
  held_targets = None if variant.target == "summary" else labels[:HELD_OUT]
  if variant.bias:
    counts = np.bincount(labels[HELD_OUT:][labels[HELD_OUT:] >= 0],
                         minlength=model.config.vocab_size) + 0.1
    model.final_logits_bias.value = jnp.asarray(np.log(counts / counts.sum()),
                                                jnp.float32)[None]
  warmup = optax.linear_schedule(0.0, variant.lr, 30)
  opt = nnx.Optimizer(model, optax.adamw(optax.join_schedules(
      [warmup, optax.constant_schedule(variant.lr)], [30]), weight_decay=0.01), wrt=nnx.Param)
  rows, t0 = [dict(step=0, loss=None, **measure(model, held, held_targets))], time.time()
  batches = (PAGES - HELD_OUT) // BATCH
  for step in range(1, steps + 1):
    i = HELD_OUT + ((step - 1) % batches) * BATCH
    model.train()
    loss = train_step(model, opt, ids[i:i + BATCH], mask[i:i + BATCH],
                      globals_[i:i + BATCH], labels[i:i + BATCH])
    if step % every == 0:
      rows.append(dict(step=step, loss=float(loss), **measure(model, held, held_targets)))
      print(f"{name} step {step}: {rows[-1]} ({time.time() - t0:.0f} s)", flush=True)
  return rows


def report(results: dict, command: str, seconds: float) -> None:
  lines = ["# Does the from-scratch LED read its input? (manual-page miniature)", "",
           f"`{command}` ({seconds / 60:.1f} min on {cpu_name()}, 2 cores)", "",
           f"Model: the miniature's (LED d {SETTINGS.d_model}, {SETTINGS.encoder_layers} + "
           f"{SETTINGS.decoder_layers} layers, window {SETTINGS.window}), batch {BATCH}, "
           f"pages {HELD_OUT}-{PAGES - 1} of the training split; probe on pages 0-"
           f"{HELD_OUT - 1} with the variant's input length. Gap: summary NLL given the "
           "next page minus given the right page (nats/token). Spread: std across pages "
           "of the encoder output.", "",
           "| variant | step | train loss | summary NLL | gap | encoder spread | target NLL "
           "(right / next page) |", "|---|---|---|---|---|---|---|"]
  for name, rows in results.items():
    for r in rows:
      target = (f"{r['target_nll_right']:.3f} / {r['target_nll_other']:.3f}"
                if "target_nll_right" in r else "")
      loss = "" if r["loss"] is None else f"{r['loss']:.3f}"
      lines.append(f"| {name} | {r['step']} | {loss} | {r['nll_right']:.3f} | "
                   f"{r['gap']:+.5f} | {r['spread']:.2e} | {target} |")
  lines += ["", "![gap and spread](summarization_probe.png)"]
  write_results("summarization_probe",
                dict(results=results, command=command, cpu=cpu_name(), seconds=seconds,
                     variants={k: dataclasses.asdict(v) for k, v in VARIANTS.items()}),
                lines, plot(results, command), command=command, dpi=110)
  print("\n".join(lines))


def plot(results: dict, command: str):
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, (gap, spread) = plt.subplots(1, 2, figsize=(12, 4.2))
  for name, rows in results.items():
    steps = [r["step"] for r in rows]
    gap.plot(steps, [r["gap"] for r in rows], marker="o", label=name)
    spread.semilogy(steps, [r["spread"] for r in rows], marker="o", label=name)
  gap.set_title("summary NLL: next page minus right page")
  gap.set_ylabel("nats / token")
  spread.set_title("encoder output spread across pages")
  for ax in (gap, spread):
    ax.set_xlabel("step")
    ax.legend(fontsize=8)
  fig.suptitle(command, fontsize=8)
  fig.tight_layout()
  return fig


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--corpus", required=True, help="corpora/manpage_corpus.py's output directory")
  p.add_argument("--workdir", default="/tmp/summarization_probe")
  p.add_argument("--steps", type=int, default=400)
  p.add_argument("--probe-every", type=int, default=50)
  p.add_argument("--only", nargs="+", choices=sorted(VARIANTS), default=list(VARIANTS))
  args = p.parse_args(argv)
  os.makedirs(args.workdir, exist_ok=True)
  t0 = time.time()
  tok_dir = tokenizer(args.corpus, SETTINGS, args.workdir)
  tok = tokenization.load_tokenizer(tok_dir)
  pages, specials = load_pages(args.corpus, tok), documents.Specials.of(tok)
  results = {name: run_variant(name, VARIANTS[name], pages, specials,
                               lambda: build_model(tok_dir, args.corpus, args.workdir),
                               args.steps, args.probe_every)
             for name in args.only}
  command = (f"python experiments/summarization_probe.py --corpus {args.corpus}"
             + (f" --steps {args.steps}" if args.steps != 400 else "")
             + (f" --only {' '.join(args.only)}" if args.only != list(VARIANTS) else ""))
  report(results, command, time.time() - t0)


if __name__ == "__main__":
  main()
