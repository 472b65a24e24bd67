"""The training library: config -> mesh -> sharded init -> data -> step -> metrics/checkpoints.

``train_and_evaluate(config, workdir)`` runs a whole experiment (all its phases)
and resumes automatically from ``workdir``. The train step is a pure function
over a state pytree ``{"params", "opt_state", "step"}``, jitted with explicit
shardings and donation.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import signal
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from longformer_jax import attention
from longformer_jax.attention import pallas as attention_pallas
from longformer_jax import checkpoint as ckpt_lib
from longformer_jax.compile import compile_options
from longformer_jax import data as data_lib
from longformer_jax import families, fileio, hf_io
from longformer_jax import metrics as metrics_lib
from longformer_jax import optim, run_files, tasks
from longformer_jax import sharding as sh
from longformer_jax.data.pipeline import data_config
from longformer_jax.recipes import run_config  # noqa: F401 (configs' shared fields)

log = logging.getLogger("longformer_jax")


@dataclasses.dataclass(frozen=True)
class Phase:
  """One stage of a run: its steps and shapes (sequence length, batch, window scale)."""

  index: int
  start: int  # first global step of the phase
  steps: int
  lr: float
  seq_len: int
  batch_size: int
  window_scale: float = 1.0
  warmup_steps: int | None = None  # None: optim.warmup_frac of the phase, capped


def resolve_phases(config) -> list[Phase]:
  """``config.phases`` (multi-stage) or the single phase of the top-level fields."""
  base = dict(steps=config.train_steps, lr=config.optim.lr, seq_len=config.seq_len,
              batch_size=config.batch_size, window_scale=1.0)
  raw = [dict(p) for p in config.get("phases") or ()] or [{}]
  phases, start = [], 0
  for i, overrides in enumerate(raw):
    unknown = set(overrides) - set(base) - {"warmup_steps"}
    if unknown:
      raise ValueError(f"config.phases[{i}] has unknown fields {sorted(unknown)}")
    p = {**base, **overrides}
    warm = p.get("warmup_steps", config.optim.get("warmup_steps"))
    phases.append(Phase(i, start, int(p["steps"]), float(p["lr"]), int(p["seq_len"]),
                        int(p["batch_size"]), float(p["window_scale"]),
                        None if warm is None else int(warm)))
    start += int(p["steps"])
  return phases


def phase_of(phases: list[Phase], step: int) -> Phase:
  for p in phases:
    if step < p.start + p.steps:
      return p
  return phases[-1]


def model_config(config, phase: Phase, task: tasks.Task | None = None):
  """The model config of a phase (the task's family's: a ``LongformerConfig`` or an
  ``LEDConfig``), windows scaled by the phase's ``window_scale``.

  With ``config.init_from_hf`` the architecture comes from that checkpoint's
  config.json; ``config.model`` then only sets the fields a run may change on a
  checkpoint (``tunable_fields()``: dtype, remat, dropout, labels...).
  Fields left at -1 (``vocab_size``, ``num_labels``...) come from the data and task.
  """
  task = task or tasks.build(config)
  config_cls = families.get(task.family).config_cls
  fields = dict(config.model)
  if config.get("init_from_hf"):
    arch = config_cls.from_json(hf_io.checkpoint_path(config.init_from_hf))
    tunable = config_cls.tunable_fields()
    fields = {**{f: getattr(arch, f) for f in arch.__dataclass_fields__
                 if f not in ("extra_json",)},
              **{k: v for k, v in fields.items() if k in tunable}}
    fields["attention_window"] = list(arch.attention_window)
  windows = fields.pop("attention_window", None)  # None: no windows (vision's 2-D grids)
  if windows is not None:
    layers = fields[families.get(task.family).layers_field]
    windows = [windows] * layers if isinstance(windows, int) else list(windows)
    fields["attention_window"] = tuple(windows)
  data = data_config(config)
  derived = {"vocab_size": lambda: data_lib.vocab_size(data),
             "num_labels": lambda: data_lib.num_labels(data)}
  derived.update({k: (lambda v=v: v) for k, v in task.model_fields(data).items()})
  for name, value in derived.items():
    if name in config_cls.__dataclass_fields__ and fields.get(name, -1) in (None, -1):
      fields[name] = value()
  try:
    cfg = config_cls(**fields)
  except (TypeError, ValueError, NotImplementedError) as e:
    raise ValueError(f"config.model: {e}") from None
  if phase.window_scale == 1.0 or windows is None:
    return cfg
  step = 1 if getattr(cfg, "causal", False) else 2  # symmetric windows stay even
  return cfg.replace(attention_window=tuple(
      max(int(round(w * phase.window_scale / step)) * step, step) for w in windows))


def validate(config, phases: list[Phase], cfgs: list, mesh,
             task: tasks.Task) -> None:
  """Checks that need no compile: shapes against the mesh, positions, static bounds."""
  batch_shards = mesh.shape["data"] * mesh.shape["fsdp"]
  accum = int(config.optim.get("grad_accum", 1))
  for p, cfg in zip(phases, cfgs):
    where = f"config.phases[{p.index}]" if config.get("phases") else "config"
    if p.batch_size % (batch_shards * accum) or p.batch_size % jax.process_count():
      raise ValueError(f"{where}.batch_size={p.batch_size} must divide by data*fsdp="
                       f"{batch_shards} x grad_accum={accum} and by the process count "
                       f"{jax.process_count()}")
    family = families.of_config(cfg)
    limit = family.max_input_tokens(cfg)
    if limit is not None and p.seq_len > limit:
      raise ValueError(f"{where}.seq_len={p.seq_len} is longer than the {limit} tokens the "
                       f"model's positions take (config.model.{family.positions_field})")
    task.check_model(cfg, data_config(config))
    if p.seq_len % mesh.shape["sequence"]:
      raise ValueError(f"{where}.seq_len={p.seq_len} must divide by mesh sequence="
                       f"{mesh.shape['sequence']}")
  task.check_config(config)


def optimizer_of(config, phases: list[Phase]):
  """(schedule, optax optimizer) of a run's phases."""
  schedule = optim.make_schedule(
      [dict(steps=p.steps, lr=p.lr, warmup_steps=p.warmup_steps) for p in phases],
      config.optim)
  return schedule, optim.make_optimizer(config.optim, schedule)


