"""HF checkpoints in and out, RoBERTa -> Longformer (paper section 5), native checkpoints.

* :func:`from_hf` loads an HF Longformer directory (``config.json`` + safetensors
  or ``pytorch_model.bin``, sharded or not) into our model.
* :func:`to_hf` writes a directory that ``transformers`` loads.
* :func:`extend_checkpoint` turns a RoBERTa checkpoint into a Longformer one
  (position embeddings copied up to the new length, global Q/K/V from local ones),
  or gives a Longformer checkpoint more positions the same way.
* :func:`save_native` / :func:`load_native`: orbax checkpoint + config.json.

The command line over these is ``python -m longformer_jax.convert`` (``convert.py``);
HF file reading and writing, shared with the LED converter, is ``hf_io.py``; the
mapping between our parameters and HF keys is ``hf_keys.py`` with this family's
:data:`KEYMAP`.
"""

from __future__ import annotations

import logging
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from longformer_jax import fileio, hf_io, hf_keys
from longformer_jax.led import convert as led_convert
from longformer_jax import model as model_lib
from longformer_jax.config import LongformerConfig

log = logging.getLogger(__name__)

_RENAME_TO_HF = {"self_attn": "self"}
# Keys that HF checkpoints may hold and that we derive or do not need (the decoder
# weight is the word embeddings' unless the model has an untied decoder).
_IGNORED = re.compile(r"(^|\.)(embeddings\.position_ids|lm_head\.decoder\.(weight|bias))$")
# Keys of some HF Longformer head or the pooler: fine to skip, or to initialise.
_HEAD = re.compile(r"^(lm_head|classifier|qa_outputs)\.|(^|\.)pooler\.")


def task_of(model) -> str:
  for task, (cls, _) in model_lib.TASKS.items():
    if type(model) is cls:
      return task
  raise TypeError(f"{type(model).__name__} is not a Longformer model of this package")


def hf_name(path: tuple) -> str:
  """Our parameter path -> the HF state-dict key."""
  parts = [_RENAME_TO_HF.get(str(p), str(p)) for p in path[:-1]]
  leaf = str(path[-1])
  if path[-2:] == ("lm_head", "bias"):
    return "lm_head.bias"
  return ".".join(parts + [hf_keys.LEAF_TO_HF[leaf]])


# How Longformer parameters are named in HF checkpoints (``hf_keys.py`` does the rest).
KEYMAP = hf_keys.KeyMap(
    "Longformer", key_of=hf_name, stacked=lambda path: "layers" in path,
    tolerated=lambda key: bool(_HEAD.search(key)), optional=lambda key: bool(_HEAD.search(key)))


def hf_state_dict(model) -> dict[str, np.ndarray]:
  """Our parameters as an HF state dict (float32 numpy, HF layouts)."""
  return hf_keys.state_dict(KEYMAP, model)


def _align_prefix(sd: dict, task: str) -> dict:
  """Adds or strips ``longformer.`` so the keys match the model of ``task``."""
  prefixed = any(k.startswith("longformer.") for k in sd)
  if task == "base" and prefixed:
    return {k[len("longformer."):] if k.startswith("longformer.") else k: v
            for k, v in sd.items()}
  if task != "base" and not prefixed:
    return {k if _HEAD.match(k) else "longformer." + k: v for k, v in sd.items()}
  return sd


def hf_param_values(model, sd: dict[str, np.ndarray]) -> dict[tuple, np.ndarray]:
  """The parameters an HF state dict gives ``model``, as host arrays by parameter path.

  ``model`` may be abstract (``nnx.eval_shape``): only its structure and shapes are
  read. Raises on unknown keys, missing body weights or shapes. Missing head (or
  pooler) weights are left out, with a warning: they keep their random init, as
  when fine-tuning a pretrained body on a new task.
  """
  expected = {key for key, *_ in hf_keys.entries(KEYMAP, model)}
  sd = {k: v for k, v in _align_prefix(sd, task_of(model)).items()
        if k in expected or not _IGNORED.search(k)}
  return hf_keys.param_values(KEYMAP, model, sd)


def load_hf_weights(model, sd: dict[str, np.ndarray]) -> None:
  """Copies an HF state dict into ``model`` (see :func:`hf_param_values`)."""
  hf_keys.load(KEYMAP, model, hf_param_values(model, sd))


