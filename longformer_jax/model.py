"""Longformer models and task heads (flax.nnx), numerically those of HF transformers.

Every model is called as the reference's is::

    model(input_ids, attention_mask=None, global_attention_mask=None,
          token_type_ids=None, position_ids=None, *, inputs_embeds=None,
          output_attentions=False, output_hidden_states=False,
          max_global_tokens=None, **labels)

with numpy or jax arrays of shape (B, N) ((B, C, N) for multiple choice), and
returns a pytree dataclass (``outputs.py``) with the reference's field names and,
given its labels (``labels``; ``start_positions`` / ``end_positions`` for QA), the
reference's loss.

Called with concrete arrays outside any transform, a model runs one compiled
program per input shape (cached, like ``jax.jit``) after checking the inputs on
the host; inside ``jax.jit`` / ``nnx.jit`` / ``jax.grad`` it is traced as is (set
``max_global_tokens`` there: the number of global slots is static).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from longformer_jax.compile import compile_options
from longformer_jax import inputs as inputs_lib
from longformer_jax import layers
from longformer_jax import outputs as out_lib
from longformer_jax import sharding as sh
from longformer_jax import attention as attn
from longformer_jax.config import LongformerConfig
from longformer_jax.inputs import is_concrete
from longformer_jax.outputs import BaseModelOutput, LogitsOutput, QuestionAnsweringOutput

_STATIC = ("max_global", "output_attentions", "output_hidden_states")


def _in_transform() -> bool:
  """True inside a jit trace (where even constants are staged as tracers)."""
  return isinstance(jnp.zeros(()), jax.core.Tracer)


def _forward_and_rng_state(graphdef, state, arrays, labels, **static):
  model = nnx.merge(graphdef, state)
  out = model._forward(arrays, labels, **static)  # pylint: disable=protected-access
  return out, nnx.state(model, nnx.RngState)


@functools.cache
def _compiled_forward():
  """The jitted forward of eager calls (built on first use: the compile options
  probe the backend, which must not start at import)."""
  return jax.jit(_forward_and_rng_state, static_argnums=(0,), static_argnames=_STATIC,
                 compiler_options=compile_options.compiler_options())


class PreTrainedModel(nnx.Module):
  """The call protocol shared by the body and every head (see the module docstring).

  A head defines ``_forward(arrays, labels, *, max_global, output_attentions,
  output_hidden_states)`` over traced arrays and may define ``_default_global``.
  """

  label_names: tuple[str, ...] = ("labels",)
  lead_axes = 1  # axes before the length: 1 for (B, N), 2 for (B, C, N)

  def __call__(self, input_ids=None, attention_mask=None, global_attention_mask=None,
               token_type_ids=None, position_ids=None, *, inputs_embeds=None,
               output_attentions: bool = False, output_hidden_states: bool = False,
               max_global_tokens: int | None = None, **labels):
    unknown = sorted(set(labels) - set(self.label_names))
    if unknown:
      raise TypeError(f"{type(self).__name__} got unexpected arguments {unknown}; its labels "
                      f"are {list(self.label_names)}")
    arrays = dict(input_ids=input_ids, inputs_embeds=inputs_embeds,
                  attention_mask=attention_mask, global_attention_mask=global_attention_mask,
                  token_type_ids=token_type_ids, position_ids=position_ids)
    inputs_lib.check_inputs(self.config, arrays, self.lead_axes)
    if global_attention_mask is None:
      arrays["global_attention_mask"] = self._default_global(arrays)
    count = inputs_lib.host_global_count(arrays["attention_mask"],
                                         arrays["global_attention_mask"])
    static = dict(max_global=inputs_lib.global_slots(self.config, count, max_global_tokens,
                                                     exact=output_attentions),
                  output_attentions=bool(output_attentions),
                  output_hidden_states=bool(output_hidden_states))
    labels = {k: v for k, v in labels.items() if v is not None}
    leaves = [x for x in list(arrays.values()) + list(labels.values()) if x is not None]
    if (all(is_concrete(x) for x in leaves) and is_concrete(self._any_param())
        and not _in_transform()):
      graphdef, state = nnx.split(self)
      arrays = {k: None if v is None else jnp.asarray(v) for k, v in arrays.items()}
      out, rng_state = _compiled_forward()(graphdef, state, arrays,
                                         {k: jnp.asarray(v) for k, v in labels.items()},
                                         **static)
      nnx.update(self, rng_state)
      return out
    return self._forward(arrays, labels, **static)

  def _default_global(self, arrays):  # no global attention unless asked for
    return None

  def _any_param(self):
    body = self if isinstance(self, LongformerModel) else self.longformer
    return body.embeddings.word_embeddings.embedding[...]


class LongformerModel(PreTrainedModel):
  """Embeddings + encoder (+ pooler); returns ``last_hidden_state``, ``pooler_output``."""

  label_names = ()

  def __init__(self, cfg: LongformerConfig, *, rngs: nnx.Rngs, add_pooling_layer: bool = True):
    self.config = cfg
    self.embeddings = layers.Embeddings(cfg, rngs)
    self.encoder = layers.Encoder(cfg, rngs)
    self.pooler = layers.Pooler(cfg, rngs) if add_pooling_layer else None

  def _forward(self, arrays, labels, *, max_global, output_attentions=False,
               output_hidden_states=False) -> BaseModelOutput:
    """The body on (B, N) arrays (traced or not); ``max_global`` static global slots."""
    del labels
    x = inputs_lib.prepare_inputs(self.config, arrays)
    gidx = attn.global_index(x.is_global, max_global)
    h_BxNxD = self.embeddings(x.input_ids, x.token_type_ids, x.position_ids, x.inputs_embeds)
    enc = self.encoder(h_BxNxD, x.valid, x.is_global, gidx,
                       output_hidden_states=output_hidden_states,
                       output_attentions=output_attentions)
    n = x.length
    h_BxNxD = enc.last_hidden_state[:, :n]
    unpad = lambda ts, f: None if ts is None else tuple(f(t) for t in ts)
    return BaseModelOutput(
        h_BxNxD, self.pooler(h_BxNxD) if self.pooler is not None else None,
        hidden_states=unpad(enc.hidden_states, lambda t: t[:, :n]),
        attentions=unpad(enc.attentions, lambda t: t[:, :, :n]),
        global_attentions=unpad(enc.global_attentions, lambda t: t[:, :, :n]))


def _first_sep(input_ids_BxN, sep_token_id: int, task: str):
  """Index of the first separator of each row; error if a concrete row has none."""
  if input_ids_BxN is None:
    raise ValueError(f"{task} places its default global attention from input_ids; with "
                     "inputs_embeds pass global_attention_mask")
  if is_concrete(input_ids_BxN):  # numpy: under a jit trace jnp ops give tracers
    has = np.any(np.asarray(input_ids_BxN) == sep_token_id, axis=-1)
    if not has.all():
      bad = ", ".join(map(str, np.argwhere(~has)[0]))
      raise ValueError(f"input_ids[{bad}] has no sep_token_id={sep_token_id}, needed to "
                       f"place the default global attention for {task}; pass "
                       "global_attention_mask")
  return jnp.argmax(jnp.asarray(input_ids_BxN) == sep_token_id, axis=-1)


class LongformerForMaskedLM(PreTrainedModel):
  """LM head (dense, gelu, LayerNorm, decoder tied to the word embeddings unless
  ``tie_word_embeddings=False``) -> ``logits``; ``labels`` (B, N), -100 ignored."""

  def __init__(self, cfg: LongformerConfig, *, rngs: nnx.Rngs):
    self.config = cfg
    self.longformer = LongformerModel(cfg, rngs=rngs, add_pooling_layer=False)
    self.lm_head = LMHead(cfg, rngs)

  def _forward(self, arrays, labels, **static):
    body = self.longformer._forward(arrays, None, **static)
    logits = self.lm_head(body.last_hidden_state, self.longformer.embeddings.word_embeddings)
    loss = out_lib.token_loss(logits, labels["labels"]) if "labels" in labels else None
    return LogitsOutput(loss, logits, **out_lib.extras(body))


class LongformerForCausalLM(LongformerForMaskedLM):
  """Next-token prediction: the LM head over a model with ``causal=True`` windows.

  ``labels`` (B, N) follow the reference's causal-LM convention: position t's logits
  predict ``labels[:, t + 1]`` (the shift happens here), -100 ignored.
  """

  def __init__(self, cfg: LongformerConfig, *, rngs: nnx.Rngs):
    if not cfg.causal:
      raise ValueError("LongformerForCausalLM needs causal=True in its config (windows that "
                       "look only backwards); got causal=False")
    super().__init__(cfg, rngs=rngs)

  def _forward(self, arrays, labels, **static):
    out = super()._forward(arrays, {}, **static)
    if "labels" not in labels:
      return out
    loss = out_lib.token_loss(out.logits[:, :-1], labels["labels"][:, 1:])
    return out.replace(loss=loss)


class LMHead(nnx.Module):
  """dense, gelu, LayerNorm, then the decoder; a pre-LN model (ending with its own
  LayerNorm) decodes its last hidden state directly, as Transformer-XL does."""

  def __init__(self, cfg: LongformerConfig, rngs: nnx.Rngs):
    transform = not cfg.pre_layer_norm
    self.dense = layers.dense(cfg, cfg.hidden_size, cfg.hidden_size, rngs) if transform else None
    self.layer_norm = layers.layer_norm(cfg, rngs) if transform else None
    self.bias = nnx.Param(jnp.zeros((cfg.vocab_size,), jnp.float32))
    self.act = layers.activation("gelu")
    # Untied checkpoints carry their own decoder matrix (``lm_head.decoder.weight``).
    self.decoder = None if cfg.tie_word_embeddings else nnx.Linear(
        cfg.hidden_size, cfg.vocab_size, use_bias=False, dtype=cfg.compute_dtype,
        param_dtype=jnp.float32, rngs=rngs, kernel_init=nnx.with_partitioning(
            nnx.initializers.normal(cfg.initializer_range), (sh.EMBED, sh.VOCAB)))

  def __call__(self, h_BxNxD, word_embeddings: nnx.Embed):
    x = h_BxNxD if self.dense is None else self.layer_norm(self.act(self.dense(h_BxNxD)))
    logits = word_embeddings.attend(x) if self.decoder is None else self.decoder(x)
    return logits.astype(jnp.float32) + self.bias[...]


class LongformerForSequenceClassification(PreTrainedModel):
  """Classifier on the first token (global by default) -> ``logits`` (B, num_labels);
  ``labels`` (B,) integers, (B, num_labels) floats for multi-label, or floats for
  regression (``problem_type`` as in the reference)."""

  def __init__(self, cfg: LongformerConfig, *, rngs: nnx.Rngs):
    self.config = cfg
    self.longformer = LongformerModel(cfg, rngs=rngs, add_pooling_layer=False)
    self.classifier = ClassificationHead(cfg, rngs)

  def _default_global(self, arrays):
    shape = inputs_lib.token_shape(arrays, 1)
    return jnp.zeros(shape, jnp.int32).at[:, 0].set(1)

  def _forward(self, arrays, labels, **static):
    body = self.longformer._forward(arrays, None, **static)
    logits = self.classifier(body.last_hidden_state)
    loss = None
    if "labels" in labels:
      loss = out_lib.sequence_classification_loss(logits, labels["labels"],
                                                  self.config.problem_type)
    return LogitsOutput(loss, logits, **out_lib.extras(body))


class ClassificationHead(nnx.Module):
  def __init__(self, cfg: LongformerConfig, rngs: nnx.Rngs):
    self.dense = layers.dense(cfg, cfg.hidden_size, cfg.hidden_size, rngs)
    self.out_proj = layers.dense(cfg, cfg.hidden_size, cfg.num_labels, rngs, (sh.EMBED, sh.LABELS))
    self.dropout = nnx.Dropout(cfg.hidden_dropout_prob, rngs=rngs)

  def __call__(self, h_BxNxD):
    x = jnp.tanh(self.dense(self.dropout(h_BxNxD[:, 0])))
    return self.out_proj(self.dropout(x)).astype(jnp.float32)


class LongformerForTokenClassification(PreTrainedModel):
  """Per-token classifier -> ``logits`` (B, N, num_labels); ``labels`` (B, N), -100
  ignored."""

  def __init__(self, cfg: LongformerConfig, *, rngs: nnx.Rngs):
    self.config = cfg
    self.longformer = LongformerModel(cfg, rngs=rngs, add_pooling_layer=False)
    self.dropout = nnx.Dropout(cfg.hidden_dropout_prob, rngs=rngs)
    self.classifier = layers.dense(cfg, cfg.hidden_size, cfg.num_labels, rngs,
                                   (sh.EMBED, sh.LABELS))

  def _forward(self, arrays, labels, **static):
    body = self.longformer._forward(arrays, None, **static)
    logits = self.classifier(self.dropout(body.last_hidden_state)).astype(jnp.float32)
    loss = out_lib.token_loss(logits, labels["labels"]) if "labels" in labels else None
    return LogitsOutput(loss, logits, **out_lib.extras(body))


class LongformerForQuestionAnswering(PreTrainedModel):
  """Span head -> ``start_logits``, ``end_logits``; question tokens global by default.

  The default global mask marks every token before the first ``sep_token_id``
  (the question, in the ``<s> question </s></s> context </s>`` layout). Labels:
  ``start_positions``, ``end_positions`` (B,); both are needed for the loss.
  """

  label_names = ("start_positions", "end_positions")

  def __init__(self, cfg: LongformerConfig, *, rngs: nnx.Rngs):
    if cfg.num_labels != 2:
      raise ValueError(f"question answering needs num_labels=2 (start, end), got "
                       f"{cfg.num_labels}")
    self.config = cfg
    self.longformer = LongformerModel(cfg, rngs=rngs, add_pooling_layer=False)
    self.qa_outputs = layers.dense(cfg, cfg.hidden_size, cfg.num_labels, rngs,
                                   (sh.EMBED, sh.LABELS))

  def _default_global(self, arrays):
    ids = arrays["input_ids"]
    sep_B = _first_sep(ids, self.config.sep_token_id, "question answering")
    n = inputs_lib.token_shape(arrays, 1)[-1]
    return (jnp.arange(n)[None, :] < sep_B[:, None]).astype(jnp.int32)

  def _forward(self, arrays, labels, **static):
    body = self.longformer._forward(arrays, None, **static)
    logits = self.qa_outputs(body.last_hidden_state).astype(jnp.float32)
    start, end = logits[..., 0], logits[..., 1]
    loss = None
    if len(labels) == 2:
      loss = out_lib.span_loss(start, end, labels["start_positions"], labels["end_positions"])
    elif labels:
      raise ValueError("question answering needs both start_positions and end_positions "
                       f"for a loss, got only {sorted(labels)}")
    return QuestionAnsweringOutput(loss, start, end, **out_lib.extras(body))


class LongformerForMultipleChoice(PreTrainedModel):
  """Input (B, C, N); pooled output -> one score per choice -> ``logits`` (B, C);
  ``labels`` (B,) the right choice.

  The default global mask marks every token after the first separator pair.
  Hidden states and attentions are those of the flattened (B * C, N) batch.
  """

  lead_axes = 2

  def __init__(self, cfg: LongformerConfig, *, rngs: nnx.Rngs):
    self.config = cfg
    self.longformer = LongformerModel(cfg, rngs=rngs, add_pooling_layer=True)
    self.dropout = nnx.Dropout(cfg.hidden_dropout_prob, rngs=rngs)
    self.classifier = layers.dense(cfg, cfg.hidden_size, 1, rngs, (sh.EMBED, sh.LABELS))

  def _default_global(self, arrays):
    sep_BxC = _first_sep(arrays["input_ids"], self.config.sep_token_id, "multiple choice")
    n = inputs_lib.token_shape(arrays, 2)[-1]
    return (jnp.arange(n) > sep_BxC[..., None] + 1).astype(jnp.int32)

  def _forward(self, arrays, labels, **static):
    b, c, n = inputs_lib.token_shape(arrays, 2)
    flat = {k: None if v is None else jnp.reshape(jnp.asarray(v), (b * c, n) + jnp.shape(v)[3:])
            for k, v in arrays.items()}
    body = self.longformer._forward(flat, None, **static)
    logits = self.classifier(self.dropout(body.pooler_output)).astype(jnp.float32)
    logits = logits.reshape(b, c)
    loss = out_lib.cross_entropy(logits, labels["labels"].reshape(-1)) if labels else None
    return LogitsOutput(loss, logits, **out_lib.extras(body))


# task name -> (class, HF architecture name)
TASKS = {
    "base": (LongformerModel, "LongformerModel"),
    "masked_lm": (LongformerForMaskedLM, "LongformerForMaskedLM"),
    "causal_lm": (LongformerForCausalLM, "LongformerForCausalLM"),
    "sequence_classification": (LongformerForSequenceClassification,
                                "LongformerForSequenceClassification"),
    "token_classification": (LongformerForTokenClassification,
                             "LongformerForTokenClassification"),
    "question_answering": (LongformerForQuestionAnswering, "LongformerForQuestionAnswering"),
    "multiple_choice": (LongformerForMultipleChoice, "LongformerForMultipleChoice"),
}


def task_of_architecture(arch: str) -> str:
  for task, (_, name) in TASKS.items():
    if name == arch:
      return task
  raise ValueError(f"architecture {arch!r} is not a Longformer architecture; known: "
                   f"{[name for _, name in TASKS.values()]}")


def param_count(cfg: LongformerConfig, task: str = "base") -> int:
  """Number of parameters of the ``task`` model of ``cfg`` (abstract: nothing allocated)."""
  abstract = nnx.eval_shape(lambda: create_model(cfg, task))
  return sum(x.size for x in jax.tree.leaves(nnx.state(abstract, nnx.Param)))


def create_model(cfg: LongformerConfig, task: str = "base", seed: int = 0,
                 partitioning: sh.Partitioning | None = None):
  """A randomly initialised model for ``task`` (see ``TASKS``). With ``partitioning``
  its activations are pinned to that mesh at layer boundaries, and its attention runs
  sequence-parallel where the rules split the sequence (``sharding.Partitioning``)."""
  if task not in TASKS:
    raise ValueError(f"task={task!r} is not one of {sorted(TASKS)}")
  with nnx.use_eager_sharding(False):  # shardings are applied by the caller (train.py)
    model = TASKS[task][0](cfg, rngs=nnx.Rngs(params=seed, dropout=seed + 1))
  if partitioning is not None:
    model.set_attributes(partitioning=partitioning)
  return model
