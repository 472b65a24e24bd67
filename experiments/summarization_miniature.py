"""Long-document summarisation in miniature (paper section 7), offline: a small LED
trained from scratch on Debian manual pages, scored with ROUGE against lead-k.

The corpus is ``corpora/manpage_corpus.py``'s (document: a manual page without its NAME
section; summary: the NAME line's description, e.g. "list directory contents").

1. A byte-level BPE trained on the training documents and summaries.
2. ``configs/summarize_arxiv.py`` made small: a random-init LED (inputs of
   ``seq_len`` tokens, local window ``window``, global attention on <s>, label
   smoothing 0.1), trained ``steps`` steps (after ``pretrain_steps`` self-supervised
   ones, see ``pretrain``); the last checkpoint generates the test summaries (beam
   search) and is scored with ROUGE-1/2/L (``rouge-score``, Porter stemming).
3. A control: the same LED summarising the next test page instead of the right one;
   ROUGE equal to the real row means the summaries do not depend on the document.
4. Baselines on the same test documents and scorer: lead-k, the first k sentences of
   the document for k = 1, 2, 3, and the first k sentences of its DESCRIPTION
   section (where a manual page says what the thing does).

    python experiments/corpora/manpage_corpus.py --out manpages            # the corpus, once
    python experiments/summarization_miniature.py --corpus manpages  # about 25 min
    python experiments/summarization_miniature.py --corpus manpages --quick  # plumbing
    python experiments/summarization_miniature.py --corpus manpages --set d_model=128 steps=900

Writes experiments/results/summarization_miniature.{json,md,png}; runs under
``--workdir``, where a finished training run is not redone.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import re
import time

from common import cpu_name, load_config, write_results
from longformer_jax import tokenization, train, workdir
from longformer_jax.eval_metrics import rouge

log = logging.getLogger("summarization_miniature")


@dataclasses.dataclass(frozen=True)
class Settings:
  vocab_size: int = 4096
  d_model: int = 256
  encoder_layers: int = 3
  decoder_layers: int = 2
  heads: int = 4
  ffn: int = 1024
  window: int = 64
  seq_len: int = 512
  target_len: int = 32
  batch_size: int = 16
  steps: int = 750
  lr: float = 1e-3
  num_beams: int = 4
  test_examples: int = 0  # 0: the whole test split
  pretrain_steps: int = 0  # self-supervised stage first (see pretrain); 0: none

  def quick(self) -> "Settings":
    return dataclasses.replace(self, d_model=64, encoder_layers=1, decoder_layers=1, ffn=128,
                               seq_len=256, window=32, batch_size=4, steps=20,
                               test_examples=16, vocab_size=1024)


def read_jsonl(path: str) -> list[dict]:
  with open(path, encoding="utf-8") as f:
    return [json.loads(line) for line in f if line.strip()]


def tokenizer(corpus: str, s: Settings, work: str) -> str:
  out = os.path.join(work, "tokenizer")
  if not os.path.exists(os.path.join(out, "tokenizer.json")):
    text = os.path.join(work, "tokenizer-text.txt")
    with open(text, "w", encoding="utf-8") as f:
      for rec in read_jsonl(os.path.join(corpus, "train.jsonl")):
        f.write(rec["document"] + "\n" + rec["summary"] + "\n")
    tokenization.train_bpe([text], out, vocab_size=s.vocab_size)
  return out


def test_file(corpus: str, s: Settings, work: str) -> str:
  """The test split, or its first ``test_examples`` pairs."""
  path = os.path.join(corpus, "test.jsonl")
  if not s.test_examples:
    return path
  out = os.path.join(work, f"test-{s.test_examples}.jsonl")
  with open(out, "w", encoding="utf-8") as f:
    for rec in read_jsonl(path)[:s.test_examples]:
      f.write(json.dumps(rec) + "\n")
  return out


def config(s: Settings, corpus: str, tok: str, work: str):
  c = load_config("summarize_arxiv", "tiny")
  c.data.update(tokenizer=tok, data_dir=os.path.join(work, "data"),
                max_target_length=s.target_len)
  c.data.files.update(train=os.path.join(corpus, "train.jsonl"),
                      validation=os.path.join(corpus, "validation.jsonl"),
                      test=test_file(corpus, s, work))
  c.model.update(d_model=s.d_model, encoder_layers=s.encoder_layers,
                 decoder_layers=s.decoder_layers, encoder_attention_heads=s.heads,
                 decoder_attention_heads=s.heads, encoder_ffn_dim=s.ffn, decoder_ffn_dim=s.ffn,
                 max_encoder_position_embeddings=s.seq_len,
                 max_decoder_position_embeddings=s.target_len, attention_window=s.window,
                 dropout=0.1, block_size=64)
  c.seq_len, c.batch_size, c.train_steps = s.seq_len, s.batch_size, s.steps
  c.optim.update(lr=s.lr, warmup_steps=max(s.steps // 20, 1), schedule="linear")
  c.log_every = max(s.steps // 40, 1)
  c.eval_every = c.checkpoint_every = s.steps
  c.eval_batches = 4  # a sample of validation at the end of training; test is scored whole
  c.seq2seq.update(label_smoothing=0.1)
  c.seq2seq.generation = dict(num_beams=s.num_beams, max_length=s.target_len,
                              no_repeat_ngram_size=3, length_penalty=1.0, early_stopping=True)
  return c


# ---- baselines ------------------------------------------------------------------------

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|\n\s*\n")


def sentences(text: str) -> list[str]:
  """Sentences: split after . ! ? followed by white space, and at blank lines."""
  return [" ".join(p.split()) for p in _SENTENCE_END.split(text) if p.strip()]


def description(text: str) -> str:
  """The DESCRIPTION section of a page (its text up to the next heading), else the page."""
  m = re.search(r"^DESCRIPTION\s*$(.*?)(?=^[A-Z][A-Z /-]+\s*$|\Z)", text, re.M | re.S)
  return m.group(1) if m else text


def baselines(records: list[dict]) -> dict:
  """ROUGE of lead-k of the page and of its DESCRIPTION, k = 1, 2, 3."""
  golds = [r["summary"] for r in records]
  out = {}
  for k in (1, 2, 3):
    out[f"lead-{k}"] = rouge([" ".join(sentences(r["document"])[:k]) for r in records], golds)
    out[f"description lead-{k}"] = rouge(
        [" ".join(sentences(description(r["document"]))[:k]) for r in records], golds)
  return out


# ---- the run ----------------------------------------------------------------------------


PRETRAIN_WORDS = 24


def pretrain(s: Settings, corpus: str, tok: str, work: str) -> str:
  """Stage 1, self-supervised (as the paper's LED starts from a pretrained BART): the
  LED learns to write the first sentence of a page's DESCRIPTION (its first
  ``PRETRAIN_WORDS`` words) from the page, on the train and validation documents; no
  summary is read. Returns the HF directory the summarisation run starts from."""
  out = os.path.join(work, "pretrained")
  if os.path.exists(out):
    return out
  files = {}
  for split in ("train", "validation"):
    files[split] = os.path.join(work, f"pretrain-{split}.jsonl")
    with open(files[split], "w", encoding="utf-8") as f:
      for rec in read_jsonl(os.path.join(corpus, f"{split}.jsonl")):
        lead = sentences(description(rec["document"]))
        if lead:
          target = " ".join(lead[0].split()[:PRETRAIN_WORDS])
          f.write(json.dumps(dict(rec, summary=target)) + "\n")
  c = config(dataclasses.replace(s, steps=s.pretrain_steps), corpus, tok, work)
  c.data.files.update(train=files["train"], validation=files["validation"], test="")
  c.seq2seq.generate = False
  run_dir = os.path.join(work, "pretrain-run")
  train.train_and_evaluate(c, run_dir)
  workdir.export_hf(run_dir, out)
  return out


def run(s: Settings, corpus: str, work: str) -> dict:
  tok = tokenizer(corpus, s, work)
  t0 = time.time()
  init = pretrain(s, corpus, tok, work) if s.pretrain_steps else None
  c = config(s, corpus, tok, work)
  if init:
    c.init_from_hf = init
  run_dir = os.path.join(work, "run")
  train.train_and_evaluate(c, run_dir)
  train_seconds = time.time() - t0
  t0 = time.time()
  predictions = os.path.join(run_dir, "predictions-test.jsonl")
  c.eval_batches = 0  # every test pair
  metrics = train.evaluate(c, run_dir, "test", predictions)
  test = read_jsonl(c.data.files.test)
  return dict(model={k.split("eval_")[-1]: v for k, v in metrics.items()},
              other_document=other_document(run_dir, test, s), baselines=baselines(test),
              examples=read_jsonl(predictions)[:5], test_pairs=len(test),
              train_seconds=train_seconds, test_seconds=time.time() - t0,
              curve=loss_curve(run_dir),
              pretrain_curve=loss_curve(os.path.join(work, "pretrain-run")) if init else [])


def other_document(run_dir: str, test: list[dict], s: Settings) -> dict:
  """The control: ROUGE of the trained LED summarising the next test page instead of
  the right one (what it gets without reading the document)."""
  from longformer_jax import summarize
  model, info = workdir.trained_model(run_dir)
  tok = tokenization.load_tokenizer(info["tokenizer"])
  docs = [r["document"] for r in test[1:] + test[:1]]
  out = summarize.summarize(model, tok, docs, batch_size=s.batch_size,
                            max_input_length=s.seq_len)
  return rouge(out, [r["summary"] for r in test])


def loss_curve(run_dir: str) -> list[tuple[int, float]]:
  path = os.path.join(run_dir, "metrics.jsonl")
  rows = read_jsonl(path) if os.path.exists(path) else []
  return [(r["step"], r["loss"]) for r in rows if "loss" in r]


def report(s: Settings, out: dict, command: str, seconds: float) -> None:
  rows = {"LED (ours, trained here)": out["model"],
          "LED given another page (control)": out["other_document"], **out["baselines"]}
  lines = [
      "# Summarisation in miniature: Debian manual pages, LED vs lead-k", "",
      f"`{command}` ({seconds / 60:.1f} min on {cpu_name()}, 2 cores; training "
      f"{out['train_seconds'] / 60:.1f} min, test generation and scoring "
      f"{out['test_seconds'] / 60:.1f} min)", "",
      f"Model: LED d {s.d_model}, {s.encoder_layers} + {s.decoder_layers} layers, window "
      f"{s.window}, inputs of {s.seq_len} tokens, {s.steps} steps of batch {s.batch_size}, "
      f"LR {s.lr}, label smoothing 0.1, {s.num_beams} beams. Test pairs: {out['test_pairs']}.",
      "" if not s.pretrain_steps else
      f"First {s.pretrain_steps} self-supervised steps (target: the first sentence of the "
      f"page's DESCRIPTION, {PRETRAIN_WORDS} words at most; no summary read), then the "
      f"{s.steps} summarisation steps from those weights.",
      "", "| summary | ROUGE-1 | ROUGE-2 | ROUGE-L |", "|---|---|---|---|"]
  for name, m in rows.items():
    lines.append(f"| {name} | {m['rouge1']:.2f} | {m['rouge2']:.2f} | {m['rougeL']:.2f} |")
  lines += ["", "Test examples (prediction / reference):", ""]
  for e in out["examples"]:
    lines.append(f"- `{e['id']}`: \"{e['prediction']}\" / \"{e['gold']}\"")
  lines += ["", "![ROUGE and training loss](summarization_miniature.png)"]
  write_results("summarization_miniature",
                dict(out, settings=dataclasses.asdict(s), command=command, cpu=cpu_name(),
                     seconds=seconds),
                lines, plot(rows, out["curve"], out["pretrain_curve"], command),
                command=command, dpi=110)
  print("\n".join(lines))


def plot(rows: dict, curve, pretrain_curve, command: str):
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, (bars, loss) = plt.subplots(1, 2, figsize=(13, 4.5))
  names = list(rows)
  x = range(len(names))
  for i, (key, label) in enumerate((("rouge1", "ROUGE-1"), ("rouge2", "ROUGE-2"),
                                     ("rougeL", "ROUGE-L"))):
    bars.bar([j + (i - 1) * 0.27 for j in x], [rows[n][key] for n in names], 0.27,
             label=label)
  bars.set_xticks(list(x), names, rotation=30, ha="right", fontsize=8)
  bars.set_ylabel("F-measure (%)")
  bars.set_title("Test ROUGE: the LED against lead-k")
  bars.legend()
  offset = pretrain_curve[-1][0] if pretrain_curve else 0
  if pretrain_curve:
    loss.plot([c[0] for c in pretrain_curve], [c[1] for c in pretrain_curve],
              label="stage 1: DESCRIPTION's first sentence")
  if curve:
    loss.plot([c[0] + offset for c in curve], [c[1] for c in curve],
              label="summaries" + (" (stage 2)" if offset else ""))
    loss.legend()
  loss.set_xlabel("step")
  loss.set_ylabel("training loss (label-smoothed)")
  loss.set_title("Training")
  fig.suptitle(command, fontsize=8)
  fig.tight_layout()
  return fig


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--corpus", required=True, help="corpora/manpage_corpus.py's output directory")
  p.add_argument("--workdir", default="/tmp/summarization_miniature")
  p.add_argument("--quick", action="store_true", help="a few steps of a tiny model")
  p.add_argument("--set", nargs="+", action="extend", default=[], metavar="FIELD=VALUE",
                 help="override Settings fields, e.g. --set steps=100 d_model=128")
  args = p.parse_args(argv)
  logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
  s = Settings().quick() if args.quick else Settings()
  types = {f.name: f.type for f in dataclasses.fields(Settings)}
  for item in args.set:
    name, _, value = item.partition("=")
    if name not in types:
      raise SystemExit(f"--set {item}: Settings has no field {name!r} ({sorted(types)})")
    s = dataclasses.replace(s, **{name: (float if types[name] == "float" else int)(value)})
  os.makedirs(args.workdir, exist_ok=True)
  t0 = time.time()
  out = run(s, args.corpus, args.workdir)
  command = (f"python experiments/summarization_miniature.py --corpus {args.corpus}"
             + (" --quick" if args.quick else "") + "".join(f" --set {x}" for x in args.set))
  report(s, out, command, time.time() - t0)


if __name__ == "__main__":
  main()
