"""Vision Longformer (ViL): an image classifier whose stages are Longformer encoders over
2-D patch grids, each patch attending to its neighbourhood and to a few global tokens.

An image (B, H, W, C) is cut into patches and embedded (:class:`PatchEmbedding`); each
stage is a pre-LN ``layers.Encoder`` whose attention geometry is ``Grid2D(side, side,
kernel, num_prefix=G)`` (``attention/grid2d.py``): the G global tokens (a CLS token,
then optional extra ones) lead the sequence and attend to everything, and every patch
attends to its kernel x kernel neighbourhood and to them. Between stages
:class:`PatchMerging` halves the grid (2 x 2 patches -> one, wider) and maps the
global tokens to the new width. The classifier reads the CLS token (``pool="cls"``)
or the mean of the patches (``pool="mean"``); with ``num_global_tokens=0`` nothing is
global and the model is local only (the ablation of global attention).

Inputs never go through ``inputs.prepare_inputs``: the grid fixes the length, and
nothing is padded.

Shape suffixes: B batch, H x W image, C channels, P patches, G global tokens,
N = G + P tokens, E width, L labels.
"""

from __future__ import annotations

import dataclasses
import os

import jax
import jax.numpy as jnp
from flax import nnx

from longformer_jax import attention as attn
from longformer_jax import layers
from longformer_jax import outputs as out_lib
from longformer_jax import sharding as sh
from longformer_jax.attention import global_tokens
from longformer_jax.config import LongformerConfig, RunFields

POOLS = ("cls", "mean")
_RUN = {"run": True}
_TUNABLE = ("hidden_dropout_prob", "attention_probs_dropout_prob", "num_labels",
            "problem_type")


