"""HF checkpoint directories on disk, for every model family's converter.

* :func:`load_state_dict`: all tensors of a directory (safetensors or a PyTorch
  pickle, sharded or not) as float32 numpy arrays.
* :func:`save_weights`: ``config.json`` + ``model.safetensors``.
* :func:`atomic_dir`, :func:`write_hf_dir`: directories assembled beside their
  destination and renamed in, with the tokenizer's files (:func:`copy_tokenizer`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil

import jax.numpy as jnp
import numpy as np

log = logging.getLogger("longformer_jax")

TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "merges.txt", "tokenizer_config.json",
                   "special_tokens_map.json")


def _load_file(path: str) -> dict[str, np.ndarray]:
  if path.endswith(".safetensors"):
    from safetensors import safe_open
    out = {}
    with safe_open(path, framework="flax") as f:  # the flax reader handles bf16
      for k in f.keys():
        out[k] = np.asarray(f.get_tensor(k).astype(jnp.float32))
    return out
  try:
    import torch  # only for PyTorch pickles: slow to import
  except ImportError as e:
    raise ImportError(f"{path} is a PyTorch pickle; install torch to read it, or convert "
                      "it to safetensors") from e
  sd = torch.load(path, map_location="cpu", weights_only=True)
  return {k: v.float().numpy() for k, v in sd.items() if hasattr(v, "float")}


def load_state_dict(directory: str) -> dict[str, np.ndarray]:
  """All tensors of an HF checkpoint directory (single or sharded files)."""
  for name in ("model.safetensors", "pytorch_model.bin"):
    if os.path.exists(os.path.join(directory, name)):
      return _load_file(os.path.join(directory, name))
    index = os.path.join(directory, name + ".index.json")
    if os.path.exists(index):
      with open(index) as f:
        shards = sorted(set(json.load(f)["weight_map"].values()))
      out = {}
      for shard in shards:
        out.update(_load_file(os.path.join(directory, shard)))
      return out
  raise FileNotFoundError(f"no model.safetensors or pytorch_model.bin (or sharded index) "
                          f"in {directory}")


def save_weights(path: str, config: dict, sd: dict[str, np.ndarray]) -> None:
  """Writes ``config`` as ``path/config.json`` and ``sd`` as ``path/model.safetensors``."""
  from safetensors.numpy import save_file
  os.makedirs(path, exist_ok=True)
  with open(os.path.join(path, "config.json"), "w") as f:
    json.dump(config, f, indent=2, sort_keys=True)
  save_file({k: np.ascontiguousarray(v) for k, v in sd.items()},
            os.path.join(path, "model.safetensors"), metadata={"format": "pt"})


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


def remember_tokenizer(model, source: str | None) -> None:
  """Records ``source`` (a tokenizer.json, or a directory with tokenizer files) on
  ``model``: the HF and native directories later written from it carry those files."""
  if source and not os.path.exists(source):
    log.warning("the tokenizer %s is gone: directories written from this model will have "
                "no tokenizer files", source)
  elif source and (os.path.isfile(source) or any(
      os.path.isfile(os.path.join(source, n)) for n in TOKENIZER_FILES)):
    model.tokenizer_source = os.path.abspath(source)


def tokenizer_of(model) -> str | None:
  """The tokenizer :func:`remember_tokenizer` recorded on ``model`` (None if none)."""
  return getattr(model, "tokenizer_source", None)


def write_hf_dir(dst: str, config: dict, sd: dict[str, np.ndarray],
                 tokenizer_src: str | None) -> None:
  """:func:`save_weights` and the tokenizer's files into ``dst``, atomically."""
  with atomic_dir(dst) as tmp:
    save_weights(tmp, config, sd)
    copy_tokenizer(tokenizer_src, tmp)
