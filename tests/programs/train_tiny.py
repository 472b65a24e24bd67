"""Trains ``configs/default.py:tiny`` (or another config) in a fresh process.

    python tests/programs/train_tiny.py WORKDIR DATA_DIR ['{"field.sub": value, ...}']
        [--config=configs/NAME.py:VARIANT]

The JSON object overrides config fields by dotted name. The caller sets the device
count (``XLA_FLAGS``) and, for multi-process runs, the ``distributed.*`` fields.
"""

import argparse
import importlib.util
import json
import os
import sys

from longformer_jax import train

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from conftest import ROOT, set_fields  # noqa: E402  (the tests' shared helpers)


def load_config(spec: str):
  path, _, variant = spec.partition(":")
  module_spec = importlib.util.spec_from_file_location("config", os.path.join(ROOT, path))
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_config(variant)


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("workdir")
  parser.add_argument("data_dir")
  parser.add_argument("overrides", nargs="?", default="{}")
  parser.add_argument("--config", default="configs/default.py:tiny")
  args = parser.parse_args()
  config = load_config(args.config)
  config.data.data_dir = args.data_dir
  config.async_checkpoints = False
  train.train_and_evaluate(set_fields(config, json.loads(args.overrides)), args.workdir)


if __name__ == "__main__":
  main()
