"""Classifying long genome fragments (which FASTA file, or which annotated label, a
fragment of 4,094 bases comes from), global attention on ``<s>``; random init.

    python -m longformer_jax.main --config=configs/dna_classify.py --workdir=/tmp/lf_dnacls \\
        --config.data.files=ecoli.fna.gz,bsubtilis.fna.gz       # classes: the file stems
    python -m longformer_jax.main --config=configs/dna_classify.py --workdir=/tmp/lf_dnacls \\
        --config.data.files=genome.fa --config.data.annotations=regions.tsv
        # classes: the labels of record_id<TAB>start<TAB>end<TAB>label lines

Variants: ``""`` (6 layers, d 256, windows of 256, fragments of 4,096 tokens), ``cpu``
(2 layers, d 64, 1,024 tokens: minutes on a CPU), ``tiny`` (1 layer, 2 steps: tests).

Data (``data/genome.py``): each record's head trains, then 5% validation, then a 5%
test tail (contiguous, never overlapping); an element is ``<s>``, seq_len - 2 bases
and ``</s>``, train fragments starting anywhere and reverse-complemented with
probability 1/2, evaluation fragments tiling the held-out regions. Metrics:
``accuracy``, ``macro_f1`` (and ``f1`` of class 1 with two classes); predictions per
fragment name its piece (``stem/record:start-end``).
"""

import ml_collections

from longformer_jax import recipes
from longformer_jax.recipes import run_config

SIZES = {  # hidden, layers, heads, window, seq_len, batch, steps, lr
    "": (256, 6, 4, 256, 4096, 16, 5_000, 3e-4),
    "cpu": (64, 2, 4, 64, 1024, 8, 200, 1e-3),
    "tiny": (32, 1, 4, 16, 64, 4, 2, 1e-3),
}


def get_config(variant: str = "") -> ml_collections.ConfigDict:
  if variant not in SIZES:
    raise ValueError(f"unknown variant {variant!r} of configs/dna_classify.py "
                     f"(one of {sorted(SIZES)})")
  hidden, layers, heads, window, seq_len, batch, steps, lr = SIZES[variant]
  tiny = variant == "tiny"
  every = 2 if tiny else max(steps // 10, 1)
  c = run_config(log_every=1 if tiny else 20, eval_every=every, checkpoint_every=every,
                 keep_checkpoints=2, eval_batches=0)
  c.task = "classification"
  c.model = dict(
      vocab_size=-1, num_labels=-1,  # from the data: 20 ids; the classes
      hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
      intermediate_size=4 * hidden, attention_window=window,
      max_position_embeddings=seq_len + 2, hidden_dropout_prob=0.1,
      attention_probs_dropout_prob=0.1, max_global_tokens=1, block_size=8 if tiny else 64,
      dtype="float32" if variant else "bfloat16", remat="none" if variant else "matmuls",
      attention_impl="auto")
  c.data = dict(name="genome_classification", data_dir=recipes.data_dir(),
                files=(), annotations="", validation_fraction=0.05, test_fraction=0.05,
                reverse_complement=True)
  c.seq_len, c.batch_size, c.train_steps = seq_len, batch, steps
  c.optim = dict(lr=lr, warmup_steps=1 if tiny else steps // 10, schedule="linear",
                 end_lr_frac=0.0, weight_decay=0.01, clip_norm=1.0, b1=0.9, b2=0.999,
                 eps=1e-6, grad_accum=1)
  return c
