"""``--config.mesh=auto`` on the paper's pod runs: the meshes (and slices) the advisor
compiles and chooses, against the fixed rule of ``compile_paper.py`` (all of the batch
to FSDP, the rest to tensor).

    python experiments/mesh_auto.py [--work /tmp/mesh_auto]

Each search is ``python -m longformer_jax.main --mode=compile --config.mesh=auto`` in its
own process (a 256-chip compile holds GBs of host memory); a search whose report is
already in its workdir is not run again. The longformer-base architecture comes from a
``config.json`` only (``compile_paper.write_archs``). Writes
experiments/results/mesh_auto.{md,json}.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

from common import ROOT, write_results
from compile_paper import write_archs

SEARCHES = (  # (run, config, topology: a slice or a chip family, overrides)
    ("mlm base 4096", "mlm.py", "v5e-256", ("--config.data.path=/data/corpus.txt",)),
    ("finetune imdb base", "finetune_imdb.py", "v5e",
     ("--config.data.files.train=/data/train", "--config.data.files.validation=/data/val")),
    ("mlm base 4096", "mlm.py", "v6e-256", ("--config.data.path=/data/corpus.txt",)),
    ("finetune imdb base", "finetune_imdb.py", "v6e-256",
     ("--config.data.files.train=/data/train", "--config.data.files.validation=/data/val")),
)
# The fixed rule's meshes (compile_paper.mesh_for) on the same slices, compiled and
# counted the same way: the "before" of each run.
FIXED = (("mlm base 4096", "mlm.py", "v5e-256", dict(data=1, fsdp=64, tensor=4, sequence=1)),
         ("finetune imdb base", "finetune_imdb.py", "v5e-256",
          dict(data=1, fsdp=32, tensor=8, sequence=1)),
         ("mlm base 4096", "mlm.py", "v6e-256", dict(data=1, fsdp=64, tensor=4, sequence=1)),
         ("finetune imdb base", "finetune_imdb.py", "v6e-256",
          dict(data=1, fsdp=32, tensor=8, sequence=1)))


def search(run: str, config: str, topology: str, overrides, work: str, arch: str) -> dict:
  workdir = os.path.join(work, f"{config.split('.')[0]}-{topology}")
  path = os.path.join(workdir, "compile", f"mesh-auto-{topology.replace(':', '_')}.json")
  if not os.path.exists(path):
    cmd = [sys.executable, "-m", "longformer_jax.main", f"--config=configs/{config}",
           f"--workdir={workdir}", "--mode=compile", f"--topology={topology}",
           "--config.mesh=auto", f"--config.init_from_hf={arch}", *overrides]
    print(" ".join(cmd[1:]), flush=True)
    subprocess.run(cmd, cwd=ROOT, check=True, env=dict(os.environ, TPU_SKIP_MDS_QUERY="1"))
  with open(path) as f:
    return dict(json.load(f), run=run, searched=topology)


def fixed(run: str, config: str, topology: str, mesh: dict, work: str, arch: str,
          reports: list[dict]) -> dict:
  """The train step on the fixed rule's mesh: its least MFU bound and tokens/s (from a
  search that compiled that mesh on that slice, else compiled here)."""
  for r in reports:
    for c in r["compiled"] if r["run"] == run else ():
      if c["mesh"] == mesh and c.get("topology", r["topology"]) == topology and c["fits"]:
        return {"run": run, "topology": topology, "mesh": mesh, "mfu": c["mfu"],
                "tokens_per_s": c["tokens_per_s"], "hbm_per_chip": c["hbm_per_chip"]}
  workdir = os.path.join(work, f"fixed-{config.split('.')[0]}-{topology}")
  path = os.path.join(workdir, "compile", f"{topology.replace(':', '_')}.json")
  if not os.path.exists(path):
    overrides = next(s[3] for s in SEARCHES if s[1] == config)
    cmd = [sys.executable, "-m", "longformer_jax.main", f"--config=configs/{config}",
           f"--workdir={workdir}", "--mode=compile", f"--topology={topology}",
           "--compile_steps=train", f"--config.init_from_hf={arch}", *overrides,
           *[f"--config.mesh.{k}={v}" for k, v in mesh.items()]]
    print(" ".join(cmd[1:]), flush=True)
    subprocess.run(cmd, cwd=ROOT, check=True, env=dict(os.environ, TPU_SKIP_MDS_QUERY="1"))
  with open(path) as f:
    steps = json.load(f)["steps"]
  return {"run": run, "topology": topology, "mesh": mesh,
          "mfu": min(s["roofline"]["mfu"] for s in steps),
          "tokens_per_s": min(s["roofline"]["tokens_per_s"] for s in steps),
          "hbm_per_chip": max(s["memory"]["total"] for s in steps)}


def _mesh(m: dict) -> str:
  return " x ".join(f"{k} {v}" for k, v in m.items() if v != 1) or "one device"


def markdown(reports: list[dict]) -> list[str]:
  lines = ["# `--config.mesh=auto`: the compiled candidates and the choice", "",
           "    python experiments/mesh_auto.py", "",
           "Per search: every compiled candidate (train step, every phase) with its fit, HBM",
           "per chip, the run's bound (every step at the compiled roofline bound: max(FLOPs /",
           "peak, HBM bytes / bandwidth, async network bytes / link bandwidth) + sync network",
           "bytes / link bandwidth), tokens/s per slice and per chip and the MFU bound. A",
           "family search compiles each slice at its best estimated mesh and recommends the",
           "smallest slice within 90% of the best tokens/s per chip.", "",
           "| run | searched | slice | mesh | fits | HBM/chip GiB | run bound s | tokens/s "
           "| tokens/s/chip | MFU bound | bound by | chosen |", "|" + "---|" * 12]
  for r in reports:
    chosen = r["chosen"]
    for c in r["compiled"]:
      pick = c["mesh"] == chosen["mesh"] and c.get("topology") == chosen.get("topology")
      lines.append(
          f"| {r['run']} | {r['searched']} | {c.get('topology', r['topology'])} "
          f"| {_mesh(c['mesh'])} | {c['fits']} | {c['hbm_per_chip'] / 2 ** 30:.2f} "
          f"| {c['run_s']:.0f} | {c['tokens_per_s'] / 1e6:.2f}M "
          f"| {c['tokens_per_s_per_chip']:,.0f} | {c['mfu']:.2f} "
          f"| {','.join(c.get('bound_by', []))} | {'**yes**' if pick else ''} |")
  return lines


def before_after(reports: list[dict], fixed_rows: list[dict]) -> list[str]:
  """Each slice's fixed-rule mesh against the advisor's choice on the same slice."""
  lines = ["", "Before (the fixed rule) and after (the advisor's mesh), same slice, same counter:",
           "", "| run | slice | before: mesh | MFU bound | tokens/s | after: mesh | MFU bound "
           "| tokens/s | HBM/chip GiB |", "|" + "---|" * 9]
  for f in fixed_rows:
    rows = [c for r in reports if r["run"] == f["run"] for c in r["compiled"]
            if c.get("topology", r["topology"]) == f["topology"] and c["fits"]]
    best = min(rows, key=lambda c: c["run_s"]) if rows else None
    after = ("-", "-", "-", "-") if best is None else (
        _mesh(best["mesh"]), f"{best['mfu']:.2f}", f"{best['tokens_per_s'] / 1e6:.2f}M",
        f"{best['hbm_per_chip'] / 2 ** 30:.2f}")
    lines.append(f"| {f['run']} | {f['topology']} | {_mesh(f['mesh'])} | {f['mfu']:.2f} "
                 f"| {f['tokens_per_s'] / 1e6:.2f}M | " + " | ".join(after) + " |")
  return lines


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--work", default="/tmp/mesh_auto")
  args = parser.parse_args()
  arch = write_archs(os.path.join(args.work, "archs"))["base"]
  reports = [search(*s, args.work, arch) for s in SEARCHES]
  fixed_rows = [fixed(*f, args.work, arch, reports) for f in FIXED]
  write_results("mesh_auto", {"searches": reports, "fixed": fixed_rows},
                markdown(reports) + before_after(reports, fixed_rows),
                command="python experiments/mesh_auto.py")


if __name__ == "__main__":
  main()
