"""The Longformer-Encoder-Decoder's configuration: the fields of HF's ``LEDConfig``
(BART-shaped; learned positions to 16K in the encoder) plus how to run it.

The encoder's layers are this package's Longformer layers: :meth:`LEDConfig.encoder`
is the :class:`LongformerConfig` they are built from.
"""

from __future__ import annotations

import dataclasses
import json
import os

from longformer_jax import fileio
from longformer_jax.config import LongformerConfig, RunFields



@dataclasses.dataclass(frozen=True)
class LEDConfig(RunFields):  # the run fields: config.RunFields
  vocab_size: int = 50265
  d_model: int = 1024
  encoder_layers: int = 12
  decoder_layers: int = 12
  encoder_attention_heads: int = 16
  decoder_attention_heads: int = 16
  encoder_ffn_dim: int = 4096
  decoder_ffn_dim: int = 4096
  max_encoder_position_embeddings: int = 16384
  max_decoder_position_embeddings: int = 1024
  attention_window: tuple[int, ...] = (512,) * 12
  activation_function: str = "gelu"
  dropout: float = 0.1
  attention_dropout: float = 0.0
  activation_dropout: float = 0.0
  encoder_layerdrop: float = 0.0
  decoder_layerdrop: float = 0.0
  init_std: float = 0.02
  pad_token_id: int = 1
  bos_token_id: int = 0
  eos_token_id: int = 2
  decoder_start_token_id: int = 2
  extra_json: str = "{}"  # HF passthrough keys (generation settings...), as JSON

  def __post_init__(self):
    window = self.attention_window
    window = ((window,) * self.encoder_layers if isinstance(window, int)
              else tuple(int(w) for w in window))
    object.__setattr__(self, "attention_window", window)
    for name in ("activation_dropout", "encoder_layerdrop", "decoder_layerdrop"):
      if getattr(self, name):
        raise NotImplementedError(f"{name}={getattr(self, name)} is not supported (0 only)")
    if self.d_model % self.decoder_attention_heads:
      raise ValueError(f"d_model={self.d_model} is not a multiple of "
                       f"decoder_attention_heads={self.decoder_attention_heads}")
    self.encoder()  # checks the encoder's fields (window, heads, activation, run fields)

  def encoder(self) -> LongformerConfig:
    """The encoder's layers as a Longformer's (post-LN, local + global attention)."""
    return LongformerConfig(
        vocab_size=self.vocab_size, hidden_size=self.d_model,
        num_hidden_layers=self.encoder_layers, num_attention_heads=self.encoder_attention_heads,
        intermediate_size=self.encoder_ffn_dim, hidden_act=self.activation_function,
        hidden_dropout_prob=self.dropout, attention_probs_dropout_prob=self.attention_dropout,
        max_position_embeddings=self.max_encoder_position_embeddings,
        initializer_range=self.init_std, pad_token_id=self.pad_token_id,
        attention_window=self.attention_window, **self.shared_run_values())

  @classmethod
  def tunable_fields(cls) -> tuple[str, ...]:
    """What a run may set on top of a checkpoint: the run fields and the dropout rates."""
    return cls.run_fields() + ("dropout", "attention_dropout")

  def replace(self, **changes) -> "LEDConfig":
    return dataclasses.replace(self, **changes)

  @classmethod
  def from_hf_dict(cls, d: dict, **overrides) -> "LEDConfig":
    if d.get("model_type") != "led":
      raise ValueError(f"config.json: model_type={d.get('model_type')!r}, expected 'led'")
    names = {f.name for f in dataclasses.fields(cls)} - {"extra_json", "dtype"}
    kwargs = {k: v for k, v in d.items() if k in names and v is not None}
    extra = {k: v for k, v in d.items() if k not in names and k not in (
        "model_type", "architectures", "transformers_version", "dtype", "torch_dtype")}
    kwargs.update(overrides)
    return cls(**kwargs, extra_json=json.dumps(extra, sort_keys=True, default=str))

  @classmethod
  def from_json(cls, path: str | os.PathLike, **overrides) -> "LEDConfig":
    path = fileio.path(path)
    if path.is_dir():
      path = path / "config.json"
    return cls.from_hf_dict(fileio.read_json(path), **overrides)

  def to_hf_dict(self, architectures=("LEDForConditionalGeneration",)) -> dict:
    d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
         if f.name != "extra_json" and not f.metadata.get("run")}
    d["attention_window"] = list(self.attention_window)
    d.update(json.loads(self.extra_json))
    d.update(model_type="led", architectures=list(architectures), is_encoder_decoder=True,
             num_hidden_layers=self.encoder_layers)
    return d
