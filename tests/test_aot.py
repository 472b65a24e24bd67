"""Ahead-of-time compiles for TPU topologies (libtpu, no TPU), and the HLO cost counts."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from longformer_jax.compile import aot, hlo_cost, model_flops, topology
from tests.conftest import load_config

os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")
libtpu = pytest.importorskip("libtpu", reason="TPU compiles need libtpu (the test extras)")

MESHES = {"fsdp": dict(data=1, fsdp=4), "data_x_tensor": dict(data=2, tensor=2),
          "data_x_sequence": dict(data=2, sequence=2)}


def _tiny(impl: str, mesh: dict, **model):
  c = load_config("default", "tiny")
  c.model.attention_impl = impl
  c.model.update(model)
  c.mesh.update({**dict(data=1, fsdp=1, tensor=1, sequence=1), **mesh})
  return c


def _check_flops(step, cfg_flops_tol=0.10):
  f = step["flops"]
  assert abs(f["hlo"] - f["analytical"]) <= cfg_flops_tol * f["analytical"], f


# Every backend that claims TPU support, on each mesh kind; scanned layers on fsdp so
# the loop-aware FLOP count is checked where XLA's own count sees one layer.
@pytest.mark.parametrize("impl", ["blocked", "pallas"])
@pytest.mark.parametrize("mesh", sorted(MESHES))
def test_tiny_compiles_for_tpu_and_fits(tmp_path, impl, mesh):
  scan = mesh == "fsdp"
  config = _tiny(impl, MESHES[mesh], scan_layers=scan, remat="matmuls" if scan else "none")
  target = topology.resolve("v5e:2x2")
  if mesh == "data_x_tensor" and impl == "blocked":  # the whole report, eval step too
    report = aot.compile_run(config, str(tmp_path), "v5e:2x2", out_dir=str(tmp_path / "c"))
    _check_report(report, tmp_path / "c" / "v5e_2x2.json")  # no colon in a file name
    step = report["steps"][0]
  else:
    (step,) = aot.compile_steps(config, str(tmp_path), target, kinds=("train",))
  assert step["attention_impl"] == impl and step["fits"], step["memory"]
  assert 0 < step["memory"]["total"] < target.chip.hbm_bytes
  _check_flops(step)
  if scan:  # XLA's cost analysis counts the two scanned layers once
    assert step["flops"]["xla_cost_analysis"] < 0.8 * step["flops"]["hlo"]
  assert step["collectives"], "a sharded step has collectives"


def _check_report(report, path):
  """The written report: train and eval steps, all fitting, the table, the roofline."""
  assert report["path"] == str(path)
  saved = json.loads(path.read_text())
  assert [s["kind"] for s in saved["steps"]] == ["train", "eval"]
  assert all(s["fits"] for s in saved["steps"]) and saved["alternatives"] == []
  assert saved["mesh"] == {"data": 2, "fsdp": 1, "tensor": 2, "sequence": 1}
  text = aot.table(saved)
  assert "| 0 | train | blocked |" in text and "TPU v5e" in text
  for s in saved["steps"]:
    r = s["roofline"]
    chip, net = saved["chip"], s["network"]
    assert net["link_bandwidth"] == chip["ici_bandwidth"] > 0
    assert r["step_s"] == pytest.approx(  # async collectives overlap, sync ones stall
        max(s["flops"]["hlo"] / chip["peak_flops"], s["bytes"]["hlo"] / chip["hbm_bandwidth"],
            net["wire_bytes"] / chip["ici_bandwidth"])
        + net["wire_bytes_sync"] / chip["ici_bandwidth"])
    assert net["wire_bytes"] + net["wire_bytes_sync"] > 0  # data x tensor: all-reduces


def test_alternatives_when_a_step_does_not_fit(tmp_path, monkeypatch):
  """A train step that does not fit: the alternatives are tried in order (each keeping
  the changes before it) and the first that fits is named. Compiles are stood in for
  by a rule: fits with full remat and at least 4 micro-batches."""
  config = _tiny("blocked", dict(data=4))
  tried = []

  def fake_compile(cfg, workdir, target, kinds=("train", "eval"), phases=None):
    tried.append((dict(cfg.mesh), cfg.model.remat, cfg.optim.grad_accum))
    fits = cfg.model.remat == "full" and cfg.optim.grad_accum >= 4
    return [{"kind": "train", "fits": fits, "memory": {"total": 1}}]

  monkeypatch.setattr(aot, "compile_steps", fake_compile)
  report = aot.compile_run(config, str(tmp_path), "v5e:2x2")
  assert [a["change"] for a in report["alternatives"]] == [
      "fsdp over every data device", "fsdp over every data device + remat=full",
      "fsdp over every data device + remat=full + grad_accum=2",
      "fsdp over every data device + remat=full + grad_accum=4"]
  assert report["first_fit"] == "fsdp over every data device + remat=full + grad_accum=4"
  assert tried[0][0]["data"] == 4 and tried[1][0]["data"] == 1 and tried[1][0]["fsdp"] == -1
  assert [t[1:] for t in tried[1:]] == [("none", 1), ("full", 1), ("full", 2), ("full", 4)]


def test_a_step_the_compiler_refuses_does_not_fit():
  """The TPU compiler refuses a program whose temporaries exceed HBM: that is the
  report's "fits": false with the compiler's figure, not a crash; other errors raise."""
  chip = topology.CHIPS["v5e"]
  error = jax.errors.JaxRuntimeError(
      "RESOURCE_EXHAUSTED: Ran out of memory on HBM, the total memory required for HLO "
      "temporaries (17.40G) exceeds available HBM (15.75G).")
  report = aot._out_of_memory(error, chip)
  assert report["fits"] is False and report["memory"]["temp"] == 17.40 * 2 ** 30
  assert report["margin"] < 0 and "RESOURCE_EXHAUSTED" in report["compiler_error"]
  with pytest.raises(jax.errors.JaxRuntimeError, match="INTERNAL"):
    aot._out_of_memory(jax.errors.JaxRuntimeError("INTERNAL: Mosaic failed"), chip)
  with pytest.raises(ValueError, match="attention_impl='pallas'"):  # a kernel, not HBM
    aot._out_of_memory(jax.errors.JaxRuntimeError(
        "RESOURCE_EXHAUSTED: E1001: CompileTimeScopedVmemOom:"), chip)


def test_auto_picks_pallas_on_tpu_where_its_kernels_fit_vmem():
  """auto: pallas on TPU for longformer-base at 4,096 tokens; blocked at 16,384, where
  one head's whole queries no longer fit a core's scoped VMEM, and for relative
  positions; scan on CPU."""
  from longformer_jax import train
  from longformer_jax.config import LongformerConfig
  base = LongformerConfig(attention_window=(512,) * 12, dtype="bfloat16")
  assert train.resolve_backend(base, "tpu", 4096, "TPU v5 lite").attention_impl == "pallas"
  assert train.resolve_backend(base, "tpu", 16384, "TPU v5 lite").attention_impl == "blocked"
  assert train.resolve_backend(base, "cpu", 4096).attention_impl == "scan"
  assert train.resolve_backend(base, "cuda", 4096).attention_impl == "blocked"
  relative = base.replace(position_embedding_type="relative_sinusoidal")
  assert train.resolve_backend(relative, "tpu", 4096).attention_impl == "blocked"
  # a v4 core's 16 MiB of VMEM does not hold the kernels at 4,096 (v4-128 compile)
  assert train.resolve_backend(base, "tpu", 4096, "TPU v4").attention_impl == "blocked"
  assert train.resolve_backend(base, "tpu", 2048, "TPU v4").attention_impl == "pallas"


def test_topology_names():
  assert topology.tpu_topology_name("v5e-256") == ("v5e", "v5e:16x16")
  assert topology.tpu_topology_name("v4-128") == ("v4", "v4:4x4x4")  # 128 cores, 64 chips
  assert topology.tpu_topology_name("v5p-16") == ("v5p", "v5p:2x2x2")
  assert topology.tpu_topology_name("v6e-8") == ("v6e", "v6e:2x4")
  assert len(topology.resolve("v4-16").devices) == 8
  with pytest.raises(ValueError, match="topology 'v9x-8'"):
    topology.resolve("v9x-8")


# ---- hlo_cost on programs whose counts are known in closed form -----------------------
def test_loop_flops_and_bytes_closed_form():
  m, k, trips = 64, 48, 7
  def f(x, w):  # a product that depends on the carry: it stays in the loop
    return jax.lax.fori_loop(0, trips, lambda i, x: jnp.tanh(x @ w), x)
  compiled = jax.jit(f).lower(jnp.ones((m, k)), jnp.ones((k, k))).compile()
  cost = hlo_cost.analyze(compiled.as_text())
  assert cost.unknown_loops == 0
  assert cost.flops == 2 * m * k * k * trips  # XLA's own analysis counts one iteration


def test_collectives_counted_per_loop_trip():
  """A reduction over a sharded axis inside a 5-trip loop, compiled for 4 TPU chips:
  its all-reduce counts 5 times."""
  mesh = Mesh(np.array(topology.resolve("v5e:2x2").devices), ("x",))
  trips = 5

  def f(x):
    return jax.lax.fori_loop(0, trips, lambda i, acc: acc * 0.5 + acc.sum(0), x)

  x = jax.ShapeDtypeStruct((64, 128), jnp.float32, sharding=NamedSharding(mesh, P("x")))
  cost = hlo_cost.analyze(jax.jit(f).lower(x).compile().as_text())
  assert cost.unknown_loops == 0
  count, nbytes = cost.collectives["all-reduce"]
  assert count == trips and nbytes == trips * 128 * 4, cost.collectives


def _one_chip(*shapes):
  sharding = jax.sharding.SingleDeviceSharding(topology.resolve("v5e:2x2").devices[0])
  return [jax.ShapeDtypeStruct(s, jnp.bfloat16, sharding=sharding) for s in shapes]


def test_hbm_bytes_of_a_matmul_on_tpu():
  """(512 x 1024) @ (1024 x 2048) in bf16 on one v5e chip: its operands read from HBM
  once and its result written once, whether or not XLA stages them through VMEM."""
  m, k, n = 512, 1024, 2048
  compiled = jax.jit(lambda a, b: a @ b).lower(*_one_chip((m, k), (k, n))).compile()
  cost = hlo_cost.analyze(compiled.as_text())
  assert cost.bytes == 2 * (m * k + k * n + m * n)
  assert cost.flops == 2 * m * k * n


def test_hbm_bytes_of_a_scanned_mlp_on_tpu():
  """Eight layers of tanh(x @ W[l]) under a scan over stacked weights (8 x 512 x 512):
  each layer's weights read once (not the stack once a layer), the activations between
  once in and out and at most once a layer each way."""
  layers, d, batch = 8, 512, 256

  def mlp(x, ws):
    return jax.lax.scan(lambda x, w: (jnp.tanh(x @ w), None), x, ws)[0]

  compiled = jax.jit(mlp).lower(*_one_chip((batch, d), (layers, d, d))).compile()
  cost = hlo_cost.analyze(compiled.as_text())
  weights, acts = 2 * layers * d * d, 2 * batch * d
  assert cost.unknown_loops == 0 and cost.flops == 2 * layers * batch * d * d
  assert weights + 2 * acts <= cost.bytes <= weights + 2 * (layers + 1) * acts, cost.bytes


@pytest.mark.parametrize("out_spec,kind,moved,group", [
    (P(None, "y"), "all-gather", 64 * 64 * 4, 2),  # over x: 2 devices, result [64, 64]
    (P(None, None), "all-gather", 128 * 64 * 4, 4),  # over x and y: 4 devices
])
def test_wire_bytes_of_a_gather_by_the_ring_algorithm(out_spec, kind, moved, group):
  """An all-gather of a [64, 128] f32 array sharded over a 2 x 2 mesh: each device sends
  (n-1)/n of the gathered result, n the devices of its replica group."""
  mesh = Mesh(np.array(topology.resolve("v5e:2x2").devices).reshape(2, 2), ("x", "y"))
  x = jax.ShapeDtypeStruct((64, 128), jnp.float32, sharding=NamedSharding(mesh, P("x", "y")))
  f = jax.jit(lambda x: x * 2, out_shardings=NamedSharding(mesh, out_spec))
  cost = hlo_cost.analyze(f.lower(x).compile().as_text())
  assert cost.collectives[kind] == [1, moved], cost.collectives
  assert cost.wire_bytes + cost.wire_bytes_sync == moved * (group - 1) / group


def test_wire_bytes_of_an_all_reduce_by_the_ring_algorithm():
  """A sum over an axis sharded 2 ways: the all-reduce of the [128] f32 partial sums
  sends twice (n-1)/n of them per device."""
  mesh = Mesh(np.array(topology.resolve("v5e:2x2").devices).reshape(2, 2), ("x", "y"))
  x = jax.ShapeDtypeStruct((64, 128), jnp.float32, sharding=NamedSharding(mesh, P("x", None)))
  cost = hlo_cost.analyze(jax.jit(lambda x: x.sum(0)).lower(x).compile().as_text())
  assert cost.collectives["all-reduce"] == [1, 128 * 4], cost.collectives
  assert cost.wire_bytes + cost.wire_bytes_sync == 2 * 128 * 4 * (2 - 1) / 2


def test_analytical_flops_grow_as_the_model_says():
  """Doubling the batch doubles the count; pallas recomputes scores in its backward."""
  cfg = _tiny("blocked", {})
  from longformer_jax import train
  cfg_model = train.model_config(cfg, train.resolve_phases(cfg)[0])
  one = model_flops.step_flops(cfg_model, "sequence_classification", seq_len=128,
                               batch_size=1, train=True)
  assert model_flops.step_flops(cfg_model, "sequence_classification", seq_len=128,
                                batch_size=2, train=True) == 2 * one
  pallas = cfg_model.replace(attention_impl="pallas")
  assert model_flops.step_flops(pallas, "sequence_classification", seq_len=128,
                                batch_size=1, train=True) > one


def test_import_is_quiet_with_libtpu_installed():
  """No TPU on this machine: importing the package and using JAX prints nothing about
  TPUs and does not load libtpu."""
  code = ("import logging; logging.basicConfig(level=logging.INFO)\n"
          "import longformer_jax, jax, jax.numpy as jnp\n"
          "print(jax.default_backend(), float(jnp.ones(3).sum()))\n")
  env = {k: v for k, v in os.environ.items() if k not in ("JAX_PLATFORMS", "XLA_FLAGS")}
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       env=env, timeout=120)
  assert out.returncode == 0, out.stderr
  assert out.stdout.strip() == "cpu 3.0"
  assert "tpu" not in out.stderr.lower(), out.stderr
