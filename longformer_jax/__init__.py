"""Longformer (Beltagy, Peters, Cohan 2020) in JAX / Flax nnx."""


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


_skip_absent_tpu()

from longformer_jax.config import LongformerConfig
from longformer_jax.convert import from_hf, load_native, save_native, to_hf
from longformer_jax.model import (TASKS, LongformerForMaskedLM, LongformerForMultipleChoice,
                                  LongformerForQuestionAnswering,
                                  LongformerForSequenceClassification,
                                  LongformerForTokenClassification, LongformerModel,
                                  create_model)

__all__ = [
    "LongformerConfig", "LongformerModel", "LongformerForMaskedLM",
    "LongformerForSequenceClassification", "LongformerForTokenClassification",
    "LongformerForQuestionAnswering", "LongformerForMultipleChoice", "TASKS", "create_model",
    "from_hf", "to_hf", "save_native", "load_native",
]
