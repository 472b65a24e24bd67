"""The mesh (and the slice) a run is fastest on, found by compiling: ``--config.mesh=auto``.

``python -m longformer_jax.main --mode=compile --topology=v5e-256 --config.mesh=auto``
searches the meshes that make sense for the run on that slice; ``--topology=v5e`` (a
chip family) also searches the family's slice sizes. Steps:

1. **Candidates** (:func:`candidate_meshes`): ``data x fsdp x tensor x sequence`` =
   the devices, where ``data x fsdp`` divides every phase's micro-batch, ``tensor``
   divides the heads, the hidden and the feed-forward sizes (a split that does not
   divide leaves the compiler to pad and reshuffle: on v5e-256 the imdb fine-tune's
   12 heads over tensor 8 moved 11x the bytes of the same run on sequence 8), and
   ``sequence`` splits every phase's sequence into chunks no shorter than the window's
   reach (sequence parallelism: absolute positions, no dilation). The batch's share goes
   to all-FSDP or all-data (the two ends; FSDP shards the optimizer state, data does not).
2. **A cheap estimate** (:func:`estimate`) ranks them: per chip, max(FLOPs / peak, HBM
   bytes / bandwidth, network bytes / link bandwidth), the bytes from a coarse model of
   the step (weights read three times a step, the optimizer's read and write, activations
   per token per layer scaled to what the compiled programs move, FSDP's gathers and
   reductions, tensor parallelism's four all-reduces a layer, the halos of a sequence
   split) and a memory check on the optimizer state and saved activations. It only
   orders candidates; the verdict is the compiler's.
3. **Compiles** (``aot.compile_steps``) of the best ``top_k`` and of the config's own
   mesh: every phase's train step, with the compiled memory and the roofline bound of
   ``aot.analyze`` (network included). The fastest that fits wins: the least bound on the
   run's time, every phase's steps at its step bound.

For a family, each slice size gets its best estimated mesh compiled; the report names
the fastest mesh per slice and the smallest slice whose tokens/s per chip reaches
``PER_CHIP_SHARE`` (90%) of the best. The chosen mesh is written into the report as the
``--config.mesh.*`` flags a training command takes unchanged.
"""

from __future__ import annotations

import copy
import itertools
import logging
import math

from longformer_jax import families
from longformer_jax.compile import model_flops
from longformer_jax.compile import topology as topo_lib

log = logging.getLogger("longformer_jax")

MESH_AXES = ("data", "fsdp", "tensor", "sequence")
PER_CHIP_SHARE = 0.9
# Family slice sizes searched (devices as jax counts them: chips on v5e / v6e, cores on
# v4 / v5p, GPUs on one host).
FAMILY_SIZES = {"v5e": (4, 8, 16, 32, 64, 128, 256), "v6e": (4, 8, 16, 32, 64, 128, 256),
                "v5p": (8, 16, 32, 64, 128, 256, 512), "v4": (8, 16, 32, 64, 128, 256, 512),
                "h100": (1, 2, 4, 8), "a100": (1, 2, 4, 8)}
# HBM bytes moved per token, per layer, per hidden unit (bf16) in a train step, split into
# what a tensor split divides and what it does not: calibrated on the compiled per-layer
# count of longformer-base (experiments/results/compile_bytes.md: 2.0e9 bytes per layer
# at 4,096 tokens with the pallas kernels, about 320 bytes per token per hidden unit),
# most of it not divided by a tensor split (the compiled imdb fine-tune on v5e-256 moved
# more with fsdp 32 x tensor 2 x sequence 4 than with fsdp 32 x sequence 8).
ACT_BYTES_REPLICATED = 240
ACT_BYTES_SPLIT = 80
SAVED_BYTES = 24  # saved activations per token per layer per hidden unit (no remat)
OPTIMIZER_BYTES = 16  # fp32 param, gradient and two AdamW moments per parameter


def _divisors(n: int) -> list[int]:
  return [d for d in range(1, n + 1) if n % d == 0]


def model_facts(model_cfg) -> dict:
  """What the search needs of a model config, whatever its family."""
  get = lambda *names, default=None: next(
      (getattr(model_cfg, n) for n in names if getattr(model_cfg, n, None) is not None),
      default)
  heads = get("num_attention_heads", "encoder_attention_heads", "num_heads", default=1)
  heads = math.gcd(*heads) if isinstance(heads, (tuple, list)) else int(heads)
  hidden = get("hidden_size", "d_model", default=None)
  if isinstance(hidden, (tuple, list)) or hidden is None:
    hidden = max(get("hidden_sizes", default=(1,)))
  window = get("attention_window", default=None)
  dilation = get("attention_dilation", default=1)
  layers = get("num_hidden_layers", default=None) or (
      get("encoder_layers", default=0) + get("decoder_layers", default=0)) or sum(
      get("depths", default=(1,)))
  return {
      "heads": heads, "hidden": int(hidden), "layers": int(layers),
      "ffn": int(get("intermediate_size", "encoder_ffn_dim", default=4 * hidden)),
      "reach": None if window is None else max(
          (window if isinstance(window, (tuple, list)) else (window,))) // 2,
      "sequence_ok": window is not None and get("position_embedding_type") != (
          "relative_sinusoidal") and all(d == 1 for d in (
              dilation if isinstance(dilation, (tuple, list)) else (dilation,))),
  }


