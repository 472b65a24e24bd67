"""HF LED checkpoints in and out: ``from_hf`` / ``to_hf`` for ``led/model.py``'s models, and
``bart_to_led`` (BART -> LED, paper section 7).

Our parameter paths follow HF's names except inside the encoder's layers, which are
this package's Longformer layers (``layers.Encoder``): :data:`_ENCODER_LAYER` maps
them. The token embeddings are stored once (``shared``); HF's tied copies
(``encoder.embed_tokens``, ``decoder.embed_tokens``, ``lm_head``) are checked
against it when present.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re

import jax.numpy as jnp
import numpy as np
from flax import nnx

from longformer_jax import fileio, hf_io, hf_keys
from longformer_jax.led import generation
from longformer_jax.led import model as led_lib
from longformer_jax.led.config import LEDConfig

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
_TIED = re.compile(r"^(led\.)?(encoder|decoder)\.embed_tokens\.weight$|^lm_head\.weight$")


def _hf_key(path: tuple) -> str:
  if path[-1] == "final_logits_bias" or path == ("final_logits_bias",):
    return "final_logits_bias"
  name = ".".join(str(p) for p in path[:-1]) + "." + hf_keys.LEAF_TO_HF[str(path[-1])]
  for pattern, repl in _ENCODER_LAYER:
    name = pattern.sub(repl, name)
  return name


# How LED parameters and buffers are named in HF checkpoints (``hf_keys.py`` does the
# rest); ``final_logits_bias`` may be absent (zeros, as HF initialises it).
KEYMAP = hf_keys.KeyMap(
    "LED", key_of=_hf_key, stacked=lambda path: "layers" in path and "body" in path,
    variables=nnx.Any(nnx.Param, led_lib.Buffer),
    optional=lambda key: key == "final_logits_bias", warn_optional=False)


def hf_state_dict(model) -> dict[str, np.ndarray]:
  return hf_keys.state_dict(KEYMAP, model)


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


def hf_param_values(model, sd: dict[str, np.ndarray]) -> dict[tuple, np.ndarray]:
  """The parameters and buffers an HF LED state dict gives ``model`` (which may be
  abstract), as host arrays by path. Raises on unknown or missing keys and shapes."""
  return hf_keys.param_values(KEYMAP, model, _align(sd, model))


def load_hf_weights(model, sd: dict[str, np.ndarray]) -> None:
  """Copies an HF LED state dict into ``model`` (see :func:`hf_param_values`)."""
  hf_keys.load(KEYMAP, model, hf_param_values(model, sd))


def task_of_architectures(d: dict) -> str:
  archs = d.get("architectures") or ["LEDForConditionalGeneration"]
  return "base" if archs[0] == "LEDModel" else "conditional_generation"


def from_hf(path: str | os.PathLike, task: str | None = None, **config_overrides):
  """An HF LED checkpoint directory (or hub id) as our model (eval mode)."""
  path = str(fileio.path(hf_io.checkpoint_path(path)))
  d = fileio.read_json(fileio.join(path, "config.json"))
  cfg = LEDConfig.from_hf_dict(d, **config_overrides)
  model = led_lib.create_model(cfg, task or task_of_architectures(d))
  load_hf_weights(model, hf_io.load_state_dict(path))
  if fileio.exists(fileio.join(path, "generation_config.json")):
    model.generation_config = generation.GenerationConfig.of_checkpoint(path)
  hf_io.remember_tokenizer(model, path)
  model.eval()
  return model


def to_hf(model, path: str | os.PathLike) -> None:
  """``config.json`` + ``model.safetensors`` that transformers' LED loads."""
  arch = next(name for cls, name in led_lib.TASKS.values() if type(model) is cls)
  hf_io.save_weights(path, model.config.to_hf_dict([arch]), hf_state_dict(model))
  hf_io.copy_tokenizer(hf_io.tokenizer_of(model), path)
  if getattr(model, "generation_config", None) is not None:  # HF's generation_config.json
    gen = generation.default_config(model)
    fileio.write_json(fileio.join(path, "generation_config.json"),
                      {k: v for k, v in dataclasses.asdict(gen).items() if v is not None})


# ---- BART -> LED (paper section 7) ------------------------------------------------
_BART_OFFSET = 2  # BART's learned positions start at row 2
_BART_KEEP = ("vocab_size", "d_model", "encoder_layers", "decoder_layers",
              "encoder_attention_heads", "decoder_attention_heads", "encoder_ffn_dim",
              "decoder_ffn_dim", "activation_function", "dropout", "attention_dropout",
              "init_std", "pad_token_id", "bos_token_id", "eos_token_id",
              "decoder_start_token_id")


def _bart_key_to_led(key: str) -> list[str]:
  """The LED keys a BART key's tensor goes to (encoder self-attention: the local and
  the global projections)."""
  key = key.removeprefix("model.")
  m = re.match(r"encoder\.layers\.(\d+)\.self_attn\.(q|k|v|out)_proj\.(weight|bias)$", key)
  if not m:
    return [key]
  layer, proj, leaf = m.groups()
  base = f"encoder.layers.{layer}.self_attn."
  if proj == "out":
    return [base + f"output.{leaf}"]
  name = {"q": "query", "k": "key", "v": "value"}[proj]
  return [base + f"longformer_self_attn.{name}.{leaf}",
          base + f"longformer_self_attn.{name}_global.{leaf}"]


def bart_to_led(src: str | os.PathLike, dst: str | os.PathLike, *,
                max_encoder_positions: int = 16384, attention_window: int = 1024) -> None:
  """A BART checkpoint as an LED one, the paper's way: the encoder's position table
  copied over and over up to ``max_encoder_positions``, the self-attention weights
  copied into the Longformer attention, the global Q/K/V from the local ones; the
  decoder unchanged."""
  src, dst = str(fileio.path(src)), str(fileio.path(dst))
  d = fileio.read_json(fileio.join(src, "config.json"))
  if d.get("model_type") != "bart":
    raise ValueError(f"{src}: model_type={d.get('model_type')!r}, expected 'bart'")
  for name in ("scale_embedding", "add_final_layer_norm", "normalize_before"):
    if d.get(name):
      raise ValueError(f"{src}: {name}=True has no LED counterpart")
  positions = d.get("max_position_embeddings", 1024)
  cfg = LEDConfig(**{k: d[k] for k in _BART_KEEP if d.get(k) is not None},
                  max_encoder_position_embeddings=max_encoder_positions,
                  max_decoder_position_embeddings=positions,
                  attention_window=(attention_window,) * d["encoder_layers"])
  sd = {}
  for key, value in hf_io.load_state_dict(src).items():
    for led_key in _bart_key_to_led(key):
      sd[led_key] = value
  for side, rows in (("encoder", max_encoder_positions), ("decoder", positions)):
    learned = sd[f"{side}.embed_positions.weight"][_BART_OFFSET:]
    reps = -(-rows // len(learned))
    sd[f"{side}.embed_positions.weight"] = np.concatenate([learned] * reps)[:rows]
  model = led_lib.create_model(cfg, "conditional_generation")
  load_hf_weights(model, sd)
  to_hf(model, dst)
