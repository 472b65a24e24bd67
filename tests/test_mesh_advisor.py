"""``--config.mesh=auto``: the meshes that make sense for a run, the cheap ranking, the
compiled choice (TPU compiles, no TPU) and a training run taking the chosen mesh."""

import json
import math
import os
import subprocess
import sys
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
  est = lambda **m: mesh_advisor.estimate(shape, dict(data=1, **m), chip, 1.5e8)["run_s"]  # noqa: E731
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
  """The command line on 4 TPU chips: the ranked candidates compiled, the fastest that
  fits chosen and written; a run with --config.mesh=auto on that many devices takes that
  mesh; one whose device count has no choice is refused, naming the field."""
  needs_libtpu()
  workdir = tmp_path / "w"
  env = dict(os.environ, TPU_SKIP_MDS_QUERY="1")
  proc = subprocess.run([sys.executable, "-m", "longformer_jax.main",
                         "--config=configs/default.py:tiny", f"--workdir={workdir}",
                         "--config.mesh=auto", "--mode=compile", "--topology=v5e:2x2"],
                        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  report = json.loads((workdir / "compile" / "mesh-auto-v5e_2x2.json").read_text())
  fitting = [r for r in report["compiled"] if r["fits"]]
  assert len(report["compiled"]) >= 3 and fitting
  assert report["chosen"]["run_s"] == min(r["run_s"] for r in fitting)
  assert report["flags"] in proc.stdout and "chosen: v5e:2x2" in proc.stdout
  assert all(r["mfu"] > 0 and r["tokens_per_s_per_chip"] * 4 == pytest.approx(
      r["tokens_per_s"]) for r in fitting)
  # what a training run on those 4 devices does with --config.mesh=auto (main.py)
  config = load_config("default", "tiny")
  with pytest.MonkeyPatch.context() as mp:
    mp.setattr("jax.device_count", lambda: 4)
    assert mesh_advisor.apply_chosen(config, str(workdir)) == report["chosen"]["mesh"]
  assert {k: config.mesh[k] for k in mesh_advisor.MESH_AXES} == report["chosen"]["mesh"]
  with pytest.MonkeyPatch.context() as mp, pytest.raises(
      ValueError, match="config.mesh=auto: no mesh chosen for 2 devices"):
    mp.setattr("jax.device_count", lambda: 2)
    mesh_advisor.apply_chosen(config, str(workdir))


@pytest.mark.slow
def test_a_family_names_the_smallest_slice_near_the_best_per_chip(tmp_path, monkeypatch):
  needs_libtpu()
  monkeypatch.setitem(mesh_advisor.FAMILY_SIZES, "v5e", (4, 8))
  report = mesh_advisor.advise_family(load_config("default", "tiny"), str(tmp_path), "v5e")
  rows = {r["topology"]: r for r in report["compiled"]}
  assert set(rows) == {"v5e-4", "v5e-8"}
  best = max(r["tokens_per_s_per_chip"] for r in rows.values())
  near = [t for t, r in rows.items() if r["tokens_per_s_per_chip"] >= 0.9 * best]
  assert report["recommended_slice"] == min(near, key=lambda t: rows[t]["devices"])
  assert report["flags"] == mesh_advisor.mesh_flags(rows[report["recommended_slice"]]["mesh"])
