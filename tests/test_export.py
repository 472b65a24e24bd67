"""A model's forward exported with jax.export: the reloaded artifact reproduces the
model, checks its global-token bound, and lowers for GPU and TPU without one."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import longformer_jax as lj
from longformer_jax import export
from longformer_jax import model as model_lib
from test_attention_impl import _inputs, tiny_config


def _model(impl: str, task: str = "base", **kw):
  cfg = tiny_config(attention_impl=impl, num_labels=3, **kw)
  return model_lib.create_model(cfg, task, seed=0)


def test_artifact_reloads_and_reproduces_outputs(tmp_path, impl="scan"):
  """Dynamic batch: the reloaded program serves batches of 2 and 1, with per-example
  global masks and padding, like the model."""
  model = _model(impl)
  ids, mask, gmask = _inputs()
  path = tmp_path / "model.jax_exported"
  export.save(export.export_model(model, seq_len=ids.shape[1]), path)
  assert os.listdir(tmp_path) == ["model.jax_exported"]  # no temporary left behind
  loaded = export.load(path)
  want = model(ids, mask, gmask)
  got = loaded(ids, mask, gmask)
  assert sorted(got) == sorted(want.keys())
  for name in got:
    np.testing.assert_allclose(np.asarray(got[name]), np.asarray(want[name]), atol=1e-5,
                               rtol=0, err_msg=name)
  one = loaded(ids[1:], mask[1:], gmask[1:])["last_hidden_state"]
  np.testing.assert_allclose(np.asarray(one), np.asarray(want.last_hidden_state[1:]),
                             atol=1e-5, rtol=0)


def test_artifact_raises_on_too_many_global_tokens(tmp_path):
  """The program holds no host callback; the loaded artifact checks the global counts
  it returns, eagerly and under jit."""
  model = _model("scan")
  ids, mask, gmask = _inputs()
  export.save(export.export_model(model, seq_len=ids.shape[1]), tmp_path / "m")
  loaded = export.load(tmp_path / "m")
  gmask = gmask.copy()
  gmask[1, :4] = 1  # 4 > max_global_tokens = 3
  with pytest.raises(ValueError, match="max_global_tokens=3"):
    loaded(ids, mask, gmask)
  with pytest.raises(Exception, match="max_global_tokens=3"):
    jax.block_until_ready(jax.jit(loaded)(ids, mask, gmask))


def test_export_needs_a_global_bound():
  model = model_lib.create_model(tiny_config(max_global_tokens=None), seed=0)
  with pytest.raises(ValueError, match="max_global_tokens"):
    export.export_model(model, seq_len=16)


def test_not_an_artifact_is_named(tmp_path):
  (tmp_path / "x").write_bytes(b'{"format": "other"}\nabc')
  with pytest.raises(ValueError, match="not a longformer_jax.export"):
    export.load(tmp_path / "x")


def _custom_calls(exported) -> set[str]:
  text = exported.exported.mlir_module()
  return {line.split("custom_call @")[1].split("(")[0] for line in text.splitlines()
          if "custom_call @" in line}


def test_lowers_for_cuda_and_tpu():
  """Lowered (not run) for accelerators: the XLA backends in one artifact for every
  platform, the Pallas kernels per platform (Triton on GPU, Mosaic on TPU)."""
  blocked = export.export_model(_model("blocked"), seq_len=48,
                                platforms=("cpu", "cuda", "tpu"))
  assert blocked.exported.platforms == ("cpu", "cuda", "tpu")
  pallas = _model("pallas")
  cuda = export.export_model(pallas, seq_len=48, batch=2, platforms=("cuda",))
  assert "__gpu$xla.gpu.triton" in _custom_calls(cuda)
  tpu = export.export_model(pallas, seq_len=48, platforms=("tpu",))
  assert "tpu_custom_call" in _custom_calls(tpu)


@pytest.mark.parametrize("kw,field", [(dict(platforms=("cpu", "cuda"), batch=2), "platforms"),
                                      (dict(platforms=("cuda",)), "batch")])
def test_pallas_export_limits_are_named(kw, field):
  with pytest.raises(ValueError, match=field):
    export.export_model(_model("pallas"), seq_len=48, **kw)


def test_cli_exports_an_hf_checkpoint(tmp_path):
  """``python -m longformer_jax.export`` on a classifier checkpoint: the artifact's
  logits are the model's."""
  model = _model("scan", "sequence_classification", attention_dilation=None)
  cfg = model.config
  lj.to_hf(model, tmp_path / "hf")
  out = tmp_path / "clf.jax_exported"
  export.main([str(tmp_path / "hf"), str(out), "--seq-len", "45", "--max-global-tokens",
               str(cfg.max_global_tokens), "--attention-impl", "blocked"])
  ids, mask, gmask = _inputs()
  got = export.load(out)(ids, mask, gmask)["logits"]
  np.testing.assert_allclose(np.asarray(got), np.asarray(model(ids, mask, gmask).logits),
                             atol=1e-5, rtol=0)


def test_artifact_takes_shorter_inputs_and_default_masks(tmp_path):
  """An artifact exported at 45 tokens serves a 30-token input with no masks, as the
  model does the same call: per-token outputs cut to 30, pooled ones whole; a longer
  input is named."""
  model = _model("scan", "token_classification")
  ids, _, _ = _inputs()
  export.save(export.export_model(model, seq_len=ids.shape[1]), tmp_path / "m")
  loaded = export.load(tmp_path / "m")
  assert loaded.token_outputs == ("logits",)
  short = ids[:, :30]
  got, want = loaded(short)["logits"], model(short).logits
  assert got.shape == want.shape == (2, 30, 3)
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-5, rtol=0)
  base = export.export_model(_model("scan"), seq_len=ids.shape[1])
  assert base.token_outputs == ("last_hidden_state",)
  with pytest.raises(ValueError, match="input_ids has 46 tokens.*at most 45"):
    loaded(np.concatenate([ids, ids[:, :1]], axis=1))
