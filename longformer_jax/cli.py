"""What every command line shares: readable logs and one-line errors.

* :func:`setup_logging`: this package's milestones at INFO, in a short format; other
  libraries' records (orbax, tfds, absl, grain) only from WARNING, unless ``verbosity``
  is 1 or more; known harmless warnings (tfds announcing a builder config, an empty
  variant folder before the first preparation) dropped.
* :func:`run`: runs a command's body; a user's mistake (a bad value, a missing file,
  malformed data) ends in one ``error:`` line and exit status 1, the traceback only
  with ``verbosity`` 1 or more.
"""

from __future__ import annotations

import logging
import sys
from typing import Callable

OWN_LOGGER = "longformer_jax"
FORMAT = "%(asctime)s %(message)s"
DATE_FORMAT = "%H:%M:%S"
# Messages of other libraries that say nothing a user can act on.
HARMLESS = ("Using custom data configuration", "has no dataset_info.json",
            "Missing metrics for step", "Failed to get flag value for EXPERIMENTAL_ORBAX")
# What a user's mistake raises (a bad config value, a missing or malformed file); other
# exceptions are bugs and keep their traceback.
USER_ERRORS = (ValueError, OSError, KeyError, FloatingPointError)
VERBOSITY_HELP = ("0: this package's progress and milestones, other libraries' warnings; "
                  "1: every library's INFO records and the traceback of errors")


class _Quiet(logging.Filter):
  """Keeps this package's records, and other loggers' from WARNING up (every record of
  every logger when ``verbosity`` >= 1), less the harmless ones."""

  def __init__(self, verbosity: int):
    super().__init__()
    self.verbosity = verbosity

  def filter(self, record: logging.LogRecord) -> bool:
    own = record.name == OWN_LOGGER or record.name.startswith(OWN_LOGGER + ".")
    if self.verbosity < 1 and not own and record.levelno < logging.WARNING:
      return False
    return self.verbosity >= 1 or not any(h in record.getMessage() for h in HARMLESS)


class _Handler(logging.StreamHandler):
  """The command lines' handler: stderr, :data:`FORMAT`, through :class:`_Quiet`."""


def setup_logging(verbosity: int = 0) -> None:
  """Sends log records to stderr through :class:`_Quiet` in :data:`FORMAT`, in place of
  absl's handler (whose format repeats the thread and file on every line) and of a plain
  stderr handler (``logging.basicConfig``'s). Other handlers (a test runner's) are left as
  they are. Idempotent."""
  root = logging.getLogger()
  for handler in list(root.handlers):  # absl's, basicConfig's to stderr, an earlier ours
    if (isinstance(handler, _Handler) or type(handler).__name__ == "ABSLHandler"
        or (type(handler) is logging.StreamHandler and handler.stream is sys.stderr)):
      root.removeHandler(handler)
  handler = _Handler(sys.stderr)
  handler.setFormatter(logging.Formatter(FORMAT, DATE_FORMAT))
  handler.addFilter(_Quiet(verbosity))
  root.addHandler(handler)
  level = logging.DEBUG if verbosity >= 2 else logging.INFO
  root.setLevel(level)
  logging.getLogger(OWN_LOGGER).setLevel(level)


def add_verbosity(parser) -> None:
  """The ``--verbosity`` argument of an argparse command line."""
  parser.add_argument("--verbosity", type=int, default=0, help=VERBOSITY_HELP)


def one_line(error: BaseException) -> str:
  """``error``'s message as one line (a KeyError's without its quotes)."""
  message = error.args[0] if isinstance(error, KeyError) and error.args else error
  text = " ".join(str(message).split()) or type(error).__name__
  return text if isinstance(error, (ValueError, KeyError)) else f"{type(error).__name__}: {text}"


def run(body: Callable[[], object], verbosity: int = 0):
  """``body()``; a :data:`USER_ERRORS` exception becomes ``error: MESSAGE`` on stderr and
  exit status 1 (with the traceback when ``verbosity`` >= 1)."""
  try:
    return body()
  except USER_ERRORS as e:
    if verbosity >= 1:
      raise
    sys.stderr.write(f"error: {one_line(e)} (--verbosity=1 shows the traceback)\n")
    sys.exit(1)
