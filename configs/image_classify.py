"""Image classification with a Vision Longformer (ViL): 2-D neighbourhood attention plus
a global CLS token, stage after stage.

    python -m longformer_jax.main --config=configs/image_classify.py --workdir=/tmp/lf_vil \\
        --config.data.data_dir=$HOME/tensorflow_datasets   # imagenette prepared there:
    # python -m longformer_jax.prepare imagenette/320px-v2 $HOME/tensorflow_datasets
    python -m longformer_jax.main --config=configs/image_classify.py:cpu --workdir=/tmp/lf_marks
    python -m longformer_jax.main --config=configs/image_classify.py:cpu,local_only \\
        --workdir=/tmp/lf_marks_local

Variants (comma-separated):

* (default) ViL-small-like: four stages (widths 96-192-384-384, depths 1-2-8-1, 15 x 15
  neighbourhoods clipped to each grid), patches of 4 pixels, on Imagenette at 224 x 224
  (tfds ``imagenette/320px-v2``, prepared as array_record in ``data.data_dir``); bf16.
* ``cpu``: the generated long-range task (``data/images.py``: mark_pairs): 96 x 96
  noise images holding two 16 x 16 marks, red or green, their corners at least 56
  pixels apart; label "same colour or not". One stage of 12 x 12 patches of 8 pixels:
  over two layers of 3 x 3 neighbourhoods a patch sees at most 5 patches (40 pixels)
  along an axis, less than the 41 pixels from one mark to the other. About 1-2 minutes
  on a 2-core CPU: eval accuracy 0.99 and 1.00 after 400 steps for seeds 0 and 1, seed 2
  still at chance (``experiments/results/image_long_range.md``).
* ``tiny``: two stages on 32 x 32 images, 2 steps (tests).
* ``local_only``: the ablation: no global token (the CLS token is gone), mean pooling
  of the patches and a linear classifier, so distant patches never interact; on
  ``cpu`` it stays at chance in all three seeds (eval accuracy 0.42-0.57, loss 0.69).
"""

import ml_collections
from ml_collections.config_dict import placeholder

from longformer_jax import recipes
from longformer_jax.recipes import run_config

VARIANTS = ("cpu", "tiny", "local_only")


def _model(**overrides) -> dict:
  model = dict(
      image_size=-1, num_channels=-1, num_labels=-1,  # from the data
      patch_size=4, hidden_sizes=(96, 192, 384, 384), depths=(1, 2, 8, 1),
      num_heads=(3, 3, 6, 6), kernels=(15, 15, 15, 15), mlp_ratio=4, num_global_tokens=1,
      pool="cls", hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
      dtype="bfloat16", attention_dtype=placeholder(str), remat="matmuls",
      scan_layers=placeholder(bool), grid_block=8)
  model.update(overrides)
  return model


def get_config(variant: str = "") -> ml_collections.ConfigDict:
  flags = set(filter(None, variant.split(",")))
  if flags - set(VARIANTS) or {"cpu", "tiny"} <= flags:
    raise ValueError(f"unknown variant {variant!r} of configs/image_classify.py: "
                     f"comma-separated from {VARIANTS}, cpu or tiny")
  c = run_config(log_every=50, eval_every=1000, checkpoint_every=1000, keep_checkpoints=2)
  c.task = "image_classification"
  c.model = _model()
  c.data = dict(name="tfds_images", data_dir=recipes.data_dir(),
                tfds_name="imagenette/320px-v2", eval_source_split="validation",
                image_size=224, num_channels=3)
  c.seq_len = 1 + 56 * 56  # tokens of the first stage (the throughput's unit)
  c.batch_size = 64
  c.train_steps = 3000  # about 20 epochs of Imagenette's 9,469 images
  c.optim = dict(lr=1e-3, warmup_steps=300, schedule="linear", end_lr_frac=0.01,
                 weight_decay=0.05, clip_norm=1.0, b1=0.9, b2=0.999, eps=1e-8, grad_accum=1)
  if "cpu" in flags or "tiny" in flags:
    c.data = dict(name="mark_pairs", data_dir=recipes.data_dir(), image_size=96,
                  mark_size=16, num_colours=2, min_distance=56, label="match",
                  num_train=8000, num_eval=256, seed=0)
    c.model = _model(patch_size=8, hidden_sizes=(64,), depths=(2,), num_heads=(4,),
                     kernels=(3,), mlp_ratio=2, dtype="float32", remat="none")
    c.seq_len, c.batch_size, c.train_steps = 1 + 12 * 12, 32, 400
    c.optim.update(lr=3e-3, warmup_steps=50, schedule="linear", end_lr_frac=0.0,
                   weight_decay=0.01)
    c.log_every, c.eval_every, c.checkpoint_every = 50, 200, 200
  if "tiny" in flags:
    c.data.update(image_size=32, mark_size=4, min_distance=16, num_train=32, num_eval=8)
    c.model.update(patch_size=4, hidden_sizes=(16, 32), depths=(1, 1), num_heads=(2, 2),
                   kernels=(3, 3), grid_block=4)
    c.seq_len, c.batch_size, c.train_steps = 1 + 8 * 8, 4, 2
    c.optim.warmup_steps = 1
    c.log_every, c.eval_every, c.checkpoint_every = 1, 2, 2
  if "local_only" in flags:
    c.model.update(num_global_tokens=0, pool="mean")
    c.seq_len -= 1
  return c
