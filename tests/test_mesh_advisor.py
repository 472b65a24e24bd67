"""``--config.mesh=auto``: the meshes that make sense for a run, the cheap ranking, the
compiled choice (TPU compiles, no TPU) and a training run taking the chosen mesh."""

import json
import math
import os
from types import SimpleNamespace

import pytest

from longformer_jax.compile import mesh_advisor, topology
from tests.conftest import ROOT, load_config

os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")


def _shape(heads=12, hidden=768, ffn=3072, batches=(32,), seq_len=4096, reach=256,
           sequence_ok=True, accum=1):
  from longformer_jax.config import LongformerConfig
  phases = [SimpleNamespace(batch_size=b, seq_len=seq_len, steps=10) for b in batches]
  cfg = LongformerConfig(hidden_size=hidden, num_attention_heads=heads, intermediate_size=ffn,
                         attention_window=(2 * reach,) * 12, max_position_embeddings=seq_len + 2)
  return {"phases": phases, "accum": accum, "head": "masked_lm",
          "model_cfgs": [cfg] * len(phases), "facts": dict(
      heads=heads, hidden=hidden, ffn=ffn, layers=12, reach=reach, sequence_ok=sequence_ok)}


def test_candidates_divide_the_batch_the_heads_and_the_sequence():
  shape = _shape()
  meshes = mesh_advisor.candidate_meshes(shape, 256)
  assert meshes and all(math.prod(m.values()) == 256 for m in meshes)
  for m in meshes:
    assert 32 % (m["data"] * m["fsdp"]) == 0  # the batch splits evenly
    assert 12 % m["tensor"] == 0  # no head is split across chips
    assert 4096 // m["sequence"] >= 256  # a chunk holds the window's reach
    assert m["data"] == 1 or m["fsdp"] == 1  # the two ends of the batch's share
  assert dict(data=1, fsdp=32, tensor=1, sequence=8) in meshes
  assert dict(data=1, fsdp=32, tensor=8, sequence=1) not in meshes  # 12 heads over 8
  no_split = mesh_advisor.candidate_meshes(_shape(sequence_ok=False), 128)
  assert no_split and all(m["sequence"] == 1 for m in no_split)  # 32 x tensor 4 at most
  assert not mesh_advisor.candidate_meshes(_shape(sequence_ok=False), 256)
  assert not mesh_advisor.candidate_meshes(_shape(batches=(3,), sequence_ok=False,
                                                  heads=1), 256)


def test_grad_accumulation_divides_the_micro_batch():
  meshes = mesh_advisor.candidate_meshes(_shape(batches=(32,), accum=4), 16)
  assert max(m["data"] * m["fsdp"] for m in meshes) == 8


def test_the_estimate_prefers_what_moves_fewer_bytes():
  """Tensor parallelism's per-layer all-reduces cost more than a sequence split's halos;
  FSDP's gathers cost more than nothing on one chip."""
  shape = _shape()
  chip = topology.CHIPS["v5e"]
  est = lambda **m: mesh_advisor.estimate(shape, dict(data=1, **m), chip, 1.5e8)["run_s"]
  assert est(fsdp=32, tensor=4, sequence=2) > est(fsdp=32, tensor=1, sequence=8)
  assert est(fsdp=1, tensor=1, sequence=1) < 256 * est(fsdp=32, tensor=1, sequence=8)


def test_model_facts_of_each_family():
  from longformer_jax.config import LongformerConfig
  from longformer_jax.led.config import LEDConfig
  f = mesh_advisor.model_facts(LongformerConfig(num_attention_heads=12, hidden_size=768,
                                                attention_window=(512,) * 12))
  assert (f["heads"], f["hidden"], f["reach"], f["sequence_ok"]) == (12, 768, 256, True)
  led = mesh_advisor.model_facts(LEDConfig(d_model=1024, encoder_attention_heads=16,
                                           encoder_layers=12, decoder_layers=12))
  assert (led["heads"], led["hidden"], led["layers"]) == (16, 1024, 24)
  rel = mesh_advisor.model_facts(LongformerConfig(
      position_embedding_type="relative_sinusoidal", attention_window=(64,) * 12))
  assert not rel["sequence_ok"]


def needs_libtpu():
  pytest.importorskip("libtpu", reason="TPU compiles need libtpu (the test extras)")


@pytest.mark.slow
def test_mesh_auto_compiles_the_candidates_and_a_run_takes_the_choice(tmp_path):
  """On 4 TPU chips: the ranked candidates compiled, the fastest that fits chosen and
  written; a run with --config.mesh=auto on that many devices takes that mesh, one whose
  device count has no choice is refused, naming the field."""
  needs_libtpu()
  workdir = str(tmp_path / "w")
  config = load_config("default", "tiny")
  report = mesh_advisor.advise(config, workdir, "v5e:2x2")
  saved = json.loads((tmp_path / "w" / "compile" / "mesh-auto-v5e_2x2.json").read_text())
  assert saved["chosen"] == report["chosen"]
  fitting = [r for r in saved["compiled"] if r["fits"]]
  assert len(saved["compiled"]) >= 3 and fitting
  assert saved["chosen"]["run_s"] == min(r["run_s"] for r in fitting)
  assert all(r["mfu"] > 0 and r["tokens_per_s_per_chip"] * 4 == pytest.approx(
      r["tokens_per_s"]) for r in fitting)
  assert f"chosen: v5e:2x2 with {saved['flags']}" in mesh_advisor.table(report)
  with pytest.MonkeyPatch.context() as mp:  # what main.py does for a training run
    mp.setattr("jax.device_count", lambda: 4)
    assert mesh_advisor.apply_chosen(config, workdir) == saved["chosen"]["mesh"]
  assert {k: config.mesh[k] for k in mesh_advisor.MESH_AXES} == saved["chosen"]["mesh"]
  with pytest.MonkeyPatch.context() as mp, pytest.raises(
      ValueError, match="config.mesh=auto: no mesh chosen for 2 devices"):
    mp.setattr("jax.device_count", lambda: 2)
    mesh_advisor.apply_chosen(config, workdir)


def test_the_command_line_takes_mesh_auto_out_of_the_config_flags(tmp_path):
  """``--config.mesh=auto`` is not a value of the mesh group: main.py takes it out
  before the config flags are parsed and runs the advisor instead."""
  from longformer_jax import main
  argv = ["main", f"--config={ROOT}/configs/default.py:tiny", f"--workdir={tmp_path}",
          "--config.mesh=auto"]
  try:
    main.parse_flags(argv)
    assert main._mesh_auto and main.FLAGS.config.mesh.data == -1  # the config's own mesh
  finally:
    main.FLAGS.unparse_flags()
    main._mesh_auto.clear()


def test_a_family_names_the_smallest_slice_near_the_best_per_chip():
  rows = [dict(topology=f"v5e-{n}", devices=n, fits=fits, tokens_per_s_per_chip=tps,
               mesh=dict(data=1, fsdp=n, tensor=1, sequence=1))
          for n, fits, tps in ((4, False, None), (8, True, 90.0), (16, True, 95.0),
                               (64, True, 100.0), (256, True, 60.0))]
  assert mesh_advisor.recommended_slice(rows, "v5e")["topology"] == "v5e-8"  # 90% of 100
  rows[1]["tokens_per_s_per_chip"] = 89.0
  assert mesh_advisor.recommended_slice(rows, "v5e")["topology"] == "v5e-16"
  with pytest.raises(ValueError, match="no v5e slice fits"):
    mesh_advisor.recommended_slice([dict(rows[0])], "v5e")
