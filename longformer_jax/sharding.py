"""Device mesh, logical axis names and the rules that map them onto mesh axes.

Parameters carry logical names (``nnx.with_partitioning`` in ``layers.py``);
activations are pinned at layer boundaries with :func:`constrain`. A rules table
(``config.sharding_rules``, default :data:`DEFAULT_RULES`) maps logical names to
mesh axes, so the same model runs data-parallel, FSDP or tensor-parallel by
changing the mesh shape alone.
"""

from __future__ import annotations

import math
from typing import NamedTuple, Sequence

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "tensor", "sequence")

# Logical axis names, declared once.
BATCH, LENGTH, EMBED, HEADS, MLP, VOCAB = "batch", "length", "embed", "heads", "mlp", "vocab"
EMBED_OUT, POSITIONS, TYPES, LABELS, NORM = "embed_out", "positions", "types", "labels", "norm"
ACT_EMBED, LAYERS = "act_embed", "layers"

DEFAULT_RULES: tuple[tuple[str, str | tuple[str, ...] | None], ...] = (
    (BATCH, ("data", "fsdp")),
    (LENGTH, "sequence"),
    (ACT_EMBED, None),
    (EMBED, "fsdp"),
    (EMBED_OUT, None),
    (HEADS, "tensor"),
    (MLP, "tensor"),
    (VOCAB, "tensor"),
    (POSITIONS, None),
    (TYPES, None),
    (LABELS, None),
    (NORM, None),
    (LAYERS, None),
)


def make_mesh(mesh_cfg, devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A mesh with axes ``MESH_AXES``; one size may be -1 (all remaining devices)."""
  devices = list(jax.devices() if devices is None else devices)
  sizes = [int(mesh_cfg.get(axis, 1)) for axis in MESH_AXES]
  if sizes.count(-1) > 1 or any(s == 0 or s < -1 for s in sizes):
    raise ValueError(f"config.mesh: sizes {dict(zip(MESH_AXES, sizes))} must be positive, "
                     "with at most one -1")
  known = math.prod(s for s in sizes if s != -1)
  if -1 in sizes:
    if len(devices) % known:
      raise ValueError(f"config.mesh: {len(devices)} devices do not divide by the fixed axes "
                       f"{dict(zip(MESH_AXES, sizes))}")
    sizes[sizes.index(-1)] = len(devices) // known
  if math.prod(sizes) != len(devices):
    raise ValueError(f"config.mesh: shape {dict(zip(MESH_AXES, sizes))} has "
                     f"{math.prod(sizes)} slots but there are {len(devices)} devices")
  try:
    device_array = jax.experimental.mesh_utils.create_device_mesh(sizes, devices)
  except Exception:  # topology-unaware fallback (e.g. uneven CPU device counts)
    device_array = np.asarray(devices).reshape(sizes)
  return Mesh(device_array, MESH_AXES)


def rules_of(config_rules=None):
  """Rules as a tuple of (logical, mesh axes) pairs."""
  if config_rules is None:
    return DEFAULT_RULES
  return tuple((str(k), tuple(v) if isinstance(v, list) else v) for k, v in config_rules)


def logical_to_spec(logical: Sequence[str | None], rules) -> PartitionSpec:
  table = dict(rules)
  return PartitionSpec(*(table.get(name) if name is not None else None for name in logical))


def _fit(spec: PartitionSpec, shape: tuple[int, ...], mesh: Mesh) -> PartitionSpec:
  """Drops the mesh axes of dimensions they do not divide (e.g. an odd vocabulary)."""
  fitted = []
  for dim, axes in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec))):
    names = (axes,) if isinstance(axes, str) else tuple(axes or ())
    fitted.append(axes if dim % math.prod(mesh.shape[a] for a in names) == 0 else None)
  return PartitionSpec(*fitted)


def state_shardings(abstract_state, mesh: Mesh, rules):
  """NamedShardings for a pytree of (abstract) nnx Variables / arrays.

  A dimension that its mesh axes do not divide is replicated instead. Leafless
  placeholders (optax's ``MaskedNode`` for frozen parameters) stay as they are.
  """
  with nnx.logical_axis_rules(rules):
    specs = nnx.get_partition_spec(abstract_state)
  def sharding(spec, x):
    if not hasattr(x, "shape"):  # a placeholder (the spec may be None there)
      return x
    return NamedSharding(mesh, _fit(spec or PartitionSpec(), x.shape, mesh))
  return jax.tree.map(sharding, specs, abstract_state,
                      is_leaf=lambda x: x is None or isinstance(x, PartitionSpec))


class Partitioning(NamedTuple):
  """Where a model's activations live: the mesh and the logical-name rules. Passed to
  the model (``model_lib.create_model(..., partitioning=)``), it pins activations at
  layer boundaries and, when the rules split ``length`` over a ``sequence`` axis of
  more than one device, runs attention sequence-parallel (``attention/seqpar.py``)."""

  mesh: Mesh
  rules: tuple


def constrain(x: jax.Array, logical: Sequence[str | None],
              partitioning: Partitioning | None) -> jax.Array:
  """``with_sharding_constraint`` by logical names; a no-op without a partitioning."""
  if partitioning is None:
    return x
  mesh, rules = partitioning
  return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, logical_to_spec(logical, rules)))


def sequence_parallel(partitioning: Partitioning | None):
  """(mesh, batch mesh axes) when ``partitioning`` splits activations along the
  sequence (its ``sequence`` axis has more than one device and its rules map
  ``length`` onto it); None otherwise."""
  if partitioning is None:
    return None
  mesh, rules = partitioning
  table = dict(rules)
  if mesh.shape.get("sequence", 1) == 1 or table.get(LENGTH) not in ("sequence", ("sequence",)):
    return None
  batch = table.get(BATCH)
  batch = (batch,) if isinstance(batch, str) else tuple(batch or ())
  batch = tuple(a for a in batch if mesh.shape.get(a, 1) > 1)
  return mesh, (batch if len(batch) > 1 else batch[0] if batch else None)


def _present(mesh: Mesh, axes) -> tuple[str, ...]:
  axes = (axes,) if isinstance(axes, str) else tuple(axes or ())
  return tuple(a for a in axes if mesh.shape.get(a, 1) > 1)


def kernel_parallel(partitioning: Partitioning | None, batch: int, heads: int):
  """(mesh, batch mesh axes, head mesh axes) for running attention kernels per device
  under ``shard_map`` (``seqpar.heads_parallel``), each None where that dimension is
  replicated (no axis of size > 1, or a size it does not divide); None without a
  partitioning or when nothing is split."""
  if partitioning is None:
    return None
  mesh, rules = partitioning
  table = dict(rules)
  def axes_of(name, size):
    axes = _present(mesh, table.get(name))
    if not axes or size % math.prod(mesh.shape[a] for a in axes):
      return None
    return axes if len(axes) > 1 else axes[0]
  batch_axes, head_axes = axes_of(BATCH, batch), axes_of(HEADS, heads)
  if batch_axes is None and head_axes is None and mesh.size == 1:
    return None
  return mesh, batch_axes, head_axes
