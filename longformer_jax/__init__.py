"""Longformer (Beltagy, Peters, Cohan 2020) in JAX / Flax nnx.

The public names load on first use (``lj.from_hf``), and the package imports no
JAX until a module that needs it: the config builders (``recipes``) import
ml_collections only, so reading ``configs/*.py`` stays light.
"""

import importlib
import importlib.machinery
import importlib.util
import sys


def _skip_absent_tpu() -> None:
  """With libtpu installed (ahead-of-time TPU compiles need it) on a machine without a
  TPU, JAX would start libtpu at its first use only to fail, printing errors and
  losing time. When no TPU chip is attached and the user chose no platforms, the TPU
  backend fails at once, without loading libtpu, and says nothing. Abstract TPU
  topologies (``topology.py``) load libtpu on their own."""
  import dataclasses
  import logging
  import os
  if os.environ.get("JAX_PLATFORMS"):
    return
  try:
    from jax._src import hardware_utils, xla_bridge
    registration = xla_bridge._backend_factories.get("tpu")
    if (registration is None or xla_bridge.backends_are_initialized()
        or hardware_utils.num_available_tpu_chips_and_device_id()[0] > 0):
      return
  except (ImportError, AttributeError):  # another JAX: leave it as it is
    return

  def absent():
    raise RuntimeError("no TPU chip is attached")

  xla_bridge._backend_factories["tpu"] = dataclasses.replace(
      registration, factory=absent, fail_quietly=True)
  logging.getLogger(xla_bridge.__name__).addFilter(
      lambda record: "backend 'tpu'" not in record.getMessage())


# Modules that import no JAX: importing them leaves the TPU backend alone.
_JAX_FREE = frozenset({"recipes"})


class _SkipAbsentTpuFirst:
  """Runs :func:`_skip_absent_tpu` before any JAX backend can start: right after JAX
  itself is imported (whoever imports it), or before the first module of this package
  that uses JAX. A meta path finder: it finds only JAX (to run the guard after it)."""

  done = False

  def find_spec(self, name, path=None, target=None):
    if self.done:
      return None
    if name.startswith(__name__ + ".") and name.split(".")[1] not in _JAX_FREE:
      type(self).done = True
      _skip_absent_tpu()
    elif name == "jax":
      type(self).done = True
      spec = importlib.machinery.PathFinder.find_spec(name, path)
      if spec is not None and spec.loader is not None:
        run_jax = spec.loader.exec_module

        def run_jax_then_skip(module):
          run_jax(module)
          _skip_absent_tpu()
        spec.loader.exec_module = run_jax_then_skip
        return spec
    return None


if "jax" in sys.modules:
  _skip_absent_tpu()
else:
  sys.meta_path.insert(0, _SkipAbsentTpuFirst())

_LAZY = {
    "LongformerConfig": "config", "from_hf": "longformer_convert",
    "load_native": "longformer_convert", "save_native": "longformer_convert",
    "to_hf": "longformer_convert", "TASKS": "model",
    "LongformerForMaskedLM": "model", "LongformerForMultipleChoice": "model",
    "LongformerForQuestionAnswering": "model", "LongformerForSequenceClassification": "model",
    "LongformerForTokenClassification": "model", "LongformerModel": "model",
    "create_model": "model",
}

__all__ = [
    "LongformerConfig", "LongformerModel", "LongformerForMaskedLM",
    "LongformerForSequenceClassification", "LongformerForTokenClassification",
    "LongformerForQuestionAnswering", "LongformerForMultipleChoice", "TASKS", "create_model",
    "from_hf", "to_hf", "save_native", "load_native",
]


def __getattr__(name):
  """A public name (``lj.from_hf``) or a submodule (``lj.convert``), imported on first use."""
  if name in _LAZY:
    value = getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
  elif not name.startswith("_") and importlib.util.find_spec(f"{__name__}.{name}"):
    value = importlib.import_module(f"{__name__}.{name}")
  else:
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
  globals()[name] = value
  return value


def __dir__():
  return sorted(set(globals()) | set(__all__))