@dataclasses.dataclass(frozen=True)
class VisionConfig(RunFields):
  """Architecture of a ViL classifier; the per-stage tuples hold one entry per stage.

  Each stage's encoder is a ``LongformerConfig`` (:meth:`stage`): pre-LN, with a
  ``Grid2D`` as its attention geometry.
  """

  image_size: int = 224  # pixels per side (square images)
  patch_size: int = 4  # pixels per side of a first-stage patch
  num_channels: int = 3
  hidden_sizes: tuple[int, ...] = (96, 192, 384, 384)  # width E of each stage
  depths: tuple[int, ...] = (1, 2, 8, 1)  # layers of each stage
  num_heads: tuple[int, ...] = (3, 3, 6, 6)
  # neighbourhood side of each stage (odd); clipped to the largest odd size the grid holds
  kernels: tuple[int, ...] = (15, 15, 15, 15)
  mlp_ratio: int = 4  # feed-forward width / E
  num_global_tokens: int = 1  # leading global tokens, the first a CLS; 0: local only
  pool: str = "cls"  # what the classifier reads: the CLS token, or the patches' mean
  num_labels: int = 10
  problem_type: str | None = "single_label_classification"  # outputs.py's loss
  hidden_act: str = "gelu"
  hidden_dropout_prob: float = 0.0
  attention_probs_dropout_prob: float = 0.0
  layer_norm_eps: float = 1e-6
  initializer_range: float = 0.02
  # Run fields: config.RunFields', and the query tile side of the 2-D attention.
  grid_block: int = dataclasses.field(default=8, metadata=_RUN)

  def __post_init__(self):
    for name in ("hidden_sizes", "depths", "num_heads", "kernels"):
      value = getattr(self, name)
      value = (value,) if isinstance(value, int) else tuple(int(v) for v in value)
      object.__setattr__(self, name, value)
    stages = len(self.hidden_sizes)
    for name in ("depths", "num_heads", "kernels"):
      if len(getattr(self, name)) != stages:
        raise ValueError(f"{name} has {len(getattr(self, name))} entries for the "
                         f"{stages} stages of hidden_sizes={self.hidden_sizes}")
    for name in ("image_size", "patch_size", "num_channels", "mlp_ratio", "num_labels"):
      if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
        raise ValueError(f"{name} must be a positive int, got {getattr(self, name)!r}")
    if self.image_size % self.patch_size:
      raise ValueError(f"image_size={self.image_size} is not a multiple of "
                       f"patch_size={self.patch_size}")
    side = self.image_size // self.patch_size
    if stages < 1 or side % 2 ** (stages - 1):
      raise ValueError(f"image_size={self.image_size}: its {side} x {side} patches must "
                       f"halve {stages - 1} times (one stage or more)")
    for i, k in enumerate(self.kernels):
      if k < 1 or k % 2 == 0:
        raise ValueError(f"kernels[{i}]={k} must be odd and positive")
    if not isinstance(self.num_global_tokens, int) or self.num_global_tokens < 0:
      raise ValueError(f"num_global_tokens must be an int >= 0, got {self.num_global_tokens!r}")
    if self.pool not in POOLS:
      raise ValueError(f"pool={self.pool!r} is not one of {POOLS}")
    if self.pool == "cls" and not self.num_global_tokens:
      raise ValueError("pool='cls' needs a CLS token (num_global_tokens >= 1); a local-only "
                       "model (num_global_tokens=0) pools by pool='mean'")
    for s in range(stages):
      try:
        self.stage(s)
      except ValueError as e:
        raise ValueError(f"stage {s} (hidden_sizes, depths, num_heads, kernels[{s}]): {e}") \
            from None

  @property
  def num_stages(self) -> int:
    return len(self.hidden_sizes)

  def grid_side(self, s: int) -> int:
    """Patches per side of stage ``s``'s grid."""
    return self.image_size // self.patch_size // 2 ** s

  def num_tokens(self, s: int = 0) -> int:
    """Tokens of stage ``s``: the global ones, then the patches."""
    return self.num_global_tokens + self.grid_side(s) ** 2

  def stage(self, s: int) -> LongformerConfig:
    """The encoder config of stage ``s``: pre-LN layers over its 2-D grid."""
    side = self.grid_side(s)
    kernel = min(self.kernels[s], side if side % 2 else side - 1)
    grid = attn.Grid2D(side, side, kernel=kernel, num_prefix=self.num_global_tokens,
                       block=self.grid_block)
    width = self.hidden_sizes[s]
    return LongformerConfig(
        vocab_size=1, hidden_size=width, num_hidden_layers=self.depths[s],
        num_attention_heads=self.num_heads[s], intermediate_size=width * self.mlp_ratio,
        hidden_act=self.hidden_act, hidden_dropout_prob=self.hidden_dropout_prob,
        attention_probs_dropout_prob=self.attention_probs_dropout_prob,
        layer_norm_eps=self.layer_norm_eps, initializer_range=self.initializer_range,
        num_labels=self.num_labels, attention_window=0, pre_layer_norm=True,
        attention_grid=grid,
        **dict(self.shared_run_values(), max_global_tokens=self.num_global_tokens))

  @property
  def compute_dtype(self):
    return jnp.dtype(self.dtype)

  def replace(self, **changes) -> "VisionConfig":
    return dataclasses.replace(self, **changes)

  @classmethod
  def tunable_fields(cls) -> tuple[str, ...]:
    return cls.run_fields() + _TUNABLE

  @classmethod
  def from_json(cls, path: str | os.PathLike, **overrides) -> "VisionConfig":
    """Raises: there are no HF checkpoints of vision models to start from."""
    del overrides
    raise ValueError(f"config.init_from_hf={os.fspath(path)!r}: vision models have no HF "
                     "checkpoints; leave it empty")


def _layer_norm(cfg: LongformerConfig, width: int, rngs: nnx.Rngs) -> nnx.LayerNorm:
  return nnx.LayerNorm(width, epsilon=cfg.layer_norm_eps, dtype=cfg.compute_dtype,
                       param_dtype=jnp.float32,
                       scale_init=nnx.with_partitioning(nnx.initializers.ones, (sh.NORM,)),
                       bias_init=nnx.with_partitioning(nnx.initializers.zeros, (sh.NORM,)),
                       rngs=rngs)


def _table(cfg: VisionConfig, shape: tuple[int, int], axis: str, rngs: nnx.Rngs) -> nnx.Param:
  init = nnx.with_partitioning(nnx.initializers.normal(cfg.initializer_range), (axis, sh.EMBED))
  return nnx.Param(init(rngs.params(), shape, jnp.float32))


