"""Per-computation XLA options for the train and benchmark steps.

On CPU, XLA hands row reductions (LayerNorm and bias gradients) to its YNNPACK
library by default, where they run far slower than its own loops: keeping
YNNPACK to matrix products makes the paper-small 12-layer fwd+bwd at 4,096
tokens about 10% faster on a 2-core machine (9.0 s -> 8.2 s with
``remat="matmuls"``). The option is passed per ``jax.jit`` (``compiler_options``),
so nothing global changes; backends and XLA versions that do not know it get
no options.

``LONGFORMER_JAX_FAST_COMPILE=1`` compiles a run's CPU train and eval steps with LLVM's
optimisation off (``xla_backend_optimization_level=0``): a quarter to a third less
compile time for smoke runs and tests of tiny models, whose steps are compiled far more
than they run; results move by float rounding only.
"""

from __future__ import annotations

import functools
import os

import jax
import jax.numpy as jnp

_CPU = {"xla_cpu_experimental_ynn_fusion_type":
        "LIBRARY_FUSION_TYPE_DOT,LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT"}
FAST_COMPILE_ENV = "LONGFORMER_JAX_FAST_COMPILE"


@functools.cache
def _cpu_options_supported() -> bool:
  try:
    jax.jit(lambda x: x + 1, compiler_options=_CPU).lower(jnp.zeros(1)).compile()
    return True
  except Exception:  # an XLA without the option: compile with its defaults
    return False


def compiler_options(platform: str | None = None) -> dict:
  """Options for ``jax.jit(..., compiler_options=...)`` on ``platform``
  (default: the default backend)."""
  platform = platform or jax.default_backend()
  if platform == "cpu" and _cpu_options_supported():
    return dict(_CPU)
  return {}


def train_step_options(platform: str | None = None) -> dict:
  """:func:`compiler_options` of a run's train and eval steps: with
  ``LONGFORMER_JAX_FAST_COMPILE=1`` on CPU, LLVM's optimisation off too (module
  docstring). Model calls keep :func:`compiler_options`."""
  platform = platform or jax.default_backend()
  options = compiler_options(platform)
  if platform == "cpu" and os.environ.get(FAST_COMPILE_ENV) == "1":
    options["xla_backend_optimization_level"] = 0
  return options
