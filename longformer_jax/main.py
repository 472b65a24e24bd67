"""Command line: ``python -m longformer_jax.main --config=configs/NAME.py[:VARIANT] --workdir=DIR``.

Any config field can be overridden with ``--config.key=value`` (e.g.
``--config.train_steps=100 --config.mesh.data=4``).
"""

from absl import app, flags
from ml_collections import config_flags

from longformer_jax import train

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Directory for checkpoints and metrics; resumes if present.")
config_flags.DEFINE_config_file("config", None, "Experiment config file (configs/*.py).",
                                lock_config=True)
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  train.train_and_evaluate(FLAGS.config, FLAGS.workdir)


if __name__ == "__main__":
  app.run(main)
