"""Metrics out of a run: ``metrics.jsonl``, TensorBoard event files, a progress line.

The JSONL file holds one object per logged step (``step``, ``loss``, ``lr``,
``tokens_per_sec``, eval metrics prefixed ``eval_``). Only process 0 writes.
TensorBoard events are written with tensorboardX (no TensorFlow needed).
"""

from __future__ import annotations

import json
import logging
import os
import time

log = logging.getLogger("longformer_jax")


class MetricWriter:
  """Writes scalars to ``workdir/metrics.jsonl`` and ``workdir/tensorboard``."""

  def __init__(self, workdir: str, *, enabled: bool = True):
    self.enabled = enabled
    self.path = os.path.join(workdir, "metrics.jsonl")
    self._tb = None
    if enabled:
      os.makedirs(workdir, exist_ok=True)
      try:
        from tensorboardX import SummaryWriter
        self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))
      except ImportError:
        log.warning("tensorboardX not installed: TensorBoard events are not written")

  def truncate_after(self, step: int) -> None:
    """Drops records past ``step`` (they are recomputed after a resume)."""
    if not self.enabled or not os.path.exists(self.path):
      return
    with open(self.path) as f:
      keep = [line for line in f if line.strip() and json.loads(line)["step"] <= step]
    with open(self.path + ".tmp", "w") as f:  # renamed into place: no half-written file
      f.writelines(keep)
    os.replace(self.path + ".tmp", self.path)

  def write(self, step: int, scalars: dict) -> None:
    if not self.enabled:
      return
    with open(self.path, "a") as f:
      f.write(json.dumps({"step": int(step), **{k: float(v) for k, v in scalars.items()}}) + "\n")
    if self._tb is not None:
      for k, v in scalars.items():
        self._tb.add_scalar(k, float(v), int(step))
      self._tb.flush()

  def close(self):
    if self._tb is not None:
      self._tb.close()


def read_jsonl(workdir: str) -> list[dict]:
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f if line.strip()]


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
