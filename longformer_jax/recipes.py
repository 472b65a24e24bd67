"""Config builders shared by the experiment files (``configs/*.py``).

This module imports ml_collections and absl flags only: reading a config imports
neither JAX nor the training library.

:func:`run_config` holds the run fields every config shares. :func:`finetune_config`
holds the paper's fine-tuning setup (section 6, appendix D): start from a pretrained
Longformer directory (``init_from_hf``, whose tokenizer is also the data's unless
``data.tokenizer`` is set), AdamW, linear decay after a warm-up, sequences of 4,096.
:func:`tiny_finetune` shrinks one to a random-init model that runs in seconds (the
``:tiny`` variants the tests run on generated files in the real formats).

A field whose default is None is a typed placeholder (None until set), so that
``--config.KEY=VALUE`` can set it; list fields are set like tuples (``1,2``).
"""

from __future__ import annotations

import ast
import math
import os

import ml_collections
from ml_collections import config_flags
from ml_collections.config_dict import placeholder
from ml_collections.config_flags import tuple_parser

ROOT_ENV = "LONGFORMER_JAX_ROOT"


def default_path(name: str) -> str:
  """``name`` under the one folder the configs' default paths live in:
  ``$LONGFORMER_JAX_ROOT`` (a local folder or ``gs://bucket/folder``, set once on every
  host of a pod), else ``/tmp``."""
  root = os.environ.get(ROOT_ENV) or "/tmp"
  return f"{root.rstrip('/')}/{name}"


def data_dir() -> str:
  """The default ``config.data.data_dir``: where prepared datasets live."""
  return default_path("longformer_jax_data")


PAPER_CHECKPOINT = "longformer-base-4096"  # an HF Longformer directory, under default_path


def _literal(text: str):
  """A Python literal (``3``, ``'a'``, ``1e-3``), or the text itself (``neg``)."""
  try:
    return ast.literal_eval(text)
  except (ValueError, SyntaxError):
    return text


class TupleParser(tuple_parser.TupleParser):
  """``--config.KEY=neg,pos`` -> ``('neg', 'pos')`` for a tuple field (ml_collections
  alone gives ``('neg,pos',)``: bare words are not literals); ``'("a", 1)'`` and
  ``1,2`` parse as before."""

  def parse(self, argument):
    if not (isinstance(argument, str) and "," in argument):
      return super().parse(argument)
    try:
      parsed = super().parse(argument)
    except (ValueError, SyntaxError):  # not a literal: "a b,1e-3"
      parsed = None
    if parsed is None or (len(parsed) == 1 and parsed[0] == argument.strip()):
      parsed = tuple(_literal(part.strip()) for part in argument.split(","))
    return parsed


class ListParser(TupleParser):
  """The same for a list field (ml_collections overrides tuples but not lists, e.g.
  char_lm's per-layer windows): ``--config.KEY=1,2``, ``'[1, 2]'`` or repeated."""

  def parse(self, argument):
    return argument if isinstance(argument, list) else list(super().parse(argument))

  def flag_type(self):
    return "list"


config_flags.register_flag_parser_for_type(tuple, TupleParser())
config_flags.register_flag_parser_for_type(list, ListParser())


def optional(value, field_type: type):
  """``value``, or when None a placeholder of ``field_type``: None that the command line
  can set (``--config.KEY=...`` needs a field's type)."""
  return placeholder(field_type) if value is None else value


def run_config(**overrides) -> ml_collections.ConfigDict:
  """The run fields every experiment config shares (mesh, logging, eval, checkpoints).

  Configs start from this and add ``task``, ``model``, ``data``, ``optim`` and the
  phase fields (``seq_len``, ``batch_size``, ``train_steps`` or ``phases``).
  """
  c = ml_collections.ConfigDict(dict(
      seed=0, phases=(), init_from_hf="",
      mesh=dict(data=-1, fsdp=1, tensor=1, sequence=1),
      # None: longformer_jax.sharding.DEFAULT_RULES; else (logical, mesh axes) pairs
      sharding_rules=placeholder(tuple),
      log_every=100, eval_every=1000, eval_split="validation",
      eval_batches=0,  # 0: the whole split
      eval_without_global=False, checkpoint_every=1000, keep_checkpoints=3,
      async_checkpoints=True,
      distributed=dict(enabled=False, coordinator_address=placeholder(str),
                       num_processes=placeholder(int), process_id=placeholder(int))))
  c.update(overrides)
  return c