def from_hf(path: str | os.PathLike, task: str | None = None, **config_overrides):
  """Loads an HF Longformer (or LED) checkpoint directory and returns our model (eval
  mode).

  Args:
    path: directory with ``config.json`` and the weights.
    task: one of ``model.TASKS`` (``base``, ``masked_lm``, ...); default from the
      config's ``architectures`` (``base`` when absent).
    **config_overrides: fields of :class:`LongformerConfig` to change (``dtype``,
      ``block_size``, ``attention_impl``, ``max_global_tokens``, dropout rates...).

  A checkpoint whose ``model_type`` is ``led`` loads as ``led.LEDModel`` or
  ``led.LEDForConditionalGeneration`` (``led_convert.from_hf``).
  """
  path = str(fileio.path(hf_io.checkpoint_path(path)))
  config_json = fileio.join(path, "config.json")
  if fileio.exists(config_json):
    if fileio.read_json(config_json).get("model_type") == "led":
      return led_convert.from_hf(path, task, **config_overrides)
  cfg = LongformerConfig.from_json(path, **config_overrides)
  if task is None:
    archs = fileio.read_json(config_json).get("architectures") or ["LongformerModel"]
    task = model_lib.task_of_architecture(archs[0])
  model = model_lib.create_model(cfg, task)
  load_hf_weights(model, hf_io.load_state_dict(path))
  hf_io.remember_tokenizer(model, path)
  model.eval()
  return model


def _hf_unsupported(cfg: LongformerConfig) -> list[str]:
  """Fields of ``cfg`` that transformers' Longformer would silently run differently."""
  bad = []
  if cfg.causal:
    bad.append("causal=True (transformers runs a symmetric window)")
  if cfg.attention_dilation is not None and any(d != 1 for layer in cfg.attention_dilation
                                                for d in layer):
    bad.append(f"attention_dilation={cfg.attention_dilation} (transformers has no dilation)")
  return bad


def to_hf(model, path: str | os.PathLike, *, allow_unsupported: bool = False) -> None:
  """Writes ``config.json`` + ``model.safetensors`` that transformers loads.

  A causal or dilated model would load there and run as a plain symmetric,
  undilated one: that raises (save it with :func:`save_native`), or with
  ``allow_unsupported=True`` is written anyway with a warning.
  """
  cfg = model.config
  if cfg.relative_positions or cfg.pre_layer_norm:
    raise ValueError("transformers' Longformer has no pre-LN layers or relative positions "
                     f"(pre_layer_norm={cfg.pre_layer_norm}, position_embedding_type="
                     f"{cfg.position_embedding_type!r}); use save_native")
  bad = _hf_unsupported(model.config)
  if bad and not allow_unsupported:
    raise ValueError(f"transformers cannot run this model as it is: {'; '.join(bad)}. Use "
                     "save_native, or pass allow_unsupported=True to export anyway")
  if bad:
    log.warning("exporting to transformers, which will ignore: %s", "; ".join(bad))
  arch = model_lib.TASKS[task_of(model)][1]
  hf_io.save_weights(path, model.config.to_hf_dict([arch]), hf_state_dict(model))
  hf_io.copy_tokenizer(hf_io.tokenizer_of(model), path)


# ---- RoBERTa -> Longformer ---------------------------------------------------
NEW_POSITIONS = ("copy", "random")


def extend_positions(pos_PxD: np.ndarray, new_positions: int, offset: int = 2, *,
                     init: str = "copy", std: float = 0.02, seed: int = 0) -> np.ndarray:
  """Position table of ``new_positions`` rows: the first ``offset`` rows and the
  learned rows kept; the rows after them the learned ones copied over and over
  (``init="copy"``, the paper's initialisation) or drawn from N(0, ``std``²)
  (``"random"``, the paper's ablation)."""
  if init not in NEW_POSITIONS:
    raise ValueError(f"new positions init={init!r} is not one of {NEW_POSITIONS}")
  learned = pos_PxD[offset:]
  out = np.empty((new_positions, pos_PxD.shape[1]), pos_PxD.dtype)
  out[:offset] = pos_PxD[:offset]
  for start in range(offset, new_positions, len(learned)):
    take = min(len(learned), new_positions - start)
    out[start:start + take] = learned[:take]
  if init == "random":
    fresh = out[len(pos_PxD):]
    fresh[...] = np.random.default_rng(seed).normal(0.0, std, fresh.shape)
  return out


