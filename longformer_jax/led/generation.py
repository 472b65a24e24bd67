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
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from longformer_jax import fileio
from longformer_jax import inputs as inputs_lib

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
      path = fileio.join(directory, name)
      if fileio.exists(path):
        return cls.from_dict(fileio.read_json(path))
    return cls()


def defaults(cfg, base: GenerationConfig | None = None) -> GenerationConfig:
  """``base`` (else the generation keys of ``cfg``'s config.json) with the token ids
  it leaves unset taken from the model config ``cfg``."""
  base = base or GenerationConfig.from_dict(json.loads(cfg.extra_json))
  return dataclasses.replace(
      base, pad_token_id=cfg.pad_token_id if base.pad_token_id is None else base.pad_token_id,
      eos_token_id=cfg.eos_token_id if base.eos_token_id is None else base.eos_token_id,
      decoder_start_token_id=(cfg.decoder_start_token_id if base.decoder_start_token_id is None
                              else base.decoder_start_token_id))


def default_config(model) -> GenerationConfig:
  """The model's generation settings: its checkpoint's, else its config's tokens."""
  return defaults(model.config, getattr(model, "generation_config", None))


def checked(gen: GenerationConfig) -> GenerationConfig:
  """``gen``, raising on the combinations the generator does not run."""
  if gen.num_beams > 1 and gen.do_sample:
    raise NotImplementedError("do_sample=True with num_beams > 1 (beam sampling) is not "
                              "implemented; use one of them")
  if gen.num_beams < 1:
    raise ValueError(f"num_beams={gen.num_beams} must be at least 1")
  if gen.max_length < 2:
    raise ValueError(f"max_length={gen.max_length} leaves no token to generate")
  return gen


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


_BIG = 1.0e9  # HF's stand-in for excluded beams' scores


class _Beams(NamedTuple):
  """Beam search state, (B, K, ...) per example and beam (HF's vectorised form)."""

  running: jax.Array  # (B, K, L) live sequences
  running_scores: jax.Array  # (B, K) their summed log-probabilities
  sequences: jax.Array  # (B, K, L) finished hypotheses, best first
  scores: jax.Array  # (B, K) their length-normalised scores
  finished: jax.Array  # (B, K) slot holds a finished hypothesis
  improvable: jax.Array  # (B, 1) the early-stopping heuristic still says go on
  hits: jax.Array  # (B, 2K) the last step's candidates that stopped
  cur_len: jax.Array
  cache: Any


def _gather(x_BxKx___, idx_BxJ):
  return jnp.take_along_axis(x_BxKx___, idx_BxJ.reshape(idx_BxJ.shape + (1,) * (
      x_BxKx___.ndim - 2)), axis=1)


def _beam_step(model, gen: GenerationConfig, st: _Beams) -> _Beams:
  led, (b, k, length) = model.led, st.running.shape
  keep, lp = 2 * k, gen.length_penalty
  flat = st.running.reshape(b * k, length)
  h, cache = led.decoder.step(led.shared, jax.lax.dynamic_slice_in_dim(
      flat, st.cur_len - 1, 1, axis=1), st.cache)
  logp = process_logits(gen, flat, st.cur_len,
                        jax.nn.log_softmax(model.logits(h)[:, 0], axis=-1))
  v = logp.shape[-1]
  total = (logp.reshape(b, k, v) + st.running_scores[:, :, None]).reshape(b, k * v)
  top_lp, top_idx = jax.lax.top_k(total, keep)
  source, token = top_idx // v, (top_idx % v).astype(jnp.int32)
  top_seqs = jax.lax.dynamic_update_slice_in_dim(_gather(st.running, source), token[..., None],
                                                 st.cur_len, axis=2)
  hits = (token == gen.eos_token_id) | (st.cur_len + 1 >= gen.max_length)
  # the best K candidates that go on
  live_lp = top_lp - hits * _BIG
  nxt = jax.lax.top_k(live_lp, k)[1]
  beam_of = (jnp.arange(b)[:, None] * k + _gather(source, nxt)).reshape(-1)
  cache = cache._replace(self_k=tuple(x[beam_of] for x in cache.self_k),
                         self_v=tuple(x[beam_of] for x in cache.self_v))
  # the candidates that stopped among the top K join the finished hypotheses
  just = hits & (jnp.arange(keep) < k)[None]
  norm = top_lp / (st.cur_len.astype(jnp.float32) ** lp)
  full = st.finished.all(-1, keepdims=True) & (gen.early_stopping is True)
  norm = norm - full * _BIG - (~st.improvable) * _BIG - (~just) * _BIG
  merged = jnp.concatenate([st.scores, norm], 1)
  best = jax.lax.top_k(merged, k)[1]
  sequences = _gather(jnp.concatenate([st.sequences, top_seqs], 1), best)
  scores = _gather(merged, best)
  finished = _gather(jnp.concatenate([st.finished, just], 1), best)
  running_scores = _gather(live_lp, nxt)
  cur_len = st.cur_len + 1
  # HF's early-stopping heuristic: can a live beam still beat the worst finished one?
  if gen.early_stopping == "never" and lp > 0.0:
    best_len = jnp.asarray(gen.max_length - 1, jnp.float32)
  else:
    best_len = (cur_len - 1).astype(jnp.float32)
  best_live = running_scores[:, :1] / best_len ** lp
  worst = jnp.where(finished, scores.min(1, keepdims=True), -_BIG)
  improvable = st.improvable & (best_live > worst).any(-1, keepdims=True)
  return _Beams(_gather(top_seqs, nxt), running_scores, sequences, scores, finished,
                improvable, hits, cur_len, cache)


