"""The README's first command, measured: ``configs/default.py`` (key-value recall over
2,048 tokens, global attention on the query) and its ``:no_global`` ablation, each run
through ``python -m longformer_jax.main`` as a user runs it.

    python experiments/default_experiment.py                 # about 8 minutes on 2 cores

Writes experiments/results/default_experiment.{json,md}. Each machine (CPU model and
core count) keeps its own rows: a rerun on another machine adds rows rather than
replacing them, and the table gives the range over machines, since XLA's CPU kernels
(AVX2 / AVX-512) change the floating-point sums and so the trajectory of a run.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time

from common import RESULTS, ROOT, cpu_name, write_results

VARIANTS = {"global": "configs/default.py", "no_global": "configs/default.py:no_global"}


def run_variant(config: str, workdir: str) -> dict:
  """Trains ``config`` from scratch in ``workdir``; its final record and wall time."""
  shutil.rmtree(workdir, ignore_errors=True)
  t0 = time.time()
  subprocess.run([sys.executable, "-m", "longformer_jax.main", f"--config={config}",
                  f"--workdir={workdir}"], cwd=ROOT, check=True)
  seconds = time.time() - t0
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    last = [json.loads(line) for line in f][-1]
  return dict(config=config, step=last["step"], seconds=round(seconds, 1),
              eval_accuracy=last["eval_accuracy"],
              eval_no_global_accuracy=last["eval_no_global_accuracy"])


def machine() -> str:
  return f"{cpu_name()}, {os.cpu_count()} cores"


def merge(path: str, rows: list[dict]) -> list[dict]:
  """The rows in ``path`` of other machines, then ``rows`` (this machine's)."""
  old = []
  if os.path.exists(path):
    with open(path) as f:
      old = [r for r in json.load(f)["rows"] if r["machine"] != rows[0]["machine"]]
  return old + rows


def markdown(rows: list[dict], command: str) -> str:
  lines = ["# The default experiment", "",
           f"`{command}`: `python -m longformer_jax.main --config=configs/default.py"
           "[:no_global]`, 700 steps each; validation accuracy over 512 documents, 8 "
           "classes (chance 12.5%). The same model is also evaluated with its global "
           "attention switched off.", "",
           "| machine | trained with | eval, global on | eval, global off | wall time |",
           "|---|---|---|---|---|"]
  for r in rows:
    lines.append(f"| {r['machine']} | {r['variant']} | {100 * r['eval_accuracy']:.1f}% | "
                 f"{100 * r['eval_no_global_accuracy']:.1f}% | {r['seconds']:.0f} s |")
  glob = [100 * r["eval_accuracy"] for r in rows if r["variant"] == "global"]
  lines += ["", f"With global attention: {min(glob):.1f}% to {max(glob):.1f}% over "
            f"{len(glob)} machine(s); the trajectory depends on the CPU's floating-point "
            "kernels, so a machine not listed may land elsewhere in or near that range."]
  return "\n".join(lines) + "\n"


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--workdir", default="/tmp/lf_default_experiment",
                 help="where the two runs train (replaced)")
  args = p.parse_args(argv)
  rows = [dict(machine=machine(), variant=name, **run_variant(config,
                                                              os.path.join(args.workdir, name)))
          for name, config in VARIANTS.items()]
  path = os.path.join(RESULTS, "default_experiment.json")
  rows = merge(path, rows)
  command = "python experiments/default_experiment.py"
  write_results("default_experiment", dict(command=command, rows=rows),
                markdown(rows, command), command=command)
  print(markdown(rows, command))


if __name__ == "__main__":
  main()
