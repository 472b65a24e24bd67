"""Character-level LM on text8 / enwik8 (paper section 4, the small model), staged training.

    python -m longformer_jax.main --config=configs/char_lm.py:text8 --workdir=/tmp/lf_text8 \\
        --config.data.path=$HOME/data/text8.zip
    python -m longformer_jax.main --config=configs/char_lm.py:enwik8 --workdir=/tmp/lf_enwik8 \\
        --config.data.path=$HOME/data/enwik8.zip
    python -m longformer_jax.main --config=configs/char_lm.py:text8,cpu --workdir=/tmp/lf_t8cpu \\
        --config.data.path=$HOME/data/text8.zip   # 2 layers, 2 short phases: minutes on a CPU

The zip is downloaded to ``data.path`` when it is missing and a network exists.
Five phases, one launch: each doubles sequence length and window and halves the
LR (warm-up: 10% of a phase, at most 10K steps; constant after). Phase-1 windows
grow linearly with depth from 32 (layer 0) to 512 (top layer), rounded to even
numbers; dilation on 2 heads per the paper (0 on layers 0-5, 1, 1, 2, 2, 3, 3 above,
our dilation being the paper's + 1). Eval: BPC on the validation split, windows of
the phase's length scored on their last 512 characters.

Differences from the paper's model, kept so that checkpoints stay HF-compatible:
post-LN layers and learned absolute positions (the paper: pre-LN and relative
sinusoidal positions).
"""

import ml_collections

from longformer_jax.train import run_config

PHASES_SMALL = (  # (seq_len, lr, batch, steps, window_scale)
    (2048, 2.5e-4, 32, 430_000, 1),
    (4096, 1.25e-4, 32, 50_000, 2),
    (8192, 6.25e-5, 16, 50_000, 4),
    (16384, 3.125e-5, 16, 35_000, 8),
    (23040, 1.5625e-5, 16, 5_000, 16),
)


def layer_windows(layers: int, low: int = 32, high: int = 512) -> list[int]:
  """Windows growing linearly with depth from ``low`` to ``high`` (even numbers)."""
  return [int(round((low + (high - low) * i / max(layers - 1, 1)) / 2) * 2)
          for i in range(layers)]


def layer_dilations(layers: int, heads: int) -> list[list[int]]:
  """Paper's small-model dilation on 2 heads: 0 / 1 / 2 / 3 over the top 6 layers (+1)."""
  top = [1, 1, 2, 2, 3, 3]
  paper = [0] * (layers - len(top)) + top if layers >= len(top) else top[-layers:]
  return [[1 + d] * 2 + [1] * (heads - 2) for d in paper]


def get_config(variant: str = "text8") -> ml_collections.ConfigDict:
  corpus, *flags = variant.split(",")
  if corpus not in ("text8", "enwik8"):
    raise ValueError(f"configs/char_lm.py: corpus {corpus!r} is not text8 or enwik8")
  cpu = "cpu" in flags
  layers, hidden, heads = (2, 64, 4) if cpu else (12, 512, 8)
  c = run_config(log_every=10 if cpu else 100, eval_every=100 if cpu else 10_000,
                 eval_batches=8 if cpu else 0, checkpoint_every=100 if cpu else 5_000)
  c.task = "causal_lm"
  c.model = dict(
      vocab_size=256, num_labels=1, hidden_size=hidden, num_hidden_layers=layers,
      num_attention_heads=heads, intermediate_size=4 * hidden,
      attention_window=layer_windows(layers, 16, 64) if cpu else layer_windows(layers),
      attention_dilation=layer_dilations(layers, heads), causal=True,
      max_position_embeddings=(1024 if cpu else 23040) + 2, hidden_dropout_prob=0.2,
      attention_probs_dropout_prob=0.2, block_size=64 if cpu else 128, pad_token_id=1,
      max_global_tokens=0, dtype="float32" if cpu else "bfloat16",
      remat="none" if cpu else "full", scan_layers=False)
  c.data = dict(name=corpus, data_dir="/tmp/longformer_jax_data",
                path=f"/tmp/longformer_jax_data/{corpus}.zip", eval_stride=512 if not cpu else 256)
  phases = ((256, 1e-3, 8, 150, 1), (512, 5e-4, 8, 50, 2)) if cpu else PHASES_SMALL
  c.phases = tuple(dict(seq_len=s, lr=lr, batch_size=b, steps=n, window_scale=w)
                   for s, lr, b, n, w in phases)
  c.seq_len, c.batch_size, c.train_steps = phases[0][0], phases[0][2], phases[0][3]
  c.optim = dict(lr=phases[0][1], warmup_steps=None, warmup_frac=0.1,
                 max_warmup_steps=10_000, schedule="constant", weight_decay=0.01,
                 clip_norm=0.25, b1=0.9, b2=0.98, eps=1e-6, grad_accum=1)
  return c
