"""The model families the training library builds, looked up by a task's ``family``
or by a model config's type: the Longformer encoder models (``model.py``), the
Longformer-Encoder-Decoder (``led/model.py``) and the Vision Longformer (``vision.py``).

A family says how to build a config and a model, how many input tokens its
positions take, and how HF checkpoints come in and go out; ``train.py``,
``workdir.py`` and the conversion CLI go through it and name no family.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

from longformer_jax import longformer_convert, model, vision
from longformer_jax.led import convert as led_convert
from longformer_jax.led import model as led
from longformer_jax.config import LongformerConfig
from longformer_jax.led.config import LEDConfig


@dataclasses.dataclass(frozen=True)
class Family:
  """* ``create_model(cfg, head, seed, partitioning)``: a random-init model.
  * ``hf_param_values(abstract_model, state_dict)``: {path: host array}.
  * ``to_hf(model, directory)``: config.json + weights that transformers loads.
  * ``max_input_tokens(cfg)``: the longest input its positions take (None: no bound).
  * ``layers_field``: the config field counting the layers ``attention_window`` covers.
  * ``positions_field``: the config field that bounds the input length.
  """

  name: str
  config_cls: type
  create_model: Callable[..., Any]
  hf_param_values: Callable[..., dict]
  to_hf: Callable[..., None]
  max_input_tokens: Callable[[Any], int | None]
  layers_field: str
  positions_field: str


def _longformer() -> Family:
  return Family(
      "longformer", LongformerConfig, model.create_model, longformer_convert.hf_param_values,
      longformer_convert.to_hf,
      lambda cfg: None if cfg.relative_positions else (
          cfg.max_position_embeddings - cfg.pad_token_id - 1),
      "num_hidden_layers", "max_position_embeddings")


def _led() -> Family:
  return Family("led", LEDConfig, led.create_model, led_convert.hf_param_values,
                led_convert.to_hf, lambda cfg: cfg.max_encoder_position_embeddings,
                "encoder_layers", "max_encoder_position_embeddings")


def _no_hf(*args, **kwargs):
  del args, kwargs
  raise ValueError("the vision family (Vision Longformer image classifiers) has no HF "
                   "checkpoints: nothing to load from or export to HF")


def _vision() -> Family:
  return Family("vision", vision.VisionConfig, vision.create_model, _no_hf, _no_hf,
                lambda cfg: None, "depths", "image_size")


_FAMILIES = {"longformer": _longformer, "led": _led, "vision": _vision}


def get(name: str) -> Family:
  if name not in _FAMILIES:
    raise ValueError(f"model family {name!r} is not one of {sorted(_FAMILIES)}")
  return _FAMILIES[name]()


def of_config(cfg) -> Family:
  """The family whose config class ``cfg`` is."""
  for make in _FAMILIES.values():
    family = make()
    if type(cfg) is family.config_cls:
      return family
  raise TypeError(f"{type(cfg).__name__} is not the config of a model family")
