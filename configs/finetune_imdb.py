"""IMDB sentiment (paper section 6, Table 7: accuracy 95.7 for Longformer-base).

Data: JSONL files with ``text`` and ``label`` (0 negative, 1 positive), one review a
line, e.g. written from the Large Movie Review Dataset's train/ and test/ folders:

    python -m longformer_jax.main --config=configs/finetune_imdb.py --workdir=/tmp/lf_imdb \\
        --config.init_from_hf=/path/to/longformer-base-4096 \\
        --config.data.files.train=imdb_train.jsonl --config.data.files.validation=imdb_test.jsonl

Paper settings: 15 epochs of the 25,000 training reviews at batch 32 (11,719 steps),
LR 3e-5, linear warm-up over 10% then linear decay, global attention on <s>,
sequences of up to 4,096 tokens (nearly every review fits in 512: the paper's point
is that nothing is lost). ``:tiny`` is a 2-step random-init run on a small file.
"""

from longformer_jax import recipes


def get_config(variant: str = ""):
  c = recipes.finetune_config(
      "classification",
      dict(name="document_classification", format="jsonl", files=dict(train="", validation=""),
           text_field="text", label_field="label", label_names=(0, 1)),
      train_steps=recipes.steps_for(15, 25_000, 32), eval_every=2_000)
  if variant == "tiny":
    return recipes.tiny_finetune(c)
  if variant:
    raise ValueError(f"unknown variant {variant!r} of configs/finetune_imdb.py")
  return c
