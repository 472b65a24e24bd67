"""The paper's runs sized for the hardware a user would book: each config compiled for
TPU pods and GPU hosts without the hardware (``--mode=compile``, ``aot.py``).

Configs: char_lm text8 / enwik8, small and large, all five phases; mlm base and
large at 4,096; finetune imdb / hyperpartisan / triviaqa / wikihop / hotpotqa, base
and large; summarize_arxiv (LED-large, 16K); dna_lm small at 16,384 bases (its phase 4);
a ViL-small image classifier on 1,024 x 1,024 images in 16-pixel patches.
Architectures of the pretrained
checkpoints (longformer-base/large-4096, led-large-16384) are written as
config.json files: compiles need no weights. Topologies: v5e-256, v5p-128,
v6e-256, v4-128 (libtpu, the test extras) and h100-8, a100-8 (the gpu-compile
extra, ``jax[cuda12]``, in its own environment: ``--python``).

Mesh: the batch over ``fsdp`` (as many devices as every phase's batch divides, with
its gradient accumulation), the rest over ``tensor``. Each (config, topology) runs
``python -m longformer_jax.main --mode=compile`` in its own process and its report
is cached under ``--cache``: rerunning resumes. Train steps only (eval steps are
smaller); the memory and FLOP figures are the compiler's, the step time, tokens/s
and MFU a roofline bound (estimates).

    python experiments/compile_paper.py --topologies v5e-256 v5p-128 v6e-256 v4-128
    python experiments/compile_paper.py --topologies h100-8 a100-8 --python GPU_VENV/bin/python
    python experiments/compile_paper.py --table-only

Writes experiments/results/compile_paper.{md,json,png}.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import re
import subprocess
import sys
import time

from common import ROOT, load_config_module, write_results
from longformer_jax.compile import topology as topology_lib
from longformer_jax.config import LongformerConfig
from longformer_jax.led.config import LEDConfig

HERE = os.path.dirname(os.path.abspath(__file__))

RESULTS = os.path.join(HERE, "results")
TOPOLOGIES = ("v5e-256", "v5p-128", "v6e-256", "v4-128", "h100-8", "a100-8")
DEVICES = {"v5e-256": 256, "v5p-128": 64, "v6e-256": 256, "v4-128": 64, "h100-8": 8,
           "a100-8": 8}
ARCHS = {  # the pretrained checkpoints' architectures (their config.json)
    "base": LongformerConfig(hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                             intermediate_size=3072, attention_window=(512,) * 12),
    "large": LongformerConfig(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
                              intermediate_size=4096, attention_window=(512,) * 24),
    "led-large": LEDConfig(d_model=1024, encoder_layers=12, decoder_layers=12,
                           encoder_attention_heads=16, decoder_attention_heads=16,
                           encoder_ffn_dim=4096, decoder_ffn_dim=4096,
                           max_encoder_position_embeddings=16384,
                           max_decoder_position_embeddings=1024,
                           attention_window=(1024,) * 12),
}


@dataclasses.dataclass(frozen=True)
class Run:
  name: str
  config: str  # configs/FILE.py:VARIANT
  arch: str | None  # init_from_hf architecture
  heads: int
  batches: tuple[int, ...]  # per phase
  accum: int = 1
  overrides: tuple[tuple[str, str], ...] = ()  # (config field, value): data never read
  phases: tuple[int, ...] | None = None  # the phases compiled (0-based); None: every one


def runs() -> list[Run]:
  out = []
  for corpus in ("text8", "enwik8"):
    for size, heads in (("small", 8), ("large", 8)):
      variant = corpus if size == "small" else f"{corpus},large"
      out.append(Run(f"char_lm {corpus} {size}", f"char_lm.py:{variant}", None, heads,
                     (32, 32, 16, 16, 16), overrides=(("data.path", "/data/corpus.zip"),)))
  for arch, heads in (("base", 12), ("large", 16)):
    out.append(Run(f"mlm {arch} 4096", "mlm.py", arch, heads, (64,),
                   overrides=(("data.path", "/data/corpus.txt"),)))
  files = (("data.files.train", "/data/train"), ("data.files.validation", "/data/validation"))
  for task in ("imdb", "hyperpartisan", "triviaqa", "wikihop", "hotpotqa"):
    for arch, heads in (("base", 12), ("large", 16)):
      out.append(Run(f"finetune {task} {arch}", f"finetune_{task}.py", arch, heads, (32,),
                     overrides=files if task != "hyperpartisan" else
                     (("data.files.train", "/data/articles.xml"),
                      ("data.files.labels", "/data/labels.xml"))))
  out.append(Run("summarize_arxiv led-large 16K", "summarize_arxiv.py", "led-large", 16,
                 (32,), accum=4))
  out.append(Run("dna_lm small 16K bases", "dna_lm.py", None, 8, (32, 32, 16, 16, 16),
                 overrides=(("data.files", "/data/genome.fa"),), phases=(3,)))
  out.append(Run("image_classify ViL-small 1024px / 16px patches", "image_classify.py:cpu",
                 None, 6, (256,), overrides=VIL_1024))
  return out


# ViL-small (4 stages, 15 x 15 neighbourhoods, one global token) on 1,024 x 1,024 images
# in 16-pixel patches: a 64 x 64 grid, 4,097 tokens in the first stage; generated images
# (nothing read), bf16.
VIL_1024 = (("data.image_size", "1024"), ("data.mark_size", "64"),
            ("data.min_distance", "512"), ("model.patch_size", "16"),
            ("model.hidden_sizes", "96,192,384,384"), ("model.depths", "1,2,8,1"),
            ("model.num_heads", "3,3,6,6"), ("model.kernels", "15,15,15,15"),
            ("model.mlp_ratio", "4"), ("model.dtype", "bfloat16"), ("seq_len", "4097"),
            ("batch_size", "256"))


def mesh_for(run: Run, devices: int) -> dict:
  """The batch over fsdp (the largest power of two every phase's micro-batch and the
  device count divide), the remaining devices over tensor."""
  fsdp = devices
  for batch in run.batches:
    fsdp = math.gcd(fsdp, batch // run.accum)
  return dict(data=1, fsdp=fsdp, tensor=devices // fsdp, sequence=1)


def load(run: Run, devices: int, archs: dict):
  """The run's config as the command line builds it (mesh, checkpoint, overrides)."""
  name, _, variant = run.config.partition(":")
  config = load_config_module(name).get_config(variant)
  config.mesh.update(mesh_for(run, devices))
  if run.arch:
    config.init_from_hf = archs[run.arch]
  for field, value in run.overrides:
    *parents, leaf = field.split(".")
    node = config
    for parent in parents:
      node = node[parent]
    node[leaf] = _parsed(node[leaf], value)
  return config


