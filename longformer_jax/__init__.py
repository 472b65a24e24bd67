"""Longformer (Beltagy, Peters, Cohan 2020) in JAX / Flax nnx."""

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
