"""Sequence to sequence with the LED (summarisation): teacher forcing with label
smoothing, and ROUGE of the summaries generated at evaluation.

Batch: see ``data/summarization.py`` (``labels`` (B, T) with -100 after each
summary; the decoder reads them shifted right behind ``decoder_start_token_id``).

``config.seq2seq`` fields:

* ``label_smoothing``: HF's ``label_smoothing_factor`` (its ``LabelSmoother``):
  ``(1 - eps) * NLL + eps * mean over the vocabulary of -log p``, each averaged over
  the label tokens.
* ``generate``: generate summaries at evaluation and score them (default True).
* ``generation``: HF generation settings (``num_beams``, ``max_length``,
  ``min_length``, ``length_penalty``, ``no_repeat_ngram_size``, ``early_stopping``...)
  on top of the ``init_from_hf`` checkpoint's generation config.

Metrics: ``loss`` (smoothed), ``nll`` and ``token_accuracy`` (teacher forcing); with
generation ``rouge1``, ``rouge2``, ``rougeL``, ``rougeLsum`` (F-measure, percent, the
``rouge-score`` package with stemming) and ``gen_len`` (generated tokens, the
decoder's start token not counted).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from longformer_jax.led import generation as gen_lib
from longformer_jax import tokenization
from longformer_jax.data import summarization
from longformer_jax.data.pipeline import data_config
from longformer_jax.eval_metrics import rouge
from longformer_jax.led import shift_tokens_right
from longformer_jax.outputs import IGNORE_INDEX
from longformer_jax.tasks import base

OPTIONS = ("label_smoothing", "generate", "generation")


def smoothed_terms(logits_BxTxV, labels_BxT, epsilon: float):
  """Per-token (loss, nll, correct, counted) of HF's label smoother: ignored tokens 0."""
  logp = jax.nn.log_softmax(logits_BxTxV.astype(jnp.float32), axis=-1)
  counted = labels_BxT != IGNORE_INDEX
  safe = jnp.where(counted, labels_BxT, 0)
  nll = -jnp.take_along_axis(logp, safe[..., None], axis=-1)[..., 0]
  loss = (1.0 - epsilon) * nll - epsilon * logp.mean(-1)
  correct = jnp.argmax(logp, -1) == safe
  zero = lambda x: jnp.where(counted, x, 0).astype(jnp.float32)
  return zero(loss), zero(nll), zero(correct), counted


@base.register
class Seq2Seq(base.Task):
  """See the module docstring."""

  name = "seq2seq"
  family = "led"
  head = "conditional_generation"
  needs_global_bound = True

  def __init__(self, label_smoothing: float = 0.0, generate: bool = True,
               generation: dict | None = None, tokenizer: str | None = None,
               checkpoint_generation: gen_lib.GenerationConfig | None = None):
    super().__init__()
    if not 0.0 <= label_smoothing < 1.0:
      raise ValueError(f"config.seq2seq.label_smoothing={label_smoothing} must be in [0, 1)")
    names = {f.name for f in dataclasses.fields(gen_lib.GenerationConfig)}
    unknown = sorted(set(generation or {}) - names)
    if unknown:
      raise ValueError(f"config.seq2seq.generation has unknown fields {unknown}")
    self.label_smoothing, self.generate = float(label_smoothing), bool(generate)
    self.generation = dict(generation or {})
    self.tokenizer, self.checkpoint_generation = tokenizer, checkpoint_generation

  @classmethod
  def from_config(cls, config) -> "Seq2Seq":
    opts = dict(config.get("seq2seq") or {})
    unknown = sorted(set(opts) - set(OPTIONS))
    if unknown:
      raise ValueError(f"config.seq2seq has unknown fields {unknown} (known: {OPTIONS})")
    init = config.get("init_from_hf")
    return cls(opts.get("label_smoothing", 0.0), opts.get("generate", True),
               dict(opts.get("generation") or {}), data_config(config).get("tokenizer"),
               gen_lib.GenerationConfig.of_checkpoint(init) if init else None)

  def generation_config(self, model_cfg) -> gen_lib.GenerationConfig:
    return gen_lib.checked(dataclasses.replace(
        gen_lib.defaults(model_cfg, self.checkpoint_generation), **self.generation))

  def check_model(self, model_cfg, data_cfg: dict) -> None:
    positions = model_cfg.max_decoder_position_embeddings
    target = summarization.target_length(data_cfg)
    if target > positions:
      raise ValueError(f"config.data.max_target_length={target} is longer than the model's "
                       f"max_decoder_position_embeddings={positions}")
    if self.generate and self.generation_config(model_cfg).max_length > positions:
      raise ValueError(f"config.seq2seq.generation.max_length="
                       f"{self.generation_config(model_cfg).max_length} is longer than the "
                       f"model's max_decoder_position_embeddings={positions}")

  def _global_mask(self, batch, no_global):
    gmask = batch["global_attention_mask"]
    return jnp.zeros_like(gmask) if no_global else gmask

  def loss_and_metrics(self, model, batch, *, key=None, no_global=False):
    del key
    cfg, labels = model.config, batch["labels"]
    decoder_ids = shift_tokens_right(labels, cfg.pad_token_id, cfg.decoder_start_token_id)
    logits = model(batch["input_ids"], batch["attention_mask"],
                   self._global_mask(batch, no_global), decoder_input_ids=decoder_ids,
                   max_global_tokens=cfg.max_global_tokens).logits
    loss, nll, correct, counted = smoothed_terms(logits, labels, self.label_smoothing)
    w = batch["weight"].astype(jnp.float32)[:, None] * counted
    tokens = w.sum()
    sums = {"loss": ((loss * w).sum(), tokens), "nll": ((nll * w).sum(), tokens),
            "token_accuracy": ((correct * w).sum(), tokens)}
    return base.mean_of(sums["loss"]), sums

  def eval_step(self, model, batch, *, key=None, no_global=False):
    _, sums = self.loss_and_metrics(model, batch, no_global=no_global)
    if not self.generate:
      return sums, {}
    cfg = model.config
    ids = gen_lib.decode(model, self.generation_config(cfg), batch["input_ids"],
                         batch["attention_mask"], self._global_mask(batch, no_global),
                         jax.random.key(0) if key is None else key, cfg.max_global_tokens)
    return sums, base.eval_rows(batch, generated=ids)

  def score(self, rows: dict, examples) -> tuple[dict, list[dict]]:
    """ROUGE of the generated summaries against the stored references; predictions
    ``{id, prediction, gold}`` as text."""
    if not self.tokenizer:
      raise ValueError("seq2seq: scoring generated summaries needs config.data.tokenizer")
    tok = tokenization.load_tokenizer(self.tokenizer)
    records, lengths = [], []
    for e, ids in base.live_rows(rows, "generated"):
      ex = examples[e]
      tokens = generated_tokens(ids, tok)
      lengths.append(len(tokens))
      records.append({"id": base.text(ex["id"]),
                      "prediction": tok.decode(tokens, skip_special_tokens=True).strip(),
                      "gold": base.text(ex["summary"])})
    metrics = rouge([r["prediction"] for r in records], [r["gold"] for r in records])
    metrics["gen_len"] = float(np.mean(lengths)) if lengths else 0.0
    return metrics, records


def generated_tokens(ids_L, tok) -> list[int]:
  """The tokens a generated row holds after the decoder's start token, up to and
  including the first ``</s>`` (the rest is padding)."""
  eos = tok.token_to_id("</s>")
  tokens = [int(t) for t in np.asarray(ids_L)[1:]]
  return tokens[:tokens.index(eos) + 1] if eos in tokens else tokens
