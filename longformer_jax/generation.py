"""Generation for ``led.LEDForConditionalGeneration``, jitted with static shapes, with
HF's argument names, defaults and logits processors.

The encoder runs once; the decoder runs one token at a time on a static key/value
cache (``led.DecoderCache``) inside a ``lax.while_loop`` that stops when every
sequence has produced ``eos_token_id`` or ``max_length`` is reached. Outputs are
(B, max_length) token ids starting with ``decoder_start_token_id``, padded with
``pad_token_id`` after each sequence's end (HF returns them cut to the longest).

Processors, as HF applies them: ``no_repeat_ngram_size``, ``min_length`` (no EOS
before it), ``forced_bos_token_id`` (first generated token), ``forced_eos_token_id``
(the last position); for sampling then ``temperature``, ``top_k``, ``top_p``.
"""

from __future__ import annotations

import dataclasses
import json
import os

import jax
import jax.numpy as jnp
from flax import nnx

_NEG = -jnp.inf


@dataclasses.dataclass(frozen=True)
class GenerationConfig:
  """HF's ``GenerationConfig`` fields this generator reads (HF's defaults)."""

  max_length: int = 20
  min_length: int = 0
  num_beams: int = 1
  do_sample: bool = False
  temperature: float = 1.0
  top_k: int = 50
  top_p: float = 1.0
  no_repeat_ngram_size: int = 0
  length_penalty: float = 1.0
  early_stopping: bool | str = False
  forced_bos_token_id: int | None = None
  forced_eos_token_id: int | None = None
  pad_token_id: int | None = None
  eos_token_id: int | None = None
  decoder_start_token_id: int | None = None

  @classmethod
  def from_dict(cls, d: dict) -> "GenerationConfig":
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in d.items() if k in names and v is not None})

  @classmethod
  def of_checkpoint(cls, directory: str | os.PathLike) -> "GenerationConfig":
    """``generation_config.json`` of an HF checkpoint directory (else the config's)."""
    for name in ("generation_config.json", "config.json"):
      path = os.path.join(os.fspath(directory), name)
      if os.path.exists(path):
        with open(path) as f:
          return cls.from_dict(json.load(f))
    return cls()


def default_config(model) -> GenerationConfig:
  """The model's generation settings: its checkpoint's, else its config's tokens."""
  cfg = model.config
  base = getattr(model, "generation_config", None) or GenerationConfig.from_dict(
      json.loads(cfg.extra_json))
  return dataclasses.replace(
      base, pad_token_id=cfg.pad_token_id if base.pad_token_id is None else base.pad_token_id,
      eos_token_id=cfg.eos_token_id if base.eos_token_id is None else base.eos_token_id,
      decoder_start_token_id=(cfg.decoder_start_token_id if base.decoder_start_token_id is None
                              else base.decoder_start_token_id))


def process_logits(gen: GenerationConfig, ids_BxL, cur_len, scores_BxV):
  """HF's processors for the token at position ``cur_len`` (``ids[:, :cur_len]`` given)."""
  v = scores_BxV.shape[-1]
  vocab = jnp.arange(v)
  n = gen.no_repeat_ngram_size
  if n:
    length = ids_BxL.shape[1]
    starts = jnp.arange(length - n + 1)  # every n-gram window of the buffer
    windows = ids_BxL[:, starts[:, None] + jnp.arange(n)]  # (B, W, n)
    prefix = jax.lax.dynamic_slice_in_dim(ids_BxL, cur_len - (n - 1), n - 1, axis=1)
    hit = (windows[:, :, :-1] == prefix[:, None]).all(-1) & (starts <= cur_len - n)[None]
    banned = jnp.zeros((ids_BxL.shape[0], v + 1), bool).at[
        jnp.arange(ids_BxL.shape[0])[:, None], jnp.where(hit, windows[:, :, -1], v)].set(True)
    scores_BxV = jnp.where(banned[:, :v] & (cur_len >= n), _NEG, scores_BxV)
  if gen.min_length:
    scores_BxV = jnp.where((vocab == gen.eos_token_id) & (cur_len < gen.min_length), _NEG,
                           scores_BxV)

  def force(scores, token, when):
    return jnp.where(when, jnp.where(vocab == token, 0.0, _NEG), scores)

  if gen.forced_bos_token_id is not None:
    scores_BxV = force(scores_BxV, gen.forced_bos_token_id, cur_len == 1)
  if gen.forced_eos_token_id is not None:
    scores_BxV = force(scores_BxV, gen.forced_eos_token_id, cur_len == gen.max_length - 1)
  return scores_BxV


