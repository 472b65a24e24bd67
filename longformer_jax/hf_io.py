"""HF checkpoint directories on disk, for every model family's converter.

* :func:`load_state_dict`: all tensors of a directory (safetensors or a PyTorch
  pickle, sharded or not) as float32 numpy arrays.
* :func:`save_weights`: ``config.json`` + ``model.safetensors``.
* :func:`write_hf_dir`: a directory assembled locally and moved (or uploaded) into
  place, ``config.json`` last, with the tokenizer's files (:func:`copy_tokenizer`).

Every directory may be local or on a bucket (:mod:`longformer_jax.fileio`).
"""

from __future__ import annotations

import logging
import os
import re

import jax.numpy as jnp
import numpy as np

from longformer_jax import fileio

log = logging.getLogger("longformer_jax")

TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "merges.txt", "tokenizer_config.json",
                   "special_tokens_map.json")


HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")
HUB_FILES = ("*.json", "*.safetensors", "*.bin", "*.txt", "*.model")


def checkpoint_path(ref: str | os.PathLike) -> str:
  """A checkpoint directory: ``ref`` itself when it exists (local or a bucket), else, when
  it reads as a hub id (``allenai/longformer-base-4096``), the hub's copy in
  huggingface_hub's cache (``snapshot_download``: ``HF_HOME`` and ``HF_HUB_OFFLINE``
  honoured; config, weights and tokenizer files only). A hub id neither cached nor
  downloadable is one FileNotFoundError saying how to fetch it."""
  text = str(ref)
  if fileio.is_remote(text) or fileio.exists(text) or not HUB_ID.match(text):
    return text
  import huggingface_hub
  try:
    return huggingface_hub.snapshot_download(text, allow_patterns=list(HUB_FILES))
  except Exception as e:  # noqa: BLE001  (offline, no network, no such repo: one message)
    raise FileNotFoundError(
        f"{text}: no such directory, and the hub's copy is not in the cache "
        f"({type(e).__name__}); fetch it with `hf download {text} --local-dir DIR` and "
        "pass DIR, or allow downloads (HF_HUB_OFFLINE unset, network)") from None


def _load_file(path) -> dict[str, np.ndarray]:
  path = fileio.local_copy(path)  # a bucket's file: this host's cached copy (memory-mapped)
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
    if fileio.exists(fileio.join(directory, name)):
      return _load_file(fileio.join(directory, name))
    index = fileio.join(directory, name + ".index.json")
    if fileio.exists(index):
      shards = sorted(set(fileio.read_json(index)["weight_map"].values()))
      out = {}
      for shard in shards:
        out.update(_load_file(fileio.join(directory, shard)))
      return out
  raise FileNotFoundError(f"no model.safetensors or pytorch_model.bin (or sharded index) "
                          f"in {directory}")


def save_weights(path, config: dict, sd: dict[str, np.ndarray]) -> None:
  """Writes ``sd`` as ``path/model.safetensors`` and ``config`` as ``path/config.json``
  (last: a directory with a config.json is complete)."""
  from safetensors.numpy import save
  fileio.write_atomic(fileio.join(path, "model.safetensors"), save(
      {k: np.ascontiguousarray(v) for k, v in sd.items()}, metadata={"format": "pt"}))
  fileio.write_json(fileio.join(path, "config.json"), config)


def atomic_dir(out_dir):
  """A scratch directory that becomes ``out_dir`` when the block ends (``config.json``
  uploaded last on a bucket); a failure leaves nothing half-written."""
  return fileio.staged_dir(out_dir, marker="config.json")


def copy_tokenizer(source: str | None, out_dir: str) -> None:
  """The tokenizer's files (a tokenizer.json, or those of a checkpoint directory)."""
  if not source:
    return
  if not fileio.exists(source):
    log.warning("the run's tokenizer %s is gone: the export has no tokenizer files", source)
    return
  if fileio.isfile(source):
    fileio.copy_file(source, fileio.join(out_dir, "tokenizer.json"))
    return
  for name in TOKENIZER_FILES:
    if fileio.isfile(fileio.join(source, name)):
      fileio.copy_file(fileio.join(source, name), fileio.join(out_dir, name))


def remember_tokenizer(model, source: str | None) -> None:
  """Records ``source`` (a tokenizer.json, or a directory with tokenizer files) on
  ``model``: the HF and native directories later written from it carry those files."""
  if source and not fileio.exists(source):
    log.warning("the tokenizer %s is gone: directories written from this model will have "
                "no tokenizer files", source)
  elif source and (fileio.isfile(source) or any(
      fileio.isfile(fileio.join(source, n)) for n in TOKENIZER_FILES)):
    model.tokenizer_source = str(fileio.path(source))


def tokenizer_of(model) -> str | None:
  """The tokenizer :func:`remember_tokenizer` recorded on ``model`` (None if none)."""
  return getattr(model, "tokenizer_source", None)


def write_hf_dir(dst: str, config: dict, sd: dict[str, np.ndarray],
                 tokenizer_src: str | None) -> None:
  """:func:`save_weights` and the tokenizer's files into ``dst``, atomically."""
  with atomic_dir(dst) as tmp:
    save_weights(tmp, config, sd)
    copy_tokenizer(tokenizer_src, tmp)
