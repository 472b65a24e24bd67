"""Our parameters <-> an HF state dict, for every model family: one engine, one
:class:`KeyMap` per family saying how its parameter paths are named in HF checkpoints.

The engine handles what every family shares: kernels stored transposed (HF's
``(out, in)``), a scanned encoder's stacked arrays standing for one key per layer,
float32 host arrays, shape checks that name the key, unknown and missing keys.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Callable, Iterator

import jax.numpy as jnp
import numpy as np
from flax import nnx

log = logging.getLogger("longformer_jax")

# The last part of an HF key, by the last part of our parameter path.
LEAF_TO_HF = {"kernel": "weight", "embedding": "weight", "scale": "weight", "bias": "bias"}


@dataclasses.dataclass(frozen=True)
class KeyMap:
  """How one family's parameters are named in HF state dicts.

  * ``key_of(path)``: the HF key of a parameter path (a stacked array's path with its
    ``layers`` entry replaced by ``("layer", i)``).
  * ``stacked(path)``: whether the array holds a leading layer axis.
  * ``variables``: the nnx filter of the variables that map to keys.
  * ``tolerated(key)``: checkpoint keys this model lacks that are skipped (with a
    warning) rather than refused: another task's head.
  * ``optional(key)``: model keys a checkpoint may lack (they keep their init);
    ``warn_optional``: say so when one is missing.
  """

  family: str
  key_of: Callable[[tuple], str]
  stacked: Callable[[tuple], bool]
  variables: object = nnx.Param
  tolerated: Callable[[str], bool] = lambda key: False
  optional: Callable[[str], bool] = lambda key: False
  warn_optional: bool = True


def entries(keymap: KeyMap, model) -> Iterator[tuple[str, tuple, object, int | None]]:
  """(HF key, our path, variable, layer index or None) of every mapped variable."""
  for path, var in nnx.to_flat_state(nnx.state(model, keymap.variables)):
    if keymap.stacked(path):
      k = path.index("layers")
      for i in range(var.shape[0]):
        yield keymap.key_of(path[:k] + ("layer", i) + path[k + 1:]), path, var, i
    else:
      yield keymap.key_of(path), path, var, None


def _hf_layout(path: tuple, x: np.ndarray) -> np.ndarray:
  """Ours -> HF's layout (kernels transposed); its own inverse."""
  return np.ascontiguousarray(x.T) if path[-1] == "kernel" else x


def state_dict(keymap: KeyMap, model) -> dict[str, np.ndarray]:
  """``model``'s parameters as an HF state dict (float32 numpy, HF layouts)."""
  out = {}
  for key, path, var, i in entries(keymap, model):
    value = np.asarray(var[...], np.float32)
    out[key] = _hf_layout(path, value if i is None else value[i])
  return out


def _check_keys(keymap: KeyMap, expected: dict, sd: dict) -> None:
  """Raises on unknown keys and on missing ones that are not optional; warns on the rest."""
  name = keymap.family
  unknown = sorted(k for k in sd if k not in expected and not keymap.tolerated(k))
  if unknown:
    raise ValueError(f"checkpoint has {len(unknown)} unknown keys for a {name} model: "
                     f"{unknown[:8]}")
  unused = sorted(k for k in sd if k not in expected)
  if unused:
    log.warning("checkpoint weights not used by the %s model: %s", name, unused[:8])
  missing = sorted(k for k in expected if k not in sd)
  required = [k for k in missing if not keymap.optional(k)]
  if required:
    raise ValueError(f"checkpoint lacks {len(required)} weights of the {name} model: "
                     f"{required[:8]}")
  if missing and keymap.warn_optional:
    log.warning("newly initialised (not in the checkpoint): %s", missing)


def param_values(keymap: KeyMap, model, sd: dict[str, np.ndarray]) -> dict[tuple, np.ndarray]:
  """The variables an HF state dict (keys as ``model`` names them) gives ``model``, as
  float32 host arrays by path. ``model`` may be abstract (``nnx.eval_shape``)."""
  expected = {key: (path, var, i) for key, path, var, i in entries(keymap, model)}
  _check_keys(keymap, expected, sd)
  values: dict[tuple, np.ndarray] = {}
  for key, (path, var, i) in expected.items():
    if key not in sd:
      continue  # optional: keeps its init
    shape = var.shape if i is None else var.shape[1:]
    value = _hf_layout(path, np.asarray(sd[key], np.float32))
    if value.shape != shape:
      raise ValueError(f"checkpoint key {key} has shape {sd[key].shape}, the model expects "
                       f"{_hf_layout(path, np.zeros(shape)).shape}")
    if i is None:
      values[path] = value
    else:  # one layer of a stacked (scanned) array; checks above ensure every layer
      values.setdefault(path, np.zeros(var.shape, np.float32))[i] = value
  return values


def load(keymap: KeyMap, model, values: dict[tuple, np.ndarray]) -> None:
  """Puts :func:`param_values`' arrays into ``model``, in each variable's dtype."""
  flat = dict(nnx.to_flat_state(nnx.state(model, keymap.variables)))
  nnx.update(model, nnx.from_flat_state(
      [(p, flat[p].replace(jnp.asarray(v, flat[p].dtype))) for p, v in values.items()]))
