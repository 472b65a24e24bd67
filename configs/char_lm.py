"""Character-level LM on text8 / enwik8: the paper's model (section 4), staged training.

    python -m longformer_jax.main --config=configs/char_lm.py:text8 --workdir=/tmp/lf_text8 \\
        --config.data.path=$HOME/data/text8.zip            # small, 41M parameters
    python -m longformer_jax.main --config=configs/char_lm.py:enwik8 --workdir=/tmp/lf_enwik8 \\
        --config.data.path=$HOME/data/enwik8.zip           # small
    python -m longformer_jax.main --config=configs/char_lm.py:enwik8,large \\
        --workdir=/tmp/lf_enwik8_large --config.data.path=$HOME/data/enwik8.zip   # 102M
    python -m longformer_jax.main --config=configs/char_lm.py:text8,cpu --workdir=/tmp/lf_t8cpu \\
        --config.data.path=$HOME/data/text8.zip   # 2 layers, 2 short phases: minutes on a CPU

Variant flags (comma-separated after the corpus):

* ``large``: 30 layers, dropout 0.4, the large model's phase lengths and dilation.
* ``window=increasing|fixed|decreasing``, ``dilation=on|off``: the Table 4 ablation
  (increasing and on are the paper's model; fixed is w = 230 on every layer,
  decreasing the increasing windows upside down).
* ``ablation``: the ablation's schedule, phase 1 only for 150K steps.
* ``hf``: the HF-compatible architecture instead (post-LN, learned absolute
  positions up to 23,040, global projections): checkpoints that transformers loads.
* ``cpu``: the same architecture shrunk to run on a CPU (2 layers, d 64, phases of
  256 and 512 characters); ``tiny``: smaller still, one phase of 2 steps (tests).

The paper's model: pre-LN layers; Transformer-XL relative sinusoidal positions
inside the banded attention (``attention/relative_position.py``; no position table); causal
windows growing linearly with depth from 32 (layer 0) to 512 (top layer), rounded
to even numbers; dilation on 2 heads (paper: 0 on the lower layers, then 1, 2, 3 on
the upper ones; ours is the paper's + 1); bf16 compute with the attention's
q, k, v in fp32 (the paper kept attention in fp32); full remat.

Five phases, one launch: each doubles sequence length and window and halves the
LR (warm-up: 10% of a phase, at most 10K steps; constant after). Eval: BPC on the
validation split, windows of the phase's length stepping by 512, each scoring its
last 512 characters (the paper's 32,256 / 512 protocol with the phase's context).
The zip is downloaded to ``data.path`` when it is missing and a network exists.
"""

import ml_collections
from ml_collections.config_dict import placeholder

from longformer_jax import recipes
from longformer_jax.recipes import run_config

PHASE_SHAPES = (  # (seq_len, lr, batch, window_scale), paper Table 12
    (2048, 2.5e-4, 32, 1), (4096, 1.25e-4, 32, 2), (8192, 6.25e-5, 16, 4),
    (16384, 3.125e-5, 16, 8), (23040, 1.5625e-5, 16, 16))
PHASE_STEPS = {"small": (430_000, 50_000, 50_000, 35_000, 5_000),
               "large": (350_000, 25_000, 10_000, 5_000, 5_000)}
ARCH = {"small": dict(layers=12, dropout=0.2), "large": dict(layers=30, dropout=0.4)}
FIXED_WINDOW = 230  # the ablation's fixed window (paper Table 4)
ABLATION_STEPS = 150_000


def layer_windows(layers: int, low: int = 32, high: int = 512) -> list[int]:
  """Windows growing linearly with depth from ``low`` to ``high`` (even numbers)."""
  return [int(round((low + (high - low) * i / max(layers - 1, 1)) / 2) * 2)
          for i in range(layers)]


def ablation_windows(layers: int, kind: str, low: int = 32, high: int = 512) -> list[int]:
  """Table 4's windows: ``increasing`` (the model's), ``decreasing``, ``fixed``."""
  increasing = layer_windows(layers, low, high)
  if kind == "increasing":
    return increasing
  if kind == "decreasing":
    return increasing[::-1]
  if kind == "fixed":
    return [int(round(FIXED_WINDOW * (high / 512)))] * layers
  raise ValueError(f"configs/char_lm.py: window={kind!r} is not increasing, fixed or "
                   "decreasing")


def paper_dilation(layers: int) -> list[int]:
  """The paper's dilation of the 2 dilated heads per layer: 0 below, then 1, 2, 3 on the
  top 6 layers (small: 2 layers each) or top 15 (large: 5 each)."""
  per = 2 if layers <= 12 else 5
  top = [1] * per + [2] * per + [3] * per
  return ([0] * (layers - len(top)) + top) if layers >= len(top) else top[-layers:]


