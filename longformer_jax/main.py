"""Command line: ``python -m longformer_jax.main --config=configs/NAME.py[:VARIANT] --workdir=DIR``.

Any config field can be overridden with ``--config.key=value`` (e.g.
``--config.train_steps=100 --config.mesh.data=4``).

``--mode=evaluate`` evaluates the workdir's newest checkpoint (or the
``init_from_hf`` model) on ``--split`` and writes per-example predictions (JSONL:
id, prediction, gold) to ``--predictions`` (default ``WORKDIR/predictions-SPLIT.jsonl``)
for tasks that score examples (classification, NER, QA).

``--mode=compile --topology=NAME`` compiles the run's steps for an accelerator
topology without the hardware (``v5e-256``, ``v4-128``, ``v5p-128``, ``v6e-256``,
``v5e:2x2``, ``h100-8``, ``a100-8``, ``cpu-N``; see ``aot.py``), prints per-device
memory, fit, FLOPs, bytes, collectives and a roofline bound, and writes
``WORKDIR/compile/NAME.json``. With ``--config.mesh=auto`` it searches the meshes (and,
for a chip family such as ``--topology=v5e``, the slice sizes) by compiling them
(``mesh_advisor.py``) and writes the choice to ``WORKDIR/compile/mesh-auto-NAME.json``; a
training run given ``--config.mesh=auto`` then takes the mesh chosen there for its
device count.

Exit status: 0 when the run finished, 1 on an error (one ``error:`` line), 143 when
SIGTERM stopped it after saving (a scheduler's cue to restart it; it resumes).

Logs: the run's progress and milestones; other libraries' records only from WARNING
(``--verbosity=1``: everything, and the traceback of a failed run, which otherwise ends
in one ``error:`` line).
"""

import sys

from absl import app, flags
from ml_collections import config_flags

from longformer_jax import cli, fileio, train

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Directory for checkpoints and metrics; resumes if present.")
config_flags.DEFINE_config_file("config", None, "Experiment config file (configs/*.py).",
                                lock_config=True)
flags.DEFINE_enum("mode", "train", ["train", "evaluate", "compile"],
                  "Train (and evaluate), evaluate only, or compile for --topology only.")
flags.DEFINE_list("compile_steps", ["train", "eval"],
                  "--mode=compile: which steps to compile (train, eval).")
flags.DEFINE_list("compile_phases", None,
                  "--mode=compile: only these phases (0-based; default every phase).")
flags.DEFINE_string("topology", None, "--mode=compile: the accelerator topology to compile "
                    "for (v5e-256, v4-128, v5p-128, v6e-256, v5e:2x2, h100-8, a100-8, cpu-N).")
flags.DEFINE_bool("allow_config_change", False, "Resume a workdir whose run had another "
                  "config (by default only train_steps, cadences, mesh and paths may change).")
flags.DEFINE_string("split", None, "Split to evaluate (default: config.eval_split).")
flags.DEFINE_string("predictions", None, "Where --mode=evaluate writes predictions.")
flags.mark_flags_as_required(["config", "workdir"])


def _check_config_path(argv) -> None:
  """A ``--config=PATH[:VARIANT]`` naming no file: one line naming it and the configs
  beside it (ml_collections would report a lookup of "config_config" later)."""
  value = next((a.split("=", 1)[1] for a in argv[1:] if a.startswith("--config=")), None)
  if not value:
    return
  path = value.split(":", 1)[0]
  if fileio.isfile(path):
    return
  folder = fileio.path(path).parent
  names = sorted(n for n in fileio.listdir(folder) if n.endswith(".py") and n != "__init__.py")
  known = f"; the configs in {folder}: {', '.join(names)}" if names else ""
  sys.stderr.write(f"FATAL Flags parsing error: --config={value}: no file {path}{known}\n")
  sys.exit(1)


MESH_AUTO = "--config.mesh=auto"
_mesh_auto = []  # set by parse_flags when the command line asks for the searched mesh


def parse_flags(argv):
  """absl's flag parsing, with a ``--config.KEY`` that names no config field reported as
  a flags error naming it (ml_collections raises a bare KeyError / AttributeError), and
  ``--config.mesh=auto`` taken out (the mesh is a group of fields, not a value)."""
  if any(arg in ("-h", "--help", "--helpshort") for arg in argv[1:]):
    app.usage(shorthelp=True, writeto_stdout=True, exitcode=0)  # absl's own exits 1
  _check_config_path(argv)
  if MESH_AUTO in argv:
    argv = [a for a in argv if a != MESH_AUTO]
    _mesh_auto.append(True)
  try:
    return app.parse_flags_with_usage(argv)
  except (KeyError, AttributeError) as e:
    while isinstance(e, BaseException) and e.args:  # the KeyError's own text, unquoted
      e = e.args[0]
    missing, *hint = str(e).split("\n")
    missing = missing.strip("'\"")
    flag = next((a.split("=", 1)[0] for a in argv[1:] if a.startswith("--config.") and
                 missing in a.split("=", 1)[0].split(".")[1:]), None)
    if flag is None:
      raise
    sys.stderr.write(f"FATAL Flags parsing error: {flag}: the config has no field "
                     f"{missing!r}{'. ' + ' '.join(hint) if hint else ''}\n")
    sys.exit(1)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  cli.setup_logging(FLAGS.verbosity)
  cli.run(run_mode, FLAGS.verbosity)


def run_mode():
  if _mesh_auto and FLAGS.mode == "compile" and FLAGS.topology:
    from longformer_jax.compile import mesh_advisor
    report = mesh_advisor.advise(FLAGS.config, FLAGS.workdir, FLAGS.topology)
    print(mesh_advisor.table(report))
    print(f"wrote {report['path']}")
    return
  if _mesh_auto:
    from longformer_jax.compile import mesh_advisor
    mesh_advisor.apply_chosen(FLAGS.config, FLAGS.workdir)
  if FLAGS.mode == "compile":
    if not FLAGS.topology:
      raise app.UsageError("--mode=compile needs --topology (e.g. v5e-256, v5e:2x2, cpu-8)")
    from longformer_jax.compile import aot
    report = aot.compile_run(FLAGS.config, FLAGS.workdir, FLAGS.topology,
                             kinds=tuple(FLAGS.compile_steps),
                             phases=None if FLAGS.compile_phases is None else
                             tuple(int(p) for p in FLAGS.compile_phases))
    print(aot.table(report))
    print(f"wrote {report['path']}")
  elif FLAGS.mode == "evaluate":
    train.evaluate(FLAGS.config, FLAGS.workdir, FLAGS.split, FLAGS.predictions)
  else:
    try:
      train.train_and_evaluate(FLAGS.config, FLAGS.workdir, FLAGS.allow_config_change)
    except train.Preempted:  # saved; a scheduler restarts on this status
      sys.exit(train.PREEMPTED_EXIT_STATUS)


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
