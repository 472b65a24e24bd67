"""Analytical matrix-product FLOPs of a step: the count a compiled program is checked by.

Counted per example, 2 FLOPs a multiply-add, products only (elementwise work
is a few percent and XLA's own counts differ in it):

* per encoder layer: Q, K, V and output projections (4 x 2NE^2), the FFN
  (2 x 2NEF); the banded attention over the keys each query block computes
  (scores and values: 2 x 2 x N_p x K x E, K = the block's span, in whole
  chunks of a block for the ``pallas`` kernels, N_p the length padded to
  blocks); the global keys of local rows (2 x 2 x N_p x G x E) and the global
  rows (Q_g of G tokens; K_g, V_g of every token or, with G x H < E, scores and
  outputs from the layer input); relative positions' extra scores;
* the head (masked / causal LM: vocabulary products, sequence classification on
  ``<s>``, per-token heads);
* LED: the encoder as above, the decoder's causal self-attention, cross-attention
  over the N encoder states, FFN, and the vocabulary product per target token;
* training: backward = 2 x forward, plus the forward work remat recomputes
  (``full``: every layer; ``matmuls``: the attention inside it; ``dots``:
  nothing; ``none``: nothing, but with ``scan_layers`` the backward loop
  recomputes the Q, K, V projections, as the compiled programs show), plus the
  ``pallas`` kernels' recomputed scores (their backward is 3.5 x the attention's
  forward).
"""

from __future__ import annotations

from longformer_jax import attention as attn


def _blocks(cfg, n: int) -> tuple[int, int]:
  """(query block, padded length) of an N-token sequence."""
  q_block = min(cfg.block_size, -(-n // 8) * 8)
  return q_block, -(-n // q_block) * q_block


def _attention(cfg, layer: int, n: int, global_tokens: int) -> float:
  """Forward FLOPs of one layer's banded + global attention products (one example)."""
  e, heads = cfg.hidden_size, cfg.num_attention_heads
  q_block, n_pad = _blocks(cfg, n)
  left, right = attn.window_radii(cfg.attention_window[layer], cfg.causal)
  left, right = min(left, n_pad - 1), min(right, n_pad - 1)
  keys = q_block + left + right
  if cfg.attention_impl == "pallas":
    keys = -(-keys // q_block) * q_block
  flops = 4.0 * n_pad * keys * e
  g = global_tokens  # (the pallas kernels pad them to 16 slots: a few % more)
  if getattr(cfg, "relative_positions", False):
    flops += 2.0 * n_pad * keys * e + 2.0 * (left + right + 1) * e * e
  if g:
    flops += 4.0 * n_pad * g * e + 2.0 * g * e * e  # local rows' global keys; Q_g
    if g * heads < e:  # factored: W_k q and x (W_k q), (p x) and W_v
      flops += 4.0 * g * e * e + 4.0 * n * g * heads * e
    else:
      flops += 4.0 * n * e * e + 4.0 * g * n * e
  return flops


def _encoder(cfg, n: int, global_tokens: int) -> tuple[float, float]:
  """(dense, attention) forward FLOPs of the encoder layers for one example."""
  e, f = cfg.hidden_size, cfg.intermediate_size
  dense = cfg.num_hidden_layers * (8.0 * n * e * e + 4.0 * n * e * f)
  attention = sum(_attention(cfg, i, n, global_tokens) for i in range(cfg.num_hidden_layers))
  return dense, attention


def _head(cfg, head: str, n: int) -> float:
  e = cfg.hidden_size
  if head in ("masked_lm", "causal_lm"):
    return 2.0 * n * e * e + 2.0 * n * e * cfg.vocab_size
  if head == "sequence_classification":
    return 2.0 * e * e + 2.0 * e * cfg.num_labels
  if head in ("token_classification", "question_answering"):
    return 2.0 * n * e * max(cfg.num_labels, 2)
  return 0.0


def _train_factor(cfg, dense: float, attention: float, qkv: float) -> float:
  """Forward + backward (+ remat's recomputation) of the encoder's layers; ``qkv`` the
  Q, K, V projections' share of ``dense``."""
  attention_bwd = 3.5 if cfg.attention_impl == "pallas" else 2.0
  recompute = {"full": dense + attention, "matmuls": attention}.get(cfg.remat, 0.0)
  if cfg.remat == "none" and cfg.scan_layers:
    recompute = qkv  # scan's backward loop recomputes them from the saved layer input
  return 3.0 * dense + (1.0 + attention_bwd) * attention + recompute


def _longformer(cfg, head: str, n: int, train: bool) -> float:
  g = cfg.max_global_tokens or 0
  dense, attention = _encoder(cfg, n, g)
  head_flops = _head(cfg, head, n)
  if not train:
    return dense + attention + head_flops
  qkv = cfg.num_hidden_layers * 6.0 * n * cfg.hidden_size ** 2
  return _train_factor(cfg, dense, attention, qkv) + 3.0 * head_flops


def _led(cfg, n: int, target: int, train: bool) -> float:
  enc = cfg.encoder()
  dense, attention = _encoder(enc, n, cfg.max_global_tokens or 0)
  e, t = cfg.d_model, target
  per_layer = (8.0 * t * e * e + 4.0 * t * t * e  # causal self-attention (full products)
               + 4.0 * t * e * e + 4.0 * n * e * e + 4.0 * t * n * e  # cross-attention
               + 4.0 * t * e * cfg.decoder_ffn_dim)
  decoder = cfg.decoder_layers * per_layer + 2.0 * t * e * cfg.vocab_size
  if not train:
    return dense + attention + decoder
  qkv = enc.num_hidden_layers * 6.0 * n * e * e
  return _train_factor(enc, dense, attention, qkv) + 3.0 * decoder


def step_flops(cfg, head: str, *, seq_len: int, batch_size: int, train: bool,
               accum: int = 1, target_len: int | None = None) -> float | None:
  """FLOPs of one step over the global batch (see the module docstring); None for a
  model family it does not know. ``target_len``: LED decoder length."""
  del accum  # micro-batches add up to the same products
  if hasattr(cfg, "hidden_sizes"):  # the vision family: not counted here (yet)
    return None
  if hasattr(cfg, "decoder_layers"):
    if target_len is None:
      return None
    return batch_size * _led(cfg, seq_len, target_len, train)
  return batch_size * _longformer(cfg, head, seq_len, train)


__all__ = ["step_flops"]