def _parsed(current, value: str):
  """``value`` (command-line text) as the type of the field's ``current`` value: a tuple
  from comma-separated words, numbers and booleans from their text."""
  if isinstance(current, tuple):
    return tuple(value.split(","))
  if isinstance(current, bool):
    return value.lower() == "true"
  if isinstance(current, (int, float)):
    return type(current)(value)
  return value


def program_key(run: Run, devices: int, archs: dict) -> str:
  """What decides the compiled train steps: each phase's model config and batch
  structure, the task's head, the optimizer and the mesh. Runs with the same key
  compile to the same programs (text8 and enwik8 share a model, so do imdb and
  hyperpartisan, triviaqa and hotpotqa): one compile serves them."""
  from longformer_jax import data as data_lib
  from longformer_jax import train
  config = load(run, devices, archs)
  task = train.tasks.build(config)
  parts = [task.head, repr(config.optim), repr(config.mesh)]
  for phase in train.resolve_phases(config):
    model = train.model_config(config, phase, task)
    spec = data_lib.batch_spec(train.data_config(config), model, split="train",
                               seq_len=phase.seq_len, batch_size=phase.batch_size)
    parts.append((repr(model), phase.seq_len, phase.batch_size,
                  sorted((k, v.shape, str(v.dtype)) for k, v in spec.items())))
  return repr(parts)


def write_archs(directory: str) -> dict[str, str]:
  paths = {}
  for name, cfg in ARCHS.items():
    path = os.path.join(directory, name)
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, "config.json"), "w") as f:
      json.dump(cfg.to_hf_dict(), f)
    paths[name] = path
  return paths


def cache_path(cache: str, run: Run, topology: str) -> str:
  return os.path.join(cache, re.sub(r"\W+", "_", f"{run.name}__{topology}") + ".json")


def compile_one(run: Run, topology: str, args, archs: dict) -> dict:
  """The run's train steps compiled for ``topology``, a process per phase (a large
  program's compile can hold many GB)."""
  mesh = mesh_for(run, DEVICES[topology])
  result = {"run": run.name, "topology": topology, "mesh": mesh, "seconds": 0.0}
  for phase in run.phases or range(len(run.batches)):
    part = _compile_phase(run, topology, phase, mesh, args, archs)
    result["seconds"] += part.pop("seconds")
    result.setdefault("command", part["command"].replace(f" --compile_phases={phase}", ""))
    if "error" in part:
      return dict(result, error=f"phase {phase + 1}: {part['error']}")
    if "report" not in result:
      result["report"] = part["report"]
    else:
      result["report"]["steps"] += part["report"]["steps"]
  return result