def resolve_backend(cfg, platform: str, seq_len: int, device_kind: str | None = None):
  """``cfg`` with ``attention_impl="auto"`` resolved for ``platform`` (the mesh's, which
  may be another machine's when compiling ahead of time) at ``seq_len`` tokens."""
  if not hasattr(cfg, "attention_window"):  # vision: its 2-D grids have one implementation
    return cfg
  enc = cfg.encoder() if hasattr(cfg, "encoder") else cfg
  dtype = jnp.dtype(enc.attention_dtype or enc.dtype)
  vmem = attention_pallas.vmem_bytes(seq_len, enc.block_size, max(enc.attention_window),
                                     enc.head_dim, dtype.itemsize)
  impl = attention.resolve_impl(cfg.attention_impl, platform, kernel_vmem=vmem,
                                relative=getattr(cfg, "relative_positions", False),
                                device_kind=device_kind)
  return cfg if impl == cfg.attention_impl else cfg.replace(attention_impl=impl)


def check_batch(batch: dict, cfg) -> None:
  if "pixel_values" in batch:  # images: the model checks their shape
    return
  ids = batch["input_ids"]
  if ids.size and (ids.min() < 0 or ids.max() >= cfg.vocab_size):
    raise ValueError(f"data: token id {int(ids.max())} is out of range for "
                     f"config.model.vocab_size={cfg.vocab_size}")


# ---- state, step ----------------------------------------------------------------
def init_state(cfg, head: str, tx, seed: int):
  model = families.of_config(cfg).create_model(cfg, head, seed)
  params = nnx.state(model, nnx.Param)
  return {"params": params, "opt_state": tx.init(params), "step": jnp.zeros((), jnp.int32)}


