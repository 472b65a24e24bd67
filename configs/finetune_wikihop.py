"""WikiHop multi-hop multiple choice (paper section 6, Table 7: accuracy 75.0 for
Longformer-base).

Data: QAngaroo WikiHop's ``train.json`` / ``dev.json``:

    python -m longformer_jax.main --config=configs/finetune_wikihop.py \\
        --workdir=/tmp/lf_wikihop --config.init_from_hf=/path/to/longformer-base-4096 \\
        --config.data.files.train=qangaroo_v1.1/wikihop/train.json \\
        --config.data.files.validation=qangaroo_v1.1/wikihop/dev.json

The query and the candidates lead the input with global attention; each candidate
is scored on its first sub-word, and scores are averaged over the windows of an
example's documents (``eval_accuracy``, a fraction). Paper settings: 15 epochs of the
43,738 training questions at batch 32, LR 3e-5, 200 warm-up steps, 4,096 tokens.
``:tiny`` is a 2-step random-init run.
"""

from longformer_jax import recipes

MAX_PREFIX_TOKENS = 512  # query + candidates, all global (WikiHop's longest fit)


def get_config(variant: str = ""):
  c = recipes.finetune_config(
      "candidate_selection",
      dict(name="wikihop", files=dict(train="", validation=""), doc_stride=256,
           max_candidates=80, max_prefix_tokens=MAX_PREFIX_TOKENS),
      train_steps=recipes.steps_for(15, 43_738, 32), warmup_steps=200,
      max_global_tokens=MAX_PREFIX_TOKENS, eval_every=1000)
  if variant == "tiny":
    c.model.max_global_tokens = 48
    c = recipes.tiny_finetune(c)
    c.data.update(dict(doc_stride=4, max_candidates=4, max_prefix_tokens=48))
    return c
  if variant:
    raise ValueError(f"unknown variant {variant!r} of configs/finetune_wikihop.py")
  return c
