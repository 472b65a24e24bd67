"""What a training run's directory records, and what is rebuilt from it.

A run writes, beside ``checkpoints/`` and ``metrics.jsonl``:

* ``experiment.json``: the experiment config as it ran;
* ``model.json``: the resolved model config of its last phase (every field, the
  derived ``vocab_size`` / ``num_labels`` included), the head, and the label names
  of tasks with named labels.

From these and the newest readable checkpoint, :func:`trained_model` rebuilds the
model without the data, and :func:`export_hf` writes it as an HF directory
(``config.json`` with ``id2label``, ``model.safetensors``, the tokenizer's files):
``python -m longformer_jax.convert to-hf WORKDIR OUT_DIR``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import shutil

import jax
import ml_collections
from flax import nnx


log = logging.getLogger("longformer_jax")

EXPERIMENT, MODEL = "experiment.json", "model.json"
TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "merges.txt", "tokenizer_config.json",
                   "special_tokens_map.json")


def write_json_atomic(path: str, obj) -> None:
  tmp = f"{path}.tmp-{os.getpid()}"
  with open(tmp, "w") as f:
    json.dump(obj, f, indent=2, sort_keys=True)
  os.replace(tmp, path)


def record_run(workdir: str, config, model_cfg, head: str, label_names, tokenizer) -> None:
  """Writes experiment.json and model.json (call from one process)."""
  from longformer_jax import families
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


def _read(workdir: str, name: str) -> dict:
  path = os.path.join(workdir, name)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{workdir} is not a training workdir: no {name}")
  with open(path) as f:
    return json.load(f)


def trained_model(workdir: str):
  """(model in eval mode, model.json contents) from the newest readable checkpoint."""
  from longformer_jax import checkpoint as ckpt_lib
  from longformer_jax import families
  from longformer_jax import train
  config = ml_collections.ConfigDict(_read(workdir, EXPERIMENT))
  info = _read(workdir, MODEL)
  family = families.get(info.get("family", "longformer"))
  cfg = family.config_cls(**info["config"])
  tx = train.optimizer_of(config, train.resolve_phases(config))[1]
  abstract = jax.eval_shape(lambda: train.init_state(cfg, info["head"], tx, config.seed))
  # On this host's first device, whatever mesh the run was saved from.
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  target = ckpt_lib.abstract_with_shardings(abstract, jax.tree.map(lambda _: device, abstract))
  ckpt = ckpt_lib.Checkpointer(workdir, keep=1, every=0, async_save=False)
  try:
    restored = ckpt.restore_state(target)
  finally:
    ckpt.close()
  if restored is None:
    raise FileNotFoundError(f"{workdir} holds no checkpoint that restores (any failures are "
                            "logged above)")
  state, step = restored
  model = family.create_model(cfg, info["head"], config.seed)
  nnx.update(model, state["params"])
  if info.get("generation"):
    from longformer_jax import generation
    model.generation_config = generation.GenerationConfig.from_dict(info["generation"])
  model.eval()
  return model, dict(info, step=step)


def export_hf(workdir: str, out_dir: str) -> int:
  """Writes the run's newest checkpoint as an HF directory; returns its step.

  The directory is assembled beside ``out_dir`` and renamed into place, so a
  failed export leaves nothing half-written.
  """
  from longformer_jax import families
  model, info = trained_model(workdir)
  if info.get("label_names"):
    names = info["label_names"]
    extra = dict(json.loads(model.config.extra_json),
                 id2label={str(i): n for i, n in enumerate(names)},
                 label2id={n: i for i, n in enumerate(names)})
    model.config = model.config.replace(extra_json=json.dumps(extra, sort_keys=True))
  with atomic_dir(out_dir) as tmp:
    families.of_config(model.config).to_hf(model, tmp)
    copy_tokenizer(info.get("tokenizer"), tmp)
  return info["step"]


@contextlib.contextmanager
def atomic_dir(out_dir: str):
  """Yields a scratch directory beside ``out_dir`` that is renamed to it when the block
  ends, and removed when the block raises: a failure leaves nothing half-written."""
  out_dir = os.path.abspath(out_dir)
  if os.path.exists(out_dir) and os.listdir(out_dir):
    raise FileExistsError(f"{out_dir} exists and is not empty")
  tmp = f"{out_dir}.tmp-{os.getpid()}"
  shutil.rmtree(tmp, ignore_errors=True)
  os.makedirs(tmp)
  try:
    yield tmp
    if os.path.exists(out_dir):
      os.rmdir(out_dir)
    os.replace(tmp, out_dir)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise


def copy_tokenizer(source: str | None, out_dir: str) -> None:
  """The tokenizer's files (a tokenizer.json, or those of a checkpoint directory)."""
  if not source:
    return
  if not os.path.exists(source):
    log.warning("the run's tokenizer %s is gone: the export has no tokenizer files", source)
    return
  if os.path.isfile(source):
    shutil.copy(source, os.path.join(out_dir, "tokenizer.json"))
    return
  for name in TOKENIZER_FILES:
    if os.path.isfile(os.path.join(source, name)):
      shutil.copy(os.path.join(source, name), os.path.join(out_dir, name))
