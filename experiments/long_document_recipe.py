"""The paper's recipe in miniature, offline: BPE → MLM at 512 → positions copied to 4,096
→ fine-tuning on two long-document tasks, against the same model truncated to 512.

On the King James Bible (see ``corpora/kjv_tasks.py`` for the corpus recipe and the tasks):

1. a byte-level BPE (4,096 tokens) trained on the train chapters;
2. a small Longformer (3 layers, d 128, 4 heads, window 128) MLM-pretrained on them
   at 512 tokens (``configs/mlm.py`` with the run's tokenizer);
3. its position table copied to 4,096 positions (``convert.extend_checkpoint``, paper
   section 5);
4. each task fine-tuned, for every seed, from the extended model on whole documents
   (``long``: up to ``--long-len`` tokens) and from the 512 model on the first 512
   tokens (``truncated``, the paper's RoBERTa baseline); with ``--windows`` QA also
   as the 512 model over windows of 512 with stride (``windows``), the way a 512
   model reads a long context. All runs of a task train the same steps on the same
   examples.

    python experiments/long_document_recipe.py --kjv kjv.txt             # 25 min on 2 cores
    python experiments/long_document_recipe.py --kjv kjv.txt --quick     # minutes: plumbing only
    python experiments/long_document_recipe.py --kjv kjv.txt --only intruder-windows

Writes experiments/results/long_document_recipe.{json,md,png}; intermediate runs
under ``--workdir``. A finished stage is not redone: delete its directory to redo it.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import json
import logging
import math
import os
import shutil
import statistics
import time

from common import cpu_name, load_config, write_results
from corpora import kjv_tasks
from longformer_jax import convert, recipes, tokenization, train, workdir
from longformer_jax.data import corpora

VALIDATION_FRACTION = 0.05  # configs/mlm.py's data.validation_fraction
log = logging.getLogger("recipe")


@dataclasses.dataclass(frozen=True)
class Settings:
  vocab_size: int = 4096
  hidden_size: int = 128
  layers: int = 2
  heads: int = 4
  window: int = 128
  short_len: int = 512
  extended_len: int = 4096
  long_len: dict = dataclasses.field(
      default_factory=lambda: {"testament": 2048, "intruder": 2560})
  mlm_steps: int = 300
  mlm_batch: int = 8
  mlm_lr: float = 1e-3
  finetune_lr: float = 1e-3
  finetune_batch: int = 4
  classification_steps: int = 200
  qa_steps: int = 230
  train_examples: int = 1000
  validation_examples: int = 200
  seeds: tuple[int, ...] = (0, 1)

  @classmethod
  def quick(cls) -> "Settings":
    return cls(mlm_steps=20, classification_steps=4, qa_steps=4, train_examples=24,
               validation_examples=8, seeds=(0,))


def model_fields(s: Settings) -> dict:
  return dict(vocab_size=-1, hidden_size=s.hidden_size, num_hidden_layers=s.layers,
              num_attention_heads=s.heads, intermediate_size=4 * s.hidden_size,
              attention_window=s.window, block_size=64, dtype="float32", remat="none",
              scan_layers=False)


# ---- stages ----------------------------------------------------------------------------


def prepare_text(verses, work: str) -> str:
  """The train chapters, one chapter per line (what BPE and MLM see)."""
  path = os.path.join(work, "pretrain.txt")
  if not os.path.exists(path):
    lines, key = [], None
    for v in verses:
      if kjv_tasks.held_out(v):
        continue
      if (v.book, v.chapter) != key:
        lines.append([])
        key = (v.book, v.chapter)
      lines[-1].append(v.text)
    with open(path + ".tmp", "w") as f:
      f.writelines(" ".join(chapter) + "\n" for chapter in lines)
    os.replace(path + ".tmp", path)
  return path


def pretrain(s: Settings, text: str, tokenizer: str, work: str) -> str:
  """MLM at ``short_len``; returns the exported HF directory."""
  out = os.path.join(work, f"mlm-{s.short_len}")
  if os.path.exists(out):
    return out
  c = load_config("mlm", "cpu")
  c.model.update(model_fields(s), max_position_embeddings=s.short_len + 2,
                 max_global_tokens=0)
  c.data.update(path=text, tokenizer=tokenizer, data_dir=os.path.join(work, "data"))
  c.mlm.mask_token_id = tokenization.token_id(tokenization.load_tokenizer(tokenizer),
                                              "<mask>", "mlm.mask_token_id")
  c.seq_len, c.batch_size, c.train_steps = s.short_len, s.mlm_batch, s.mlm_steps
  c.optim.update(lr=s.mlm_lr, warmup_steps=max(1, s.mlm_steps // 10), schedule="linear")
  c.eval_every = c.checkpoint_every = s.mlm_steps
  c.log_every = max(1, s.mlm_steps // 20)
  run_dir = os.path.join(work, "runs", "mlm")
  shutil.rmtree(run_dir, ignore_errors=True)
  result = train.train_and_evaluate(c, run_dir)
  workdir.export_hf(run_dir, out)
  log.info("MLM: %s", {k: round(v, 4) for k, v in result.items()})
  return out


def task_files(s: Settings, verses, tok, work: str) -> dict:
  """The two tasks' train / validation files (and QA's truncated copies)."""
  d = os.path.join(work, "tasks")
  files = {"testament": {sp: os.path.join(d, f"testament-{sp}.jsonl")
                         for sp in ("train", "validation")},
           "intruder": {sp: os.path.join(d, f"intruder-{sp}.json")
                            for sp in ("train", "validation")},
           "intruder_truncated": {sp: os.path.join(d, f"intruder-{sp}-512.json")
                                      for sp in ("train", "validation")}}
  if os.path.exists(d):
    return files
  os.makedirs(d + ".tmp", exist_ok=True)
  n = {"train": s.train_examples, "validation": s.validation_examples}
  seed = {"train": 1, "validation": 2}
  budget = lambda q, c: _chars_within(tok, q, c, s.short_len)
  for sp in ("train", "validation"):
    kjv_tasks.write_jsonl(files["testament"][sp].replace(d, d + ".tmp"),
                          kjv_tasks.testament_examples(verses, sp, n[sp], seed[sp]))
    qa = kjv_tasks.intruder_examples(verses, sp, n[sp], seed[sp])
    kjv_tasks.write_squad(files["intruder"][sp].replace(d, d + ".tmp"), qa)
    kjv_tasks.write_squad(files["intruder_truncated"][sp].replace(d, d + ".tmp"),
                          kjv_tasks.truncate_contexts(qa, budget))
  os.replace(d + ".tmp", d)
  return files


def _chars_within(tok, question: str, context: str, seq_len: int) -> int:
  """Characters of ``context`` whose tokens fit one window with the question."""
  room = seq_len - len(tok.encode(question, add_special_tokens=False).ids) - 4
  offsets = tok.encode(context, add_special_tokens=False).offsets
  return len(context) if room >= len(offsets) else offsets[room - 1][1]


def finetune_config(s: Settings, task: str, variant: str, files: dict, checkpoint: str,
                    seed: int, work: str):
  """One fine-tuning run's config: the same steps and examples for every variant."""
  seq_len = s.long_len[task] if variant == "long" else s.short_len
  batch = s.finetune_batch
  if task == "testament":
    steps = s.classification_steps
    c = recipes.finetune_config(
        "classification", dict(name="document_classification", format="jsonl",
                               files=files["testament"], label_names=("old", "new")),
        train_steps=steps, lr=s.finetune_lr, batch_size=batch, seq_len=seq_len,
        eval_every=steps)
  else:
    steps = s.qa_steps
    c = recipes.finetune_qa(dict(), train_steps=steps, warmup_steps=steps // 10,
                            max_query_length=16, doc_stride=128, eval_every=steps)
    c.data.files = files["intruder_truncated" if variant == "truncated"
                         else "intruder"]
    c.optim.lr, c.seq_len, c.batch_size = s.finetune_lr, seq_len, batch
    c.qa.max_answer_length = 12
    if variant == "windows":  # the same questions a step: batches of windows
      c.batch_size = batch * (s.long_len[task] // s.short_len)
  c.init_from_hf = checkpoint
  c.seed = seed
  c.model.update(dtype="float32", remat="none", block_size=64)
  c.data.data_dir = os.path.join(work, "data")
  c.log_every = max(1, steps // 10)
  c.async_checkpoints = False
  return c


PLAN = (("testament", "long"), ("testament", "truncated"), ("intruder", "long"),
        ("intruder", "truncated"), ("intruder", "windows"))


def fine_tune(s: Settings, files: dict, checkpoints: dict, work: str,
              only: str | None = None, windows: bool = False) -> list[dict]:
  rows = []
  for task, variant in PLAN:
    if only and only not in (task, f"{task}-{variant}"):
      continue
    if variant == "windows" and not (windows or only):
      continue
    for seed in s.seeds:
      run_dir = os.path.join(work, "runs", f"{task}-{variant}-{seed}")
      done = os.path.join(run_dir, "result.json")
      if not os.path.exists(done):
        shutil.rmtree(run_dir, ignore_errors=True)
        c = finetune_config(s, task, variant, files,
                            checkpoints["long" if variant == "long" else "short"], seed, work)
        t0 = time.time()
        result = train.train_and_evaluate(c, run_dir)
        result = dict(result, seconds=time.time() - t0)
        with open(done, "w") as f:
          json.dump(result, f)
      with open(done) as f:
        result = json.load(f)
      rows.append(dict(task=task, variant=variant, seed=seed, **result))
      log.info("%s %s seed %d: %s", task, variant, seed,
               {k: round(v, 3) for k, v in result.items() if k.startswith("eval_")})
  return rows


# ---- report ------------------------------------------------------------------------------

METRICS = {"testament": ("eval_accuracy", "accuracy (%)"),
           "intruder": ("eval_f1", "F1 (%)")}


def summarise(rows: list[dict]) -> list[dict]:
  out = []
  for task, (key, _) in METRICS.items():
    for variant in dict.fromkeys(r["variant"] for r in rows if r["task"] == task):
      scale = 100.0 if key == "eval_accuracy" else 1.0
      vals = [scale * r[key] for r in rows if r["task"] == task and r["variant"] == variant]
      extra = {k: statistics.mean(r[k] for r in rows if r["task"] == task
                                  and r["variant"] == variant)
               for k in ("eval_exact_match",) if task == "intruder"}
      out.append(dict(task=task, variant=variant, metric=key, values=vals,
                      mean=statistics.mean(vals), spread=max(vals) - min(vals), **extra))
  return out


def facts(files: dict, tok, work: str) -> dict:
  """What the table stands on: the MLM's held-out loss against a unigram model of the
  same split (add-one counts of the MLM's train split), and where the evidence lies
  in the validation documents (in tokens)."""
  with open(os.path.join(work, "runs", "mlm", "metrics.jsonl")) as f:
    mlm_eval = [json.loads(l) for l in f if "eval_bits_per_token" in l][-1]
  corpus = corpora.TextCorpusConfig.make(
      path=os.path.join(work, "pretrain.txt"), validation_fraction=VALIDATION_FRACTION,
      tokenizer=os.path.join(work, "tokenizer", "tokenizer.json"))
  stream = corpora.tokenize_corpus(corpus)[0].tolist()  # the stream the MLM split
  cut = int(round(len(stream) * (1 - VALIDATION_FRACTION)))
  counts = collections.Counter(stream[:cut])
  total = cut + tok.get_vocab_size()
  unigram = -statistics.fmean(math.log2((counts[i] + 1) / total) for i in stream[cut:])
  with open(files["testament"]["validation"]) as f:
    docs = [json.loads(l) for l in f]
  doc_tokens = [len(tok.encode(d["text"]).ids) for d in docs]
  evidence = [len(tok.encode(d["text"][:d["evidence_char"]], add_special_tokens=False).ids)
              for d in docs]
  with open(files["intruder"]["validation"]) as f:
    paras = [a["paragraphs"][0] for a in json.load(f)["data"]]
  answer_at = [len(tok.encode(p["context"][:p["qas"][0]["answers"][0]["answer_start"]],
                              add_special_tokens=False).ids) for p in paras]
  context = [len(tok.encode(p["context"], add_special_tokens=False).ids) for p in paras]
  return dict(mlm_eval_bits_per_token=mlm_eval["eval_bits_per_token"],
              unigram_eval_bits_per_token=unigram, testament_first_evidence_token=min(evidence),
              testament_tokens=[min(doc_tokens), max(doc_tokens)],
              intruder_context_tokens=[min(context), max(context)],
              # past the ~500 context tokens a 512-token window holds after the question
              intruder_answers_past_first_window=sum(a >= 500 for a in answer_at) / len(answer_at))


def verdicts(summary) -> list[str]:
  out = []
  for task in METRICS:
    by = {r["variant"]: r for r in summary if r["task"] == task}
    if "long" in by and "truncated" in by:
      gap = by["long"]["mean"] - by["truncated"]["mean"]
      spread = max(by["long"]["spread"], by["truncated"]["spread"])
      apart = min(by["long"]["values"]) > max(by["truncated"]["values"])
      out.append(f"{task}: long - truncated = {gap:+.1f} points; largest seed spread "
                 f"{spread:.1f}; the gap {'exceeds' if abs(gap) > spread else 'does not exceed'}"
                 f" the spread{' (every long seed above every truncated one)' if apart else ''}.")
  return out


def write_report(s: Settings, rows, summary, command: str, cpu: str, seconds: float,
                 known: dict) -> None:
  lines = [f"`{command}` ({seconds / 60:.0f} min on {cpu})", "",
           "| task | model | metric | per seed | mean | spread | QA exact match (mean) |",
           "|---|---|---|---|---|---|---|"]
  for r in summary:
    per = ", ".join(f"{v:.1f}" for v in r["values"])
    em = f"{r['eval_exact_match']:.1f}" if "eval_exact_match" in r else ""
    lines.append(f"| {r['task']} | {r['variant']} | {METRICS[r['task']][1]} | {per} | "
                 f"{r['mean']:.1f} | {r['spread']:.1f} | {em} |")
  lines += [""] + verdicts(summary) + ["", "```"] + [
      f"{k}: {v:.3f}" if isinstance(v, float) else f"{k}: {v}" for k, v in known.items()] + [
      "```"]
  write_results("long_document_recipe",
                dict(settings=dataclasses.asdict(s), runs=rows, summary=summary, facts=known,
                     command=command, cpu=cpu, seconds=seconds),
                lines, plot(summary, command), command=command, dpi=110)
  print("\n".join(lines))


def plot(summary, command: str):
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, axes = plt.subplots(1, len(METRICS), figsize=(10, 4))
  colours = {"long": "tab:blue", "windows": "tab:orange", "truncated": "tab:gray"}
  for ax, (task, (_, label)) in zip(axes, METRICS.items()):
    rows = [r for r in summary if r["task"] == task]
    for i, r in enumerate(rows):
      ax.bar(i, r["mean"], color=colours[r["variant"]], alpha=0.7)
      ax.scatter([i] * len(r["values"]), r["values"], color="black", zorder=3, s=12)
    ax.set_xticks(range(len(rows)), [r["variant"] for r in rows])
    ax.set_title(task)
    ax.set_ylabel(label)
  fig.suptitle("long (4,096 positions) vs 512: bars = mean, dots = seeds", fontsize=10)
  fig.text(0.01, 0.01, command, fontsize=7)
  fig.tight_layout(rect=(0, 0.04, 1, 1))
  return fig


def elapsed(work: str, seconds: float) -> float:
  """Seconds spent on ``work`` over every invocation (stages done before are not redone)."""
  path = os.path.join(work, "elapsed.json")
  before = json.load(open(path))["seconds"] if os.path.exists(path) else 0.0
  with open(path, "w") as f:
    json.dump({"seconds": before + seconds}, f)
  return before + seconds


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--kjv", required=True, help="the verses file (see corpora/kjv_tasks.py)")
  parser.add_argument("--workdir", default="/tmp/long_document_recipe")
  parser.add_argument("--quick", action="store_true")
  parser.add_argument("--windows", action="store_true",
                      help="also the 512 model over windows on the QA task (about 9 min more)")
  parser.add_argument("--only", help="one task (or TASK-VARIANT) only; no report",
                      choices=sorted({t for t, _ in PLAN} | {f"{t}-{v}" for t, v in PLAN}))
  args = parser.parse_args(argv)
  logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
  s = Settings.quick() if args.quick else Settings()
  t0 = time.time()
  os.makedirs(args.workdir, exist_ok=True)
  verses = kjv_tasks.read_verses(args.kjv)
  text = prepare_text(verses, args.workdir)
  tok_dir = os.path.join(args.workdir, "tokenizer")
  if not os.path.exists(tok_dir):
    tokenization.train_bpe([text], tok_dir, vocab_size=s.vocab_size)
  short = pretrain(s, text, os.path.join(tok_dir, "tokenizer.json"), args.workdir)
  extended = os.path.join(args.workdir, f"mlm-{s.extended_len}")
  if not os.path.exists(extended):
    convert.extend_checkpoint(short, extended, s.extended_len)
  files = task_files(s, verses, tokenization.load_tokenizer(tok_dir), args.workdir)
  rows = fine_tune(s, files, {"short": short, "long": extended}, args.workdir, args.only,
                   args.windows)
  command = "python experiments/long_document_recipe.py --kjv kjv.txt" + (
      " --quick" if args.quick else "") + (" --windows" if args.windows else "")
  if not (args.quick or args.only):
    known = facts(files, tokenization.load_tokenizer(tok_dir), args.workdir)
    write_report(s, rows, summarise(rows), command, f"{os.cpu_count()}-core {cpu_name()}",
                 elapsed(args.workdir, time.time() - t0), known)
  else:
    print(json.dumps(summarise(rows), indent=1))


if __name__ == "__main__":
  main()