def steps_for(epochs: float, train_examples: int, batch_size: int) -> int:
  return int(math.ceil(epochs * train_examples / batch_size))


def finetune_config(task: str, data: dict, *, train_steps: int, lr: float = 3e-5,
                    batch_size: int = 32, seq_len: int = 4096, warmup_steps: int | None = None,
                    warmup_frac: float = 0.1, max_global_tokens: int = 1,
                    eval_every: int = 1000) -> ml_collections.ConfigDict:
  c = run_config(log_every=20, eval_every=eval_every, checkpoint_every=eval_every,
                 keep_checkpoints=2, eval_split="validation")
  c.task = task
  c.init_from_hf = default_path(PAPER_CHECKPOINT)
  # With init_from_hf these only set how to run the checkpoint (and its new head).
  c.model = dict(num_labels=-1, hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1,
                 max_global_tokens=max_global_tokens, dtype="bfloat16", remat="matmuls",
                 block_size=128, attention_impl="auto")
  # tokenizer None: the one in the init_from_hf directory
  c.data = dict(data_dir=data_dir(), tokenizer=placeholder(str), **data)
  c.seq_len = seq_len
  c.batch_size = batch_size
  c.train_steps = train_steps
  c.optim = dict(lr=lr, warmup_steps=optional(warmup_steps, int), warmup_frac=warmup_frac,
                 schedule="linear", end_lr_frac=0.0, weight_decay=0.01, clip_norm=1.0,
                 b1=0.9, b2=0.999, eps=1e-6, grad_accum=1)
  return c


def tiny_finetune(c: ml_collections.ConfigDict, *, seq_len: int = 64) -> ml_collections.ConfigDict:
  """A random-init 2-layer model on the same task and data format, 2 steps."""
  c.init_from_hf = ""
  c.model = dict(vocab_size=-1, num_labels=-1, hidden_size=32, num_hidden_layers=2,
                 num_attention_heads=4, intermediate_size=64, attention_window=16,
                 max_position_embeddings=seq_len + 2, hidden_dropout_prob=0.1,
                 attention_probs_dropout_prob=0.1,
                 max_global_tokens=c.model.get("max_global_tokens", 1), dtype="float32",
                 remat="none", block_size=8, attention_impl="auto")
  c.data.tokenizer = ""  # set it: no checkpoint directory to take one from
  c.seq_len, c.batch_size, c.train_steps = seq_len, 4, 2
  c.optim.warmup_steps = 1
  c.log_every, c.eval_every, c.checkpoint_every = 1, 2, 2
  return c


def finetune_qa(data: dict, *, train_steps: int, warmup_steps: int, max_query_length: int = 64,
                doc_stride: int = 256, eval_every: int = 2000) -> ml_collections.ConfigDict:
  """Extractive QA from a checkpoint: global attention on <s> and the question (so
  ``max_global_tokens`` = ``max_query_length`` + 1), windows overlapping by
  ``doc_stride``, answers up to 30 tokens."""
  c = finetune_config("question_answering",
                      dict(name="extractive_qa", files=dict(train="", validation=""),
                           doc_stride=doc_stride, max_query_length=max_query_length,
                           max_occurrences=8, **{"format": "squad", **data}),
                      train_steps=train_steps, warmup_steps=warmup_steps,
                      max_global_tokens=max_query_length + 1, eval_every=eval_every)
  c.qa = dict(max_answer_length=30)
  return c


def tiny_qa(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """:func:`tiny_finetune` for QA: questions of 16 tokens, windows overlapping by 8."""
  c.model.max_global_tokens = 17
  c = tiny_finetune(c)
  c.data.update(dict(doc_stride=8, max_query_length=16))
  c.qa.max_answer_length = 8
  return c
