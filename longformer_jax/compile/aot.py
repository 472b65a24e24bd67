"""Ahead-of-time compile of a run for an accelerator topology, without the hardware.

``compile_run(config, workdir, topology)`` builds the run exactly as training
does (``train.Runner``: the mesh of ``config.mesh`` laid on the topology's
devices, state and batch shardings, optimizer, remat / scan, every phase's
shapes), from abstract state only (nothing materialised, no data read, no
weights), compiles each phase's train step and eval step with the real
compiler (XLA TPU / GPU, Mosaic kernels included) and reports per device:

* memory (``compiled.memory_analysis()``): arguments, outputs (less what the
  donated state aliases), temporaries, code; their total against the chip's HBM,
  whether it fits and by what margin;
* FLOPs and HBM bytes per step, loops counted in full (``hlo_cost.py``), beside
  XLA's own ``cost_analysis()`` (which counts a loop body once) and, for the
  FLOPs, an analytical count of the model (``model_flops.py``);
* the collectives in the program (count and bytes);
* a roofline bound on the step time with the loop-aware figures: max(FLOPs / peak,
  HBM bytes / HBM bandwidth, async network bytes / link bandwidth) + sync network bytes /
  link bandwidth. The network bytes are what each chip sends by ring algorithms
  (``hlo_cost.py``); asynchronous collectives (start / done pairs) are assumed to
  overlap with compute, synchronous ones to stall it. What the bound implies
  (tokens/s, MFU) are estimates, where memory and FLOP counts are compiled fact.

When the train step does not fit, alternatives are compiled in order (all
devices to FSDP, full remat, then gradient accumulation over 2, 4, 8
micro-batches) and the first that fits is named. ``python -m longformer_jax.main
--mode=compile --topology=NAME`` writes the report to
``WORKDIR/compile/NAME.json`` (``v5e:2x2`` as ``v5e_2x2.json``) and prints a table.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import re
import time

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec

from longformer_jax.attention import global_tokens as attn_global
from longformer_jax import checkpoint as ckpt_lib
from longformer_jax import data as data_lib
from longformer_jax import fileio
from longformer_jax.compile import hlo_cost, model_flops
from longformer_jax.compile import topology as topo_lib
from longformer_jax import train

log = logging.getLogger("longformer_jax")


def _abstract_batch(runner: train.Runner, phase: train.Phase, cfg, split: str) -> dict:
  spec = data_lib.batch_spec(runner.data_cfg, cfg, split=split, seq_len=phase.seq_len,
                             batch_size=phase.batch_size)
  return {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=runner.batch_sharding)
          for k, v in spec.items()}


def _memory(compiled) -> dict:
  m = compiled.memory_analysis()
  fields = dict(argument=m.argument_size_in_bytes, output=m.output_size_in_bytes,
                alias=m.alias_size_in_bytes, temp=m.temp_size_in_bytes,
                code=m.generated_code_size_in_bytes)
  fields["total"] = (fields["argument"] + fields["output"] - fields["alias"] + fields["temp"]
                     + fields["code"])
  return fields


def _xla_cost(compiled) -> dict:
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else (cost or {})
  return {"flops": float(cost.get("flops", 0.0)),
          "bytes": float(cost.get("bytes accessed", 0.0))}


def analyze(compiled, chip: topo_lib.Chip, *, tokens: int, devices: int,
            analytical: float | None) -> dict:
  """The report of one compiled step (see the module docstring); ``tokens`` the
  global tokens of a step, ``analytical`` the model's FLOPs per device."""
  memory = _memory(compiled)
  hlo = hlo_cost.summary(hlo_cost.analyze(compiled.as_text()))
  compute_s = hlo["flops"] / chip.peak_flops
  memory_s = hlo["bytes"] / chip.hbm_bandwidth
  network_s = hlo["wire_bytes"] / chip.ici_bandwidth if chip.ici_bandwidth else 0.0
  stall_s = hlo["wire_bytes_sync"] / chip.ici_bandwidth if chip.ici_bandwidth else 0.0
  parts = {"compute": compute_s, "memory": memory_s, "network": network_s}
  bound_by = max(parts, key=parts.get)
  bound_s = parts[bound_by] + stall_s
  if stall_s > parts[bound_by]:
    bound_by = "network"
  model = analytical if analytical is not None else hlo["flops"]
  return {
      "memory": memory, "hbm": chip.hbm_bytes, "fits": memory["total"] <= chip.hbm_bytes,
      "margin": chip.hbm_bytes - memory["total"],
      "flops": {"hlo": hlo["flops"], "xla_cost_analysis": _xla_cost(compiled)["flops"],
                "analytical": analytical},
      "bytes": {"hlo": hlo["bytes"], "xla_cost_analysis": _xla_cost(compiled)["bytes"]},
      "unknown_trip_counts": hlo["unknown_trip_counts"],
      "collectives": hlo["collectives"], "top_bytes": hlo["top_bytes"],
      "network": {"wire_bytes": hlo["wire_bytes"], "wire_bytes_sync": hlo["wire_bytes_sync"],
                  "link_bandwidth": chip.ici_bandwidth},
      "roofline": {"compute_s": compute_s, "memory_s": memory_s, "network_s": network_s,
                   "network_sync_s": stall_s, "step_s": bound_s, "bound_by": bound_by,
                   "tokens_per_s": tokens / bound_s if bound_s else None,
                   "mfu": model / (bound_s * chip.peak_flops) if bound_s else None,
                   "devices": devices},
  }