def extend_checkpoint(src: str, dst: str, max_length: int = 4096,
                      attention_window: int | None = None, new_positions: str = "copy",
                      seed: int = 0) -> None:
  """Writes ``src``, an HF RoBERTa or Longformer directory, as a Longformer of
  ``max_length`` positions (paper section 5): the learned position rows copied over
  and over (``new_positions="random"``: drawn at the checkpoint's initializer_range
  with ``seed``); from RoBERTa also the global Q/K/V copied from the local ones and a
  window of ``attention_window`` (512 if None) on every layer. The tokenizer files
  come along. ``dst`` is assembled beside itself and renamed in: a failure leaves
  nothing half-written.
  """
  cfg = fileio.read_json(fileio.join(src, "config.json"))
  kind = cfg.get("model_type")
  if kind not in ("roberta", "longformer"):
    raise ValueError(f"{src}/config.json: model_type={kind!r}, expected 'roberta' or "
                     "'longformer'")
  if attention_window is not None and (attention_window <= 0 or attention_window % 2):
    raise ValueError(f"attention_window must be a positive even number, got {attention_window}")
  offset = cfg.get("pad_token_id", 1) + 1
  if max_length + offset < cfg["max_position_embeddings"]:
    raise ValueError(f"max_length={max_length} would shorten {src}'s "
                     f"{cfg['max_position_embeddings'] - offset} positions")
  sd = {re.sub(r"^roberta\.", "longformer.", k): v
        for k, v in hf_io.load_state_dict(src).items() if not k.endswith("position_ids")}
  for k in list(sd):
    if k.endswith("embeddings.position_embeddings.weight"):
      sd[k] = extend_positions(sd[k], max_length + offset, offset, init=new_positions,
                               std=cfg.get("initializer_range", 0.02), seed=seed)
    m = re.match(r"(.*attention\.self\.)(query|key|value)\.(weight|bias)$", k)
    if m and kind == "roberta":
      sd[f"{m[1]}{m[2]}_global.{m[3]}"] = sd[k].copy()
  if kind == "roberta" or attention_window is not None:
    cfg["attention_window"] = [attention_window or 512] * cfg["num_hidden_layers"]
  archs = [a.replace("Roberta", "Longformer") for a in cfg.get("architectures") or []]
  cfg.update(model_type="longformer", max_position_embeddings=max_length + offset,
             architectures=archs or ["LongformerModel"])
  cfg.pop("position_embedding_type", None)
  hf_io.write_hf_dir(dst, cfg, sd, src)


def roberta_to_longformer(src: str, dst: str, max_length: int = 4096,
                          attention_window: int = 512) -> None:
  """Converts an HF RoBERTa checkpoint directory into an HF Longformer one."""
  extend_checkpoint(src, dst, max_length, attention_window)


# ---- native (orbax) checkpoints ---------------------------------------------
def save_native(model, path: str | os.PathLike) -> None:
  """Orbax checkpoint of the parameters in ``path/params`` + ``path/config.json``, and the
  tokenizer files of the directory the model was loaded from."""
  import orbax.checkpoint as ocp
  path = fileio.makedirs(path)
  with ocp.StandardCheckpointer() as ckptr:
    ckptr.save(path / "params", nnx.state(model, nnx.Param), force=True)
  hf_io.copy_tokenizer(hf_io.tokenizer_of(model), path)
  fileio.write_json(path / "config.json",  # last: a directory with a config.json is complete
                    model.config.to_hf_dict([model_lib.TASKS[task_of(model)][1]]))


def load_native(path: str | os.PathLike, **config_overrides):
  """Inverse of :func:`save_native`; returns the model in eval mode."""
  import orbax.checkpoint as ocp
  path = fileio.path(path)
  cfg = LongformerConfig.from_json(path, **config_overrides)
  task = model_lib.task_of_architecture(
      fileio.read_json(path / "config.json")["architectures"][0])
  model = model_lib.create_model(cfg, task)
  target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype),
                        nnx.state(model, nnx.Param))
  with ocp.StandardCheckpointer() as ckptr:
    nnx.update(model, ckptr.restore(path / "params", target))
  hf_io.remember_tokenizer(model, path)
  model.eval()
  return model
