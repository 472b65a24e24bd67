"""Optimizer and learning-rate schedules (optax), phases included.

A run is a list of phases (``config.phases``); each has its steps, peak LR and
warm-up. Within a phase the LR warms up linearly from 0, then follows
``config.optim.schedule``: ``constant``, ``linear`` (to ``end_lr_frac`` x peak at the
phase end) or ``poly3`` (polynomial decay of power 3, the paper's MLM schedule).

``config.optim.trainable``, a regular expression, freezes every parameter whose path
(``longformer/embeddings/position_embeddings/embedding``) it does not match: the
paper's "only the new position embeddings trained" (section 5). Clipping, Adam state
and weight decay then cover the trainable parameters alone.
"""

from __future__ import annotations

import re

import jax
import optax

SCHEDULES = ("constant", "linear", "poly3")


def phase_warmup(phase, optim_cfg) -> int:
  """Warm-up steps of a phase: explicit, or a fraction of it capped at max_warmup_steps."""
  if phase.get("warmup_steps") is not None:
    return int(phase["warmup_steps"])
  frac = int(phase["steps"] * optim_cfg.get("warmup_frac", 0.1))
  return min(frac, int(optim_cfg.get("max_warmup_steps", 10_000)))


def make_schedule(phases, optim_cfg) -> optax.Schedule:
  """One schedule over all phases, stitched with ``optax.join_schedules``."""
  kind = optim_cfg.get("schedule", "constant")
  if kind not in SCHEDULES:
    raise ValueError(f"config.optim.schedule={kind!r} is not one of {SCHEDULES}")
  end_frac = float(optim_cfg.get("end_lr_frac", 0.0))
  pieces, boundaries, total = [], [], 0
  for i, phase in enumerate(phases):
    steps, lr = int(phase["steps"]), float(phase["lr"])
    warm = phase_warmup(phase, optim_cfg)
    if not 0 <= warm <= steps:
      raise ValueError(f"config.phases[{i}]: warmup_steps={warm} outside [0, steps={steps}]")
    rest = max(steps - warm, 1)
    if kind == "constant":
      after = optax.constant_schedule(lr)
    elif kind == "linear":
      after = optax.linear_schedule(lr, lr * end_frac, rest)
    else:
      after = optax.polynomial_schedule(lr, lr * end_frac, power=3, transition_steps=rest)
    warmup = optax.linear_schedule(0.0, lr, max(warm, 1))
    pieces.append(optax.join_schedules([warmup, after], [warm]) if warm else after)
    total += steps
    boundaries.append(total)
  return optax.join_schedules(pieces, boundaries[:-1])


def _decay_mask(params):
  """Weight decay on matrices and embeddings only (not biases or LayerNorm)."""
  return jax.tree_util.tree_map_with_path(
      lambda path, _: param_path(path).rsplit("/", 1)[-1] in ("kernel", "embedding"), params)


def param_path(path) -> str:
  """``a/b/c`` of a key path into a params tree (nnx's ``value`` leaf left out)."""
  names = [str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path]
  return "/".join(names[:-1] if names and names[-1] == "value" else names)


def trainable_labels(pattern: str):
  """A labelling function for ``optax.multi_transform``: "train" where ``pattern``
  matches a parameter's path, "freeze" elsewhere; raises if it matches none."""
  try:
    regex = re.compile(pattern)
  except re.error as e:
    raise ValueError(f"config.optim.trainable={pattern!r} is not a regular expression: {e}")

  def labels(params):
    out = jax.tree_util.tree_map_with_path(
        lambda path, _: "train" if regex.search(param_path(path)) else "freeze", params)
    if "train" not in jax.tree_util.tree_leaves(out):
      paths = jax.tree_util.tree_leaves_with_path(params)
      example = param_path(paths[0][0]) if paths else "none"
      raise ValueError(f"config.optim.trainable={pattern!r} matches no parameter path "
                       f"(paths look like {example!r})")
    return out
  return labels


def make_optimizer(optim_cfg, schedule: optax.Schedule) -> optax.GradientTransformation:
  """AdamW with global-norm clipping (``clip_norm`` <= 0 turns clipping off), on the
  parameters ``trainable`` matches (all when it is empty)."""
  chain = []
  if optim_cfg.get("clip_norm", 1.0) > 0:
    chain.append(optax.clip_by_global_norm(optim_cfg.clip_norm))
  chain.append(optax.adamw(schedule, b1=optim_cfg.get("b1", 0.9), b2=optim_cfg.get("b2", 0.98),
                           eps=optim_cfg.get("eps", 1e-6),
                           weight_decay=optim_cfg.get("weight_decay", 0.01), mask=_decay_mask))
  tx = optax.chain(*chain)
  pattern = optim_cfg.get("trainable", "")
  if not pattern:
    return tx
  return optax.multi_transform({"train": tx, "freeze": optax.set_to_zero()},
                               trainable_labels(pattern))
