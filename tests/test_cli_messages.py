"""The command lines as a newcomer meets them, each run as ``python -m`` in a fresh
process: ``--help`` exits 0; stderr holds no traceback, no RuntimeWarning and no other
library's INFO record; a mistake ends in one ``error:`` line naming the field, and a run
that fails before its first step leaves nothing on disk."""

import os
import subprocess
import sys

import pytest

from conftest import ROOT, assert_clean_stderr as assert_clean, program_env

def python_m(module: str, *args, cwd=ROOT) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, "-m", f"longformer_jax.{module}", *map(str, args)],
                        cwd=cwd, env=program_env(1), capture_output=True, text=True,
                        timeout=300)


def error_lines(stderr: str) -> list[str]:
  return [line for line in stderr.splitlines() if line.startswith(("error:", "FATAL"))]


@pytest.mark.parametrize("module", ["main", "convert", "export", "summarize"])
def test_help_exits_zero_and_is_clean(module):
  proc = python_m(module, "--help")
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert_clean(proc.stderr)
  assert "--verbosity" in proc.stdout or module == "convert", proc.stdout
  if module == "main":
    for flag in ("--config", "--workdir", "--mode", "--topology"):
      assert flag in proc.stdout, flag


def test_malformed_data_is_one_line_and_leaves_nothing(tmp_path, tokenizer_dir):
  """A fine-tune whose training file has a broken line stops while preparing the data:
  one line naming the file, the line and the field; no workdir, no dataset folders."""
  (tmp_path / "train.jsonl").write_text('{"text": "a b", "label": 0}\n{"label": 1}\n')
  (tmp_path / "validation.jsonl").write_text('{"text": "a b", "label": 1}\n')
  proc = python_m("main", "--config=configs/finetune_imdb.py:tiny",
                  f"--workdir={tmp_path / 'run'}", f"--config.data.data_dir={tmp_path / 'data'}",
                  f"--config.data.tokenizer={tokenizer_dir}",
                  f"--config.data.files.train={tmp_path / 'train.jsonl'}",
                  f"--config.data.files.validation={tmp_path / 'validation.jsonl'}")
  assert proc.returncode == 1
  assert_clean(proc.stderr)
  assert error_lines(proc.stderr) == [
      f"error: document_classification: {tmp_path / 'train.jsonl'}:2 has no str field "
      "'text' (config.data.text_field) (--verbosity=1 shows the traceback)"], proc.stderr
  assert not (tmp_path / "run").exists() and not (tmp_path / "data").exists()


def test_verbosity_one_keeps_the_traceback(capsys):
  """The one line at verbosity 0 (exit status 1); the exception itself at 1; a bug (not a
  user's mistake) keeps its traceback either way."""
  from longformer_jax import cli

  def mistake():
    raise ValueError("config.data.files:\n  nothing there")
  with pytest.raises(SystemExit) as stop:
    cli.run(mistake, verbosity=0)
  assert stop.value.code == 1
  assert capsys.readouterr().err == ("error: config.data.files: nothing there "
                                     "(--verbosity=1 shows the traceback)\n")
  with pytest.raises(ValueError, match="nothing there"):
    cli.run(mistake, verbosity=1)
  with pytest.raises(ZeroDivisionError):
    cli.run(lambda: 1 / 0, verbosity=0)


def test_a_mistyped_config_path_lists_the_configs(tmp_path):
  proc = python_m("main", "--config=configs/defualt.py:tiny", f"--workdir={tmp_path / 'w'}")
  assert proc.returncode == 1
  (line,) = error_lines(proc.stderr)
  assert "--config=configs/defualt.py:tiny: no file configs/defualt.py" in line
  assert "default.py, dna_classify.py" in line and "config_config" not in proc.stderr
  assert not (tmp_path / "w").exists()


def test_a_preempted_run_exits_with_the_restart_status(monkeypatch, tmp_path):
  """A run that SIGTERM stopped (saved, not finished) exits 143, not 0: schedulers
  restart on it. (The save and the exact resume: tests/test_buckets.py.)"""
  from longformer_jax import main, train

  def stopped(config, workdir, *_):
    raise train.Preempted(8)
  monkeypatch.setattr(train, "train_and_evaluate", stopped)
  main.FLAGS(["main", f"--config={ROOT}/configs/default.py:tiny", f"--workdir={tmp_path}"])
  try:
    with pytest.raises(SystemExit) as stop:
      main.run_mode()
  finally:
    main.FLAGS.unparse_flags()
  assert stop.value.code == train.PREEMPTED_EXIT_STATUS == 143


@pytest.mark.parametrize("command", ["to-hf", "export"])
def test_a_directory_of_the_wrong_kind_is_one_line(tmp_path, command):
  """``convert to-hf`` / ``export`` on a folder that is no checkpoint: one line naming
  it, nothing written."""
  (tmp_path / "notes").mkdir()
  (tmp_path / "notes" / "readme.txt").write_text("not a checkpoint")
  if command == "to-hf":
    proc = python_m("convert", "to-hf", tmp_path / "notes", tmp_path / "out")
  else:
    proc = python_m("export", tmp_path / "notes", tmp_path / "out", "--seq-len", 16)
  assert proc.returncode == 1
  assert_clean(proc.stderr)
  [line] = error_lines(proc.stderr)
  assert str(tmp_path / "notes") in line, line
  assert sorted(os.listdir(tmp_path)) == ["notes"]


def test_a_run_that_never_started_leaves_no_workdir(tmp_path):
  """What train_and_evaluate removes after a failure in a workdir it created: only a
  workdir with no logged step and no checkpoint (a run that never ran)."""
  from longformer_jax import run_files
  unstarted, started = tmp_path / "unstarted", tmp_path / "started"
  for workdir in (unstarted, started):
    (workdir / "checkpoints").mkdir(parents=True)
    (workdir / "experiment.json").write_text("{}")
  (started / "metrics.jsonl").write_text('{"step": 1}\n')
  for workdir in (unstarted, started):
    run_files.remove_if_unstarted(str(workdir))
  assert not unstarted.exists() and (started / "metrics.jsonl").exists()
