"""The Longformer-Encoder-Decoder (paper section 7): ``LEDModel`` and
``LEDForConditionalGeneration``, with HF's LED checkpoints' layout and semantics.

* Encoder: shared token embeddings + learned positions (from 0, up to
  ``max_encoder_position_embeddings``), LayerNorm, then this package's Longformer
  layers (``layers.Encoder``: local + global attention through ``attention.attend``).
  Global attention goes on the first token when no ``global_attention_mask`` is
  given (what LED summarisation uses).
* Decoder: BART's post-LN layers: causal self-attention, cross-attention over the
  encoder, feed-forward; its own learned positions. Decoding runs on a static-shape
  key/value cache (:class:`DecoderCache`, ``led/generation.py``).
* LM head: the shared embeddings, plus ``final_logits_bias`` (a buffer, not trained).

Shape suffixes: B batch, N encoder length, T decoder length, S cache length, E width,
H heads, D head dim, V vocabulary.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx
from flax import struct

from longformer_jax import attention as attn
from longformer_jax.led import generation
from longformer_jax import inputs as inputs_lib
from longformer_jax import layers
from longformer_jax import outputs as out_lib
from longformer_jax import sharding as sh
from longformer_jax.attention.band import NEG_INF
from longformer_jax.led.config import LEDConfig


class Buffer(nnx.Variable):
  """A constant of the model (HF's registered buffers): loaded and saved, not trained."""


@struct.dataclass
class Seq2SeqOutput(out_lib.ModelOutput):
  loss: jax.Array | None = None
  logits: jax.Array | None = None  # (B, T, V) for the LM head
  last_hidden_state: jax.Array | None = None  # (B, T, E) decoder output
  encoder_last_hidden_state: jax.Array | None = None  # (B, N, E)


def shift_tokens_right(ids_BxT, pad_token_id: int, decoder_start_token_id: int):
  """Decoder inputs from labels: start token first, labels shifted right, -100 -> pad."""
  ids = jnp.asarray(ids_BxT, jnp.int32)
  shifted = jnp.concatenate([jnp.full_like(ids[:, :1], decoder_start_token_id), ids[:, :-1]], 1)
  return jnp.where(shifted == out_lib.IGNORE_INDEX, pad_token_id, shifted)


class LEDEncoder(nnx.Module):
  def __init__(self, cfg: LEDConfig, rngs: nnx.Rngs):
    enc = cfg.encoder()
    self.config = cfg
    self.embed_positions = layers.embed(enc, cfg.max_encoder_position_embeddings, rngs,
                                        sh.POSITIONS)
    self.layernorm_embedding = layers.layer_norm(enc, rngs)
    self.body = layers.Encoder(enc, rngs)
    self.dropout = nnx.Dropout(cfg.dropout, rngs=rngs)

  def __call__(self, shared: nnx.Embed, input_ids_BxN, attention_mask_BxN,
               global_attention_mask_BxN, max_global: int):
    """(B, N, E) encoder states; padding rows are not meaningful."""
    cfg = self.config
    x = inputs_lib.prepare_inputs(cfg.encoder(), dict(
        input_ids=input_ids_BxN, attention_mask=attention_mask_BxN,
        global_attention_mask=global_attention_mask_BxN))
    n_pad = x.input_ids.shape[1]
    if n_pad > cfg.max_encoder_position_embeddings:
      raise ValueError(f"input_ids: {x.length} tokens (padded to {n_pad}) but "
                       f"max_encoder_position_embeddings={cfg.max_encoder_position_embeddings}")
    h = (layers.lookup(shared, x.input_ids, cfg.pad_token_id)
         + self.embed_positions(jnp.arange(n_pad)))
    h = self.dropout(self.layernorm_embedding(h))
    gidx = attn.global_index(x.is_global, max_global)
    return self.body(h, x.valid, x.is_global, gidx).last_hidden_state[:, :x.length]


class DecoderAttention(nnx.Module):
  """Multi-head attention of the decoder (self or cross), fp32 softmax."""

  def __init__(self, cfg: LEDConfig, rngs: nnx.Rngs):
    enc, d = cfg.encoder(), cfg.d_model
    self.heads = cfg.decoder_attention_heads
    for name in ("q_proj", "k_proj", "v_proj"):
      setattr(self, name, layers.dense(enc, d, d, rngs, (sh.EMBED, sh.HEADS)))
    self.out_proj = layers.dense(enc, d, d, rngs, (sh.HEADS, sh.EMBED))
    self.dropout = nnx.Dropout(cfg.attention_dropout, rngs=rngs)

  def split(self, x_BxTxE):
    b, t, e = x_BxTxE.shape
    return x_BxTxE.reshape(b, t, self.heads, e // self.heads)

  def keys_values(self, x_BxSxE):
    return self.split(self.k_proj(x_BxSxE)), self.split(self.v_proj(x_BxSxE))

  def __call__(self, x_BxTxE, k_BxSxHxD, v_BxSxHxD, ok_BxTxS):
    q = self.split(self.q_proj(x_BxTxE))
    q = q * (q.shape[-1] ** -0.5)
    s = jnp.einsum("bthd,bshd->bhts", q, k_BxSxHxD, preferred_element_type=jnp.float32)
    s = jnp.where(ok_BxTxS[:, None], s, NEG_INF)
    p = self.dropout(jax.nn.softmax(s, axis=-1))
    o = jnp.einsum("bhts,bshd->bthd", p.astype(v_BxSxHxD.dtype), v_BxSxHxD,
                   preferred_element_type=jnp.float32).astype(x_BxTxE.dtype)
    return self.out_proj(o.reshape(x_BxTxE.shape))


class DecoderLayer(nnx.Module):
  def __init__(self, cfg: LEDConfig, rngs: nnx.Rngs):
    enc, d = cfg.encoder(), cfg.d_model
    self.self_attn = DecoderAttention(cfg, rngs)
    self.self_attn_layer_norm = layers.layer_norm(enc, rngs)
    self.encoder_attn = DecoderAttention(cfg, rngs)
    self.encoder_attn_layer_norm = layers.layer_norm(enc, rngs)
    self.fc1 = layers.dense(enc, d, cfg.decoder_ffn_dim, rngs, (sh.EMBED, sh.MLP))
    self.fc2 = layers.dense(enc, cfg.decoder_ffn_dim, d, rngs, (sh.MLP, sh.EMBED))
    self.final_layer_norm = layers.layer_norm(enc, rngs)
    self.act = layers.activation(cfg.activation_function)
    self.dropout = nnx.Dropout(cfg.dropout, rngs=rngs)

  def __call__(self, x_BxTxE, self_kv, self_ok_BxTxS, cross_kv, cross_ok_BxTxN):
    h = self.self_attn_layer_norm(x_BxTxE + self.dropout(self.self_attn(x_BxTxE, *self_kv,
                                                                        self_ok_BxTxS)))
    h = self.encoder_attn_layer_norm(h + self.dropout(self.encoder_attn(h, *cross_kv,
                                                                        cross_ok_BxTxN)))
    return self.final_layer_norm(h + self.dropout(self.fc2(self.act(self.fc1(h)))))


class DecoderCache(NamedTuple):
  """Static-shape decoding state: every layer's self-attention keys / values for
  ``S`` positions, the cross-attention keys / values of the encoder output, which
  positions hold a token, and how many are written."""

  self_k: tuple  # L of (B, S, H, D)
  self_v: tuple
  cross_k: tuple  # L of (B, N, H, D)
  cross_v: tuple
  encoder_ok_BxN: jax.Array
  length: jax.Array  # () int32: positions written


class LEDDecoder(nnx.Module):
  def __init__(self, cfg: LEDConfig, rngs: nnx.Rngs):
    self.config = cfg
    self.embed_positions = layers.embed(cfg.encoder(), cfg.max_decoder_position_embeddings,
                                        rngs, sh.POSITIONS)
    self.layernorm_embedding = layers.layer_norm(cfg.encoder(), rngs)
    self.layers = nnx.List([DecoderLayer(cfg, rngs) for _ in range(cfg.decoder_layers)])
    self.dropout = nnx.Dropout(cfg.dropout, rngs=rngs)

  def _embed(self, shared, ids_BxT, start):
    cfg = self.config
    t = ids_BxT.shape[1]
    pos = start + jnp.arange(t)
    h = layers.lookup(shared, ids_BxT, cfg.pad_token_id) + self.embed_positions(pos)
    return self.dropout(self.layernorm_embedding(h))

  def init_cache(self, encoder_BxNxE, encoder_ok_BxN, max_length: int) -> DecoderCache:
    cfg = self.config
    if max_length > cfg.max_decoder_position_embeddings:
      raise ValueError(f"max_length={max_length} but max_decoder_position_embeddings="
                       f"{cfg.max_decoder_position_embeddings}")
    b = encoder_BxNxE.shape[0]
    heads = cfg.decoder_attention_heads
    shape = (b, max_length, heads, cfg.d_model // heads)
    zeros = tuple(jnp.zeros(shape, encoder_BxNxE.dtype) for _ in self.layers)
    cross = [layer.encoder_attn.keys_values(encoder_BxNxE) for layer in self.layers]
    return DecoderCache(zeros, zeros, tuple(k for k, _ in cross), tuple(v for _, v in cross),
                        encoder_ok_BxN, jnp.zeros((), jnp.int32))

  def __call__(self, shared, ids_BxT, mask_BxT, encoder_BxNxE, encoder_ok_BxN):
    """Teacher forcing: every position at once (causal, key padding masked)."""
    t = ids_BxT.shape[1]
    h = self._embed(shared, ids_BxT, 0)
    causal_TxT = jnp.tril(jnp.ones((t, t), bool))
    self_ok = causal_TxT[None] & (jnp.asarray(mask_BxT) != 0)[:, None, :]
    cross_ok = jnp.broadcast_to(encoder_ok_BxN[:, None, :], (h.shape[0], t,
                                                              encoder_ok_BxN.shape[1]))
    for layer in self.layers:
      h = layer(h, layer.self_attn.keys_values(h), self_ok,
                layer.encoder_attn.keys_values(encoder_BxNxE), cross_ok)
    return h

  def step(self, shared, ids_BxT, cache: DecoderCache):
    """The next ``T`` positions on the cache: (B, T, E) states and the updated cache."""
    t = ids_BxT.shape[1]
    start = cache.length
    h = self._embed(shared, ids_BxT, start)
    s = cache.self_k[0].shape[1]
    rows = start + jnp.arange(t)
    self_ok = jnp.broadcast_to((jnp.arange(s)[None, :] <= rows[:, None])[None],
                               (h.shape[0], t, s))
    cross_ok = jnp.broadcast_to(cache.encoder_ok_BxN[:, None, :],
                                (h.shape[0], t, cache.encoder_ok_BxN.shape[1]))
    new_k, new_v = [], []
    for i, layer in enumerate(self.layers):
      k, v = layer.self_attn.keys_values(h)
      k = jax.lax.dynamic_update_slice_in_dim(cache.self_k[i], k.astype(cache.self_k[i].dtype),
                                              start, axis=1)
      v = jax.lax.dynamic_update_slice_in_dim(cache.self_v[i], v.astype(cache.self_v[i].dtype),
                                              start, axis=1)
      new_k.append(k), new_v.append(v)
      h = layer(h, (k, v), self_ok, (cache.cross_k[i], cache.cross_v[i]), cross_ok)
    return h, cache._replace(self_k=tuple(new_k), self_v=tuple(new_v), length=start + t)


class LEDModel(nnx.Module):
  """Encoder + decoder over shared token embeddings (HF's ``LEDModel``)."""

  def __init__(self, cfg: LEDConfig, *, rngs: nnx.Rngs):
    self.config = cfg
    self.shared = layers.embed(cfg.encoder(), cfg.vocab_size, rngs, sh.VOCAB, cfg.pad_token_id)
    self.encoder = LEDEncoder(cfg, rngs)
    self.decoder = LEDDecoder(cfg, rngs)

  def encode(self, input_ids, attention_mask=None, global_attention_mask=None, *,
             max_global_tokens: int | None = None):
    """(encoder states (B, N, E), key mask (B, N) bool)."""
    ids = jnp.asarray(input_ids, jnp.int32)
    mask = jnp.ones_like(ids) if attention_mask is None else jnp.asarray(attention_mask)
    if global_attention_mask is None:  # the first token global, as LED summarisation has it
      global_attention_mask = jnp.zeros_like(ids).at[:, 0].set(1)
    count = inputs_lib.host_global_count(attention_mask, global_attention_mask)
    max_global = inputs_lib.global_slots(self.config.encoder(), count, max_global_tokens)
    h = self.encoder(self.shared, ids, mask, global_attention_mask, max_global)
    return h, inputs_lib.merged_mask(mask, global_attention_mask) >= 1.0

  def __call__(self, input_ids=None, attention_mask=None, global_attention_mask=None,
               decoder_input_ids=None, decoder_attention_mask=None, *,
               max_global_tokens: int | None = None) -> Seq2SeqOutput:
    cfg = self.config
    enc_h, enc_ok = self.encode(input_ids, attention_mask, global_attention_mask,
                                max_global_tokens=max_global_tokens)
    if decoder_input_ids is None:  # HF's default: the inputs shifted right
      decoder_input_ids = shift_tokens_right(input_ids, cfg.pad_token_id,
                                             cfg.decoder_start_token_id)
    dec_ids = jnp.asarray(decoder_input_ids, jnp.int32)
    dec_mask = (jnp.ones_like(dec_ids) if decoder_attention_mask is None
                else decoder_attention_mask)
    h = self.decoder(self.shared, dec_ids, dec_mask, enc_h, enc_ok)
    return Seq2SeqOutput(last_hidden_state=h, encoder_last_hidden_state=enc_h)


class LEDForConditionalGeneration(nnx.Module):
  """``LEDModel`` + LM head (shared embeddings + ``final_logits_bias``); ``labels``
  give the token cross-entropy (-100 ignored) and, when no decoder inputs are
  given, the decoder inputs (labels shifted right), as in HF."""

  def __init__(self, cfg: LEDConfig, *, rngs: nnx.Rngs):
    self.config = cfg
    self.led = LEDModel(cfg, rngs=rngs)
    self.final_logits_bias = Buffer(jnp.zeros((1, cfg.vocab_size), jnp.float32))

  def logits(self, h_BxTxE):
    return self.led.shared.attend(h_BxTxE).astype(jnp.float32) + self.final_logits_bias[...]

  def __call__(self, input_ids=None, attention_mask=None, global_attention_mask=None,
               decoder_input_ids=None, decoder_attention_mask=None, labels=None, *,
               max_global_tokens: int | None = None) -> Seq2SeqOutput:
    cfg = self.config
    if labels is not None and decoder_input_ids is None:
      decoder_input_ids = shift_tokens_right(labels, cfg.pad_token_id,
                                             cfg.decoder_start_token_id)
    out = self.led(input_ids, attention_mask, global_attention_mask, decoder_input_ids,
                   decoder_attention_mask, max_global_tokens=max_global_tokens)
    logits = self.logits(out.last_hidden_state)
    loss = None
    if labels is not None:
      nll, counted = out_lib.nll_terms(logits, jnp.asarray(labels))
      loss = nll.sum() / jnp.maximum(counted.sum(), 1)
    return Seq2SeqOutput(loss=loss, logits=logits, last_hidden_state=out.last_hidden_state,
                         encoder_last_hidden_state=out.encoder_last_hidden_state)


  def generate(self, input_ids, attention_mask=None, global_attention_mask=None, **kwargs):
    """Token ids (B, max_length): ``generation.generate`` on this model, HF's
    ``model.generate`` arguments (``max_length``, ``num_beams``, ``key`` to sample...)."""
    return generation.generate(self, input_ids, attention_mask, global_attention_mask,
                               **kwargs)


TASKS = {"base": (LEDModel, "LEDModel"),
         "conditional_generation": (LEDForConditionalGeneration,
                                    "LEDForConditionalGeneration")}


def create_model(cfg: LEDConfig, task: str = "conditional_generation", seed: int = 0,
                 partitioning: sh.Partitioning | None = None):
  """A randomly initialised LED for ``task`` (see ``TASKS``); ``partitioning`` as in
  ``model.create_model`` (the encoder's activations and sequence parallelism)."""
  if task not in TASKS:
    raise ValueError(f"task={task!r} is not one of {sorted(TASKS)}")
  with nnx.use_eager_sharding(False):
    model = TASKS[task][0](cfg, rngs=nnx.Rngs(params=seed, dropout=seed + 1))
  if partitioning is not None:
    model.set_attributes(partitioning=partitioning)
  return model