class PatchEmbedding(nnx.Module):
  """Patches -> a linear map of their flattened pixels + a learned 2-D position table
  (one row per patch), after the learned global tokens (CLS first)."""

  def __init__(self, cfg: VisionConfig, rngs: nnx.Rngs):
    stage = cfg.stage(0)
    p, width = cfg.patch_size, stage.hidden_size
    self.patch_size, self.dtype = p, stage.compute_dtype
    self.projection = layers.dense(stage, p * p * cfg.num_channels, width, rngs,
                                   (sh.EMBED_OUT, sh.EMBED))
    self.position_embeddings = _table(cfg, (cfg.grid_side(0) ** 2, width), sh.POSITIONS, rngs)
    self.global_tokens = (_table(cfg, (cfg.num_global_tokens, width), sh.POSITIONS, rngs)
                          if cfg.num_global_tokens else None)
    self.dropout = nnx.Dropout(cfg.hidden_dropout_prob, rngs=rngs)

  def __call__(self, pixel_values_BxHxWxC):
    """(B, G + P, E): the global tokens, then the patches in row-major order."""
    b, h, w, c = pixel_values_BxHxWxC.shape
    p = self.patch_size
    x = pixel_values_BxHxWxC.astype(self.dtype).reshape(b, h // p, p, w // p, p, c)
    x_BxPxK = x.transpose(0, 1, 3, 2, 4, 5).reshape(b, (h // p) * (w // p), p * p * c)
    x_BxPxE = self.projection(x_BxPxK) + self.position_embeddings[...].astype(self.dtype)
    if self.global_tokens is not None:
      g_GxE = self.global_tokens[...].astype(self.dtype)
      x_BxPxE = jnp.concatenate(
          [jnp.broadcast_to(g_GxE[None], (b,) + g_GxE.shape), x_BxPxE], axis=1)
    return self.dropout(x_BxPxE)


class PatchMerging(nnx.Module):
  """Stage ``s - 1`` -> stage ``s``: each 2 x 2 block of patches concatenated,
  LayerNorm, a linear map to the new width; the global tokens through a linear map."""

  def __init__(self, cfg: VisionConfig, s: int, rngs: nnx.Rngs):
    prev, nxt = cfg.stage(s - 1), cfg.stage(s)
    self.side, self.num_global = cfg.grid_side(s - 1), cfg.num_global_tokens
    self.norm = _layer_norm(nxt, 4 * prev.hidden_size, rngs)
    self.reduction = layers.dense(nxt, 4 * prev.hidden_size, nxt.hidden_size, rngs,
                                  (sh.EMBED_OUT, sh.EMBED), use_bias=False)
    self.global_projection = (layers.dense(nxt, prev.hidden_size, nxt.hidden_size, rngs,
                                           (sh.EMBED_OUT, sh.EMBED))
                              if self.num_global else None)

  def __call__(self, x_BxNxE):
    """(B, G + P, E) -> (B, G + P / 4, E')."""
    g = self.num_global
    b, _, e = x_BxNxE.shape
    half = self.side // 2
    x = x_BxNxE[:, g:].reshape(b, half, 2, half, 2, e).transpose(0, 1, 3, 2, 4, 5)
    x_BxPx4E = x.reshape(b, half * half, 4 * e)
    out_BxPxF = self.reduction(self.norm(x_BxPx4E))
    if not g:
      return out_BxPxF
    return jnp.concatenate([self.global_projection(x_BxNxE[:, :g]), out_BxPxF], axis=1)


def _global_index(batch: int, num_global: int) -> attn.GlobalIndex | None:
  """The global slots of every example: the first ``num_global`` tokens, all valid."""
  if not num_global:
    return None
  index_BxG = jnp.broadcast_to(jnp.arange(num_global, dtype=jnp.int32), (batch, num_global))
  return attn.GlobalIndex(index_BxG, jnp.ones((batch, num_global), bool))


class VisionEncoder(nnx.Module):
  """The stages: one ``layers.Encoder`` each (its own config, :meth:`VisionConfig.stage`),
  with :class:`PatchMerging` between them."""

  def __init__(self, cfg: VisionConfig, rngs: nnx.Rngs):
    self.num_global = cfg.num_global_tokens
    self.stages = nnx.List([layers.Encoder(cfg.stage(s), rngs)
                            for s in range(cfg.num_stages)])
    self.merges = nnx.List([PatchMerging(cfg, s, rngs) for s in range(1, cfg.num_stages)])

  def __call__(self, x_BxNxE):
    """(last stage's (B, N, E), every stage's output)."""
    outs = []
    for s, encoder in enumerate(self.stages):
      if s:
        x_BxNxE = self.merges[s - 1](x_BxNxE)
      b, n, _ = x_BxNxE.shape
      valid_BxN = jnp.ones((b, n), bool)
      is_global_BxN = jnp.broadcast_to(jnp.arange(n) < self.num_global, (b, n))
      # The global tokens are the grid's prefix by construction: no run-time checks.
      with global_tokens.counts_checked_by_caller():
        x_BxNxE = encoder(x_BxNxE, valid_BxN, is_global_BxN,
                          _global_index(b, self.num_global)).last_hidden_state
      outs.append(x_BxNxE)
    return x_BxNxE, tuple(outs)


class LongformerForImageClassification(nnx.Module):
  """Pixels (B, H, W, C) -> ``logits`` (B, L); ``labels`` (B,) give the loss."""

  def __init__(self, cfg: VisionConfig, *, rngs: nnx.Rngs):
    self.config = cfg
    last = cfg.stage(cfg.num_stages - 1)
    self.embeddings = PatchEmbedding(cfg, rngs)
    self.encoder = VisionEncoder(cfg, rngs)
    self.dropout = nnx.Dropout(cfg.hidden_dropout_prob, rngs=rngs)
    self.classifier = layers.dense(last, last.hidden_size, cfg.num_labels, rngs,
                                   (sh.EMBED, sh.LABELS))

  def __call__(self, pixel_values_BxHxWxC, labels=None, *, output_hidden_states: bool = False):
    cfg = self.config
    want = (cfg.image_size, cfg.image_size, cfg.num_channels)
    if pixel_values_BxHxWxC.ndim != 4 or tuple(pixel_values_BxHxWxC.shape[1:]) != want:
      raise ValueError(f"pixel_values has shape {tuple(pixel_values_BxHxWxC.shape)}, expected "
                       f"(batch, {want[0]}, {want[1]}, {want[2]}) (image_size, num_channels)")
    h_BxNxE, hidden = self.encoder(self.embeddings(jnp.asarray(pixel_values_BxHxWxC)))
    # Mean pooling averages the last LayerNorm's per-token outputs and the classifier is
    # linear: without global tokens, distant patches cannot interact anywhere.
    pooled_BxE = (h_BxNxE[:, 0] if cfg.pool == "cls"
                  else h_BxNxE[:, cfg.num_global_tokens:].mean(axis=1))
    logits_BxL = self.classifier(self.dropout(pooled_BxE)).astype(jnp.float32)
    loss = None
    if labels is not None:
      loss = out_lib.sequence_classification_loss(logits_BxL, labels, cfg.problem_type)
    return out_lib.LogitsOutput(loss, logits_BxL,
                                hidden_states=hidden if output_hidden_states else None)


TASKS = {"image_classification": LongformerForImageClassification}


def create_model(cfg: VisionConfig, task: str = "image_classification", seed: int = 0,
                 partitioning: sh.Partitioning | None = None):
  """A randomly initialised model for ``task`` (see ``TASKS``); with ``partitioning`` its
  activations are pinned to that mesh at layer boundaries."""
  if task not in TASKS:
    raise ValueError(f"task={task!r} is not one of {sorted(TASKS)} (vision family)")
  with nnx.use_eager_sharding(False):  # shardings are applied by the caller (train.py)
    model = TASKS[task](cfg, rngs=nnx.Rngs(params=seed, dropout=seed + 1))
  if partitioning is not None:
    model.set_attributes(partitioning=partitioning)
  return model


def param_count(cfg: VisionConfig) -> int:
  """Parameters of the classifier of ``cfg`` (abstract: nothing allocated)."""
  abstract = nnx.eval_shape(lambda: create_model(cfg))
  return sum(x.size for x in jax.tree.leaves(nnx.state(abstract, nnx.Param)))
