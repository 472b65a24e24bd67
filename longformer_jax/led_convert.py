"""HF LED checkpoints in and out: ``from_hf`` / ``to_hf`` for ``led.py``'s models.

Our parameter paths follow HF's names except inside the encoder's layers, which are
this package's Longformer layers (``layers.Encoder``): :data:`_ENCODER_LAYER` maps
them. The token embeddings are stored once (``shared``); HF's tied copies
(``encoder.embed_tokens``, ``decoder.embed_tokens``, ``lm_head``) are checked
against it when present.
"""

from __future__ import annotations

import json
import logging
import os
import re

import jax.numpy as jnp
import numpy as np
from flax import nnx

from longformer_jax import convert
from longformer_jax import led as led_lib
from longformer_jax.led_config import LEDConfig

log = logging.getLogger(__name__)

_ENCODER_LAYER = [(re.compile(p), r) for p, r in (
    (r"encoder\.body\.layer\.(\d+)\.attention\.self_attn\.",
     r"encoder.layers.\1.self_attn.longformer_self_attn."),
    (r"encoder\.body\.layer\.(\d+)\.attention\.output\.dense\.", r"encoder.layers.\1.self_attn.output."),
    (r"encoder\.body\.layer\.(\d+)\.attention\.output\.LayerNorm\.",
     r"encoder.layers.\1.self_attn_layer_norm."),
    (r"encoder\.body\.layer\.(\d+)\.intermediate\.dense\.", r"encoder.layers.\1.fc1."),
    (r"encoder\.body\.layer\.(\d+)\.output\.dense\.", r"encoder.layers.\1.fc2."),
    (r"encoder\.body\.layer\.(\d+)\.output\.LayerNorm\.", r"encoder.layers.\1.final_layer_norm."),
)]
_LEAF = {"kernel": "weight", "embedding": "weight", "scale": "weight", "bias": "bias"}
_TIED = re.compile(r"^(led\.)?(encoder|decoder)\.embed_tokens\.weight$|^lm_head\.weight$")


def _hf_key(path: tuple) -> str:
  if path[-1] == "final_logits_bias" or path == ("final_logits_bias",):
    return "final_logits_bias"
  name = ".".join(str(p) for p in path[:-1]) + "." + _LEAF[str(path[-1])]
  for pattern, repl in _ENCODER_LAYER:
    name = pattern.sub(repl, name)
  return name


def _entries(model):
  """(HF key, path, variable, layer index or None) of every parameter and buffer;
  a scanned encoder's stacked arrays stand for one key per layer."""
  state = nnx.state(model, nnx.Any(nnx.Param, led_lib.Buffer))
  for path, var in nnx.to_flat_state(state):
    if path[-1] == "final_logits_bias":
      yield "final_logits_bias", path, var, None
    elif "layers" in path and "body" in path:
      k = path.index("layers")
      for i in range(var.shape[0]):
        yield _hf_key(path[:k] + ("layer", i) + path[k + 1:]), path, var, i
    else:
      yield _hf_key(path), path, var, None


def hf_state_dict(model) -> dict[str, np.ndarray]:
  out = {}
  for key, path, var, i in _entries(model):
    value = np.asarray(var[...], np.float32)
    value = value if i is None else value[i]
    out[key] = np.ascontiguousarray(value.T) if path[-1] == "kernel" else value
  return out


def _align(sd: dict, model) -> dict:
  """Keys with or without ``led.`` as ``model`` names them; tied copies checked, dropped."""
  prefixed = isinstance(model, led_lib.LEDForConditionalGeneration)
  out = {}
  for k, v in sd.items():
    k = k if k == "final_logits_bias" or k.startswith("lm_head") else (
        ("led." + k if not k.startswith("led.") else k) if prefixed else k.removeprefix("led."))
    out[k] = v
  shared = out.get("led.shared.weight" if prefixed else "shared.weight")
  for k in [k for k in out if _TIED.match(k)]:
    if shared is not None and not np.array_equal(out[k], shared):
      raise ValueError(f"checkpoint key {k} differs from the shared embeddings: untied LED "
                       "embeddings are not supported")
    del out[k]
  return out


def load_hf_weights(model, sd: dict[str, np.ndarray]) -> None:
  expected = {key: (path, var, i) for key, path, var, i in _entries(model)}
  sd = _align(sd, model)
  unknown = sorted(set(sd) - set(expected))
  if unknown:
    raise ValueError(f"checkpoint has {len(unknown)} unknown keys for an LED model: "
                     f"{unknown[:8]}")
  missing = sorted(k for k in expected if k not in sd and k != "final_logits_bias")
  if missing:
    raise ValueError(f"checkpoint lacks {len(missing)} LED weights: {missing[:8]}")
  values: dict[tuple, np.ndarray] = {}
  for key, (path, var, i) in expected.items():
    if key not in sd:
      continue  # final_logits_bias: zeros, as HF initialises it
    value = np.asarray(sd[key], np.float32)
    value = value.T if path[-1] == "kernel" else value
    shape = var.shape if i is None else var.shape[1:]
    if value.shape != shape:
      raise ValueError(f"checkpoint key {key} has shape {sd[key].shape}; the model expects "
                       f"{shape[::-1] if path[-1] == 'kernel' else shape}")
    if i is None:
      values[path] = value
    else:
      values.setdefault(path, np.zeros(var.shape, np.float32))[i] = value
  flat = dict(nnx.to_flat_state(nnx.state(model, nnx.Any(nnx.Param, led_lib.Buffer))))
  nnx.update(model, nnx.from_flat_state(
      [(p, flat[p].replace(jnp.asarray(v, flat[p].dtype))) for p, v in values.items()]))


def task_of_architectures(d: dict) -> str:
  archs = d.get("architectures") or ["LEDForConditionalGeneration"]
  return "base" if archs[0] == "LEDModel" else "conditional_generation"


def from_hf(path: str | os.PathLike, task: str | None = None, **config_overrides):
  """An HF LED checkpoint directory as our model (eval mode)."""
  path = os.fspath(path)
  with open(os.path.join(path, "config.json")) as f:
    d = json.load(f)
  cfg = LEDConfig.from_hf_dict(d, **config_overrides)
  model = led_lib.create_model(cfg, task or task_of_architectures(d))
  load_hf_weights(model, convert.load_state_dict(path))
  if os.path.exists(os.path.join(path, "generation_config.json")):
    from longformer_jax import generation
    model.generation_config = generation.GenerationConfig.of_checkpoint(path)
  model.eval()
  return model


def to_hf(model, path: str | os.PathLike) -> None:
  """``config.json`` + ``model.safetensors`` that transformers' LED loads."""
  from safetensors.numpy import save_file
  path = os.fspath(path)
  os.makedirs(path, exist_ok=True)
  arch = next(name for cls, name in led_lib.TASKS.values() if type(model) is cls)
  with open(os.path.join(path, "config.json"), "w") as f:
    json.dump(model.config.to_hf_dict([arch]), f, indent=2, sort_keys=True)
  save_file(hf_state_dict(model), os.path.join(path, "model.safetensors"),
            metadata={"format": "pt"})
