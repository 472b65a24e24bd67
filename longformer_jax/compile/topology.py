"""Accelerator topologies to compile for, and the chip facts a report needs.

A topology name is a Cloud TPU accelerator type (``v5e-256``, ``v4-128``,
``v5p-128``, ``v6e-256``: the suffix counts chips on v5e / v6e and TensorCores,
two a chip, on v4 / v5p), a TPU topology (``v5e:2x2``, ``v4:4x4x4``), an NVIDIA
system (``h100-8``, ``a100-8``: GPUs of one host) or ``cpu-N``. TPU devices come
from libtpu's deviceless topology (no TPU needed; ``pip install
'jax[tpu]==<jax version>'``), GPU ones from the CUDA plugin's (``jax[cuda12]``).
"""

from __future__ import annotations

import dataclasses
import math
import os
import re

import jax

from longformer_jax.compile import gpu_topology

GiB = 2 ** 30


@dataclasses.dataclass(frozen=True)
class Chip:
  """Per-chip facts: HBM bytes, dense bf16 peak FLOP/s, HBM bandwidth (bytes/s), and the
  interconnect bandwidth a chip sends at in a collective (bytes/s, one direction: half
  the published bidirectional figure; on TPU the pod's all-reduce bandwidth per chip)."""

  name: str
  hbm_bytes: float
  peak_flops: float
  hbm_bandwidth: float
  source: str
  ici_bandwidth: float = 0.0


# Published figures. TPU: Cloud TPU system architecture pages (v4, v5e, v5p, v6e);
# GPU: NVIDIA's H100 SXM5 and A100 SXM4 80GB datasheets (dense bf16, no sparsity).
# Interconnect: v5e 400 GB/s and v6e 800 GB/s bidirectional per chip (= the pods' 51.2
# and 102.4 TB/s all-reduce bandwidth over 256 chips, times 2), v5p 1,200 GB/s; v4 the
# pod's 1.1 PB/s all-reduce bandwidth over 4,096 chips; NVLink 4 900 GB/s, NVLink 3 600.
CHIPS = {
    "v4": Chip("TPU v4", 32 * GiB, 275e12, 1228e9, "cloud.google.com/tpu/docs/v4",
               ici_bandwidth=1.1e15 / 4096),
    "v5e": Chip("TPU v5e", 16 * GiB, 197e12, 819e9, "cloud.google.com/tpu/docs/v5e",
                ici_bandwidth=200e9),
    "v5p": Chip("TPU v5p", 95 * GiB, 459e12, 2765e9, "cloud.google.com/tpu/docs/v5p",
                ici_bandwidth=600e9),
    "v6e": Chip("TPU v6e", 32 * GiB, 918e12, 1640e9, "cloud.google.com/tpu/docs/v6e",
                ici_bandwidth=400e9),
    "h100": Chip("NVIDIA H100 SXM5 80GB", 80 * GiB, 989e12, 3.35e12, "NVIDIA H100 datasheet",
                 ici_bandwidth=450e9),
    "a100": Chip("NVIDIA A100 SXM4 80GB", 80 * GiB, 312e12, 2.039e12,
                 "NVIDIA A100 datasheet", ici_bandwidth=300e9),
    "cpu": Chip("host CPU (nominal)", 16 * GiB, 1e12, 100e9, "nominal: not a target",
                ici_bandwidth=10e9),
}

# Chips on a 2-D torus (v5e, v6e) and TensorCores per chip on 3-D ones (v4, v5p).
_TORUS_2D = ("v5e", "v6e")
_CORES_PER_CHIP = {"v4": 2, "v5p": 2}


@dataclasses.dataclass(frozen=True)
class Target:
  """What to compile for: the abstract devices and the chip each one is."""

  name: str
  platform: str  # "tpu", "cuda" or "cpu"
  devices: tuple
  chip: Chip


def _torus_shape(kind: str, chips: int) -> str:
  """The smallest-surface torus of ``chips`` chips: 2-D for v5e / v6e, else 3-D."""
  dims = 2 if kind in _TORUS_2D else 3
  if chips < 1 or chips & (chips - 1):
    raise ValueError(f"topology: {chips} chips is not a power of two")
  shape = [1] * dims
  for i in range(int(math.log2(chips))):
    shape[i % dims] *= 2
  shape = sorted(s for s in shape if s > 1) + [s for s in shape if s == 1]  # 2x2x1
  return "x".join(str(s) for s in shape)


def tpu_topology_name(name: str) -> tuple[str, str]:
  """(chip kind, libtpu topology name) of ``v5e-256`` or ``v5e:16x16``."""
  given = name
  if ":" in name:
    kind = name.split(":")[0]
  else:
    m = re.fullmatch(r"(v\d+[a-z]*)-(\d+)", name)
    if not m:
      raise ValueError(f"topology {name!r}: expected e.g. v5e-256, v5e:2x2, h100-8, cpu-8")
    kind, count = m.group(1), int(m.group(2))
    chips = count // _CORES_PER_CHIP.get(kind, 1)
    name = f"{kind}:{_torus_shape(kind, chips)}"
  if kind not in CHIPS:
    raise ValueError(f"topology {given!r}: chip {kind!r} is not one of "
                     f"{sorted(k for k in CHIPS if k.startswith('v'))}")
  return kind, name


def _tpu(name: str) -> Target:
  from jax.experimental import topologies
  kind, topo = tpu_topology_name(name)
  os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")  # no TPU VM metadata to look up
  os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")  # compiles only: no chip held
  os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")  # no TPU VM to ask
  extra = {"chip_config_name": "megacore"} if kind in _CORES_PER_CHIP else {}
  desc = topologies.get_topology_desc(topology_name=topo, platform="tpu", **extra)
  return Target(name, "tpu", tuple(desc.devices), CHIPS[kind])


def _cpu(count: int) -> Target:
  try:  # before JAX starts its CPU backend; afterwards the devices it has are used
    if jax.config.jax_num_cpu_devices < count:
      jax.config.update("jax_num_cpu_devices", count)
  except RuntimeError:
    pass
  devices = jax.devices("cpu")
  if len(devices) < count:
    raise ValueError(f"topology cpu-{count}: this process has {len(devices)} CPU devices; "
                     f"set XLA_FLAGS=--xla_force_host_platform_device_count={count} (or "
                     f"jax_num_cpu_devices) before JAX starts")
  return Target(f"cpu-{count}", "cpu", tuple(devices[:count]), CHIPS["cpu"])


def file_name(name: str) -> str:
  """A topology's name as a file name: ``v5e:2x2`` -> ``v5e_2x2`` (a colon breaks some
  file systems and bucket tools)."""
  return re.sub(r"[^\w.-]", "_", name)


def resolve(name: str) -> Target:
  """The abstract devices and chip facts of topology ``name`` (see the module doc)."""
  m = re.fullmatch(r"(cpu|h100|a100)-(\d+)", name)
  if m and m.group(1) == "cpu":
    return _cpu(int(m.group(2)))
  if m:
    kind, count = m.group(1), int(m.group(2))
    return Target(name, "cuda", gpu_topology.devices(kind, count), CHIPS[kind])
  return _tpu(name)
