"""Datasets (tfds builders, array_record), their registry and grain input pipelines.

Importing the package registers every dataset module below.
"""

from longformer_jax.data import registry
from longformer_jax.data import pipeline
from longformer_jax.data import (classification, conll,  # noqa: F401  (registration)
                                 extractive_qa, genome, images, kv_recall,
                                 language_modeling, summarization, wikihop)
from longformer_jax.data.corpora import (CharCorpusConfig, Enwik8, Text8, TextCorpus,
                                         TextCorpusConfig, char_split_bounds,
                                         load_split_tokens)
from longformer_jax.data.kv_recall import (KvRecall, KvRecallConfig, kv_recall_example,
                                           kv_recall_token_ranges, kv_recall_vocab_size)
from longformer_jax.data.language_modeling import eval_windows
from longformer_jax.data.pipeline import (batch_spec, data_config, get_builder, make_iterator,
                                          num_labels, prepare, stored_examples, vocab_size)
from longformer_jax.data.registry import DATASETS

__all__ = [
    "make_iterator", "stored_examples", "vocab_size", "num_labels", "prepare", "get_builder", "eval_windows",
    "DATASETS", "registry", "pipeline", "kv_recall_example", "kv_recall_vocab_size",
    "kv_recall_token_ranges", "KvRecall", "KvRecallConfig", "Text8", "Enwik8",
    "CharCorpusConfig", "TextCorpus", "TextCorpusConfig", "char_split_bounds",
    "load_split_tokens", "batch_spec", "data_config",
]