def _compile_phase(run: Run, topology: str, phase: int, mesh: dict, args,
                   archs: dict) -> dict:
  workdir = os.path.join(args.cache, "work")
  cmd = [args.python, "-m", "longformer_jax.main", f"--config={ROOT}/configs/{run.config}",
         f"--workdir={workdir}", "--mode=compile", f"--topology={topology}",
         "--compile_steps=train", f"--compile_phases={phase}",
         *[f"--config.mesh.{k}={v}" for k, v in mesh.items()],
         *[f"--config.{field}={value}" for field, value in run.overrides]]
  if run.arch:
    cmd.append(f"--config.init_from_hf={archs[run.arch]}")
  env = dict(os.environ, TPU_SKIP_MDS_QUERY="1")
  if topology.startswith(("h100", "a100")):
    env["JAX_PLATFORMS"] = "cpu"
  t0 = time.time()
  proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env,
                        timeout=args.timeout)
  result = {"seconds": time.time() - t0, "command": " ".join(cmd[1:])}
  report_path = os.path.join(workdir, "compile", f"{topology_lib.file_name(topology)}.json")
  if proc.returncode == 0 and os.path.exists(report_path):
    with open(report_path) as f:
      result["report"] = json.load(f)
    os.remove(report_path)
  else:
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    result["error"] = lines[-1][:400] if lines else f"exit {proc.returncode}"
  return result


def rows_of(result: dict) -> list[dict]:
  if "report" not in result:
    return [{"run": result["run"], "topology": result["topology"], "error": result["error"]}]
  rep = result["report"]
  rows = []
  for s in rep["steps"]:
    m, r = s["memory"], s["roofline"] or dict.fromkeys(
        ("step_s", "bound_by", "tokens_per_s", "mfu"))
    rows.append({"run": result["run"], "topology": result["topology"],
                 "phase": s["phase"], "mesh": result["mesh"],
                 "global_tokens": s["global_tokens"], "hbm_used": m["total"],
                 "hbm": s["hbm"], "fits": s["fits"], "step_s": r["step_s"],
                 "bound_by": r["bound_by"], "tokens_per_s": r["tokens_per_s"],
                 "mfu": r["mfu"], "backend": s["attention_impl"],
                 "first_fit": rep.get("first_fit")})
  return rows


def _mesh(mesh: dict) -> str:
  return " x ".join(f"{k} {v}" for k, v in mesh.items() if v > 1) or "1"


def markdown(rows: list[dict]) -> str:
  lines = ["| run | phase | topology | mesh | global batch (tokens) | HBM per chip (GiB) "
           "| fits | step bound (s) | bound by | tokens/s (bound) | MFU (bound) | backend "
           "| first fit if not |", "|" + "---|" * 13]
  for r in rows:
    if "error" in r:
      lines.append(f"| {r['run']} | | {r['topology']} | | | | error: {r['error']} "
                   "| | | | | | |")
      continue
    bound = ("| refused by the compiler | | | " if r["step_s"] is None else
             f"| {r['step_s']:.3f} | {r['bound_by']} | {r['tokens_per_s']:,.0f} "
             f"| {r['mfu']:.2f} ")
    lines.append(
        f"| {r['run']} | {r['phase'] + 1} | {r['topology']} | {_mesh(r['mesh'])} "
        f"| {r['global_tokens']:,} | {r['hbm_used'] / 2**30:.2f} / {r['hbm'] / 2**30:.0f} "
        f"| {'yes' if r['fits'] else 'no'} {bound}| {r['backend']} "
        f"| {r['first_fit'] or ''} |")
  return "\n".join(lines)


def summary(rows: list[dict]) -> str:
  """Each run's last phase on every topology: per-chip HBM, fits, the bound's tokens/s."""
  ok = [r for r in rows if "error" not in r]
  tops = [t for t in TOPOLOGIES if any(r["topology"] == t for r in ok)]
  last = {}
  for r in ok:
    key = (r["run"], r["topology"])
    if key not in last or r["phase"] > last[key]["phase"]:
      last[key] = r
  lines = ["| run (last phase) | " + " | ".join(tops) + " |", "|---|" + "---|" * len(tops)]
  for name in dict.fromkeys(run.name for run in runs()):
    cells = []
    for top in tops:
      r = last.get((name, top))
      if r is None:
        cells.append("not compiled")
      elif not r["fits"]:
        cells.append(f"{r['hbm_used'] / 2**30:.1f} GiB, **does not fit**")
      else:
        cells.append(f"{r['hbm_used'] / 2**30:.1f} GiB, {r['tokens_per_s'] / 1e6:.2f}M tok/s, "
                     f"{r['backend']}")
    lines.append(f"| {name} | " + " | ".join(cells) + " |")
  return "\n".join(lines)


