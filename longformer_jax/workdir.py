"""A training run read back from its directory.

From the files the run recorded (``run_files.py``: ``experiment.json``,
``model.json``) and the newest readable checkpoint, :func:`trained_model` rebuilds
the model without the data, and :func:`export_hf` writes it as an HF directory
(``config.json`` with ``id2label``, ``model.safetensors``, the tokenizer's files):
``python -m longformer_jax.convert to-hf WORKDIR OUT_DIR``.

This module sits above the training library (``train.py``), which never imports it.
"""

from __future__ import annotations

import json

import jax
import ml_collections
from flax import nnx

from longformer_jax import checkpoint as ckpt_lib
from longformer_jax import families, train
from longformer_jax.led import generation
from longformer_jax import hf_io
from longformer_jax.hf_io import atomic_dir
from longformer_jax.run_files import EXPERIMENT, MODEL, is_workdir, read

__all__ = ["EXPERIMENT", "MODEL", "is_workdir", "trained_model", "export_hf"]


def trained_model(workdir: str, **overrides):
  """(model in eval mode, model.json contents) from the newest readable checkpoint;
  ``overrides`` replace run fields of its config (``attention_impl=...``)."""
  config = ml_collections.ConfigDict(read(workdir, EXPERIMENT))
  info = read(workdir, MODEL)
  family = families.get(info.get("family", "longformer"))
  cfg = family.config_cls(**{**info["config"], **overrides})
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
    model.generation_config = generation.GenerationConfig.from_dict(info["generation"])
  hf_io.remember_tokenizer(model, info.get("tokenizer"))
  model.eval()
  return model, dict(info, step=step)


def export_hf(workdir: str, out_dir: str) -> int:
  """Writes the run's newest checkpoint as an HF directory; returns its step.

  The directory is assembled beside ``out_dir`` and renamed into place, so a
  failed export leaves nothing half-written.
  """
  model, info = trained_model(workdir)
  if info.get("label_names") and hasattr(model.config, "extra_json"):  # HF's id2label
    names = info["label_names"]
    extra = dict(json.loads(model.config.extra_json),
                 id2label={str(i): n for i, n in enumerate(names)},
                 label2id={n: i for i, n in enumerate(names)})
    model.config = model.config.replace(extra_json=json.dumps(extra, sort_keys=True))
  with atomic_dir(out_dir) as tmp:
    families.of_config(model.config).to_hf(model, tmp)  # with the run's tokenizer
  return info["step"]