def _beam_decode(model, gen: GenerationConfig, input_ids, attention_mask,
                 global_attention_mask, max_global_tokens):
  led, k = model.led, gen.num_beams
  enc, enc_ok = led.encode(input_ids, attention_mask, global_attention_mask,
                           max_global_tokens=max_global_tokens)
  b = enc.shape[0]
  cache = led.decoder.init_cache(jnp.repeat(enc, k, 0), jnp.repeat(enc_ok, k, 0),
                                 gen.max_length)
  running = jnp.full((b, k, gen.max_length), gen.pad_token_id, jnp.int32)
  running = running.at[:, :, 0].set(gen.decoder_start_token_id)
  st = _Beams(running, jnp.zeros((b, k)).at[:, 1:].set(-_BIG), running,
              jnp.full((b, k), -_BIG), jnp.zeros((b, k), bool), jnp.ones((b, 1), bool),
              jnp.zeros((b, 2 * k), bool), jnp.asarray(1, jnp.int32), cache)

  def cond(st):
    open_beam = ~(st.finished.all() & (gen.early_stopping is True))
    return (st.cur_len < gen.max_length) & st.improvable.any() & open_beam & ~st.hits.all()

  st = jax.lax.while_loop(cond, lambda st: _beam_step(model, gen, st), st)
  return st.sequences[:, 0]


def decode(model, gen: GenerationConfig, input_ids, attention_mask, global_attention_mask,
           key, max_global_tokens: int):
  """Token ids (B, max_length) of ``gen`` (beam search when ``num_beams`` > 1): traceable,
  for callers that jit it with more around it (evaluation)."""
  if gen.num_beams > 1:
    return _beam_decode(model, gen, input_ids, attention_mask, global_attention_mask,
                        max_global_tokens)
  return _decode(model, gen, input_ids, attention_mask, global_attention_mask, key,
                 max_global_tokens)


_decode_jit = nnx.jit(decode, static_argnames=("gen", "max_global_tokens"))


def settings(model, **overrides) -> GenerationConfig:
  """The model's generation config with HF-named ``overrides``, checked."""
  return checked(dataclasses.replace(default_config(model), **overrides))


def generate(model, input_ids, attention_mask=None, global_attention_mask=None, *,
             key=None, max_global_tokens: int | None = None, **overrides):
  """Token ids (B, max_length) for ``model`` (an ``LEDForConditionalGeneration``).

  ``overrides`` change the model's generation config (HF names: ``max_length``,
  ``min_length``, ``num_beams``, ``do_sample``, ``temperature``, ``top_k``, ``top_p``,
  ``no_repeat_ngram_size``, ``forced_bos_token_id``, ``forced_eos_token_id``...).
  Sampling needs an explicit ``key``. ``global_attention_mask`` None puts global
  attention on the first token.
  """
  gen = settings(model, **overrides)
  if gen.do_sample and key is None:
    raise ValueError("do_sample=True needs an explicit key (jax.random.key(...))")
  ids = jnp.asarray(input_ids, jnp.int32)
  mask = jnp.ones_like(ids) if attention_mask is None else jnp.asarray(attention_mask)
  gmask = (jnp.zeros_like(ids).at[:, 0].set(1) if global_attention_mask is None
           else jnp.asarray(global_attention_mask))
  if max_global_tokens is None:  # static: from the concrete masks (a power of two)
    count = inputs_lib.host_global_count(mask, gmask)
    max_global_tokens = inputs_lib.global_slots(model.config.encoder(), count, None)
  key = jax.random.key(0) if key is None else key
  return _decode_jit(model, gen, ids, mask, gmask, key, max_global_tokens)
