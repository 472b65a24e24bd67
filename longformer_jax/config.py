"""Typed model configuration; reads and writes HF ``config.json`` files."""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Sequence

import jax.numpy as jnp

from longformer_jax import attention as attn
from longformer_jax import fileio

# HF config keys that have no meaning for the model's numerics but are kept on
# a round trip so that transformers sees the same config.
_PASSTHROUGH_KEYS = ("id2label", "label2id", "bos_token_id",
                     "eos_token_id", "tokenizer_class", "classifier_dropout")

REMAT_POLICIES = ("none", "full", "dots", "matmuls")
PROBLEM_TYPES = (None, "regression", "single_label_classification",
                 "multi_label_classification")
POSITION_EMBEDDING_TYPES = ("absolute", "relative_sinusoidal")
ACTIVATIONS = ("gelu", "gelu_new", "gelu_pytorch_tanh", "gelu_fast", "relu", "silu", "tanh")


_RUN = {"run": True}
# Architecture fields that fine-tuning may change on a loaded checkpoint: regularisation
# and the size and loss of a new head.
_TUNABLE = ("hidden_dropout_prob", "attention_probs_dropout_prob", "num_labels",
            "problem_type")


@dataclasses.dataclass(frozen=True)
class RunFields:
  """How to compute, not what the model is: the run fields every model family shares
  (declared here once). config.json does not hold them, and a run sets them on top of a
  loaded checkpoint's architecture (``run_fields()``, ``tunable_fields()``)."""

  block_size: int = dataclasses.field(default=attn.DEFAULT_BLOCK_SIZE, metadata=_RUN)
  # How the banded attention runs: "scan" (a loop over query blocks), "blocked" (every
  # block at once, batched products), "pallas" (fused kernels: Triton on GPU, Mosaic on
  # TPU, interpret mode on CPU), or "auto" (scan on CPU, pallas on TPU, blocked on GPU
  # and for what the kernels lack). Same values either way (attention.resolve_impl).
  attention_impl: str = dataclasses.field(default="auto", metadata=_RUN)
  # static G; None: from concrete inputs
  max_global_tokens: int | None = dataclasses.field(default=None, metadata=_RUN)
  # compute dtype; params are always float32
  dtype: str = dataclasses.field(default="float32", metadata=_RUN)
  # dtype of the local attention's q, k, v (scores and softmax are fp32 anyway); None:
  # the compute dtype. "float32" under bf16 compute keeps the products of the window
  # attention exact to fp32, as the paper's character LM did.
  attention_dtype: str | None = dataclasses.field(default=None, metadata=_RUN)
  # Rematerialise each layer in the backward pass: none | full | dots | matmuls. The
  # default keeps the matrix products' outputs: about half the activation memory of
  # "none" at no cost in speed (experiments/benchmark.py); forward-only calls are unaffected.
  remat: str = dataclasses.field(default="matmuls", metadata=_RUN)
  # One scanned layer body instead of a Python loop (needs the same window and dilation on
  # every layer); None: scan exactly when the layers allow it.
  scan_layers: bool | None = dataclasses.field(default=None, metadata=_RUN)

  @classmethod
  def run_fields(cls) -> tuple[str, ...]:
    """Fields that say how to run the model (dtype, remat, scan, block size, attention
    backend, global bound): not in config.json; set by a run on top of a checkpoint's
    architecture."""
    return tuple(f.name for f in dataclasses.fields(cls) if f.metadata.get("run"))

  def shared_run_values(self) -> dict:
    """The values of the fields declared here (what another family's part inherits)."""
    return {f.name: getattr(self, f.name) for f in dataclasses.fields(RunFields)}


