"""Hyperpartisan news detection (paper section 6, Table 7: F1 94.8 for Longformer-base).

Data: SemEval-2019 task 4's by-article set, the articles XML and its ground-truth
XML (645 articles), split 80/10/10 by article id as the paper does:

    python -m longformer_jax.main --config=configs/finetune_hyperpartisan.py \\
        --workdir=/tmp/lf_hyperpartisan --config.init_from_hf=/path/to/longformer-base-4096 \\
        --config.data.files.train=articles-training-byarticle-20181122.xml \\
        --config.data.files.labels=ground-truth-training-byarticle-20181122.xml

``eval_f1`` is the F1 of the hyperpartisan class (label 1). Paper settings: 15
epochs of the 516 training articles at batch 32 (242 steps), LR 3e-5, warm-up 10%,
global attention on <s>, up to 4,096 tokens. ``:tiny`` is a 2-step random-init run.
"""

from longformer_jax import recipes


def get_config(variant: str = ""):
  c = recipes.finetune_config(
      "classification",
      dict(name="document_classification", format="semeval_xml",
           files=dict(train="", labels=""), split_fractions=(0.8, 0.1, 0.1), split_seed=0,
           label_names=(0, 1)),
      train_steps=recipes.steps_for(15, 516, 32), eval_every=50)
  if variant == "tiny":
    return recipes.tiny_finetune(c)
  if variant:
    raise ValueError(f"unknown variant {variant!r} of configs/finetune_hyperpartisan.py")
  return c