def split_model(cfg, head: str, seed: int, partitioning: sh.Partitioning | None = None):
  """(graphdef, non-parameter state) of the model, the params being carried apart;
  the graphdef holds ``partitioning`` (activation layout, sequence parallelism)."""
  create = families.of_config(cfg).create_model
  abstract = nnx.eval_shape(lambda: create(cfg, head, seed, partitioning))
  graphdef = nnx.split(abstract, nnx.Param, ...)[0]
  rest = jax.jit(lambda: nnx.split(create(cfg, head, seed), nnx.Param, ...)[2])()
  return graphdef, rest


def make_train_step(task: tasks.Task, graphdef, rest, tx, schedule, accum: int, seed: int):
  """Pure step: (state, batch) -> (state, metrics)."""
  base_key = jax.random.key(seed + 1)

  def loss_fn(params, batch, key):
    # Fresh Variables for the rng state, owned by this trace (reseed mutates them).
    model = nnx.merge(graphdef, params, jax.tree.map(lambda x: x, rest))
    model.train()
    dropout_key, task_key = jax.random.split(key)
    nnx.reseed(model, dropout=dropout_key, policy="match_shape")  # stacked keys when scanned
    return task.loss_and_metrics(model, batch, key=task_key)

  def step_fn(state, batch):
    key = jax.random.fold_in(base_key, state["step"])
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    if accum == 1:
      (loss, sums), grads = grad_fn(state["params"], batch, key)
    else:
      loss, sums, grads = _accumulated(grad_fn, state["params"], batch, key, accum)
    updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
    params = optax.apply_updates(state["params"], updates)
    metrics = {"loss": loss, "grad_norm": optax.global_norm(grads),
               "lr": schedule(state["step"]), "sums": sums}
    return {"params": params, "opt_state": opt_state, "step": state["step"] + 1}, metrics

  return step_fn


def _accumulated(grad_fn, params, batch: dict, key, accum: int):
  """(loss, sums, grads) of the whole batch from ``accum`` micro-batches, as one large
  batch gives them: each micro-batch's mean loss and gradient weighted by its share of
  the batch's loss count (tokens, examples), not averaged equally."""
  micro = jax.tree.map(lambda x: x.reshape((accum, -1) + x.shape[1:]), batch)

  def body(carry, xs):
    mb, i = xs
    (loss, sums), grads = grad_fn(params, mb, jax.random.fold_in(key, i))
    count = sums["loss"][1]  # the loss is sums["loss"] as (total, count): total / count
    grads = jax.tree.map(lambda g: g * count.astype(g.dtype), grads)
    return jax.tree.map(jnp.add, carry, (sums, grads)), None

  (_, first_sums), first_grads = jax.eval_shape(
      lambda: grad_fn(params, jax.tree.map(lambda x: x[0], micro), key))
  zeros = jax.tree.map(jnp.zeros_like, (first_sums, first_grads))
  (sums, grads), _ = jax.lax.scan(body, zeros, (micro, jnp.arange(accum)))
  count = jnp.maximum(sums["loss"][1], 1.0)
  return tasks.base.mean_of(sums["loss"]), sums, jax.tree.map(
      lambda g: g / count.astype(g.dtype), grads)


def make_eval_step(task: tasks.Task, graphdef, rest, no_global: bool, seed: int):
  """Pure eval: (params, batch, batch index) -> (metric sums, per-example rows); MLM
  masks are fixed per batch."""
  def eval_fn(params, batch, index):
    model = nnx.merge(graphdef, params, jax.tree.map(lambda x: x, rest))
    model.eval()
    key = jax.random.fold_in(jax.random.key(seed + 2), index)
    return task.eval_step(model, batch, no_global=no_global, key=key)
  return eval_fn


def host_rows(rows: dict) -> dict:
  """Per-example rows of a global batch as numpy arrays on every process."""
  if jax.process_count() == 1:
    return {k: np.asarray(v) for k, v in jax.device_get(rows).items()}
  from jax.experimental import multihost_utils
  return {k: np.asarray(v) for k, v in
          multihost_utils.process_allgather(rows, tiled=True).items()}