@dataclasses.dataclass(frozen=True)
class LongformerConfig(RunFields):
  """Architecture of a Longformer (the fields of HF's ``LongformerConfig``) plus ours.

  ``attention_window`` and ``attention_dilation`` are per layer (a single value
  is broadcast); dilation may also be per head within a layer.
  """

  vocab_size: int = 50265
  hidden_size: int = 768
  num_hidden_layers: int = 12
  num_attention_heads: int = 12
  intermediate_size: int = 3072
  hidden_act: str = "gelu"
  hidden_dropout_prob: float = 0.1
  attention_probs_dropout_prob: float = 0.1
  max_position_embeddings: int = 4098
  type_vocab_size: int = 1
  layer_norm_eps: float = 1e-5
  initializer_range: float = 0.02
  pad_token_id: int = 1
  sep_token_id: int = 2
  num_labels: int = 2
  attention_window: tuple[int, ...] = (512,) * 12
  tie_word_embeddings: bool = True  # masked-LM decoder = word embeddings (else its own)
  problem_type: str | None = None  # sequence classification loss; None: from labels
  # Ours (not in HF configs; stored in config.json under the same names).
  attention_dilation: tuple[tuple[int, ...], ...] | None = None  # None: 1 everywhere
  causal: bool = False
  # "absolute": the learned position table of the reference checkpoints;
  # "relative_sinusoidal": Transformer-XL's relative positions inside the banded attention
  # (the paper's character LM; no position table, no global tokens).
  position_embedding_type: str = "absolute"
  # LayerNorm before each block (and once after the last layer) instead of after each
  # residual sum: the paper's character LM. Pre-LN models have no embedding LayerNorm,
  # and their LM head decodes the final LayerNorm's output directly.
  pre_layer_norm: bool = False
  # A 2-D patch grid (``attention/grid2d.py``): local rows attend to a neighbourhood of
  # the grid instead of a window (``attention_window`` is not read then). Built by the
  # vision models (``vision.py``) for each stage; never in config.json.
  attention_grid: attn.Grid2D | None = dataclasses.field(default=None, metadata=_RUN)
  extra_json: str = "{}"  # HF passthrough keys (labels...), as JSON: the config stays hashable

  def __post_init__(self):
    layers = self.num_hidden_layers
    window = self.attention_window
    window = (window,) * layers if isinstance(window, int) else tuple(int(w) for w in window)
    if len(window) != layers:
      raise ValueError(f"attention_window has {len(window)} entries for "
                       f"num_hidden_layers={layers}")
    for i, w in enumerate(window):
      try:
        attn.window_radii(w, self.causal)
      except ValueError as e:
        raise ValueError(f"attention_window[{i}]: {e}") from None
    object.__setattr__(self, "attention_window", window)
    dil = self.attention_dilation
    if dil is not None:
      dil = (dil,) * layers if isinstance(dil, int) else tuple(dil)
      if len(dil) != layers:
        raise ValueError(f"attention_dilation has {len(dil)} entries for "
                         f"num_hidden_layers={layers}")
      try:
        dil = tuple(attn.normalize_dilation(d, self.num_attention_heads) for d in dil)
      except ValueError as e:
        raise ValueError(f"attention_dilation: {e}") from None
      object.__setattr__(self, "attention_dilation", dil)
    uniform = len(set(window)) <= 1 and len(set(self.attention_dilation or [()])) <= 1
    if self.scan_layers is None:
      object.__setattr__(self, "scan_layers", uniform)
    elif self.scan_layers and not uniform:
      raise ValueError("scan_layers needs the same attention_window and attention_dilation on "
                       f"every layer, got {window} / {self.attention_dilation}")
    if self.position_embedding_type not in POSITION_EMBEDDING_TYPES:
      raise ValueError(f"position_embedding_type={self.position_embedding_type!r} is not one "
                       f"of {POSITION_EMBEDDING_TYPES}")
    if self.relative_positions:
      if self.max_global_tokens not in (None, 0):
        raise ValueError(f"max_global_tokens={self.max_global_tokens}: relative positions "
                         "(position_embedding_type='relative_sinusoidal') have no global "
                         "tokens; set it to 0")
      object.__setattr__(self, "max_global_tokens", 0)
    if self.problem_type not in PROBLEM_TYPES:
      raise ValueError(f"problem_type={self.problem_type!r} is not one of {PROBLEM_TYPES}")
    if self.hidden_size % self.num_attention_heads:
      raise ValueError(f"hidden_size={self.hidden_size} is not a multiple of "
                       f"num_attention_heads={self.num_attention_heads}")
    if self.hidden_act not in ACTIVATIONS:
      raise ValueError(f"hidden_act={self.hidden_act!r} is not one of {ACTIVATIONS}")
    if self.remat not in REMAT_POLICIES:
      raise ValueError(f"remat={self.remat!r} is not one of {REMAT_POLICIES}")
    attn.check_impl(self.attention_impl)
    if self.attention_grid is not None and (self.causal or self.relative_positions):
      raise ValueError("attention_grid: a 2-D grid has no causal or relative-position form")
    if self.block_size < 1:
      raise ValueError(f"block_size must be positive, got {self.block_size}")
    jnp.dtype(self.dtype)  # raises on an unknown dtype name
    if self.attention_dtype is not None:
      jnp.dtype(self.attention_dtype)

  @property
  def relative_positions(self) -> bool:
    return self.position_embedding_type == "relative_sinusoidal"

  @property
  def head_dim(self) -> int:
    return self.hidden_size // self.num_attention_heads

  @property
  def compute_dtype(self):
    return jnp.dtype(self.dtype)

  def layer_dilation(self, layer: int) -> tuple[int, ...]:
    if self.attention_dilation is None:
      return (1,) * self.num_attention_heads
    return self.attention_dilation[layer]

  def replace(self, **changes) -> "LongformerConfig":
    return dataclasses.replace(self, **changes)

  @classmethod
  def tunable_fields(cls) -> tuple[str, ...]:
    """What a run may set on top of a checkpoint: the run fields and ``_TUNABLE``."""
    return cls.run_fields() + _TUNABLE

  # ---- HF config.json ------------------------------------------------------
  @classmethod
  def from_hf_dict(cls, d: dict, **overrides) -> "LongformerConfig":
    """Builds a config from a parsed HF ``config.json`` (unknown keys are ignored).

    Its ``dtype`` (``torch_dtype`` in older files) is the dtype the weights were
    saved in, not a compute dtype: it is ignored (pass ``dtype=`` to compute in
    another precision).
    """
    model_type = d.get("model_type", "longformer")
    if model_type != "longformer":
      raise ValueError(f"config.json: model_type={model_type!r}, expected 'longformer' "
                       "(convert RoBERTa checkpoints with longformer_jax.convert)")
    names = {f.name for f in dataclasses.fields(cls)} - {"extra_json", "dtype"}
    kwargs = {k: v for k, v in d.items() if k in names}
    if "id2label" in d and "num_labels" not in d:
      kwargs["num_labels"] = len(d["id2label"])
    if isinstance(kwargs.get("attention_dilation"), list):
      kwargs["attention_dilation"] = tuple(
          tuple(x) if isinstance(x, list) else x for x in kwargs["attention_dilation"])
    extra = {k: d[k] for k in _PASSTHROUGH_KEYS if d.get(k) is not None}
    kwargs.update(overrides)
    return cls(**kwargs, extra_json=json.dumps(extra, sort_keys=True))

  @classmethod
  def from_json(cls, path: str | os.PathLike, **overrides) -> "LongformerConfig":
    """Reads ``config.json`` (a file or a directory holding one)."""
    path = fileio.path(path)
    if path.is_dir() and not (path / "config.json").exists():
      raise FileNotFoundError(
          f"{path} holds no config.json: it is not a checkpoint directory (HF or native) "
          "nor a training workdir (experiment.json, model.json, checkpoints/)")
    if path.is_dir():
      path = path / "config.json"
    if not path.exists():
      raise FileNotFoundError(f"no config.json at {path}")
    return cls.from_hf_dict(fileio.read_json(path), **overrides)

  def to_hf_dict(self, architectures: Sequence[str] = ("LongformerModel",)) -> dict:
    """The HF ``config.json`` contents (plus our own keys, which HF keeps as attributes)."""
    d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
         if f.name != "extra_json" and not f.metadata.get("run")}
    d["attention_window"] = list(self.attention_window)
    if self.attention_dilation is None:
      del d["attention_dilation"]
    else:
      d["attention_dilation"] = [list(x) for x in self.attention_dilation]
    for name in ("causal", "pre_layer_norm"):
      if not d[name]:
        del d[name]
    if not self.relative_positions:
      del d["position_embedding_type"]
    if self.problem_type is None:
      del d["problem_type"]
    extra = json.loads(self.extra_json)
    if len(extra.get("id2label", {})) not in (0, self.num_labels):
      extra.pop("id2label"), extra.pop("label2id", None)  # stale after a num_labels change
    d.update(extra)
    d.update(model_type="longformer", architectures=list(architectures))
    return d
