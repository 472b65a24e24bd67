"""What a training run's directory records beside ``checkpoints/`` and ``metrics.jsonl``.

* ``experiment.json``: the experiment config as it ran (the latest start's);
* ``runs.jsonl``: every start of the run, a line each: when, from which step, and the
  fields that changed since the previous start;
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

EXPERIMENT, MODEL, RUNS = "experiment.json", "model.json", "runs.jsonl"
# Fields a run may change when it resumes (how long, how often it reports and saves,
# where it runs and reads from): anything else makes it another run.
RESUMABLE = ("train_steps", "eval_every", "log_every", "checkpoint_every",
             "keep_checkpoints", "eval_batches", "async_checkpoints", "distributed.", "mesh.",
             "init_from_hf", "data.data_dir", "data.num_threads", "data.prefetch")
ALLOW_FLAG = "--allow_config_change"


def _flat(obj, prefix: str = "") -> dict:
  if isinstance(obj, dict):
    out = {}
    for key, value in obj.items():
      out.update(_flat(value, f"{prefix}{key}."))
    return out or {prefix[:-1]: {}}
  return {prefix[:-1]: obj}


def changed_fields(workdir: str, config) -> dict:
  """{field: (recorded, now)} of every field that differs from the run the workdir
  records (empty when it records none)."""
  path = fileio.join(workdir, EXPERIMENT)
  if not fileio.isfile(path):
    return {}
  old = _flat(fileio.read_json(path))
  new = _flat(json.loads(config.to_json_best_effort()))
  return {k: (old.get(k), new.get(k)) for k in sorted(set(old) | set(new))
          if old.get(k) != new.get(k)}


def check_resume(workdir: str, config, allow_change: bool = False) -> dict:
  """The fields a resumed run changes; ValueError naming those that make it another run
  (not in :data:`RESUMABLE`) unless ``allow_change``."""
  changed = changed_fields(workdir, config)
  other = [k for k in changed if not (k in RESUMABLE or k.startswith(
      tuple(p for p in RESUMABLE if p.endswith("."))))]
  if other and not allow_change:
    shown = "; ".join(f"config.{k}: {changed[k][0]!r} -> {changed[k][1]!r}"
                      for k in other[:6]) + ("; ..." if len(other) > 6 else "")
    raise ValueError(f"{workdir} holds another run: {shown}. Use a new workdir, or "
                     f"{ALLOW_FLAG} to resume it under the new config")
  return changed


def record_start(workdir: str, step: int, changed: dict) -> None:
  """Appends this start to runs.jsonl (call from one process)."""
  import time
  fileio.append_text(fileio.join(workdir, RUNS), json.dumps({
      "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "from_step": step,
      "changed": {k: list(v) for k, v in changed.items()}}, default=str) + "\n")


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