# ---- the run ----------------------------------------------------------------------
# The command line's exit status after a SIGTERM stop (128 + SIGTERM, a killed process's
# status): schedulers (SLURM --requeue, Kubernetes Jobs, queued resources) read it as
# "stopped, not finished" and restart the run, which resumes from the checkpoint.
PREEMPTED_EXIT_STATUS = 143


EVAL_PROGRESS_S = 20.0  # an evaluation longer than this logs its progress this often


class Preempted(Exception):
  """Raised by :func:`train_and_evaluate` when SIGTERM stopped the run, after its
  checkpoint of ``step`` is saved: the run is not finished."""

  def __init__(self, step: int):
    super().__init__(f"stopped at step {step} on SIGTERM; the run resumes from here")
    self.step = step


class _Preemption:
  """Turns SIGTERM into a flag the loop reads at step boundaries."""

  def __init__(self):
    self.requested = False
    try:
      signal.signal(signal.SIGTERM, self._handle)
    except ValueError:  # not the main thread
      pass

  def _handle(self, *_):
    log.warning("SIGTERM: saving a checkpoint at the next step boundary")
    self.requested = True

  def agreed(self) -> bool:
    if jax.process_count() == 1:
      return self.requested
    from jax.experimental import multihost_utils
    return bool(np.any(multihost_utils.process_allgather(np.array(self.requested))))


def maybe_initialize_distributed(config) -> None:
  """``jax.distributed.initialize`` from config.distributed (or the environment)."""
  dist = config.get("distributed") or {}
  if not dist.get("enabled", False) or jax.distributed.is_initialized():
    return
  kwargs = {k: dist.get(k) for k in ("coordinator_address", "num_processes", "process_id")
            if dist.get(k) is not None}
  # Cross-process collectives on CPU hosts (tests, CPU clusters); GPUs/TPUs ignore it.
  jax.config.update("jax_cpu_collectives_implementation", dist.get("cpu_collectives", "gloo"))
  jax.distributed.initialize(**kwargs)


