"""Metrics out of a run: ``metrics.jsonl``, TensorBoard event files, a progress line.

The JSONL file holds one object per logged step (``step``, ``loss``, ``lr``,
``tokens_per_sec``, eval metrics prefixed ``eval_``). Only process 0 writes.
TensorBoard events are written with tensorboardX (no TensorFlow needed); on a
bucket through :mod:`longformer_jax.fileio` (each flush uploads the event file whole:
TensorBoard reads it from the bucket as it grows).
"""

from __future__ import annotations

import io
import json
import logging
import time

from longformer_jax import fileio

log = logging.getLogger("longformer_jax")


class _BucketEventFile:
  """An event file on a bucket: written locally in memory, uploaded whole on flush."""

  def __init__(self, path: str):
    self.path, self.buffer = path, io.BytesIO()

  def write(self, data: bytes) -> None:
    self.buffer.write(data)

  def flush(self) -> None:
    fileio.write_atomic(self.path, self.buffer.getvalue())

  def close(self) -> None:
    self.flush()


class _BucketEventFiles:
  """tensorboardX's writer factory for ``gs://`` paths, through the one file layer."""

  def open(self, path: str) -> _BucketEventFile:
    return _BucketEventFile(path)

  def directory_check(self, path: str) -> None:  # buckets have no folders to create
    pass


def _summary_writer(logdir: str):
  from tensorboardX import SummaryWriter, record_writer
  for scheme in fileio.REMOTE_SCHEMES:
    record_writer.register_writer_factory(scheme.rstrip(":/"), _BucketEventFiles())
  return SummaryWriter(logdir)


class MetricWriter:
  """Writes scalars to ``workdir/metrics.jsonl`` and ``workdir/tensorboard``."""

  def __init__(self, workdir: str, *, enabled: bool = True):
    self.enabled = enabled
    self.path = fileio.join(workdir, "metrics.jsonl")
    self._tb = None
    self._pending: dict | None = None  # the current step's record, not yet written
    if enabled:
      fileio.makedirs(workdir)
      try:
        self._tb = _summary_writer(str(fileio.join(workdir, "tensorboard")))
      except ImportError:
        log.warning("tensorboardX not installed: TensorBoard events are not written")

  def truncate_after(self, step: int) -> None:
    """Drops records past ``step`` (they are recomputed after a resume)."""
    if not self.enabled or not fileio.exists(self.path):
      return
    keep = [line + "\n" for line in fileio.read_text(self.path).splitlines()
            if line.strip() and json.loads(line)["step"] <= step]
    fileio.write_atomic(self.path, "".join(keep))

  def write(self, step: int, scalars: dict, *, hold: bool = False) -> None:
    """Adds ``scalars`` to step ``step``'s record and writes it, or with ``hold`` keeps it
    for the rest of the step's scalars (its eval): one JSON object per step."""
    if not self.enabled:
      return
    if self._pending is not None and self._pending["step"] != int(step):
      self.flush()
    if self._pending is None:
      self._pending = {"step": int(step)}
    self._pending.update({k: float(v) for k, v in scalars.items()})
    if self._tb is not None:
      for k, v in scalars.items():
        self._tb.add_scalar(k, float(v), int(step))
      self._tb.flush()
    if not hold:
      self.flush()

  def flush(self) -> None:
    """Appends the pending step's record to ``metrics.jsonl``."""
    if self._pending is not None:
      fileio.append_text(self.path, json.dumps(self._pending) + "\n")
      self._pending = None

  def merge_into_file(self, step: int, scalars: dict) -> None:
    """Adds ``scalars`` to the record of ``step`` already in the file (a new record if it
    has none), rewriting the file atomically: ``--mode=evaluate`` after a run."""
    if not self.enabled:
      return
    self.flush()
    records = read_jsonl(self.path.parent) if fileio.exists(self.path) else []
    record = next((r for r in records if r["step"] == int(step)), None)
    if record is None:
      record = {"step": int(step)}
      records.append(record)
    record.update({k: float(v) for k, v in scalars.items()})
    fileio.write_atomic(self.path, "".join(json.dumps(r) + "\n" for r in records))

  def close(self):
    self.flush()
    if self._tb is not None:
      self._tb.close()


def read_jsonl(workdir) -> list[dict]:
  text = fileio.read_text(fileio.join(workdir, "metrics.jsonl"))
  return [json.loads(line) for line in text.splitlines() if line.strip()]


class Progress:
  """A periodic line: step, loss, tokens/s, elapsed and ETA."""

  def __init__(self, total_steps: int, first_step: int):
    self.total, self.first = total_steps, first_step
    self.t0 = time.time()
    self.last_t, self.last_step = self.t0, first_step

  def rate(self, step: int, tokens_per_step: int) -> float:
    now = time.time()
    done = max(step - self.last_step, 1)
    rate = done * tokens_per_step / max(now - self.last_t, 1e-9)
    self.last_t, self.last_step = now, step
    return rate

  def line(self, step: int, scalars: dict) -> str:
    elapsed = time.time() - self.t0
    per_step = elapsed / max(step - self.first, 1)
    eta = per_step * (self.total - step)
    parts = [f"step {step}/{self.total}"]
    parts += [f"{k} {v:.4g}" for k, v in scalars.items()]
    parts.append(f"elapsed {elapsed:.0f}s eta {eta:.0f}s")
    return " | ".join(parts)
