"""Trains ``configs/default.py:tiny`` (or another config) in a fresh process.

    python tests/programs/train_tiny.py WORKDIR DATA_DIR ['{"field.sub": value, ...}']
        [--config=configs/NAME.py:VARIANT] [--signal=KILL|TERM --signal-at-step=K]

The JSON object overrides config fields by dotted name (saves are synchronous unless
it sets ``async_checkpoints``). The caller sets the device count (``XLA_FLAGS``) and,
for multi-process runs, the ``distributed.*`` fields. ``--signal`` sends the process
that signal right after it logs step K's training loss: a kill or preemption at a
known step, whatever the machine's speed.
"""

import argparse
import importlib.util
import json
import logging
import os
import signal
import sys

from longformer_jax import metrics, train

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from conftest import ROOT, set_fields  # noqa: E402  (the tests' shared helpers)


def load_config(spec: str):
  path, _, variant = spec.partition(":")
  module_spec = importlib.util.spec_from_file_location("config", os.path.join(ROOT, path))
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_config(variant)


def signal_after_logging(signum: int, step: int) -> None:
  flush = metrics.MetricWriter.flush

  def flush_then_signal(self):
    record = self._pending
    flush(self)
    if record is not None and record["step"] == step and "loss" in record:
      os.kill(os.getpid(), signum)
  metrics.MetricWriter.flush = flush_then_signal


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("workdir")
  parser.add_argument("data_dir")
  parser.add_argument("overrides", nargs="?", default="{}")
  parser.add_argument("--config", default="configs/default.py:tiny")
  parser.add_argument("--signal", choices=("KILL", "TERM"))
  parser.add_argument("--signal-at-step", type=int)
  args = parser.parse_args()
  logging.getLogger("longformer_jax").setLevel(logging.INFO)  # "resumed from step N" too
  if args.signal:
    signal_after_logging(getattr(signal, "SIG" + args.signal), args.signal_at_step)
  config = load_config(args.config)
  config.data.data_dir = args.data_dir
  config.async_checkpoints = False
  try:
    train.train_and_evaluate(set_fields(config, json.loads(args.overrides)), args.workdir)
  except train.Preempted:  # saved: the command line's status for a run to restart
    sys.exit(train.PREEMPTED_EXIT_STATUS)


if __name__ == "__main__":
  main()