def _out_of_memory(error, chip: topo_lib.Chip) -> dict:
  """The report of a step the compiler refused for want of memory: it does not fit,
  by the compiler's own count ("... required for HLO temporaries (17.40G) exceeds
  available HBM (15.75G)"); anything else is raised."""
  text = str(error)
  if ("RESOURCE_EXHAUSTED" in text and "Vmem" in text) or "memory space vmem" in text:
    raise ValueError("config.model.attention_impl='pallas': the kernels' VMEM exceeds the "
                     "TPU core's at this sequence length (attention.pallas.vmem_bytes); use "
                     f"attention_impl='blocked' or 'auto' ({text.splitlines()[0][:120]})"
                     ) from None
  if "RESOURCE_EXHAUSTED" not in text or "HBM" not in text:
    raise error
  sizes = [float(x) * 2 ** 30 for x in re.findall(r"\(([\d.]+)G\)", text)[:2]]
  needed = sizes[0] if sizes else float("nan")
  return {"memory": {"argument": 0, "output": 0, "alias": 0, "temp": needed, "code": 0,
                     "total": needed},
          "hbm": chip.hbm_bytes, "fits": False, "margin": chip.hbm_bytes - needed,
          "compiler_error": text.splitlines()[0][:300],
          "flops": {"hlo": None, "xla_cost_analysis": None, "analytical": None},
          "bytes": {"hlo": None, "xla_cost_analysis": None}, "unknown_trip_counts": 0,
          "collectives": {}, "top_bytes": [], "roofline": None}


