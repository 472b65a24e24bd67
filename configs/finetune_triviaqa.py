"""TriviaQA, Wikipedia setting (paper section 6, Table 7: F1 75.2 for Longformer-base).

Data: TriviaQA converted to SQuAD-format JSON (one question per evidence document,
every alias an answer), as the paper's code does:

    python -m longformer_jax.main --config=configs/finetune_triviaqa.py \\
        --workdir=/tmp/lf_triviaqa --config.init_from_hf=/path/to/longformer-base-4096 \\
        --config.data.files.train=squad-wikipedia-train-4096.json \\
        --config.data.files.validation=squad-wikipedia-dev-4096.json

The model trains on every occurrence of every alias in a window (the paper's
loss); evaluation keeps each question's best span over its windows and reports
SQuAD EM/F1 (percent) against the aliases. Paper settings: 5 epochs of the 110,648
training question-document pairs at batch 32, LR 3e-5, 1,000 warm-up steps, global
attention on the question, 4,096 tokens. ``:tiny`` is a 2-step random-init run.
"""

from longformer_jax import recipes


def get_config(variant: str = ""):
  c = recipes.finetune_qa(dict(find_all_occurrences=True), train_steps=recipes.steps_for(5, 110_648, 32),
                          warmup_steps=1000)
  if variant == "tiny":
    return recipes.tiny_qa(c)
  if variant:
    raise ValueError(f"unknown variant {variant!r} of configs/finetune_triviaqa.py")
  return c
