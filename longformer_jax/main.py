"""Command line: ``python -m longformer_jax.main --config=configs/NAME.py[:VARIANT] --workdir=DIR``.

Any config field can be overridden with ``--config.key=value`` (e.g.
``--config.train_steps=100 --config.mesh.data=4``).

``--mode=evaluate`` evaluates the workdir's newest checkpoint (or the
``init_from_hf`` model) on ``--split`` and writes per-example predictions (JSONL:
id, prediction, gold) to ``--predictions`` (default ``WORKDIR/predictions-SPLIT.jsonl``)
for tasks that score examples (classification, NER, QA).
"""

from absl import app, flags
from ml_collections import config_flags

from longformer_jax import train

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Directory for checkpoints and metrics; resumes if present.")
config_flags.DEFINE_config_file("config", None, "Experiment config file (configs/*.py).",
                                lock_config=True)
flags.DEFINE_enum("mode", "train", ["train", "evaluate"], "Train (and evaluate), or evaluate only.")
flags.DEFINE_string("split", None, "Split to evaluate (default: config.eval_split).")
flags.DEFINE_string("predictions", None, "Where --mode=evaluate writes predictions.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if FLAGS.mode == "evaluate":
    train.evaluate(FLAGS.config, FLAGS.workdir, FLAGS.split, FLAGS.predictions)
  else:
    train.train_and_evaluate(FLAGS.config, FLAGS.workdir)


if __name__ == "__main__":
  app.run(main)