def compile_steps(config, workdir: str, target: topo_lib.Target,
                  kinds: tuple[str, ...] = ("train", "eval"),
                  phases: tuple[int, ...] | None = None) -> list[dict]:
  """Compiles every phase's (or ``phases``') train step and eval step(s) (``kinds``) of
  ``config`` for ``target``; one report (:func:`analyze`) per (phase, step kind)."""
  runner = train.Runner(config, workdir, devices=target.devices)
  state = ckpt_lib.abstract_with_shardings(runner.abstract_state, runner.state_shardings)
  index = jax.ShapeDtypeStruct((), jnp.int32,
                               sharding=NamedSharding(runner.mesh, PartitionSpec()))
  reports = []
  for phase in runner.phases:
    if phases is not None and phase.index not in phases:
      continue
    cfg, jstep, evals = runner.functions(phase)
    tokens = phase.batch_size * phase.seq_len
    steps = [("train", lambda: jstep.lower(state, _abstract_batch(runner, phase, cfg,
                                                                    "train")))]
    split = config.get("eval_split", "validation")
    steps += [(name, lambda fn=fn: fn.lower(state["params"],
                                          _abstract_batch(runner, phase, cfg, split), index))
              for name, fn in evals.items()]
    steps = [(kind, lower) for kind, lower in steps if kind.split("_")[0] in kinds]
    labels = _abstract_batch(runner, phase, cfg, "train").get("labels")
    target_len = labels.shape[1] if labels is not None and labels.ndim == 2 else None
    for kind, lower in steps:
      log.info("compiling phase %d %s for %s (host memory so far %s)", phase.index, kind,
               target.name, _host_peak())
      t0 = time.time()
      # A deviceless GPU compile cannot hold a host callback: the run-time check of the
      # global-token bound (attention.global_tokens.check_global_bound) is left out there.
      checks = (attn_global.counts_checked_by_caller() if target.platform == "cuda"
                else contextlib.nullcontext())
      flops = model_flops.step_flops(cfg, runner.head, seq_len=phase.seq_len,
                                     batch_size=phase.batch_size, train=kind == "train",
                                     target_len=target_len)
      try:
        with checks:
          compiled = lower().compile()
      except Exception as e:  # noqa: BLE001  (XLA's and Mosaic's errors differ by chip)
        report = _out_of_memory(e, target.chip)  # the compiler's own verdict
      else:
        report = analyze(compiled, target.chip, tokens=tokens, devices=len(target.devices),
                         analytical=None if flops is None else flops / len(target.devices))
        del compiled
      report.update(phase=phase.index, kind=kind, seq_len=phase.seq_len,
                    batch_size=phase.batch_size, global_tokens=tokens,
                    attention_impl=cfg.attention_impl, compile_s=time.time() - t0)
      log.info("compiled phase %d %s for %s in %.0fs (host memory peak %s)", phase.index,
               kind, target.name, report["compile_s"], _host_peak())
      reports.append(report)
      jax.clear_caches()  # a large program's executable is not kept past its report
  return reports


def _host_peak() -> str:
  """This process's peak resident memory (a large compile holds GBs of host memory)."""
  import resource
  return f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20:.1f} GiB"


def _edited(config, edit):
  config = copy.deepcopy(config)
  with config.unlocked():
    edit(config)
  return config


def _alternatives(config, target: topo_lib.Target):
  """(description, config) to try, in order, each keeping the previous changes: every
  data device to FSDP, full remat, then gradient accumulation over 2, 4, 8."""
  edits = []
  if int(config.mesh.get("data", 1)) != 1 and len(target.devices) > 1:
    edits.append(("fsdp over every data device", lambda c: c.mesh.update(data=1, fsdp=-1)))
  if config.model.get("remat") != "full":
    edits.append(("remat=full", lambda c: c.model.update(remat="full")))
  done = []
  for description, edit in edits:
    config = _edited(config, edit)
    done.append(description)
    yield " + ".join(done), config
  accum = int(config.optim.get("grad_accum", 1))
  for factor in (2, 4, 8):
    yield (" + ".join(done + [f"grad_accum={accum * factor}"]),
           _edited(config, lambda c, f=factor: c.optim.update(grad_accum=accum * f)))