class Runner:
  """Holds the run's pieces; ``run()`` is the loop.

  Everything a method needs is built in ``__init__`` (or on first use by the
  method that needs it), so the methods may be called in any order.
  """

  def __init__(self, config, workdir: str, devices=None, allow_config_change: bool = False):
    self.config, self.workdir = config, workdir
    self.allow_config_change = allow_config_change
    self.data_cfg = data_config(config)
    self.task = tasks.build(config)
    self.head = self.task.head
    self.phases = resolve_phases(config)
    self.total = self.phases[-1].start + self.phases[-1].steps
    # devices: the mesh's (default all local ones); abstract devices of another
    # platform compile the run for it (``aot.py``): "auto" backends resolve for it.
    self.mesh = sh.make_mesh(config.mesh, devices)
    self.platform = self.mesh.devices.flat[0].platform
    self.model_configs = [model_config(config, p, self.task) for p in self.phases]
    self.rules = sh.rules_of(config.get("sharding_rules"))
    validate(config, self.phases, self.model_configs, self.mesh, self.task)
    self.schedule, self.tx = optimizer_of(config, self.phases)
    self.accum = int(config.optim.get("grad_accum", 1))
    self.batch_sharding = NamedSharding(self.mesh, PartitionSpec(("data", "fsdp")))
    self._init = functools.partial(init_state, self.model_configs[0], self.head, self.tx,
                                   config.seed)
    self.abstract_state = jax.eval_shape(self._init)
    self.state_shardings = sh.state_shardings(self.abstract_state, self.mesh, self.rules)
    self._compiled: dict[int, tuple] = {}

  @functools.cached_property
  def writer(self) -> metrics_lib.MetricWriter:
    return metrics_lib.MetricWriter(self.workdir, enabled=jax.process_index() == 0)

  @functools.cached_property
  def ckpt(self) -> ckpt_lib.Checkpointer:
    return ckpt_lib.Checkpointer(self.workdir, keep=self.config.keep_checkpoints,
                                 every=self.config.checkpoint_every,
                                 async_save=self.config.get("async_checkpoints", True))

  def record(self) -> None:
    """Writes what the run is (experiment.json, model.json) into the workdir, after
    checking that a workdir holding checkpoints holds this run (run_files.check_resume)."""
    resuming = bool(self.ckpt.steps())
    self._changed = run_files.check_resume(self.workdir, self.config,
                                           self.allow_config_change) if resuming else {}
    if jax.process_index() == 0:
      fileio.makedirs(self.workdir)
      run_files.record_run(
          self.workdir, self.config, self.model_configs[-1], self.head,
          data_lib.pipeline.label_names(self.data_cfg) if self.task.named_labels else None,
          self.data_cfg.get("tokenizer"))

  # data
  def iterator(self, phase: Phase, split: str = "train"):
    per_process = phase.batch_size // jax.process_count()
    return data_lib.make_iterator(
        self.data_cfg, split=split, seq_len=phase.seq_len, batch_size=per_process,
        seed=self.config.seed + phase.index, shard_index=jax.process_index(),
        shard_count=jax.process_count(), num_epochs=None if split == "train" else 1)

  def to_global(self, batch: dict) -> dict:
    return {k: jax.make_array_from_process_local_data(self.batch_sharding, np.asarray(v))
            for k, v in batch.items()}

  # compiled functions of a phase
  def functions(self, phase: Phase):
    if phase.index not in self._compiled:
      cfg = resolve_backend(self.model_configs[phase.index], self.platform, phase.seq_len,
                            self.mesh.devices.flat[0].device_kind)
      graphdef, rest = split_model(cfg, self.head, self.config.seed,
                                   sh.Partitioning(self.mesh, self.rules))
      step = make_train_step(self.task, graphdef, rest, self.tx, self.schedule, self.accum,
                             self.config.seed)
      # in_shardings: (state: the param/optimizer layout, batch: split over data*fsdp)
      options = compile_options.train_step_options(self.platform)
      jstep = jax.jit(step, in_shardings=(self.state_shardings, self.batch_sharding),
                      out_shardings=(self.state_shardings, None), donate_argnums=(0,),
                      compiler_options=options)
      evals = {name: jax.jit(make_eval_step(self.task, graphdef, rest, no_global,
                                            self.config.seed), compiler_options=options)
               for name, no_global in self.eval_variants()}
      self._compiled[phase.index] = (cfg, jstep, evals)
    return self._compiled[phase.index]

  def eval_variants(self):
    yield "eval", False
    if self.config.get("eval_without_global", False):
      yield "eval_no_global", True

  def init_or_restore(self):
    target = ckpt_lib.abstract_with_shardings(self.abstract_state, self.state_shardings)
    restored = self.ckpt.restore_latest(target, lambda s: self.iterator(phase_of(self.phases, s)))
    if restored is not None:
      state, step, it = restored
      log.info("resumed from step %d", step)
      self.writer.truncate_after(step)
      return state, step, it
    return self.fresh_state(), 0, self.iterator(self.phases[0])

  def fresh_state(self):
    """The initial state on the mesh: random, with init_from_hf's weights put in."""
    state = jax.jit(self._init, out_shardings=self.state_shardings)()
    if self.config.get("init_from_hf"):
      state["params"] = self.params_from_hf(state["params"])
    return state

  def params_from_hf(self, params):
    """``params`` with the weights of ``config.init_from_hf`` (an HF checkpoint
    directory of the model's family) put in, each array built shard by shard on its
    devices from the host copy: the whole model never sits on one device. Head
    weights the checkpoint lacks keep their values in ``params`` (the random init)."""
    path = hf_io.checkpoint_path(self.config.init_from_hf)
    log.info("initialising parameters from %s", path)
    cfg = self.model_configs[0]
    family = families.of_config(cfg)
    abstract = nnx.eval_shape(lambda: family.create_model(cfg, self.head, self.config.seed))
    values = family.hf_param_values(abstract, hf_io.load_state_dict(path))
    flat = dict(nnx.to_flat_state(params))
    for path_, host in values.items():
      if path_ not in flat:  # a buffer (LED's final_logits_bias): training keeps its init
        if np.any(host):
          raise ValueError(f"{path}: {'.'.join(map(str, path_))} is not zero, and training "
                           "keeps that buffer at zero")
        continue
      var = flat[path_]
      sharding = var[...].sharding
      host = host.astype(var[...].dtype)
      flat[path_] = var.replace(jax.make_array_from_callback(
          host.shape, sharding, lambda index, host=host: host[index]))
    return nnx.from_flat_state(flat)

  def evaluate(self, state, phase: Phase, split: str | None = None,
               predictions_path: str | None = None) -> dict:
    """Metrics of ``split`` (default ``config.eval_split``) for every eval variant;
    tasks that score per example also write ``predictions_path`` (JSONL: id,
    prediction, gold), from process 0."""
    cfg, _, evals = self.functions(phase)
    split = split or self.config.get("eval_split", "validation")
    limit = self.config.get("eval_batches", 0) or None
    if limit and type(self.task).score is not tasks.Task.score:
      log.warning("config.eval_batches=%d scores only the examples in those batches; an "
                  "example cut between windows is scored on the windows seen", limit)
    out = {}
    for name, fn in evals.items():
      totals, rows = None, []
      t0 = shown = time.time()
      for i, batch in enumerate(self.iterator(phase, split)):
        if limit is not None and i >= limit:
          break
        if time.time() - shown >= EVAL_PROGRESS_S:  # a long evaluation says where it is
          shown = time.time()
          log.info("evaluating %s on %s: %d batches in %.0fs", name, split, i, shown - t0)
        sums, batch_rows = fn(state["params"], self.to_global(batch), i)
        totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
        if batch_rows:
          rows.append(host_rows(batch_rows))
      metrics = self.task.finalize(totals)
      if rows:
        rows = {k: np.concatenate([r[k] for r in rows]) for k in rows[0]}
        examples = data_lib.stored_examples(self.data_cfg, split, seq_len=phase.seq_len)
        scores, predictions = self.task.score(rows, examples)
        metrics.update(scores)
        if predictions_path and name == "eval" and jax.process_index() == 0:
          run_files.write_jsonl_atomic(predictions_path, predictions)
          log.info("wrote %d predictions to %s", len(predictions), predictions_path)
      out.update({f"{name}_{k}": v for k, v in metrics.items()})
    return out

  def prepare_data(self) -> None:
    """Prepares the dataset for every phase's length before anything is written to the
    workdir: a run whose data fails leaves no workdir behind."""
    for seq_len in sorted({p.seq_len for p in self.phases}):
      data_lib.prepare(self.data_cfg, seq_len=seq_len)

  def run(self) -> dict:
    self.prepare_data()
    self.record()
    count = sum(x.size for x in jax.tree.leaves(self.abstract_state["params"]))
    log.info("model: %s parameters (%.1fM)", f"{count:,}", count / 1e6)
    preempt = _Preemption()
    state, step, it = self.init_or_restore()
    if jax.process_index() == 0:
      run_files.record_start(self.workdir, step, self._changed)
    compiled = set()
    progress = metrics_lib.Progress(self.total, step)
    phase = phase_of(self.phases, step)
    pending, last = None, {}
    while step < self.total:
      if step >= phase.start + phase.steps:
        phase = phase_of(self.phases, step)
        it = self.iterator(phase)
      cfg, jstep, _ = self.functions(phase)
      batch = next(it)
      if step == 0 or step == phase.start:
        check_batch(batch, cfg)
      t_call = time.time()
      state, m = jstep(state, self.to_global(batch))
      if phase.index not in compiled:  # its first call compiled it
        compiled.add(phase.index)
        log.info("compiled the train step of phase %d (%d tokens x %d) in %.1fs",
                 phase.index, phase.seq_len, phase.batch_size, time.time() - t_call)
      step += 1
      if pending is not None:  # read step-1's metrics while step runs
        last = self.report(*pending, progress)
      pending = (step, m, phase)
      stop = preempt.agreed()
      must_save = self.ckpt.due(step) or step == self.total or stop
      evaluating = step % self.config.eval_every == 0 or step == self.total
      if must_save or evaluating:  # the step's train scalars wait for its eval's
        last = self.report(*pending, progress, hold=evaluating)
        pending = None
      if evaluating:
        ev = self.evaluate(state, phase)
        self.writer.write(step, ev)
        log.info("step %d | %s", step, " | ".join(f"{k} {v:.4f}" for k, v in ev.items()))
        last.update(ev)
      if must_save:
        self.ckpt.save(step, state, it)
      if stop and step < self.total:
        log.warning("stopped at step %d on SIGTERM; the run resumes from here", step)
        break
    preempted = step < self.total
    if not last and step == self.total:  # resumed a finished run: report where it stands
      last = self.evaluate(state, phase)
      log.info("run already complete at step %d | %s", step,
               " | ".join(f"{k} {v:.4f}" for k, v in last.items()))
    self.ckpt.close()
    self.writer.close()
    if preempted:
      raise Preempted(step)
    return last

  def report(self, step: int, m: dict, phase: Phase, progress, hold: bool = False) -> dict:
    m = jax.device_get(m)
    loss = float(m["loss"])
    if not np.isfinite(loss):
      raise FloatingPointError(
          f"loss is {loss} at step {step}; stopping. The last good checkpoint is at step "
          f"{max(self.ckpt.steps(), default=0)} in {self.ckpt.directory}")
    scalars = {"loss": loss, "grad_norm": float(m["grad_norm"]), "lr": float(m["lr"])}
    scalars.update({f"train_{k}": v for k, v in self.task.finalize(m["sums"]).items()
                    if k != "loss"})
    if step % self.config.log_every == 0 or step == self.total:
      scalars["tokens_per_sec"] = progress.rate(step, phase.batch_size * phase.seq_len)
      self.writer.write(step, scalars, hold=hold)
      if jax.process_index() == 0:
        log.info(progress.line(step, scalars))
    return scalars


