"""OntoNotes 5 named entities, whole documents (CoNLL-2012 NER files).

The paper's OntoNotes result (section 6, Table 7: 78.6 average F1) is
coreference, which this codebase does not build; this config is the NER task on
the same documents, the long-document tagging problem people bring to the model:

    python -m longformer_jax.main --config=configs/finetune_ontonotes.py \\
        --workdir=/tmp/lf_ontonotes --config.init_from_hf=/path/to/longformer-base-4096 \\
        --config.data.files.train=onto.train.ner --config.data.files.validation=onto.development.ner

Examples are whole documents (``-DOCSTART-`` / ``#begin document`` lines), cut into
4,096-token windows overlapping by 512; each word is labelled on its first
sub-word. ``eval_entity_f1`` is conlleval's entity F1 (a fraction). Settings (ours,
not the paper's): 10 epochs of the 2,802 training documents at batch 32, LR 3e-5,
warm-up 10%, global attention on <s>. ``:tiny`` is a 2-step random-init run.
"""

from longformer_jax import recipes


def get_config(variant: str = ""):
  c = recipes.finetune_config(
      "token_classification",
      dict(name="conll_ner", files=dict(train="", validation=""), group_by="document",
           tag_column=-1, doc_stride=512),
      train_steps=recipes.steps_for(10, 2802, 32), eval_every=200)
  if variant == "tiny":
    c = recipes.tiny_finetune(c)
    c.data.doc_stride = 16
    return c
  if variant:
    raise ValueError(f"unknown variant {variant!r} of configs/finetune_ontonotes.py")
  return c