def plot(rows: list[dict]):
  """Per-chip memory of every compiled phase, a panel per topology (None: nothing yet)."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  ok = [r for r in rows if "error" not in r]
  tops = [t for t in TOPOLOGIES if any(r["topology"] == t for r in ok)]
  if not tops:
    return None
  labels = list(dict.fromkeys(f"{r['run']} p{r['phase'] + 1}" for r in ok))
  fig, axes = plt.subplots(1, len(tops), figsize=(4.2 * len(tops), 0.25 * len(labels) + 2),
                           squeeze=False, sharey=True)
  for ax, top in zip(axes[0], tops):
    mine = [r for r in ok if r["topology"] == top]
    at = [labels.index(f"{r['run']} p{r['phase'] + 1}") for r in mine]
    ax.barh(at, [r["hbm_used"] / r["hbm"] for r in mine],
            color=["tab:blue" if r["fits"] else "tab:red" for r in mine])
    ax.axvline(1.0, color="k", lw=1)
    ax.set_xscale("log")
    ax.set_title(top)
    ax.set_xlabel("HBM used / HBM per chip")
  axes[0][0].set_yticks(range(len(labels)))
  axes[0][0].set_yticklabels(labels, fontsize=7)
  axes[0][0].invert_yaxis()
  fig.suptitle("The paper's runs compiled for each topology: per-chip memory (red: "
               "does not fit)")
  fig.tight_layout()
  return fig


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--topologies", nargs="*", default=list(TOPOLOGIES))
  parser.add_argument("--runs", nargs="*", default=None,
                      help="substrings of run names, compiled in this order")
  parser.add_argument("--python", default=sys.executable,
                      help="the interpreter whose JAX compiles (GPU: the gpu-compile env)")
  parser.add_argument("--cache", default=os.path.join(RESULTS, "compile_paper_cache"))
  parser.add_argument("--timeout", type=int, default=3600)
  parser.add_argument("--table-only", action="store_true")
  parser.add_argument("--out", default=os.path.join(RESULTS, "compile_paper"))
  args = parser.parse_args()
  os.makedirs(args.cache, exist_ok=True)
  archs = write_archs(os.path.join(args.cache, "archs"))
  selected = runs() if not args.runs else list(  # in the order --runs names them
      {r.name: r for pattern in args.runs for r in runs() if pattern in r.name}.values())
  todo = [(r, t) for t in args.topologies for r in selected
          if not os.path.exists(cache_path(args.cache, r, t))]
  keys = {}  # program key -> (run, topology) already compiled
  for i, (run, topology) in enumerate([] if args.table_only else todo):
    key = (program_key(run, DEVICES[topology], archs), topology)
    same = keys.get(key) or next(
        (r for r in runs() if r is not run and os.path.exists(cache_path(args.cache, r, topology))
         and program_key(r, DEVICES[topology], archs) == key[0]), None)
    print(f"[{i + 1}/{len(todo)}] {run.name} on {topology} ...", flush=True)
    if same is not None:
      with open(cache_path(args.cache, same, topology)) as f:
        result = dict(json.load(f), run=run.name, same_program_as=same.name)
    else:
      result = compile_one(run, topology, args, archs)
    keys.setdefault(key, run)
    with open(cache_path(args.cache, run, topology) + ".tmp", "w") as f:
      json.dump(result, f)
    os.replace(cache_path(args.cache, run, topology) + ".tmp",
               cache_path(args.cache, run, topology))
    print(f"    {result['seconds']:.0f}s " + ("ok" if "report" in result else
                                              f"error: {result['error']}")
          + (f" (the program of {same.name})" if same is not None else ""), flush=True)
  rows = []
  for topology in TOPOLOGIES:
    for run in runs():
      path = cache_path(args.cache, run, topology)
      if os.path.exists(path):
        with open(path) as f:
          rows += rows_of(json.load(f))
  table = markdown(rows)
  done = {(r["run"], r["topology"]) for r in rows}
  missing = [f"{run.name} on {t}" for t in TOPOLOGIES for run in runs()
             if (run.name, t) not in done]
  text = ("# The paper's runs, compiled for accelerator topologies\n\n"
          "    python experiments/compile_paper.py --topologies v5e-256 v5p-128 v6e-256 "
          "v4-128\n    python experiments/compile_paper.py --topologies h100-8 a100-8 "
          "--python GPU_ENV/bin/python\n\n")
  if missing:
    text += f"Not compiled yet (rerun the commands: they resume): {', '.join(missing)}.\n\n"
  text += ("HBM per chip, fits: compiled fact (XLA's memory analysis of the train step). "
           "Step bound, tokens/s, MFU: a roofline estimate, max(FLOPs / peak, HBM bytes / "
           "bandwidth) with the loop-aware counts of hlo_cost.py.\n\n## Each run's last "
           "phase\n\n" + summary(rows) + "\n\n## Every phase\n\n" + table + "\n")
  write_results(args.out, rows, text, plot(rows), dpi=110,
                command="python experiments/compile_paper.py")
  print(table)


if __name__ == "__main__":
  main()
