"""The model API against HF transformers' PyTorch Longformer: losses from labels,
hidden states and attentions, inputs_embeds, mask semantics, pytree outputs, jit
safety, untied decoders, padding rows, export guards and input errors."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

import longformer_jax as lj
from longformer_jax import model as model_lib
from longformer_jax import outputs
from conftest import (HF_ATOL, PAD, SEP, VOCAB, batch, hf_heads, qa_batch, run_both, save_hf,
                      task_inputs)

HEADS = hf_heads()


def torch_inputs(inputs):
  return {k: torch.tensor(v) for k, v in inputs.items() if v is not None}


def assert_close(a, b, tol, what=""):
  a, b = np.asarray(a), np.asarray(b)
  assert a.shape == b.shape, (what, a.shape, b.shape)
  assert np.abs(a - b).max() <= tol, (what, np.abs(a - b).max())


# ---- losses from labels --------------------------------------------------------------
def _labels(task, inputs, rng, **kw):
  if task in ("masked_lm", "token_classification"):
    ids = inputs["input_ids"]
    hi = VOCAB if task == "masked_lm" else 3
    labels = rng.integers(0, hi, size=ids.shape)
    labels[inputs["attention_mask"] == 0] = -100
    labels[:, 1] = -100
    return dict(labels=labels)
  if task == "sequence_classification":
    return dict(labels=rng.integers(0, 3, size=len(inputs["input_ids"])))
  if task == "multiple_choice":
    return dict(labels=rng.integers(0, 2, size=len(inputs["input_ids"])))
  n = inputs["input_ids"].shape[1]
  # one start beyond the sequence: clamped to N and ignored, as in the reference
  return dict(start_positions=np.array([3, n + 5, 0]), end_positions=np.array([6, 2, n - 1]))


@pytest.mark.parametrize("task", sorted(set(HEADS) - {"base"}))
def test_loss_from_labels_equals_hf(task, tmp_path):
  hf, path = save_hf(task, tmp_path, seed=11)
  ours = lj.from_hf(path)
  rng = np.random.default_rng(4)
  inputs = task_inputs(task, rng)
  labels = _labels(task, inputs, rng)
  with torch.no_grad():
    ref = hf(**torch_inputs(inputs), **torch_inputs(labels))
  out = ours(**inputs, **labels)
  assert_close(out.loss, ref.loss.numpy(), 1e-5, task)
  # the same under a user's jit, from the functional pattern
  graphdef, params, rest = nnx.split(ours, nnx.Param, ...)
  loss = jax.jit(lambda p: nnx.merge(graphdef, p, rest)(
      **inputs, **labels, max_global_tokens=32).loss)(params)
  assert_close(loss, ref.loss.numpy(), 1e-5, task)


@pytest.mark.parametrize("problem", ["regression", "multi_label_classification"])
def test_sequence_classification_problem_types_equal_hf(problem, tmp_path):
  num_labels = 1 if problem == "regression" else 3
  hf, path = save_hf("sequence_classification", tmp_path, num_labels=num_labels,
                     problem_type=None if problem == "regression" else problem)
  ours = lj.from_hf(path)
  rng = np.random.default_rng(2)
  inputs = task_inputs("sequence_classification", rng)
  shape = (3,) if problem == "regression" else (3, num_labels)
  labels = rng.integers(0, 2, size=shape).astype(np.float32)
  with torch.no_grad():
    ref = hf(**torch_inputs(inputs), labels=torch.tensor(labels)).loss.numpy()
  assert_close(ours(**inputs, labels=labels).loss, ref, 1e-5, problem)


# ---- pytree outputs, jit, caching ----------------------------------------------------
def test_outputs_are_pytrees_under_nnx_jit(tmp_path):
  _, path = save_hf("question_answering", tmp_path)
  ours = lj.from_hf(path, max_global_tokens=8)
  ids, mask = qa_batch(np.random.default_rng(0))
  eager = ours(ids, mask)
  jitted = nnx.jit(lambda m, x, am: m(x, am))(ours, ids, mask)
  assert type(jitted) is type(eager)
  assert_close(jitted["start_logits"], eager.start_logits, 1e-6)
  assert_close(jitted[0], eager.start_logits, 1e-6)  # the first field that is set
  assert len(jax.tree.leaves(jitted)) == 2 and eager.keys() == ["start_logits", "end_logits"]


def test_eager_calls_reuse_one_compiled_program(tmp_path):
  _, path = save_hf("base", tmp_path)
  ours = lj.from_hf(path)
  ids, mask, gmask, _ = batch(np.random.default_rng(0))
  ours(ids, mask, gmask)
  compiled = model_lib._compiled_forward()  # pylint: disable=protected-access
  size = compiled._cache_size()
  for seed in range(3):  # new values, same shapes: no new trace
    ids2, mask2, gmask2, _ = batch(np.random.default_rng(seed + 1))
    ours(ids2, mask2, gmask2)
  assert compiled._cache_size() == size


@pytest.mark.parametrize("task,limit,tokens", [("base", 2, 4), ("question_answering", 4, 9)])
def test_too_many_global_tokens_under_jit_raise(task, limit, tokens, tmp_path):
  _, path = save_hf(task, tmp_path)
  ours = lj.from_hf(path, max_global_tokens=limit)
  rng = np.random.default_rng(0)
  if task == "base":
    ids, mask, gmask, _ = batch(rng)
    gmask[1, :tokens] = 1
  else:
    ids, mask = qa_batch(rng, q_lens=(1, tokens - 1, 1))  # <s> + question: 9 globals
    gmask = None
  with pytest.raises(ValueError, match=f"max_global_tokens={limit}"):
    ours(ids, mask, gmask)
  call = nnx.jit(lambda m, x, am, gm: m(x, am, gm).to_tuple())
  with pytest.raises(Exception, match=f"marks {tokens} tokens.*max_global_tokens={limit}"):
    jax.block_until_ready(call(ours, ids, mask, gmask))
  ok_mask = np.zeros_like(ids)
  ok_mask[:, 0] = 1  # within the bound: runs
  jax.block_until_ready(call(ours, ids, mask, ok_mask))


def test_scanned_model_under_functional_grad(tmp_path):
  _, path = save_hf("masked_lm", tmp_path, attention_window=[8, 8])
  assert lj.from_hf(path).config.scan_layers  # uniform windows: scanned by default
  ours = lj.from_hf(path, scan_layers=True, remat="matmuls")
  graphdef, params, rest = nnx.split(ours, nnx.Param, ...)
  ids, mask, gmask, _ = batch(np.random.default_rng(0))

  def loss(p):
    return jnp.mean(nnx.merge(graphdef, p, rest)(ids, mask, gmask, max_global_tokens=4).logits ** 2)

  value, grads = jax.jit(jax.value_and_grad(loss))(params)
  eager = jnp.mean(ours(ids, mask, gmask).logits ** 2)
  assert_close(value, eager, 1e-6)
  assert all(np.isfinite(np.asarray(g)).all() for g in jax.tree.leaves(grads))


# ---- hidden states, attentions, inputs_embeds ---------------------------------------
def test_hidden_states_and_attentions_equal_hf(tmp_path):
  hf, path = save_hf("base", tmp_path, seed=5)
  ours = lj.from_hf(path)
  ids, mask, gmask, types = batch(np.random.default_rng(3))
  gmask[1, [2, 7]] = 1  # 2, 2 and 4 global tokens
  inputs = dict(input_ids=ids, attention_mask=mask, global_attention_mask=gmask,
                token_type_ids=types)
  with torch.no_grad():
    ref = hf(**torch_inputs(inputs), output_hidden_states=True, output_attentions=True)
  out = ours(**inputs, output_hidden_states=True, output_attentions=True)
  assert len(out.hidden_states) == 3 and len(out.attentions) == 2
  for a, b in zip(out.hidden_states, ref.hidden_states):
    assert_close(a, b.numpy(), HF_ATOL, "hidden_states")
  n = ids.shape[1]
  counts = ((gmask != 0) & (mask != 0)).sum(1)
  for layer, (a, g, ra, rg) in enumerate(zip(out.attentions, out.global_attentions,
                                             ref.attentions, ref.global_attentions)):
    assert a.shape == ra.shape, (a.shape, ra.shape)  # (B, H, N, x + w + 1)
    assert_close(a, ra.numpy(), 1e-5, f"attentions[{layer}]")
    rg = rg.numpy()[:, :, :n]  # the reference keeps the padded length here
    assert g.shape == rg.shape
    for e, c in enumerate(counts):  # slots past an example's count are filler there
      assert_close(np.asarray(g)[e, :, :, :c], rg[e, :, :, :c], 1e-5, f"global[{layer}]")
      assert np.all(np.asarray(g)[e, :, :, c:] == 0)


def test_attention_probabilities_reproduce_the_output_dilated_causal():
  """Dilated and causal (no reference has them): sum_j p_ij v_j must give the attention
  output, which the float64 oracle checks (tests/test_attention.py)."""
  from longformer_jax import attention as attn
  from longformer_jax.attention import weights as aw
  rng = np.random.default_rng(0)
  b, n, h, d = 2, 37, 3, 4
  q, k, v = (jnp.asarray(rng.normal(size=(b, n, h, d)), jnp.float32) for _ in range(3))
  valid = jnp.asarray(np.arange(n)[None] < np.array([[37], [30]]))
  is_global = jnp.zeros((b, n), bool).at[0, [3, 20]].set(True).at[1, 5].set(True)
  gidx = attn.global_index(is_global, 2)
  for causal, window in ((False, 6), (True, 5)):
    static = dict(window=window, dilation=(1, 2, 3), causal=causal)
    out = jax.jit(lambda q, k, v, m, g, i: attn.local_attention(
        q, k, v, block_size=8, valid_BxN=m, is_global_BxN=g, gidx=i, **static))(
            q, k, v, valid, is_global, gidx)
    p = jax.jit(lambda q, k, m, g, i: aw.local_attention_probs(
        q, k, valid_BxN=m, is_global_BxN=g, gidx=i, **static))(q, k, valid, is_global, gidx)
    left = window if causal else window // 2
    pos = np.arange(n)[:, None, None] + np.array([1, 2, 3])[None, :, None] * (
        np.arange(p.shape[-1] - 2)[None, None, :] - left)  # (N, H, W): key of column j
    inside = (pos >= 0) & (pos < n)
    v_win = v[:, np.clip(pos, 0, n - 1), np.arange(h)[None, :, None]]  # (B, N, H, W, D)
    v_win = v_win * inside[None, ..., None]
    local = jnp.einsum("bhnw,bnhwd->bnhd", p[..., 2:], v_win)
    vg = attn.gather_tokens(v, gidx)
    glob = jnp.einsum("bhng,bghd->bnhd", p[..., :2], vg)
    rows = np.asarray(valid & ~is_global)
    assert_close(np.asarray(local + glob)[rows], np.asarray(out)[rows], 1e-5, f"causal={causal}")
    sums = np.asarray(p.sum(-1))  # (B, H, N): 1 on local rows, 0 elsewhere
    assert_close(sums, np.broadcast_to(rows[:, None, :], sums.shape).astype(np.float32), 1e-5)


def test_inputs_embeds_equal_hf(tmp_path):
  hf, path = save_hf("token_classification", tmp_path, seed=2)
  ours = lj.from_hf(path)
  rng = np.random.default_rng(1)
  ids, mask, gmask, types = batch(rng)
  embeds = rng.normal(size=ids.shape + (32,)).astype(np.float32)
  inputs = dict(inputs_embeds=embeds, attention_mask=mask, global_attention_mask=gmask,
                token_type_ids=types)
  with torch.no_grad():
    ref = hf(**torch_inputs(inputs)).logits.numpy()
  assert_close(ours(**inputs).logits, ref, HF_ATOL)


def test_attention_mask_values_two_and_negative_equal_hf(tmp_path):
  hf, path = save_hf("base", tmp_path, seed=1)
  ours = lj.from_hf(path)
  ids, mask, _, _ = batch(np.random.default_rng(2))
  mask = mask.copy()
  mask[0, [0, 4]] = 2  # global, as in the reference
  mask[1, 3] = -1  # padding
  mask[2, 2] = -5
  run_both("base", hf, ours, dict(input_ids=ids, attention_mask=mask))


# ---- checkpoints ---------------------------------------------------------------------
def test_untied_lm_decoder_loads_and_round_trips(tmp_path):
  hf, path = save_hf("masked_lm", tmp_path, tie_word_embeddings=False)
  decoder = hf.lm_head.decoder.weight.detach().numpy()
  assert not np.allclose(decoder, hf.longformer.embeddings.word_embeddings.weight.detach().numpy())
  ours = lj.from_hf(path)
  assert not ours.config.tie_word_embeddings
  run_both("masked_lm", hf, ours, task_inputs("masked_lm", np.random.default_rng(0)))
  lj.to_hf(ours, tmp_path / "back")
  back = HEADS["masked_lm"].from_pretrained(tmp_path / "back").eval()
  assert torch.equal(back.lm_head.decoder.weight, hf.lm_head.decoder.weight)


def test_saved_dtype_is_not_the_compute_dtype(tmp_path):
  _, path = save_hf("base", tmp_path)
  cfg = json.loads((path / "config.json").read_text())
  cfg["dtype"] = "bfloat16"
  (path / "config.json").write_text(json.dumps(cfg))
  assert lj.from_hf(path).config.dtype == "float32"
  assert lj.from_hf(path, dtype="bfloat16").config.dtype == "bfloat16"


@pytest.mark.parametrize("change,field", [(dict(causal=True), "causal"),
                                          (dict(attention_dilation=2), "attention_dilation")])
def test_to_hf_refuses_what_transformers_would_run_differently(change, field, tmp_path, caplog):
  cfg = lj.LongformerConfig(vocab_size=VOCAB, hidden_size=16, num_hidden_layers=1,
                            num_attention_heads=2, intermediate_size=8, attention_window=4,
                            max_position_embeddings=40, **change)
  m = lj.create_model(cfg, "masked_lm")
  with pytest.raises(ValueError, match=field):
    lj.to_hf(m, tmp_path / "x")
  assert not (tmp_path / "x" / "model.safetensors").exists()
  lj.to_hf(m, tmp_path / "x", allow_unsupported=True)
  assert field in caplog.text


def test_padding_rows_zero_at_init_and_frozen_as_in_hf(tmp_path):
  cfg = lj.LongformerConfig(vocab_size=VOCAB, hidden_size=16, num_hidden_layers=1,
                            num_attention_heads=2, intermediate_size=8, attention_window=4,
                            max_position_embeddings=40, pad_token_id=PAD)
  emb = lj.create_model(cfg).embeddings
  assert not np.any(np.asarray(emb.word_embeddings.embedding[...])[PAD])
  assert not np.any(np.asarray(emb.position_embeddings.embedding[...])[PAD])
  # gradients: the reference's, with weights copied (pad tokens in the batch)
  hf, path = save_hf("base", tmp_path, seed=3)
  with torch.no_grad():  # a nonzero padding row, as in pretrained checkpoints
    hf.embeddings.word_embeddings.weight[PAD] = 0.5
  hf.save_pretrained(path)
  ours = lj.from_hf(path)
  ids, mask, gmask, types = batch(np.random.default_rng(0))
  graphdef, params, rest = nnx.split(ours, nnx.Param, ...)
  loss = lambda p: jnp.sum(nnx.merge(graphdef, p, rest)(ids, mask, gmask, types,
                                                        max_global_tokens=4).last_hidden_state ** 2)
  grads = jax.jit(jax.grad(loss))(params)
  out = hf(**torch_inputs(dict(input_ids=ids, attention_mask=mask, global_attention_mask=gmask,
                               token_type_ids=types)))
  (out.last_hidden_state ** 2).sum().backward()
  for name in ("word_embeddings", "position_embeddings"):
    ref = getattr(hf.embeddings, name).weight.grad.numpy()
    got = np.asarray(grads["embeddings"][name]["embedding"][...])
    assert not ref[PAD].any() and not got[PAD].any()
    assert_close(got, ref, 1e-4 * max(1.0, np.abs(ref).max()), name)


# ---- input errors name what is wrong --------------------------------------------------
def test_multiple_choice_errors_name_example_choice_and_field(tmp_path):
  _, path = save_hf("multiple_choice", tmp_path)
  ours = lj.from_hf(path)
  ids, mask = qa_batch(np.random.default_rng(0))
  ids, mask = np.stack([ids, ids], 1), np.stack([mask, mask], 1)  # (3, 2, 23)
  bad = ids.copy()
  bad[1, 1, 4] = VOCAB
  bad[2, 0] = 5  # also no separator: the range error is the one reported
  with pytest.raises(ValueError, match=r"input_ids\[1, 1, 4\] = 99"):
    ours(bad, mask)
  with pytest.raises(ValueError, match=r"attention_mask has shape \(3, 23\)"):
    ours(ids, mask[:, 0])
  nosep = ids.copy()
  nosep[2, 1][nosep[2, 1] == SEP] = 5
  with pytest.raises(ValueError, match=r"input_ids\[2, 1\] has no sep_token_id"):
    ours(nosep, mask)


def test_empty_sequences_are_named(tmp_path):
  _, path = save_hf("sequence_classification", tmp_path)
  ours = lj.from_hf(path)
  with pytest.raises(ValueError, match="empty"):
    ours(np.zeros((2, 0), np.int64))
  with pytest.raises(ValueError, match="empty"):
    jax.jit(lambda x: ours(x, max_global_tokens=1).logits)(jnp.zeros((2, 0), jnp.int32))


def test_defaults_cut_training_memory():
  """The defaults (scanned layers, remat="matmuls") against a plain loop without remat:
  XLA's planned temp memory of a compiled forward+backward (no timing). At this size
  0.73x; the paper-small model at 4K tokens: 0.58x (experiments/benchmark.py)."""
  def temp_bytes(**kw):
    cfg = lj.LongformerConfig(vocab_size=64, hidden_size=64, num_hidden_layers=4,
                              num_attention_heads=4, intermediate_size=256,
                              attention_window=64, max_position_embeddings=1100,
                              hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
                              max_global_tokens=1, **kw)
    graphdef, params, rest = nnx.split(lj.create_model(cfg), nnx.Param, ...)
    ids = jnp.full((1, 1024), 5, jnp.int32)
    gmask = jnp.zeros_like(ids).at[:, 0].set(1)
    loss = lambda p: jnp.mean(nnx.merge(graphdef, p, rest)(
        ids, global_attention_mask=gmask).last_hidden_state ** 2)
    return jax.jit(jax.grad(loss)).lower(params).compile().memory_analysis().temp_size_in_bytes

  default, plain = temp_bytes(), temp_bytes(remat="none", scan_layers=False)
  assert default <= 0.8 * plain, (default, plain)


def test_causal_lm_head_shifts_labels_and_needs_causal_windows():
  from longformer_jax import outputs as out_lib
  from longformer_jax.config import LongformerConfig
  cfg = LongformerConfig(vocab_size=VOCAB, hidden_size=16, num_hidden_layers=1,
                         num_attention_heads=2, intermediate_size=32, attention_window=4,
                         max_position_embeddings=40, causal=True)
  model = model_lib.create_model(cfg, "causal_lm")
  ids = np.random.default_rng(0).integers(3, VOCAB, (2, 12)).astype(np.int32)
  labels = ids.copy()
  labels[1, 5] = -100
  out = model(ids, np.ones_like(ids), labels=labels)
  # position t predicts token t + 1 (the reference's causal-LM convention)
  want = out_lib.cross_entropy(np.asarray(out.logits)[:, :-1].reshape(-1, VOCAB),
                               labels[:, 1:].reshape(-1))
  np.testing.assert_allclose(float(out.loss), float(want), rtol=1e-6)
  with pytest.raises(ValueError, match="causal=True"):
    model_lib.create_model(cfg.replace(causal=False), "causal_lm")


def test_head_output_says_how_to_get_the_encoder_states():
  """A head's output read as the encoder's (the quick start on an MLM checkpoint) says
  to load with task='base' instead of a bare AttributeError; real fields still read."""
  out = outputs.LogitsOutput(logits=jnp.zeros((1, 2, 3)))
  for read in (lambda: out.last_hidden_state, lambda: out["pooler_output"]):
    with pytest.raises(AttributeError, match="task='base'.*hidden_states\\[-1\\]"):
      read()
  with pytest.raises(AttributeError, match="no attribute 'nonsense'"):
    out.nonsense
  assert out["logits"].shape == (1, 2, 3) and "last_hidden_state" not in out
