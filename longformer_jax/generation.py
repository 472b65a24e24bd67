"""Kept import path: ``longformer_jax.generation`` is ``longformer_jax.led.generation``."""
import sys
from longformer_jax.led import generation as _generation
sys.modules[__name__] = _generation
