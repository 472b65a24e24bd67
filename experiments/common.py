"""What the experiment scripts share: the machine's name, peak memory, the timing
helper, the configs loader and the one results writer.

Scripts run as ``python experiments/NAME.py`` have this folder on ``sys.path`` and import
it as ``import common``; the package itself is installed, so nothing here touches paths.
"""

from __future__ import annotations

import importlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import types

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, "experiments", "results")


def peak_rss() -> int:
  """This process's peak resident memory so far (VmHWM), in bytes."""
  with open("/proc/self/status") as f:
    for line in f:
      if line.startswith("VmHWM:"):
        return int(line.split()[1]) * 1024
  raise RuntimeError("VmHWM")


def cpu_name() -> str:
  """The CPU's model name, from lscpu ("unknown" where it cannot be read)."""
  try:
    out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
  except OSError:
    return "unknown"
  return next((line.split(":", 1)[1].strip() for line in out.splitlines()
               if line.startswith("Model name:")), "unknown")


def timed(fn, repeats: int) -> dict:
  """One warm-up call of ``fn`` (compiles), then the median wall time of ``repeats``
  calls, and the process's peak resident memory after them."""
  t0 = time.perf_counter()
  fn()  # warm-up (and compile)
  warm = time.perf_counter() - t0
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t0)
  return dict(step_s=statistics.median(times), times_s=times, warmup_s=warm,
              peak_bytes=peak_rss())


def load_config(name: str, variant: str | None = None):
  """``configs/NAME.py``'s ``get_config(variant)`` (``get_config()`` without one), as
  ``--config=configs/NAME.py:VARIANT`` gives it."""
  module = load_config_module(name)
  return module.get_config() if variant is None else module.get_config(variant)


def load_config_module(name: str):
  """The module ``configs/NAME.py`` (``name`` with or without ``.py``). The configs folder
  is not an installed package: it is registered here as the package ``configs`` (configs
  import each other as ``from configs import char_lm``)."""
  name = name[:-3] if name.endswith(".py") else name
  if "configs" not in sys.modules:
    package = types.ModuleType("configs")
    package.__path__ = [os.path.join(ROOT, "configs")]
    sys.modules["configs"] = package
  return importlib.import_module(f"configs.{name}")


def command_line() -> str:
  """The command that started this process, as a user types it from the repository root."""
  script = os.path.relpath(os.path.abspath(sys.argv[0]), ROOT)
  return " ".join(["python", script, *sys.argv[1:]])


def machine() -> str:
  """The machine in words: CPU model and core count."""
  return f"{cpu_name()}, {os.cpu_count()} CPUs"


def _replace(path: str, write) -> None:
  """Calls ``write(file)`` on a temporary file beside ``path``, then renames it over ``path``,
  so a reader never sees half a file."""
  fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix="." + os.path.basename(path))
  try:
    with os.fdopen(fd, "wb") as f:
      write(f)
    os.chmod(tmp, 0o644)  # mkstemp's 0600 would otherwise stick to the result
    os.replace(tmp, path)
  except BaseException:
    os.unlink(tmp)
    raise


def write_results(stem: str, payload, text, figure=None, *, command: str | None = None,
                  dpi: int = 120, bbox_inches: str | None = None,
                  out_dir: str = RESULTS) -> str:
  """Writes ``STEM.json`` (``payload``), ``STEM.md`` (``text``: a string or a list of
  lines) and, given a matplotlib ``figure``, ``STEM.png``, each atomically, under
  ``out_dir`` (``stem`` with a directory part is used as the path). The markdown names the
  command (``command``, else this process's) and the machine: a closing line adds either
  where the text does not already say it. Returns the path stem."""
  path = stem if os.path.dirname(stem) else os.path.join(out_dir, stem)
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  command = command or command_line()
  text = text if isinstance(text, str) else "\n".join(text)
  text = text.rstrip("\n") + "\n"
  if command not in text or cpu_name() not in text:
    text += f"\nMade by `{command}` on {machine()}.\n"
  _replace(path + ".json", lambda f: f.write(
      json.dumps(payload, indent=1, default=float).encode()))
  _replace(path + ".md", lambda f: f.write(text.encode()))
  if figure is not None:
    _replace(path + ".png", lambda f: figure.savefig(f, format="png", dpi=dpi,
                                                     bbox_inches=bbox_inches))
    import matplotlib.pyplot as plt
    plt.close(figure)
  return path


def rewrite_results(stem: str, text_of, figure_of=None) -> str:
  """Rewrites ``STEM.md`` (and ``.png``) from ``STEM.json`` when a report's wording or plot
  changed and its measurements did not: ``text_of(payload)``, ``figure_of(payload)``; the
  command is the payload's own ``command``."""
  with open(os.path.join(RESULTS, stem + ".json")) as f:
    payload = json.load(f)
  figure = figure_of(payload) if figure_of else None
  return write_results(stem, payload, text_of(payload), figure, command=payload.get("command"))
