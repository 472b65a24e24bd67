"""Nucleotide LM on genome FASTA files: the paper's character-LM model on bases, staged.

    python -m longformer_jax.main --config=configs/dna_lm.py --workdir=/tmp/lf_dna \\
        --config.data.files=genome1.fna.gz,genome2.fa        # the small char-LM model
    python -m longformer_jax.main --config=configs/dna_lm.py:cpu --workdir=/tmp/lf_dna_cpu \\
        --config.data.files=genome.fa       # 2 layers, 2 short phases: minutes on a CPU

Variants: ``""`` (the small model, 12 layers, d 512), ``large`` (30 layers), ``cpu``
(2 layers, d 64, phases of 256 and 512 bases), ``tiny`` (1 layer, d 32, one phase of 2
steps: tests).

The architecture is ``configs/char_lm.py``'s (its builders, not a copy): pre-LN
layers, Transformer-XL relative positions inside the causal band, windows growing
with depth, dilation on 2 heads of the upper layers, and its phases' sequence
lengths, LRs, batches and window scales; only the vocabulary (20 ids: RoBERTa's
specials, ACGTN and the IUPAC codes; ``data/nucleotides.py``) and the steps per
phase differ (a bacterial genome is ~5M bases, not 90M characters).

Data (``data/genome.py``): each FASTA record's head trains, then 5% validation, then
a 5% test tail; train crops are reverse-complemented with probability 1/2
(``data.reverse_complement``). ``eval_bpc`` is bits per base: every target is one
base (record ends are not scored), in the char LM's eval windows stepping by
``data.eval_stride``.
"""

import ml_collections

from configs import char_lm
from longformer_jax import recipes
from longformer_jax.recipes import run_config

PHASE_STEPS = {"small": (40_000, 10_000, 5_000, 2_500, 1_000),
               "large": (30_000, 5_000, 2_500, 1_000, 500)}
SCALES = ("paper", "cpu", "tiny")


def _flags(variant: str) -> dict:
  """char_lm's variant flags for a variant of this file."""
  flags = dict(size="small", window="increasing", dilation="on", ablation=False, hf=False,
               scale="paper")
  if variant == "large":
    flags["size"] = "large"
  elif variant in ("cpu", "tiny"):
    flags["scale"] = variant
  elif variant:
    raise ValueError(f"configs/dna_lm.py: unknown variant {variant!r} (large, cpu, tiny)")
  return flags


def get_config(variant: str = "") -> ml_collections.ConfigDict:
  flags = _flags(variant)
  small = flags["scale"] != "paper"
  c = run_config(log_every=10 if small else 100, eval_every=100 if small else 5_000,
                 eval_batches=8 if small else 0, checkpoint_every=100 if small else 5_000)
  c.task = "causal_lm"
  c.model = dict(char_lm.model_fields(flags), vocab_size=-1)  # -1: the data's 20 ids
  if flags["scale"] == "tiny":  # one layer: a test compiles half the program
    c.model.update(num_hidden_layers=1, attention_window=char_lm.layer_windows(1, 16, 64),
                   attention_dilation=char_lm.layer_dilations(1, c.model.num_attention_heads))
  c.data = dict(name="genome_lm", data_dir=recipes.data_dir(), files=(),
                validation_fraction=0.05, test_fraction=0.05, reverse_complement=True,
                chunk_size=65536,
                eval_stride={"paper": 512, "cpu": 256, "tiny": 32}[flags["scale"]])
  phases = char_lm.phases_of(flags)
  if not small:
    phases = tuple((s, lr, b, n, w) for (s, lr, b, _, w), n
                   in zip(phases, PHASE_STEPS[flags["size"]]))
  char_lm.set_phases(c, phases)
  return c
