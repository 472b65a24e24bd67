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
import json
import os
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import optax  # noqa: E402
from flax import nnx  # noqa: E402

from benchmark import cpu_name  # noqa: E402
from longformer_jax import families, summarize, tokenization  # noqa: E402
from longformer_jax.led import shift_tokens_right  # noqa: E402
from longformer_jax.tasks.seq2seq import smoothed_terms  # noqa: E402
from summarization_miniature import (Settings, description, read_jsonl,  # noqa: E402
                                     sentences, tokenizer)

RESULTS = os.path.join(HERE, "results")
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


def token_targets(texts: list[str], tok) -> np.ndarray:
  """(len(texts), TARGET) labels: <s> text </s>, -100 after."""
  out = np.full((len(texts), TARGET), -100, np.int32)
  for i, text in enumerate(texts):
    ids = [0] + tok.encode(text, add_special_tokens=False).ids[:TARGET - 2] + [2]
    out[i, :len(ids)] = ids
  return out


def load_pages(corpus: str, tok) -> dict:
  rows = read_jsonl(os.path.join(corpus, "train.jsonl"))[:PAGES]
  ids, mask = summarize.encode_batch([r["document"] for r in rows], tok, SETTINGS.seq_len)
  first = [sentences(description(r["document"]))[:1] for r in rows]
  return dict(ids=ids, mask=mask,
              summary=token_targets([r["summary"] for r in rows], tok),
              description=token_targets([" ".join(s[0].split()[:24]) if s else ""
                                         for s in first], tok))


def build_model(vocab_size: int):
  s = SETTINGS
  fam = families.get("led")
  cfg = fam.config_cls(
      vocab_size=vocab_size, d_model=s.d_model, encoder_layers=s.encoder_layers,
      decoder_layers=s.decoder_layers, encoder_attention_heads=s.heads,
      decoder_attention_heads=s.heads, encoder_ffn_dim=s.ffn, decoder_ffn_dim=s.ffn,
      max_encoder_position_embeddings=s.seq_len, max_decoder_position_embeddings=TARGET,
      attention_window=(s.window,) * s.encoder_layers, dropout=0.1, block_size=s.window,
      max_global_tokens=1)
  return fam.create_model(cfg, "conditional_generation", 0, None)


def cut(ids, mask, length: int):
  """The first ``length`` tokens of each page, </s> last where the page was cut."""
  ids, mask = ids[:, :length].copy(), mask[:, :length].copy()
  ids[mask[:, -1] == 1, -1] = 2
  globals_ = np.zeros_like(ids)
  globals_[:, 0] = 1
  return ids, mask, globals_


def losses(model, ids, mask, globals_, labels):
  dec = shift_tokens_right(labels, 1, model.config.decoder_start_token_id)
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


def measure(model, pages: dict, variant: Variant) -> dict:
  model.eval()
  held = cut(pages["ids"][:HELD_OUT], pages["mask"][:HELD_OUT], variant.input_len)
  right, other, spread = probe(model, *held, pages["summary"][:HELD_OUT])
  row = dict(nll_right=float(right), nll_other=float(other), gap=float(other - right),
             spread=float(spread))
  if variant.target != "summary":
    right, other, _ = probe(model, *held, pages[variant.target][:HELD_OUT])
    row.update(target_nll_right=float(right), target_nll_other=float(other))
  return row


def run_variant(name: str, variant: Variant, pages: dict, steps: int, every: int) -> list:
  model = build_model(int(pages["vocab_size"]))
  labels = pages[variant.target]
  if variant.bias:
    counts = np.bincount(labels[HELD_OUT:][labels[HELD_OUT:] >= 0],
                         minlength=model.config.vocab_size) + 0.1
    model.final_logits_bias.value = jnp.asarray(np.log(counts / counts.sum()),
                                                jnp.float32)[None]
  warmup = optax.linear_schedule(0.0, variant.lr, 30)
  opt = nnx.Optimizer(model, optax.adamw(optax.join_schedules(
      [warmup, optax.constant_schedule(variant.lr)], [30]), weight_decay=0.01), wrt=nnx.Param)
  ids, mask, globals_ = cut(pages["ids"], pages["mask"], variant.input_len)
  rows, t0 = [dict(step=0, loss=None, **measure(model, pages, variant))], time.time()
  batches = (PAGES - HELD_OUT) // BATCH
  for step in range(1, steps + 1):
    i = HELD_OUT + ((step - 1) % batches) * BATCH
    model.train()
    loss = train_step(model, opt, ids[i:i + BATCH], mask[i:i + BATCH],
                      globals_[i:i + BATCH], labels[i:i + BATCH])
    if step % every == 0:
      rows.append(dict(step=step, loss=float(loss), **measure(model, pages, variant)))
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
  os.makedirs(RESULTS, exist_ok=True)
  with open(os.path.join(RESULTS, "summarization_probe.md"), "w") as f:
    f.write("\n".join(lines) + "\n")
  with open(os.path.join(RESULTS, "summarization_probe.json"), "w") as f:
    json.dump(dict(results=results, command=command, cpu=cpu_name(), seconds=seconds,
                   variants={k: dataclasses.asdict(v) for k, v in VARIANTS.items()}), f,
              indent=2)
  plot(results, os.path.join(RESULTS, "summarization_probe.png"), command)
  print("\n".join(lines))


def plot(results: dict, path: str, command: str) -> None:
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
  fig.savefig(path, dpi=110)


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--corpus", required=True, help="manpage_corpus.py's output directory")
  p.add_argument("--workdir", default="/tmp/summarization_probe")
  p.add_argument("--steps", type=int, default=400)
  p.add_argument("--probe-every", type=int, default=50)
  p.add_argument("--only", nargs="+", choices=sorted(VARIANTS), default=list(VARIANTS))
  args = p.parse_args(argv)
  os.makedirs(args.workdir, exist_ok=True)
  t0 = time.time()
  tok = tokenization.load_tokenizer(tokenizer(args.corpus, SETTINGS, args.workdir))
  pages = dict(load_pages(args.corpus, tok), vocab_size=tok.get_vocab_size())
  results = {name: run_variant(name, VARIANTS[name], pages, args.steps, args.probe_every)
             for name in args.only}
  command = (f"python experiments/summarization_probe.py --corpus {args.corpus}"
             + (f" --steps {args.steps}" if args.steps != 400 else "")
             + (f" --only {' '.join(args.only)}" if args.only != list(VARIANTS) else ""))
  report(results, command, time.time() - t0)


if __name__ == "__main__":
  main()
