"""HotpotQA, distractor setting, answers only (paper section 6 reports joint F1 64.4 for
Longformer-base, which also scores supporting facts; this config trains and scores
the answer: EM/F1).

Data: HotpotQA's JSON (``hotpot_train_v1.1.json``, ``hotpot_dev_distractor_v1.json``).
A question's ten paragraphs become one context, ``yes no`` first so that yes/no
answers are spans; every occurrence of the answer is trained:

    python -m longformer_jax.main --config=configs/finetune_hotpotqa.py \\
        --workdir=/tmp/lf_hotpotqa --config.init_from_hf=/path/to/longformer-base-4096 \\
        --config.data.files.train=hotpot_train_v1.1.json \\
        --config.data.files.validation=hotpot_dev_distractor_v1.json

Paper settings: 5 epochs of the 90,447 training questions at batch 32, LR 3e-5,
1,000 warm-up steps, global attention on the question, 4,096 tokens. ``:tiny`` is
a 2-step random-init run.
"""

from longformer_jax import recipes


def get_config(variant: str = ""):
  c = recipes.finetune_qa(dict(format="hotpotqa"), train_steps=recipes.steps_for(5, 90_447, 32),
                          warmup_steps=1000)
  if variant == "tiny":
    return recipes.tiny_qa(c)
  if variant:
    raise ValueError(f"unknown variant {variant!r} of configs/finetune_hotpotqa.py")
  return c