def run_shape(config) -> dict:
  """Phases (micro-batch, sequence, steps) and the model facts of a run's config."""
  from longformer_jax import train
  task = train.tasks.build(config)
  phases = train.resolve_phases(config)
  accum = int(config.optim.get("grad_accum", 1) or 1)
  cfgs = [train.model_config(config, p, task) for p in phases]
  return {"phases": phases, "accum": accum, "head": task.head, "model_cfgs": cfgs,
          "facts": model_facts(cfgs[-1])}


def candidate_meshes(shape: dict, devices: int) -> list[dict]:
  """Every ``data x fsdp x tensor x sequence`` of ``devices`` that makes sense for the
  run (see the module docstring), FSDP and data as the two ends of the batch's share."""
  facts, accum = shape["facts"], shape["accum"]
  micro = [p.batch_size // accum for p in shape["phases"]]
  out = []
  for tensor, sequence in itertools.product(_divisors(devices), repeat=2):
    if devices % (tensor * sequence):
      continue
    dp = devices // (tensor * sequence)
    if any(b % dp for b in micro):
      continue
    if tensor > 1 and (facts["heads"] % tensor or facts["hidden"] % tensor
                       or facts["ffn"] % tensor):
      continue
    if sequence > 1 and not (facts["sequence_ok"] and all(
        p.seq_len % sequence == 0 and p.seq_len // sequence >= (facts["reach"] or 0)
        for p in shape["phases"])):
      continue
    for data, fsdp in {(1, dp), (dp, 1)}:
      out.append(dict(data=data, fsdp=fsdp, tensor=tensor, sequence=sequence))
  return out


def param_count(shape: dict) -> int:
  """Parameters of the run's model (abstract: nothing allocated)."""
  import jax
  from flax import nnx
  cfg = shape["model_cfgs"][-1]
  create = families.of_config(cfg).create_model
  model = nnx.eval_shape(lambda: create(cfg, shape["head"], 0))
  return sum(math.prod(x.shape) for x in jax.tree.leaves(nnx.state(model, nnx.Param)))


def estimate(shape: dict, mesh: dict, chip: topo_lib.Chip, params: int) -> dict:
  """The cheap per-chip bound of one mesh over the run's phases (module docstring, 2):
  seconds for the whole run, and whether its optimizer state and saved activations fit."""
  f, accum = shape["facts"], shape["accum"]
  devices = math.prod(mesh.values())
  dp, tensor, fsdp, data = mesh["data"] * mesh["fsdp"], mesh["tensor"], mesh["fsdp"], mesh[
      "data"]
  total_s, fits = 0.0, True
  for phase, cfg in zip(shape["phases"], shape["model_cfgs"]):
    tokens = phase.batch_size * phase.seq_len / (dp * mesh["sequence"])  # per chip, a step
    flops = model_flops.step_flops(cfg, shape["head"], seq_len=phase.seq_len,
                                   batch_size=phase.batch_size, train=True)
    flops = flops if flops is not None else 6.0 * params * phase.batch_size * phase.seq_len
    per_layer = f["hidden"] * f["layers"] * 2
    act = tokens * per_layer * (ACT_BYTES_REPLICATED + ACT_BYTES_SPLIT / tensor)
    weights = 3 * accum * params * 2 / tensor
    optimizer = 2 * params * OPTIMIZER_BYTES / (tensor * fsdp)
    wire = 0.0
    if fsdp > 1:
      wire += params / tensor * (2 * 2 * accum + 4) * (fsdp - 1) / fsdp
    if data > 1:
      wire += 2 * params * 4 / tensor * (data - 1) / data
    if tensor > 1:
      wire += f["layers"] * 4 * 2 * tokens * f["hidden"] * 2 * (tensor - 1) / tensor
    if mesh["sequence"] > 1:
      wire += f["layers"] * 6 * (f["reach"] or 0) * f["hidden"] * 2 * (
          phase.batch_size / dp) * accum
    step = max(flops / devices / chip.peak_flops,
               (act + weights + optimizer) / chip.hbm_bandwidth,
               wire / (chip.ici_bandwidth or 1e30))
    total_s += step * phase.steps
    held = params * OPTIMIZER_BYTES / (tensor * fsdp) + tokens / accum * per_layer * SAVED_BYTES
    fits = fits and held <= 0.9 * chip.hbm_bytes
  return {"run_s": total_s, "fits": fits}


def ranked(shape: dict, devices: int, chip: topo_lib.Chip, params: int) -> list[tuple]:
  """(estimate, mesh) of every candidate, the likely fastest first (those whose state
  seems not to fit last)."""
  rows = [(estimate(shape, m, chip, params), m) for m in candidate_meshes(shape, devices)]
  return sorted(rows, key=lambda r: (not r[0]["fits"], r[0]["run_s"]))


def _diverse(order: list[tuple], top_k: int) -> list[tuple]:
  """The best estimated candidate of each tensor-split size (the estimate is coarsest
  there), then the next best overall, up to ``top_k`` (more if the sizes need it)."""
  picked = []
  for tensor in sorted({m["tensor"] for _, m in order}):
    picked.append(next(r for r in order if r[1]["tensor"] == tensor))
  picked.sort(key=lambda r: order.index(r))
  for row in order:
    if len(picked) >= top_k:
      break
    if row not in picked:
      picked.append(row)
  return picked


def mesh_flags(mesh: dict) -> str:
  """The mesh as the training command's flags."""
  return " ".join(f"--config.mesh.{k}={mesh[k]}" for k in MESH_AXES)


def _with_mesh(config, mesh: dict):
  config = copy.deepcopy(config)
  with config.unlocked():
    config.mesh.update(mesh)
  return config


def compiled_candidate(config, workdir: str, target: topo_lib.Target, mesh: dict,
                       shape: dict, estimate_row: dict | None = None) -> dict:
  """Every phase's train step compiled on ``mesh``: fit, HBM per chip, the run's time at
  its step bounds, tokens/s per chip and per slice, MFU (the least over phases)."""
  from longformer_jax.compile import aot
  steps = aot.compile_steps(_with_mesh(config, mesh), workdir, target, kinds=("train",))
  devices = len(target.devices)
  fits = all(s["fits"] for s in steps)
  row = {"mesh": mesh, "devices": devices, "fits": fits,
         "hbm_per_chip": max(s["memory"]["total"] for s in steps),
         "estimate_s": None if estimate_row is None else estimate_row["run_s"]}
  if not fits or any(s["roofline"] is None for s in steps):
    return dict(row, run_s=None, tokens_per_s=None, tokens_per_s_per_chip=None, mfu=None)
  run_s = sum(s["roofline"]["step_s"] * p.steps for s, p in zip(steps, shape["phases"]))
  tokens = sum(p.batch_size * p.seq_len * p.steps for p in shape["phases"])
  return dict(row, run_s=run_s, tokens_per_s=tokens / run_s,
              tokens_per_s_per_chip=tokens / run_s / devices,
              mfu=min(s["roofline"]["mfu"] for s in steps),
              bound_by=sorted({s["roofline"]["bound_by"] for s in steps}))


def _best(rows: list[dict]) -> dict | None:
  ok = [r for r in rows if r["fits"] and r["run_s"]]
  return min(ok, key=lambda r: r["run_s"]) if ok else None


def advise_slice(config, workdir: str, topology: str, *, top_k: int = 3) -> dict:
  """The meshes of one slice: ``top_k`` by the estimate plus the config's own, compiled;
  the fastest that fits is ``chosen``."""
  target = topo_lib.resolve(topology)
  shape = run_shape(config)
  params = param_count(shape)
  devices = len(target.devices)
  order = ranked(shape, devices, target.chip, params)
  if not order:
    raise ValueError(f"config.mesh=auto: no mesh of {devices} devices divides the run "
                     f"(micro-batches {[p.batch_size // shape['accum'] for p in shape['phases']]}"
                     f", {shape['facts']['heads']} heads); use a smaller slice")
  picked = _diverse(order, top_k)
  own = {k: int(config.mesh.get(k, 1)) for k in MESH_AXES}
  if list(own.values()).count(-1) == 1:  # "all remaining devices"
    rest = math.prod(v for v in own.values() if v != -1)
    own = {k: devices // rest if v == -1 else v for k, v in own.items()}
  if own not in [m for _, m in picked] and own in [m for _, m in order]:
    picked.append(next((e, m) for e, m in order if m == own))
  rows = []
  for i, (est, mesh) in enumerate(picked):
    log.info("compiling mesh %d of %d on %s: %s", i + 1, len(picked), topology,
             mesh_flags(mesh))
    rows.append(compiled_candidate(config, workdir, target, mesh, shape, est))
  chosen = _best(rows)
  return {"topology": topology, "devices": devices, "params": params,
          "candidates_considered": len(order), "compiled": rows,
          "chosen": chosen, "flags": None if chosen is None else mesh_flags(chosen["mesh"])}


def advise_family(config, workdir: str, family: str) -> dict:
  """Each slice size of ``family`` at its best estimated mesh, compiled; the fastest
  mesh per slice and the smallest slice within ``PER_CHIP_SHARE`` of the best tokens/s
  per chip."""
  if family not in FAMILY_SIZES:
    raise ValueError(f"topology {family!r}: a family is one of {sorted(FAMILY_SIZES)}")
  shape = run_shape(config)
  params = param_count(shape)
  chip = topo_lib.CHIPS[family]
  rows = []
  for size in FAMILY_SIZES[family]:
    order = [r for r in ranked(shape, size, chip, params) if r[0]["fits"]]
    if not order:
      continue
    topology = f"{family}-{size}"
    log.info("compiling %s at %s", topology, mesh_flags(order[0][1]))
    target = topo_lib.resolve(topology)
    rows.append(dict(compiled_candidate(config, workdir, target, order[0][1], shape,
                                        order[0][0]), topology=topology))
  chosen = recommended_slice(rows, family)
  return {"topology": family, "params": params, "compiled": rows, "chosen": chosen,
          "recommended_slice": chosen["topology"], "flags": mesh_flags(chosen["mesh"])}


def recommended_slice(rows: list[dict], family: str) -> dict:
  """The smallest slice whose tokens/s per chip is within :data:`PER_CHIP_SHARE` of the
  best one's, among the compiled rows that fit."""
  ok = [r for r in rows if r["fits"] and r["tokens_per_s_per_chip"]]
  if not ok:
    raise ValueError(f"config.mesh=auto: no {family} slice fits the run")
  best = max(r["tokens_per_s_per_chip"] for r in ok)
  return min((r for r in ok if r["tokens_per_s_per_chip"] >= PER_CHIP_SHARE * best),
             key=lambda r: r["devices"])


def table(report: dict) -> str:
  """The advisor's report as Markdown: a row per compiled candidate, the choice last."""
  lines = ["| slice | mesh | fits | HBM/chip GiB | est. run s | run bound s | tokens/s "
           "| tokens/s/chip | MFU | bound by |", "|" + "---|" * 10]
  for r in report["compiled"]:
    fmt = lambda x, f="{:.3g}": "-" if x is None else f.format(x)
    lines.append(f"| {r.get('topology', report['topology'])} | {mesh_flags(r['mesh'])} "
                 f"| {r['fits']} | {r['hbm_per_chip'] / 2 ** 30:.2f} | {fmt(r['estimate_s'])} "
                 f"| {fmt(r['run_s'])} | {fmt(r['tokens_per_s'])} "
                 f"| {fmt(r['tokens_per_s_per_chip'])} | {fmt(r['mfu'], '{:.2f}')} "
                 f"| {','.join(r.get('bound_by', [])) or '-'} |")
  chosen = report.get("chosen")
  if chosen is None:
    lines.append("\nno candidate fits")
  else:
    where = report.get("recommended_slice") or report["topology"]
    lines.append(f"\nchosen: {where} with {report['flags']}")
  return "\n".join(lines)


def report_path(workdir: str, topology: str):
  from longformer_jax import fileio
  return fileio.join(workdir, "compile", f"mesh-auto-{topo_lib.file_name(topology)}.json")


def advise(config, workdir: str, topology: str, *, top_k: int = 3) -> dict:
  """:func:`advise_family` for a chip family (``v5e``), else :func:`advise_slice`;
  the report written to ``WORKDIR/compile/mesh-auto-TOPOLOGY.json``."""
  import json

  from longformer_jax import fileio
  report = (advise_family(config, workdir, topology) if topology in FAMILY_SIZES
            else advise_slice(config, workdir, topology, top_k=top_k))
  path = report_path(workdir, topology)
  fileio.write_atomic(path, json.dumps(report, indent=1, default=float))
  report["path"] = str(path)
  return report


def apply_chosen(config, workdir: str) -> dict:
  """Sets ``config.mesh`` to the mesh an earlier ``--config.mesh=auto`` compile chose for
  this process's device count (``WORKDIR/compile/mesh-auto-*.json``); returns it."""
  import jax

  from longformer_jax import fileio
  folder = fileio.join(workdir, "compile")
  devices = jax.device_count()
  for name in sorted(fileio.listdir(folder)):
    if not name.startswith("mesh-auto-"):
      continue
    chosen = fileio.read_json(fileio.join(folder, name)).get("chosen") or {}
    if chosen.get("devices") == devices:
      with config.unlocked():
        config.mesh.update(chosen["mesh"])
      log.info("mesh from %s: %s", name, mesh_flags(chosen["mesh"]))
      return chosen["mesh"]
  raise ValueError(f"config.mesh=auto: no mesh chosen for {devices} devices in {folder}; "
                   "run --mode=compile --topology=<this slice> --config.mesh=auto first, "
                   "or give the mesh (--config.mesh.fsdp=...)")
