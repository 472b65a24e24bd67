"""Masked-LM pretraining continued from RoBERTa (paper section 5): 4,096-token inputs.

First turn RoBERTa into a Longformer (positions copied to 4,096, global Q/K/V from
the local ones), then train:

    python -m longformer_jax.convert roberta ROBERTA_DIR /tmp/longformer-base-init --max-length 4096
    python -m longformer_jax.main --config=configs/mlm.py --workdir=/tmp/lf_mlm \\
        --config.init_from_hf=/tmp/longformer-base-init \\
        --config.data.path=CORPUS.jsonl --config.data.tokenizer=ROBERTA_DIR/tokenizer.json

Paper settings: 65K updates, batch 64 sequences of 4,096, LR 3e-5, 500 warm-up
steps, polynomial decay of power 3, window 512 on every layer (from the checkpoint).
``:cpu`` trains a small random model on a local text file with byte tokens (no
checkpoint), in minutes: ``--config.data.path=FILE.txt``.
"""

import ml_collections
from ml_collections.config_dict import placeholder

from longformer_jax import recipes
from longformer_jax.recipes import run_config


def get_config(variant: str = "") -> ml_collections.ConfigDict:
  cpu = variant == "cpu"
  if variant not in ("", "cpu"):
    raise ValueError(f"unknown variant {variant!r} of configs/mlm.py")
  c = run_config(log_every=10 if cpu else 100, eval_every=100 if cpu else 5_000,
                 eval_batches=8 if cpu else 64, checkpoint_every=100 if cpu else 2_000)
  c.task = "mlm"
  c.init_from_hf = "" if cpu else recipes.default_path("longformer-base-init")
  # With init_from_hf the architecture is the checkpoint's; these are run settings.
  c.model = dict(
      vocab_size=257, num_labels=1, hidden_size=64, num_hidden_layers=2,
      num_attention_heads=4, intermediate_size=256, attention_window=64,
      max_position_embeddings=514, hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1,
      block_size=64 if cpu else 128, max_global_tokens=0,
      dtype="float32" if cpu else "bfloat16", remat="none" if cpu else "full",
      scan_layers=False, attention_impl="auto")
  # Byte tokens use ids 0..255; 256 is <mask>. RoBERTa's <mask> is 50264.
  c.mlm = dict(rate=0.15, mask_token_id=256 if cpu else 50264)
  c.data = dict(name="text_corpus", data_dir=recipes.data_dir(), path="",
                tokenizer="" if cpu else placeholder(str), format=placeholder(str),
                text_field="text", validation_fraction=0.05)
  c.seq_len = 512 if cpu else 4096
  c.batch_size = 8 if cpu else 64
  c.train_steps = 300 if cpu else 65_000
  c.optim = dict(lr=1e-3 if cpu else 3e-5, warmup_steps=30 if cpu else 500, schedule="poly3",
                 trainable="",  # a regex: train only the matching params (paper: positions)
                 end_lr_frac=0.0, weight_decay=0.01, clip_norm=1.0, b1=0.9, b2=0.98,
                 eps=1e-6, grad_accum=1)
  return c