def warp(gen: GenerationConfig, scores_BxV):
  """Sampling warpers: temperature, top-k, top-p (HF's order and ties)."""
  if gen.temperature != 1.0:
    scores_BxV = scores_BxV / gen.temperature
  if gen.top_k:
    kth = jax.lax.top_k(scores_BxV, min(gen.top_k, scores_BxV.shape[-1]))[0][:, -1:]
    scores_BxV = jnp.where(scores_BxV < kth, _NEG, scores_BxV)
  if gen.top_p < 1.0:
    order = jnp.argsort(scores_BxV, axis=-1)  # ascending
    sorted_scores = jnp.take_along_axis(scores_BxV, order, -1)
    cum = jnp.cumsum(jax.nn.softmax(sorted_scores, -1), -1)
    remove = (cum <= 1 - gen.top_p).at[:, -1].set(False)
    drop = jnp.zeros_like(remove).at[jnp.arange(remove.shape[0])[:, None], order].set(remove)
    scores_BxV = jnp.where(drop, _NEG, scores_BxV)
  return scores_BxV


def _decode(model, gen: GenerationConfig, input_ids, attention_mask, global_attention_mask,
            key, max_global_tokens):
  led = model.led
  enc, enc_ok = led.encode(input_ids, attention_mask, global_attention_mask,
                           max_global_tokens=max_global_tokens)
  b = enc.shape[0]
  ids = jnp.full((b, gen.max_length), gen.pad_token_id, jnp.int32)
  ids = ids.at[:, 0].set(gen.decoder_start_token_id)
  cache = led.decoder.init_cache(enc, enc_ok, gen.max_length)

  def body(state):
    ids, cur_len, cache, done, key = state
    last = jax.lax.dynamic_slice_in_dim(ids, cur_len - 1, 1, axis=1)
    h, cache = led.decoder.step(led.shared, last, cache)
    scores = process_logits(gen, ids, cur_len, model.logits(h)[:, 0])
    if gen.do_sample:
      key, sub = jax.random.split(key)
      token = jax.random.categorical(sub, warp(gen, scores), axis=-1)
    else:
      token = jnp.argmax(scores, axis=-1)
    token = jnp.where(done, gen.pad_token_id, token).astype(jnp.int32)
    ids = jax.lax.dynamic_update_slice_in_dim(ids, token[:, None], cur_len, axis=1)
    return ids, cur_len + 1, cache, done | (token == gen.eos_token_id), key

  def cond(state):
    _, cur_len, _, done, _ = state
    return (cur_len < gen.max_length) & ~done.all()

  state = (ids, jnp.asarray(1, jnp.int32), cache, jnp.zeros((b,), bool), key)
  return jax.lax.while_loop(cond, body, state)[0]


@nnx.jit(static_argnames=("gen", "max_global_tokens"))
def _decode_jit(model, gen, input_ids, attention_mask, global_attention_mask, key,
                max_global_tokens):
  return _decode(model, gen, input_ids, attention_mask, global_attention_mask, key,
                 max_global_tokens)


def generate(model, input_ids, attention_mask=None, global_attention_mask=None, *,
             key=None, max_global_tokens: int | None = None, **settings):
  """Token ids (B, max_length) for ``model`` (an ``LEDForConditionalGeneration``).

  ``settings`` override the model's generation config (HF names: ``max_length``,
  ``min_length``, ``num_beams``, ``do_sample``, ``temperature``, ``top_k``, ``top_p``,
  ``no_repeat_ngram_size``, ``forced_bos_token_id``, ``forced_eos_token_id``...).
  Sampling needs an explicit ``key``. ``global_attention_mask`` None puts global
  attention on the first token.
  """
  gen = dataclasses.replace(default_config(model), **settings)
  if gen.num_beams != 1:
    raise NotImplementedError(f"num_beams={gen.num_beams}: beam search is not implemented "
                              "yet; use num_beams=1")
  if gen.do_sample and key is None:
    raise ValueError("do_sample=True needs an explicit key (jax.random.key(...))")
  if gen.max_length < 2:
    raise ValueError(f"max_length={gen.max_length} leaves no token to generate")
  from longformer_jax import inputs as inputs_lib
  ids = jnp.asarray(input_ids, jnp.int32)
  mask = jnp.ones_like(ids) if attention_mask is None else jnp.asarray(attention_mask)
  gmask = (jnp.zeros_like(ids).at[:, 0].set(1) if global_attention_mask is None
           else jnp.asarray(global_attention_mask))
  if max_global_tokens is None:  # static: from the concrete masks (a power of two)
    count = inputs_lib.host_global_count(mask, gmask)
    max_global_tokens = inputs_lib.global_slots(model.config.encoder(), count, None)
  key = jax.random.key(0) if key is None else key
  return _decode_jit(model, gen, ids, mask, gmask, key, max_global_tokens)
