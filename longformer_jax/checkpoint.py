"""Orbax checkpoints of a run: train state (params, optimizer, step) + data iterator.

Layout: ``workdir/checkpoints/<step>/{state,data}``. Saves are periodic (every
``config.checkpoint_every`` steps), at the end, and on SIGTERM; asynchronous;
the newest ``config.keep_checkpoints`` are kept.

A run resumes in this order: find the newest step whose checkpoint reads back
(unreadable or half-written ones are skipped with a message), restore the train
state into its shardings, then the data iterator of that step's phase.
"""

from __future__ import annotations

import logging

import grain
import jax
import orbax.checkpoint as ocp

from longformer_jax import fileio

log = logging.getLogger("longformer_jax")


class Checkpointer:
  def __init__(self, workdir: str, *, keep: int, every: int, async_save: bool = True):
    self.directory = fileio.join(workdir, "checkpoints")  # local or gs://
    self.every = every
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                           enable_async_checkpointing=async_save)
    self.manager = ocp.CheckpointManager(
        self.directory, options=options,
        item_handlers={"state": ocp.StandardCheckpointHandler(),
                       "data": grain.checkpoint.CheckpointHandler()})

  def due(self, step: int) -> bool:
    return self.every > 0 and step % self.every == 0

  def save(self, step: int, state, data_iterator) -> None:
    self.manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state),
        data=grain.checkpoint.CheckpointSave(data_iterator)), force=True)
    log.info("checkpoint of step %d: %s", step, self.directory / str(step))

  def steps(self) -> list[int]:
    return sorted(self.manager.all_steps())

  def _report_partial(self) -> None:
    for name in fileio.listdir(self.directory):
      if "tmp" in name:
        log.warning("skipping half-written checkpoint %s", self.directory / name)

  def restore_latest(self, abstract_state, make_iterator):
    """(state, step, iterator) from the newest readable checkpoint, or None.

    ``abstract_state`` holds ShapeDtypeStructs with shardings; ``make_iterator``
    builds the data iterator for a given step (its phase), to restore into.
    """
    return self._newest_readable(abstract_state, make_iterator)

  def restore_state(self, abstract_state):
    """(state, step) of the newest readable checkpoint without its data iterator, or
    None: for rebuilding a trained model where the data is not at hand."""
    restored = self._newest_readable(abstract_state, None)
    return None if restored is None else restored[:2]

  def _newest_readable(self, abstract_state, make_iterator):
    """The one restore loop: newest step first, unreadable ones skipped with a message;
    (state, step, iterator or None), or None when no checkpoint reads back."""
    self._report_partial()
    for step in reversed(self.steps()):
      items = dict(state=ocp.args.StandardRestore(abstract_state))
      iterator = None
      if make_iterator is not None:
        iterator = make_iterator(step)
        items["data"] = grain.checkpoint.CheckpointRestore(iterator)
      try:
        restored = self.manager.restore(step, args=ocp.args.Composite(**items))
      except Exception as e:  # noqa: BLE001 - any unreadable checkpoint is skipped
        log.warning("checkpoint at step %d is unreadable (%s: %s); trying an earlier one",
                    step, type(e).__name__, str(e).splitlines()[0][:200])
        continue
      return restored["state"], step, iterator
    return None

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()


def abstract_with_shardings(abstract_state, shardings):
  """ShapeDtypeStructs carrying the target shardings, for a sharded restore."""
  return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                      abstract_state, shardings)