def layer_dilations(layers: int, heads: int, on: bool = True) -> list[list[int]]:
  """Our per-head dilation (the paper's + 1) on 2 heads; 1 elsewhere, or everywhere if off."""
  return [[1 + d * on] * 2 + [1] * (heads - 2) for d in paper_dilation(layers)]


def _flags(variant: str) -> tuple[str, dict]:
  corpus, *items = variant.split(",")
  if corpus not in ("text8", "enwik8"):
    raise ValueError(f"configs/char_lm.py: corpus {corpus!r} is not text8 or enwik8")
  flags = dict(size="small", window="increasing", dilation="on", ablation=False, hf=False,
               scale="paper")
  for item in items:
    key, _, value = item.partition("=")
    if key == "large":
      flags["size"] = "large"
    elif key in ("window", "dilation") and value:
      flags[key] = value
    elif key in ("ablation", "hf") and not value:
      flags[key] = True
    elif key in ("cpu", "tiny") and not value:
      flags["scale"] = key
    else:
      raise ValueError(f"configs/char_lm.py: unknown variant flag {item!r}")
  if flags["dilation"] not in ("on", "off"):
    raise ValueError(f"configs/char_lm.py: dilation={flags['dilation']!r} is not on or off")
  return corpus, flags


def model_fields(flags: dict) -> dict:
  """``config.model`` of a variant."""
  scale = flags["scale"]
  layers = ARCH[flags["size"]]["layers"] if scale == "paper" else 2
  hidden, heads = {"paper": (512, 8), "cpu": (64, 4), "tiny": (32, 2)}[scale]
  low, high = (32, 512) if scale == "paper" else (16, 64)
  dropout = ARCH[flags["size"]]["dropout"]
  paper_arch = not flags["hf"]
  return dict(
      vocab_size=256, num_labels=1, hidden_size=hidden, num_hidden_layers=layers,
      num_attention_heads=heads, intermediate_size=4 * hidden,
      attention_window=ablation_windows(layers, flags["window"], low, high),
      attention_dilation=layer_dilations(layers, heads, flags["dilation"] == "on"),
      causal=True, pre_layer_norm=paper_arch,
      position_embedding_type="relative_sinusoidal" if paper_arch else "absolute",
      max_position_embeddings=(23040 if scale == "paper" else 1024) + 2,
      hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout,
      block_size=128 if scale == "paper" else 64, pad_token_id=1, max_global_tokens=0,
      dtype="bfloat16" if scale == "paper" else "float32", attention_dtype="float32",
      remat="full" if scale == "paper" else "none", scan_layers=False,
      attention_impl="auto")


def phases_of(flags: dict) -> tuple:
  """(seq_len, lr, batch, steps, window_scale) per phase."""
  if flags["scale"] == "paper":
    shapes, steps = PHASE_SHAPES, PHASE_STEPS[flags["size"]]
    if flags["ablation"]:
      shapes, steps = shapes[:1], (ABLATION_STEPS,)
    return tuple((s, lr, b, n, w) for (s, lr, b, w), n in zip(shapes, steps))
  if flags["scale"] == "tiny":  # one phase: a phase switch costs a compile
    return ((64, 1e-3, 2, 2, 1),)
  phases = ((256, 1e-3, 8, 150, 1), (512, 5e-4, 8, 50, 2))
  if flags["ablation"]:  # one phase, as long as the two
    return ((*phases[0][:3], phases[0][3] + phases[1][3], 1),)
  return phases


def get_config(variant: str = "text8") -> ml_collections.ConfigDict:
  corpus, flags = _flags(variant)
  small = flags["scale"] != "paper"
  c = run_config(log_every=10 if small else 100, eval_every=100 if small else 10_000,
                 eval_batches=8 if small else 0, checkpoint_every=100 if small else 5_000)
  c.task = "causal_lm"
  c.model = model_fields(flags)
  c.data = dict(name=corpus, data_dir=recipes.data_dir(),
                path=f"{recipes.data_dir()}/{corpus}.zip",
                eval_stride={"paper": 512, "cpu": 256, "tiny": 32}[flags["scale"]])
  set_phases(c, phases_of(flags))
  return c


def set_phases(c: ml_collections.ConfigDict, phases) -> None:
  """``c``'s phases from (seq_len, lr, batch, steps, window_scale) rows, the first
  phase's shape as the run's, and the staged optimizer (warm-up 10% of a phase, at most
  10K steps; constant LR within a phase)."""
  c.phases = tuple(dict(seq_len=s, lr=lr, batch_size=b, steps=n, window_scale=w)
                   for s, lr, b, n, w in phases)
  c.seq_len, c.batch_size, c.train_steps = phases[0][0], phases[0][2], phases[0][3]
  c.optim = dict(lr=phases[0][1], warmup_steps=placeholder(int), warmup_frac=0.1,
                 max_warmup_steps=10_000, schedule="constant", weight_decay=0.01,
                 clip_norm=0.25, b1=0.9, b2=0.98, eps=1e-6, grad_accum=1)
