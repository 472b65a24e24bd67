"""What a training run's directory records beside ``checkpoints/`` and ``metrics.jsonl``.

* ``experiment.json``: the experiment config as it ran;
* ``model.json``: the resolved model config of its last phase (every field, the
  derived ``vocab_size`` / ``num_labels`` included), the head, and the label names
  of tasks with named labels.

The training library writes them (:func:`record_run`); ``workdir.py`` reads a run
back from them.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil

from longformer_jax import families

EXPERIMENT, MODEL = "experiment.json", "model.json"


def write_json_atomic(path: str, obj) -> None:
  tmp = f"{path}.tmp-{os.getpid()}"
  with open(tmp, "w") as f:
    json.dump(obj, f, indent=2, sort_keys=True)
  os.replace(tmp, path)


def record_run(workdir: str, config, model_cfg, head: str, label_names, tokenizer) -> None:
  """Writes experiment.json and model.json (call from one process)."""
  write_json_atomic(os.path.join(workdir, EXPERIMENT), json.loads(config.to_json_best_effort()))
  write_json_atomic(os.path.join(workdir, MODEL), {
      "config": dataclasses.asdict(model_cfg), "head": head,
      "family": families.of_config(model_cfg).name,
      # generation settings of a seq2seq run: the exported generation_config.json
      "generation": dict((config.get("seq2seq") or {}).get("generation") or {}) or None,
      "label_names": None if label_names is None else [str(n) for n in label_names],
      "tokenizer": None if not tokenizer else os.path.abspath(os.fspath(tokenizer))})


def is_workdir(path: str) -> bool:
  return os.path.isfile(os.path.join(path, MODEL))


def read(workdir: str, name: str) -> dict:
  """A recorded file's contents; FileNotFoundError when ``workdir`` is no run's."""
  path = os.path.join(workdir, name)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{workdir} is not a training workdir: no {name}")
  with open(path) as f:
    return json.load(f)


def write_jsonl_atomic(path: str, records) -> None:
  """One JSON object a line, written to a temporary file and renamed into place."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  tmp = f"{path}.tmp-{os.getpid()}"
  with open(tmp, "w", encoding="utf-8") as f:
    for record in records:
      f.write(json.dumps(record, ensure_ascii=False) + "\n")
  os.replace(tmp, path)


def remove_if_unstarted(workdir: str) -> None:
  """Removes a workdir this run created if it failed before logging a step or saving a
  checkpoint (what is left is its record of a run that never ran)."""
  ckpts = os.path.join(workdir, "checkpoints")
  started = (os.path.exists(os.path.join(workdir, "metrics.jsonl"))
             or (os.path.isdir(ckpts) and os.listdir(ckpts)))
  if os.path.isdir(workdir) and not started:
    shutil.rmtree(workdir, ignore_errors=True)
