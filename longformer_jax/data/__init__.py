"""Datasets (tfds builders, array_record) and grain input pipelines."""

from longformer_jax.data.corpora import (CharCorpusConfig, Enwik8, Text8, TextCorpus,
                                         TextCorpusConfig, char_split_bounds,
                                         load_split_tokens)
from longformer_jax.data.kv_recall import (KvRecall, KvRecallConfig, kv_recall_example,
                                           kv_recall_token_ranges, kv_recall_vocab_size)
from longformer_jax.data.pipeline import (NAMES, SPLITS, eval_windows, get_builder,
                                          make_iterator, num_labels, prepare, vocab_size)

__all__ = [
    "make_iterator", "vocab_size", "num_labels", "prepare", "get_builder", "eval_windows",
    "NAMES", "SPLITS", "kv_recall_example", "kv_recall_vocab_size", "kv_recall_token_ranges",
    "KvRecall", "KvRecallConfig", "Text8", "Enwik8", "CharCorpusConfig", "TextCorpus",
    "TextCorpusConfig", "char_split_bounds", "load_split_tokens",
]
