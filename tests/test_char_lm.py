"""The paper's character LM (section 4): parameter counts of the paper-size configs,
and every variant of ``configs/char_lm.py`` trained 2 steps on a tiny override."""

import os
import zipfile

import numpy as np
import pytest

from conftest import ROOT, load_config, losses

README = os.path.join(ROOT, "README.md")

VARIANTS = ("text8", "enwik8", "enwik8,large", "text8,window=fixed", "text8,window=decreasing",
            "text8,dilation=off", "text8,hf")  # tiny "ablation" is tiny "text8": not rerun


def param_count(config) -> int:
  from longformer_jax import model as model_lib
  from longformer_jax import train
  return model_lib.param_count(train.model_config(config, train.resolve_phases(config)[0]),
                               "causal_lm")


def closed_form_count(layers, d=512, ffn=2048, vocab=256) -> int:
  """The paper's char-LM counted by hand: tied token embeddings and one token-type row,
  per layer Q/K/V, W_r, u and v, the output projection, the FFN and two pre-LNs, then
  the final LN and the LM-head bias."""
  attention = 3 * (d * d + d) + d * d + 2 * d + (d * d + d)
  layer = attention + (d * ffn + ffn) + (ffn * d + d) + 2 * (2 * d)
  return vocab * d + d + layers * layer + 2 * d + vocab


@pytest.mark.parametrize("variant,layers,exact,paper_millions", [
    ("text8", 12, 41_119_488, 41), ("enwik8", 12, 41_119_488, 41),
    ("enwik8,large", 30, 102_599_424, 102)])
def test_paper_configs_have_the_papers_parameter_counts(variant, layers, exact,
                                                        paper_millions):
  """The README's exact counts, counted on the abstract model (nothing allocated): every
  parameter, the relative-position projections W_r and biases u, v included; the
  paper's 41M / 102M are these truncated to whole millions."""
  config = load_config("char_lm", variant)
  count = param_count(config)
  print(f"char_lm.py:{variant}: {count:,} parameters")
  assert count == exact == closed_form_count(layers), (count, closed_form_count(layers))
  with open(README) as f:
    assert f"{exact:,}" in f.read()
  assert exact // 1_000_000 == paper_millions
  assert config.model.position_embedding_type == "relative_sinusoidal"
  assert config.model.pre_layer_norm and len(config.phases) == 5


def test_ablation_windows_and_dilation():
  from configs import char_lm
  inc = char_lm.ablation_windows(12, "increasing")
  assert inc[0] == 32 and inc[-1] == 512 and inc == sorted(inc)
  assert char_lm.ablation_windows(12, "decreasing") == inc[::-1]
  assert char_lm.ablation_windows(12, "fixed") == [230] * 12
  small = [d[0] - 1 for d in char_lm.layer_dilations(12, 8)]
  assert small == [0] * 6 + [1, 1, 2, 2, 3, 3]
  large = [d[0] - 1 for d in char_lm.layer_dilations(30, 8)]
  assert large == [0] * 15 + [1] * 5 + [2] * 5 + [3] * 5
  assert all(d[2:] == [1] * 6 for d in char_lm.layer_dilations(30, 8))
  assert char_lm.layer_dilations(12, 8, on=False) == [[1] * 8] * 12
  ablation = char_lm.get_config("text8,ablation,window=fixed")
  assert [(p["seq_len"], p["steps"]) for p in ablation.phases] == [(2048, 150_000)]
  assert ablation.model.attention_window == [230] * 12


@pytest.fixture(scope="module")
def corpus_zips(tmp_path_factory):
  root = tmp_path_factory.mktemp("char_corpus")
  rng = np.random.default_rng(0)
  text = "".join(rng.choice(list("abcdefgh "), size=40_000))
  paths = {}
  for name in ("text8", "enwik8"):
    paths[name] = root / f"{name}.zip"
    with zipfile.ZipFile(paths[name], "w") as z:
      z.writestr(name, text)
  return root, paths


# Two steps of every variant take minutes; the default run trains the variants whose code
# paths differ (relative positions and dilation, none, the HF architecture) and traces the
# steps of all of them (test_every_char_lm_variant_traces_its_steps); -m exhaustive trains
# the rest too (other corpus, large, window schedules: the same code with other numbers).
TRAINED = ("text8", "text8,dilation=off", "text8,hf")


@pytest.mark.parametrize("variant", [
    v if v in TRAINED else pytest.param(v, marks=pytest.mark.exhaustive) for v in VARIANTS])
def test_every_char_lm_variant_trains_two_steps(variant, corpus_zips, tmp_path):
  from longformer_jax import train
  root, paths = corpus_zips
  c = load_config("char_lm", variant + ",tiny")
  corpus = variant.split(",")[0]
  c.data.data_dir, c.data.path = str(root / f"data_{corpus}"), str(paths[corpus])
  c.eval_every, c.eval_batches, c.async_checkpoints, c.log_every = 2, 1, False, 1
  assert sum(p.steps for p in train.resolve_phases(c)) == 2
  out = train.train_and_evaluate(c, str(tmp_path / "run"))
  rows = losses(str(tmp_path / "run"))
  assert sorted(rows) == [1, 2] and all(np.isfinite(list(rows.values())))
  assert np.isfinite(out["eval_bpc"]) and out["eval_bpc"] > 0


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_char_lm_variant_traces_its_steps(variant, tmp_path):
  """Each variant's config builds a run (its checks included) and its train and eval steps
  trace, phase by phase, to a scalar loss at the batch's shapes (no compile, no data)."""
  import jax
  from longformer_jax import data as data_lib, train
  c = load_config("char_lm", variant + ",tiny")
  c.data.data_dir = str(tmp_path / "data")
  runner = train.Runner(c, str(tmp_path / "run"))
  for phase in runner.phases:
    _, step, evals = runner.functions(phase)
    batch = data_lib.pipeline.batch_spec(runner.data_cfg, runner.model_configs[phase.index],
                                         split="train", seq_len=phase.seq_len,
                                         batch_size=phase.batch_size)
    _, metrics = jax.eval_shape(step, runner.abstract_state, batch)
    assert metrics["loss"].shape == () and metrics["loss"].dtype == np.float32
    assert set(evals) == {"eval"}
  assert not (tmp_path / "data").exists() and not (tmp_path / "run").exists()
