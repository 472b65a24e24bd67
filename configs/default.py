"""Key-value recall over 2,048-token documents: the offline default (2-core CPU, < 5 min).

Position 0 holds a query key; two (key, value) pairs, each planted 16 times as
fused pair tokens, sit at least 1,024 tokens away among filler tokens. The window
(32, two layers: reach 32) cannot bridge that distance, so only global attention on
token 0 can answer (8 classes, chance 12.5%); eval reports accuracy with global
attention and, for the same model, without it.

    python -m longformer_jax.main --config=configs/default.py --workdir=/tmp/lf_default

Variants: ``:no_global`` trains with global attention off (the ablation);
``:tiny`` is a seconds-long smoke run (tests).
"""

import ml_collections

from longformer_jax import recipes
from longformer_jax.recipes import run_config


def get_config(variant: str = "") -> ml_collections.ConfigDict:
  c = run_config(log_every=20, eval_every=350, eval_without_global=True,
                 checkpoint_every=350, keep_checkpoints=2)
  c.task = "classification"
  c.model = dict(
      vocab_size=-1, num_labels=-1,  # from the data
      hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
      attention_window=32, max_position_embeddings=2050, hidden_dropout_prob=0.0,
      attention_probs_dropout_prob=0.0, block_size=32, max_global_tokens=1,
      dtype="float32", remat="none", scan_layers=False, attention_impl="auto")
  c.data = dict(name="kv_recall", data_dir=recipes.data_dir(), num_pairs=2,
                num_keys=2, num_values=8, num_fillers=1, min_distance=1024,
                num_train=20_000, num_eval=512, seed=0, fused=True, copies=16,
                global_query=True)
  c.seq_len = 2048
  c.batch_size = 8
  c.train_steps = 700
  c.optim = dict(lr=3e-3, warmup_steps=50, schedule="linear", end_lr_frac=0.0,
                 weight_decay=0.01, clip_norm=1.0, b1=0.9, b2=0.98, eps=1e-6, grad_accum=1)

  if variant == "no_global":
    c.data.global_query = False
  elif variant == "tiny":
    c.seq_len = 128
    c.model.max_position_embeddings = 130
    c.model.attention_window = 8
    c.model.block_size = 8
    c.data.min_distance = 32
    c.data.num_train, c.data.num_eval = 256, 32
    c.batch_size = 8
    c.train_steps = 20
    c.optim.warmup_steps = 2
    c.log_every = 1
    c.eval_every = 10
    c.checkpoint_every = 5
    c.eval_without_global = False  # one eval program: the tests compile less
  elif variant:
    raise ValueError(f"unknown variant {variant!r} of configs/default.py")
  return c
