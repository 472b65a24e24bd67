"""Abstract NVIDIA GPUs to compile for on a machine without one (``h100-8``, ``a100-8``).

The CUDA plugin (``pip install 'jax[cuda12]==<jax version>'``, the
``gpu-compile`` extra) compiles for a topology described by a
``GpuTargetConfigProto`` instead of a live device: the chip's SM count, shared
memory, registers, memory size and bandwidth, and compute capability, plus the
cuDNN and CUDA versions. XLA then partitions, fuses and emits PTX for that chip
(Pallas kernels through Triton included). Two limits: no autotuning (kernels keep
XLA's default tilings), and the compile-only executable has no cost analysis
(``hlo_cost.py`` reads the program instead).

The CUDA client itself must not start (there is no GPU): JAX runs on its CPU
platform, which :func:`target` sets when nothing has started yet.
"""

from __future__ import annotations

import jax

# Per chip: the GpuTargetConfigProto's gpu_device_info fields (NVIDIA datasheets and
# the CUDA occupancy tables of compute capability 9.0 / 8.0).
_DEVICE_INFO = {
    "h100": dict(core_count=132, fpus_per_core=128, shared_memory_per_core=233472,
                 shared_memory_per_block_optin=232448, memory_bandwidth=3352320000000,
                 l2_cache_size=52428800, clock_rate_ghz=1.98,
                 device_memory_size=85520809984, capability=(9, 0),
                 description="NVIDIA H100 80GB HBM3"),
    "a100": dict(core_count=108, fpus_per_core=64, shared_memory_per_core=167936,
                 shared_memory_per_block_optin=166912, memory_bandwidth=2039000000000,
                 l2_cache_size=41943040, clock_rate_ghz=1.41,
                 device_memory_size=85899345920, capability=(8, 0),
                 description="NVIDIA A100-SXM4-80GB"),
}
# Limits every CUDA GPU since compute capability 7.0 shares.
_COMMON = dict(threads_per_block_limit=1024, threads_per_warp=32,
               shared_memory_per_block=49152, threads_per_core_limit=2048,
               block_dim_limit_x=2 ** 31 - 1, block_dim_limit_y=65535,
               block_dim_limit_z=65535, registers_per_core_limit=65536,
               registers_per_block_limit=65536)
GPUS_PER_HOST = 8


def target_config(kind: str) -> str:
  """The GpuTargetConfigProto text of chip ``kind`` ("h100" or "a100"). Every field is
  given: the compiler divides by some of them."""
  info = dict(_DEVICE_INFO[kind])
  major, minor = info.pop("capability")
  description = info.pop("description")
  fields = " ".join(f"{k}: {v}" for k, v in {**_COMMON, **info}.items())
  return (f"gpu_device_info {{ {fields} cuda_compute_capability {{ major: {major} "
          f"minor: {minor} }} }} platform_name: \"CUDA\" dnn_version_info {{ major: 9 "
          f"minor: 1 }} runtime_version {{ major: 12 minor: 8 }} "
          f"device_description_str: \"{description}\"")


def devices(kind: str, count: int) -> tuple:
  """``count`` abstract ``kind`` GPUs, 8 to a host."""
  from jax._src import xla_bridge
  from jax.experimental import topologies
  if count < 1 or (count > GPUS_PER_HOST and count % GPUS_PER_HOST):
    raise ValueError(f"topology {kind}-{count}: GPUs come 1 to {GPUS_PER_HOST} a host, "
                     f"or whole hosts of {GPUS_PER_HOST}")
  if not xla_bridge.backends_are_initialized():
    jax.config.update("jax_platforms", "cpu")  # no CUDA client: there is no GPU
  per_host = min(count, GPUS_PER_HOST)
  try:
    desc = topologies.get_topology_desc(platform="cuda", topology=f"1x{count // per_host}x"
                                        f"{per_host}", target_config=target_config(kind))
  except (RuntimeError, NotImplementedError, ValueError) as e:
    raise RuntimeError(f"topology {kind}-{count}: the CUDA plugin could not describe it "
                       f"({e}); install the gpu-compile extra (jax[cuda12]) and run "
                       "with JAX_PLATFORMS=cpu") from None
  return tuple(desc.devices)
