"""Flax nnx building blocks of the Longformer encoder.

Post-LN and RoBERTa-shaped by default: attribute names follow the reference
checkpoints' module tree so that conversion is a mechanical renaming (see
``longformer_convert.py``). ``pre_layer_norm`` and relative positions give the paper's
character LM instead (:class:`PreLNLayer`, ``attention/relative_position.py``).
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx
from jax.ad_checkpoint import checkpoint_name

from longformer_jax import attention as attn
from longformer_jax.attention import weights as attn_weights
from longformer_jax.attention import relative_position as relpos
from longformer_jax.attention import seqpar
from longformer_jax import sharding as sh
from longformer_jax.config import LongformerConfig


@jax.custom_vjp
def gelu_exact(x):
  """x * Phi(x) (the erf GELU of the reference checkpoints).

  Its backward pass keeps only ``x`` and recomputes Phi and phi: autodiff of the
  erf form keeps several (tokens, d_ff) intermediates per layer (14% of a 12-layer
  model's compiled fwd+bwd memory at 4K tokens).
  """
  return jax.nn.gelu(x, approximate=False)


def _gelu_fwd(x):
  return gelu_exact(x), x


def _gelu_bwd(x, g):
  xf = x.astype(jnp.float32)
  cdf = 0.5 * (1.0 + jax.lax.erf(xf * (1.0 / math.sqrt(2.0))))
  pdf = jnp.exp(-0.5 * xf * xf) * (1.0 / math.sqrt(2.0 * math.pi))
  return ((g.astype(jnp.float32) * (cdf + xf * pdf)).astype(x.dtype),)


gelu_exact.defvjp(_gelu_fwd, _gelu_bwd)


def activation(name: str):
  """The HF activation of that name (``gelu`` is the exact erf form)."""
  return {
      "gelu": gelu_exact,
      "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
      "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
      "gelu_fast": lambda x: jax.nn.gelu(x, approximate=True),
      "relu": jax.nn.relu,
      "silu": jax.nn.silu,
      "tanh": jnp.tanh,
  }[name]


def dense(cfg: LongformerConfig, d_in: int, d_out: int, rngs: nnx.Rngs,
          axes: tuple[str, str] = (sh.EMBED, sh.EMBED_OUT), use_bias: bool = True) -> nnx.Linear:
  """Linear layer, fp32 params, compute in the config's dtype; ``axes`` are logical."""
  init = nnx.initializers.normal(cfg.initializer_range)
  return nnx.Linear(d_in, d_out, use_bias=use_bias, dtype=cfg.compute_dtype,
                    param_dtype=jnp.float32,
                    kernel_init=nnx.with_partitioning(init, axes),
                    bias_init=nnx.with_partitioning(nnx.initializers.zeros, axes[1:]),
                    rngs=rngs)


def layer_norm(cfg: LongformerConfig, rngs: nnx.Rngs) -> nnx.LayerNorm:
  return nnx.LayerNorm(cfg.hidden_size, epsilon=cfg.layer_norm_eps, dtype=cfg.compute_dtype,
                       param_dtype=jnp.float32,
                       scale_init=nnx.with_partitioning(nnx.initializers.ones, (sh.NORM,)),
                       bias_init=nnx.with_partitioning(nnx.initializers.zeros, (sh.NORM,)),
                       rngs=rngs)


def embed(cfg: LongformerConfig, num: int, rngs: nnx.Rngs, axis: str,
          padding_idx: int | None = None) -> nnx.Embed:
  """Embedding table; row ``padding_idx`` starts at zero (see :func:`lookup`)."""
  normal = nnx.initializers.normal(cfg.initializer_range)

  def init(key, shape, dtype=jnp.float32):
    table = normal(key, shape, dtype)
    return table if padding_idx is None else table.at[padding_idx].set(0)

  return nnx.Embed(num, cfg.hidden_size, dtype=cfg.compute_dtype, param_dtype=jnp.float32,
                   embedding_init=nnx.with_partitioning(init, (axis, sh.EMBED)), rngs=rngs)


def lookup(table: nnx.Embed, ids_BxN, padding_idx: int | None = None):
  """``table(ids)``; with ``padding_idx`` that row's lookups pass no gradient to the
  table (torch's ``padding_idx``: the row stays as initialised or loaded)."""
  x_BxNxD = table(ids_BxN)
  if padding_idx is None:
    return x_BxNxD
  return jnp.where((ids_BxN == padding_idx)[..., None], jax.lax.stop_gradient(x_BxNxD), x_BxNxD)


def position_ids_from_input_ids(input_ids_BxN, padding_idx: int):
  """RoBERTa positions: padding_idx + 1, + 2, ... for real tokens, padding_idx for pads."""
  not_pad = (input_ids_BxN != padding_idx).astype(jnp.int32)
  return jnp.cumsum(not_pad, axis=1, dtype=jnp.int32) * not_pad + padding_idx


class Embeddings(nnx.Module):
  """Word + learned position + token type embeddings, then LayerNorm and dropout.

  The word and position rows at ``pad_token_id`` are padding rows, as in the
  reference: zero at init and never updated through a lookup. Relative positions
  have no position table; pre-LN models no LayerNorm here.
  """

  def __init__(self, cfg: LongformerConfig, rngs: nnx.Rngs):
    self.padding_idx, self.dtype = cfg.pad_token_id, cfg.compute_dtype
    self.word_embeddings = embed(cfg, cfg.vocab_size, rngs, sh.VOCAB, cfg.pad_token_id)
    self.position_embeddings = None if cfg.relative_positions else embed(
        cfg, cfg.max_position_embeddings, rngs, sh.POSITIONS, cfg.pad_token_id)
    self.token_type_embeddings = embed(cfg, cfg.type_vocab_size, rngs, sh.TYPES)
    self.LayerNorm = None if cfg.pre_layer_norm else layer_norm(cfg, rngs)
    self.dropout = nnx.Dropout(cfg.hidden_dropout_prob, rngs=rngs)

  def __call__(self, input_ids_BxN, token_type_ids_BxN, position_ids_BxN, inputs_embeds_BxNxD=None):
    """``inputs_embeds`` replaces the word embeddings of ``input_ids`` when given."""
    words = (lookup(self.word_embeddings, input_ids_BxN, self.padding_idx)
             if inputs_embeds_BxNxD is None else inputs_embeds_BxNxD.astype(self.dtype))
    x = words + self.token_type_embeddings(token_type_ids_BxN)
    if self.position_embeddings is not None:
      x = x + lookup(self.position_embeddings, position_ids_BxN, self.padding_idx)
    return self.dropout(x if self.LayerNorm is None else self.LayerNorm(x))


class SelfAttention(nnx.Module):
  """Local Q/K/V and global Q_g/K_g/V_g projections around ``attention/__init__.py``; with
  relative positions Q/K/V, W_r (``relative_key``) and the biases u and v instead."""

  def __init__(self, cfg: LongformerConfig, layer: int, rngs: nnx.Rngs):
    d = cfg.hidden_size
    self.heads, self.head_dim = cfg.num_attention_heads, cfg.head_dim
    self.window = cfg.attention_window[layer]
    self.dilation = cfg.layer_dilation(layer)
    self.causal, self.block_size = cfg.causal, cfg.block_size
    self.attention_impl = cfg.attention_impl
    self.attention_dtype = jnp.dtype(cfg.attention_dtype or cfg.dtype)
    self.relative = cfg.relative_positions
    self.grid = cfg.attention_grid  # a 2-D patch grid instead of the window, or None
    names = ("query", "key", "value") + (
        () if self.relative else ("query_global", "key_global", "value_global"))
    for name in names:
      setattr(self, name, dense(cfg, d, d, rngs, (sh.EMBED, sh.HEADS)))
    if self.relative:  # Transformer-XL: W_r, u (content bias), v (position bias)
      self.relative_key = dense(cfg, d, d, rngs, (sh.EMBED, sh.HEADS), use_bias=False)
      zeros = nnx.with_partitioning(nnx.initializers.zeros, (sh.HEADS,))
      self.content_bias = nnx.Param(zeros(rngs.params(), (d,), jnp.float32))
      self.position_bias = nnx.Param(zeros(rngs.params(), (d,), jnp.float32))
    # Holds the dropout rate, the train/eval flag and the rng stream.
    self.dropout = nnx.Dropout(cfg.attention_probs_dropout_prob, rngs=rngs)
    self.partitioning: sh.Partitioning | None = None  # model_lib.create_model sets it

  def _dropout_args(self):
    if self.dropout.deterministic or self.dropout.rate == 0.0:
      return dict(dropout_rate=0.0, dropout_rng=None)
    return dict(dropout_rate=self.dropout.rate, dropout_rng=self.dropout.rngs())

  def __call__(self, x_BxNxD, valid_BxN, is_global_BxN, gidx: attn.GlobalIndex | None,
               output_attentions: bool = False):
    """(B, N, E) output; with ``output_attentions`` also the probabilities (local rows
    (B, H, N, G + w + 1), global rows (B, H, N, G); see ``attention/weights.py``)."""
    if output_attentions and self.relative:  # before any work is traced
      raise ValueError("output_attentions is not available with relative positions "
                       "(position_embedding_type='relative_sinusoidal')")
    if output_attentions and self.grid is not None:
      raise ValueError("output_attentions is not available with a 2-D attention_grid")
    out = self._attend(x_BxNxD, valid_BxN, is_global_BxN, gidx)
    if not output_attentions:
      return out, None
    return out, self._probs(x_BxNxD, valid_BxN, is_global_BxN, gidx)

  def _heads(self, t):
    return t.reshape(t.shape[:2] + (self.heads, self.head_dim))

  def _probs(self, x_BxNxD, valid_BxN, is_global_BxN, gidx):
    b, n, _ = x_BxNxD.shape
    scale = 1.0 / math.sqrt(self.head_dim)
    q, k = self._heads(self.query(x_BxNxD) * scale), self._heads(self.key(x_BxNxD))
    local_BxHxNxW = attn_weights.local_attention_probs(
        q, k, valid_BxN=valid_BxN, is_global_BxN=is_global_BxN, gidx=gidx,
        window=self.window, dilation=self.dilation, causal=self.causal)
    if gidx is None:
      return local_BxHxNxW, jnp.zeros((b, self.heads, n, 0), jnp.float32)
    qg = self._heads(self.query_global(attn.gather_tokens(x_BxNxD, gidx)) * scale)
    global_BxHxNxG = attn_weights.global_attention_probs(
        qg, self._heads(self.key_global(x_BxNxD)), valid_BxN=valid_BxN, gidx=gidx,
        causal=self.causal)
    return local_BxHxNxW, global_BxHxNxG

  def _attend(self, x_BxNxD, valid_BxN, is_global_BxN, gidx):
    """(B, N, E) output of ``attention.attend`` (or its sequence-parallel form)."""
    b, n, d = x_BxNxD.shape
    dt = self.attention_dtype
    heads = lambda t: self._heads(checkpoint_name(t, "matmul")).astype(dt)
    q_BxNxE = checkpoint_name(self.query(x_BxNxD), "matmul").astype(dt)
    global_rows = relative = None
    if self.relative:  # content queries q + u, position queries q + v
      q_BxNxHxD = self._heads(q_BxNxE + self.content_bias[...].astype(dt))
      w_r = self.relative_key.kernel[...]
      relative = relpos.RelativePositions(
          self._heads(q_BxNxE + self.position_bias[...].astype(dt)),
          w_r.reshape(w_r.shape[0], self.heads, self.head_dim))
    else:
      q_BxNxHxD = self._heads(q_BxNxE)
      if gidx is not None:
        global_rows = attn.GlobalWeights(x_BxNxD, *self._global_weights())
    out_BxNxHxD = self._attention_fn(b)(
        q_BxNxHxD, heads(self.key(x_BxNxD)), heads(self.value(x_BxNxD)),
        valid_BxN=valid_BxN, is_global_BxN=is_global_BxN, gidx=gidx,
        global_rows=global_rows, window=self.window, dilation=self.dilation,
        causal=self.causal, block_size=self.block_size, impl=self.attention_impl,
        relative=relative, **self._dropout_args())
    return checkpoint_name(out_BxNxHxD.astype(x_BxNxD.dtype).reshape(b, n, d), "matmul")

  def _attention_fn(self, batch: int):
    """``attention.attend``, or its sequence-parallel form when the model's
    partitioning splits activations along the sequence, or a form run per device
    (``shard_map``) for the kernels of the ``pallas`` backend: same arguments. A 2-D
    grid has one form, over the whole sequence."""
    if self.grid is not None:
      return functools.partial(attn.attend, grid=self.grid)
    split = sh.sequence_parallel(self.partitioning)
    if split is not None:
      mesh, batch_axes = split
      return functools.partial(seqpar.self_attention, mesh=mesh, batch_axes=batch_axes)
    impl = attn.resolve_impl(self.attention_impl, relative=self.relative)
    kernel = sh.kernel_parallel(self.partitioning, batch, self.heads)
    if impl != "pallas" or kernel is None:
      return attn.attend
    mesh, batch_axes, head_axes = kernel
    return functools.partial(seqpar.heads_parallel, mesh=mesh, batch_axes=batch_axes,
                             head_axes=head_axes)

  def _global_weights(self):
    """(W_qg (E, H, D), b_qg (H, D), W_kg, b_kg, W_vg, b_vg): the global projections'
    weights split by head."""
    per_head = (self.heads, self.head_dim)
    return tuple(w.reshape(w.shape[:-1] + per_head)
                 for lin in (self.query_global, self.key_global, self.value_global)
                 for w in (lin.kernel[...], lin.bias[...]))


class DenseLayerNorm(nnx.Module):
  """dense -> dropout -> LayerNorm(x + residual): HF's SelfOutput / Output."""

  def __init__(self, cfg: LongformerConfig, d_in: int, in_axis: str, rngs: nnx.Rngs):
    self.dense = dense(cfg, d_in, cfg.hidden_size, rngs, (in_axis, sh.EMBED))
    self.LayerNorm = layer_norm(cfg, rngs)
    self.dropout = nnx.Dropout(cfg.hidden_dropout_prob, rngs=rngs)

  def __call__(self, x, residual):
    return self.LayerNorm(self.dropout(checkpoint_name(self.dense(x), "matmul")) + residual)


class Attention(nnx.Module):
  def __init__(self, cfg: LongformerConfig, layer: int, rngs: nnx.Rngs):
    self.self_attn = SelfAttention(cfg, layer, rngs)
    self.output = DenseLayerNorm(cfg, cfg.hidden_size, sh.HEADS, rngs)

  def __call__(self, x_BxNxD, valid_BxN, is_global_BxN, gidx, output_attentions=False):
    h, probs = self.self_attn(x_BxNxD, valid_BxN, is_global_BxN, gidx, output_attentions)
    return self.output(h, x_BxNxD), probs


class Intermediate(nnx.Module):
  def __init__(self, cfg: LongformerConfig, rngs: nnx.Rngs):
    self.dense = dense(cfg, cfg.hidden_size, cfg.intermediate_size, rngs, (sh.EMBED, sh.MLP))
    self.act = activation(cfg.hidden_act)

  def __call__(self, x):
    return self.act(checkpoint_name(self.dense(x), "matmul"))


class Layer(nnx.Module):
  """One encoder layer: attention block, then feed-forward block, both post-LN."""

  def __init__(self, cfg: LongformerConfig, layer: int, rngs: nnx.Rngs):
    self.attention = Attention(cfg, layer, rngs)
    self.intermediate = Intermediate(cfg, rngs)
    self.output = DenseLayerNorm(cfg, cfg.intermediate_size, sh.MLP, rngs)

  def __call__(self, x_BxNxD, valid_BxN, is_global_BxN, gidx, output_attentions=False):
    h, probs = self.attention(x_BxNxD, valid_BxN, is_global_BxN, gidx, output_attentions)
    return self.output(self.intermediate(h), h), probs


class PreLNLayer(nnx.Module):
  """One pre-LN layer (the paper's character LM): x + attention(LN(x)), then h + FFN(LN(h))."""

  def __init__(self, cfg: LongformerConfig, layer: int, rngs: nnx.Rngs):
    self.attention_layer_norm = layer_norm(cfg, rngs)
    self.self_attn = SelfAttention(cfg, layer, rngs)
    self.attention_output = dense(cfg, cfg.hidden_size, cfg.hidden_size, rngs,
                                  (sh.HEADS, sh.EMBED))
    self.ffn_layer_norm = layer_norm(cfg, rngs)
    self.intermediate = Intermediate(cfg, rngs)
    self.output = dense(cfg, cfg.intermediate_size, cfg.hidden_size, rngs, (sh.MLP, sh.EMBED))
    self.dropout = nnx.Dropout(cfg.hidden_dropout_prob, rngs=rngs)

  def __call__(self, x_BxNxD, valid_BxN, is_global_BxN, gidx, output_attentions=False):
    a, probs = self.self_attn(self.attention_layer_norm(x_BxNxD), valid_BxN, is_global_BxN,
                              gidx, output_attentions)
    h = x_BxNxD + self.dropout(checkpoint_name(self.attention_output(a), "matmul"))
    f = checkpoint_name(self.output(self.intermediate(self.ffn_layer_norm(h))), "matmul")
    return h + self.dropout(f), probs


ACTIVATION_AXES = (sh.BATCH, sh.LENGTH, sh.ACT_EMBED)
_REMAT_POLICIES = {
    "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
    # outputs of the matrix products and of the attention (tagged "matmul"): layer
    # norms, GELU and layout changes are recomputed
    "matmuls": jax.checkpoint_policies.save_only_these_names("matmul", "attention_core"),
    "full": None,
}


class EncoderOutput(NamedTuple):
  last_hidden_state: jax.Array  # (B, N, E)
  hidden_states: tuple | None  # L + 1 of (B, N, E): the embeddings, then each layer
  attentions: tuple | None  # L of (B, H, N, G + w + 1)
  global_attentions: tuple | None  # L of (B, H, N, G)


class Encoder(nnx.Module):
  """The stack of layers: a Python loop (``layer``), or one scanned, stacked layer
  (``layers``, params with a leading layer axis) when ``cfg.scan_layers``: one
  compiled layer body whatever the depth. Either way optionally rematerialised."""

  def __init__(self, cfg: LongformerConfig, rngs: nnx.Rngs):
    self.remat, self.scan = cfg.remat, cfg.scan_layers
    layer_cls = PreLNLayer if cfg.pre_layer_norm else Layer
    if cfg.scan_layers:
      @nnx.split_rngs(splits=cfg.num_hidden_layers)
      @nnx.vmap(in_axes=(0,), out_axes=0, transform_metadata={nnx.PARTITION_NAME: sh.LAYERS})
      def stacked(rngs):
        return layer_cls(cfg, 0, rngs)
      self.layers = stacked(rngs)
    else:
      self.layer = nnx.List([layer_cls(cfg, i, rngs) for i in range(cfg.num_hidden_layers)])
    # Pre-LN: the residual stream is normalised once more at the top.
    self.final_layer_norm = layer_norm(cfg, rngs) if cfg.pre_layer_norm else None
    self.partitioning: sh.Partitioning | None = None  # model_lib.create_model sets it

  def __call__(self, x_BxNxD, valid_BxN, is_global_BxN, gidx, *,
               output_hidden_states: bool = False, output_attentions: bool = False):
    def apply(layer, x):
      y, probs = layer(x, valid_BxN, is_global_BxN, gidx, output_attentions)
      y = sh.constrain(y, ACTIVATION_AXES, self.partitioning)
      return y, (y if output_hidden_states else None, probs)

    if self.remat != "none":
      apply = nnx.remat(apply, policy=_REMAT_POLICIES[self.remat])
    # nnx.scan and nnx.remat refuse graph nodes created at another trace level, as the
    # rng counters are when a caller merges its state inside jax.grad / jax.jit: run
    # fresh Variables (same arrays) of this level, and write the counters back only
    # when dropout consumed them.
    stack = self.layers if self.scan else self.layer
    graphdef, state = nnx.split(stack)
    fresh = nnx.merge(graphdef, jax.tree.map(lambda v: v, state))
    if self.scan:
      scanned = nnx.scan(apply, in_axes=(0, nnx.Carry), out_axes=(nnx.Carry, 0),
                         transform_metadata={nnx.PARTITION_NAME: sh.LAYERS})
      y, (hidden, probs) = scanned(fresh, x_BxNxD)
      unstack = lambda t: None if t is None else tuple(t)
      per_layer = (unstack(hidden), unstack(probs and probs[0]), unstack(probs and probs[1]))
    else:
      outs, y = [], x_BxNxD
      for layer in fresh:
        y, extra = apply(layer, y)
        outs.append(extra)
      per_layer = ((None if not output_hidden_states else tuple(h for h, _ in outs)),
                   (None if not output_attentions else tuple(p[0] for _, p in outs)),
                   (None if not output_attentions else tuple(p[1] for _, p in outs)))
    if any(not m.deterministic and m.rate > 0 for _, m in nnx.iter_graph(fresh)
           if isinstance(m, nnx.Dropout)):
      nnx.update(stack, nnx.state(fresh, nnx.RngState))
    hidden = (x_BxNxD,) + per_layer[0] if output_hidden_states else None
    if self.final_layer_norm is not None:
      y = self.final_layer_norm(y)
    return EncoderOutput(y, hidden, per_layer[1], per_layer[2])


class Pooler(nnx.Module):
  """tanh(dense(first token))."""

  def __init__(self, cfg: LongformerConfig, rngs: nnx.Rngs):
    self.dense = dense(cfg, cfg.hidden_size, cfg.hidden_size, rngs)

  def __call__(self, x_BxNxD):
    return jnp.tanh(self.dense(x_BxNxD[:, 0]))
