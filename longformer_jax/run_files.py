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

from longformer_jax import families, fileio

EXPERIMENT, MODEL = "experiment.json", "model.json"


def record_run(workdir: str, config, model_cfg, head: str, label_names, tokenizer) -> None:
  """Writes experiment.json and model.json (call from one process)."""
  fileio.write_json(fileio.join(workdir, EXPERIMENT), json.loads(config.to_json_best_effort()))
  fileio.write_json(fileio.join(workdir, MODEL), {
      "config": dataclasses.asdict(model_cfg), "head": head,
      "family": families.of_config(model_cfg).name,
      # generation settings of a seq2seq run: the exported generation_config.json
      "generation": dict((config.get("seq2seq") or {}).get("generation") or {}) or None,
      "label_names": None if label_names is None else [str(n) for n in label_names],
      "tokenizer": None if not tokenizer else str(fileio.path(tokenizer))})


def is_workdir(path: str) -> bool:
  return fileio.isfile(fileio.join(path, MODEL))


def read(workdir: str, name: str) -> dict:
  """A recorded file's contents; FileNotFoundError when ``workdir`` is no run's."""
  path = fileio.join(workdir, name)
  if not fileio.isfile(path):
    raise FileNotFoundError(f"{workdir} is not a training workdir: no {name}")
  return fileio.read_json(path)


def write_jsonl_atomic(path: str, records) -> None:
  """One JSON object a line, written to a temporary file and renamed into place."""
  fileio.write_atomic(path, "".join(json.dumps(record, ensure_ascii=False) + "\n"
                                     for record in records))


def remove_if_unstarted(workdir: str) -> None:
  """Removes a workdir this run created if it failed before logging a step or saving a
  checkpoint (what is left is its record of a run that never ran)."""
  started = (fileio.exists(fileio.join(workdir, "metrics.jsonl"))
             or fileio.listdir(fileio.join(workdir, "checkpoints")))
  if not started:
    fileio.rmtree(workdir)
