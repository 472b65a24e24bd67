"""Everything about compiling: the options a run's steps compile with, and compiling a
run for accelerators it does not have.

* ``compile_options``: per-jit XLA options of the train, eval and benchmark steps.
* ``topology``, ``gpu_topology``: the abstract TPU and GPU devices to compile for, and
  each chip's facts (HBM, peak FLOP/s, HBM and link bandwidth).
* ``aot``: ``--mode=compile``: a run's steps compiled for a topology, their memory,
  FLOPs, bytes, collectives and roofline bound.
* ``hlo_cost``: FLOPs, HBM bytes and collectives of a compiled program, loops counted.
* ``model_flops``: the analytical FLOPs of a step.
* ``mesh_advisor``: ``--config.mesh=auto``: the mesh and slice a run is fastest on.

Nothing is imported here: ``from longformer_jax.compile import aot``.
"""