def compile_run(config, workdir: str, topology: str, *, try_alternatives: bool = True,
                out_dir: str | None = None, kinds: tuple[str, ...] = ("train", "eval"),
                phases: tuple[int, ...] | None = None) -> dict:
  """Compiles ``config`` for ``topology``; writes and returns the report (the module
  docstring), ``WORKDIR/compile/<topology>.json`` unless ``out_dir`` says where."""
  target = topo_lib.resolve(topology)
  t0 = time.time()
  steps = compile_steps(config, workdir, target, kinds, phases)
  report = {"topology": topology, "platform": target.platform, "devices": len(target.devices),
            "chip": vars(target.chip), "mesh": dict(train.sh.make_mesh(
                config.mesh, target.devices).shape), "steps": steps, "alternatives": []}
  if try_alternatives and not all(s["fits"] for s in steps if s["kind"] == "train"):
    for description, alt in _alternatives(config, target):
      try:
        alt_steps = compile_steps(alt, workdir, target, kinds=("train",), phases=phases)
        fits = all(s["fits"] for s in alt_steps)
        peak = max(s["memory"]["total"] for s in alt_steps)
        report["alternatives"].append({"change": description, "fits": fits, "total": peak})
      except ValueError as e:  # e.g. a batch that no longer divides
        report["alternatives"].append({"change": description, "fits": False, "error": str(e)})
        continue
      if fits:
        report["first_fit"] = description
        break
  report["compile_s"] = time.time() - t0
  path = fileio.join(out_dir or fileio.join(workdir, "compile"), f"{topo_lib.file_name(topology)}.json")
  fileio.write_atomic(path, json.dumps(report, indent=1, default=float))
  report["path"] = str(path)
  return report


def _gb(x: float) -> str:
  return f"{x / 2 ** 30:.2f}" if abs(x) >= 2 ** 28 else f"{x / 2 ** 30:.2g}"


def _sci(x: float | None) -> str:
  return "-" if x is None else f"{x:.3g}"


def table(report: dict) -> str:
  """The report as a Markdown table, a row per (phase, step kind)."""
  chip = report["chip"]
  lines = [f"{report['topology']}: {report['devices']} x {chip['name']} "
           f"(HBM {_gb(chip['hbm_bytes'])} GiB, {chip['peak_flops'] / 1e12:.0f} TFLOP/s bf16, "
           f"{chip['hbm_bandwidth'] / 1e9:.0f} GB/s; {chip['source']}), mesh {report['mesh']}",
           "",
           "| phase | step | backend | args GiB | out GiB | temp GiB | code GiB | total GiB "
           "| fits | margin GiB | FLOP/dev hlo / xla / model | HBM bytes/dev hlo / xla "
           "| collectives: count, bytes | bound s | by | tokens/s | MFU |",
           "|" + "---|" * 17]
  for s in report["steps"]:
    m, f, b, r = s["memory"], s["flops"], s["bytes"], s["roofline"]
    if r is None:  # refused by the compiler
      lines.append(f"| {s['phase']} | {s['kind']} | {s['attention_impl']} | | | "
                   f"{_gb(m['temp'])} | | {_gb(m['total'])} | False | {_gb(s['margin'])} "
                   f"| {s['compiler_error']} | | | | | | |")
      continue
    coll = ", ".join(f"{k} {v['count']}, {_sci(v['bytes'])}"
                     for k, v in s["collectives"].items()) or "none"
    lines.append(
        f"| {s['phase']} | {s['kind']} | {s['attention_impl']} | {_gb(m['argument'])} "
        f"| {_gb(m['output'] - m['alias'])} | {_gb(m['temp'])} | {_gb(m['code'])} "
        f"| {_gb(m['total'])} | {s['fits']} | {_gb(s['margin'])} "
        f"| {_sci(f['hlo'])} / {_sci(f['xla_cost_analysis'])} / {_sci(f['analytical'])} "
        f"| {_sci(b['hlo'])} / {_sci(b['xla_cost_analysis'])} | {coll} "
        f"| {_sci(r['step_s'])} | {r['bound_by']} | {_sci(r['tokens_per_s'])} "
        f"| {r['mfu']:.2f} |")
  for alt in report.get("alternatives", []):
    lines.append(f"\nalternative: {alt['change']}: fits={alt['fits']}"
                 + (f" ({_gb(alt['total'])} GiB)" if "total" in alt else
                    f" ({alt.get('error', '')})"))
  if report.get("first_fit"):
    lines.append(f"first that fits: {report['first_fit']}")
  return "\n".join(lines)