def evaluate(config, workdir: str, split: str | None = None,
             predictions_path: str | None = None) -> dict:
  """Evaluates the newest checkpoint in ``workdir`` (or, with none, the
  ``init_from_hf`` model) on ``split``; per-example tasks write ``predictions_path``
  (default ``workdir/predictions-SPLIT.jsonl``)."""
  logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
  maybe_initialize_distributed(config)
  runner = Runner(config, workdir)
  if runner.ckpt.steps():  # the state alone: no train iterator, metrics.jsonl untouched
    target = ckpt_lib.abstract_with_shardings(runner.abstract_state, runner.state_shardings)
    restored = runner.ckpt.restore_state(target)
    if restored is None:
      raise ValueError(f"no checkpoint in {runner.ckpt.directory} restores into this config's "
                       "model (failures are logged above)")
    state, step = restored
  elif config.get("init_from_hf"):
    state, step = runner.fresh_state(), 0
  else:
    raise FileNotFoundError(f"{workdir} holds no checkpoint and config.init_from_hf is not set:"
                            " nothing to evaluate")
  split = split or config.get("eval_split", "validation")
  path = predictions_path or fileio.join(workdir, f"predictions-{split}.jsonl")
  metrics = runner.evaluate(state, runner.phases[-1], split, path)
  runner.writer.merge_into_file(step, {f"{split}_{k}": v for k, v in metrics.items()})
  log.info("%s at step %d | %s", split, step,
           " | ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
  runner.ckpt.close()
  runner.writer.close()
  return metrics


def train_and_evaluate(config, workdir: str, allow_config_change: bool = False) -> dict:
  """Trains and evaluates ``config`` in ``workdir`` (resuming if it holds checkpoints).

  Returns the last logged train and eval metrics; raises :class:`Preempted` when SIGTERM
  stopped it (its checkpoint saved). A workdir holding another run's checkpoints (a
  config differing in more than ``run_files.RESUMABLE``) is refused unless
  ``allow_config_change``.
  """
  logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
  maybe_initialize_distributed(config)
  t0, existed = time.time(), fileio.exists(workdir)
  try:
    result = Runner(config, workdir, allow_config_change=allow_config_change).run()
  except BaseException:
    if not existed and jax.process_index() == 0:
      run_files.remove_if_unstarted(workdir)
    raise
  log.info("done in %.0fs: metrics in %s", time.time() - t0,
           fileio.join(workdir, "metrics.jsonl"))
  return result
