"""Sharded HF checkpoints, the ``convert`` round trip through orbax, and the training
command line run as a user runs it."""

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

transformers = pytest.importorskip("transformers")

import longformer_jax as lj  # noqa: E402
from conftest import (ROOT, hf_config, hf_heads, program_env, run_both, save_hf,  # noqa: E402
                      task_inputs)

TASK = "masked_lm"  # tied decoder weights and the separate LM-head bias: the most keys


def sharded_hf(tmp_path, seed=0):
  """A random HF masked LM saved by transformers in 20 KB safetensors shards."""
  torch.manual_seed(seed)
  hf = hf_heads()[TASK](hf_config()).eval()
  path = tmp_path / "sharded"
  hf.save_pretrained(path, max_shard_size="20KB")
  return hf, path


def test_sharded_safetensors_checkpoint(tmp_path):
  """An index + several safetensors shards load as the whole model: same outputs."""
  hf, path = sharded_hf(tmp_path)
  with open(path / "model.safetensors.index.json") as f:
    shard_files = set(json.load(f)["weight_map"].values())
  assert len(shard_files) > 2 and not (path / "model.safetensors").exists(), shard_files
  assert shard_files == {p.name for p in path.glob("model-*-of-*.safetensors")}
  run_both(TASK, hf, lj.from_hf(path), task_inputs(TASK, np.random.default_rng(6)))


def test_sharded_pytorch_bin_checkpoint(tmp_path):
  """An index + several ``torch.save`` shards (transformers' format before safetensors)
  load as the whole model: same outputs; transformers reads the same directory."""
  hf, path = save_hf(TASK, tmp_path, seed=1)
  bin_dir = tmp_path / "bin_shards"
  bin_dir.mkdir()
  shutil.copy(path / "config.json", bin_dir / "config.json")
  state = hf.state_dict()
  names = list(state)
  groups = [names[i::3] for i in range(3)]  # interleaved: every shard holds body weights
  weight_map = {}
  for i, group in enumerate(groups):
    shard = f"pytorch_model-{i + 1:05d}-of-{len(groups):05d}.bin"
    torch.save({k: state[k].clone() for k in group}, bin_dir / shard)
    weight_map.update(dict.fromkeys(group, shard))
  total_size = sum(v.numel() * v.element_size() for v in state.values())
  with open(bin_dir / "pytorch_model.bin.index.json", "w") as f:
    json.dump({"metadata": {"total_size": total_size}, "weight_map": weight_map}, f, indent=2)
  inputs = task_inputs(TASK, np.random.default_rng(7))
  run_both(TASK, hf, lj.from_hf(bin_dir), inputs)
  again = hf_heads()[TASK].from_pretrained(bin_dir).eval()
  for k, v in again.state_dict().items():
    assert torch.equal(v, state[k]), k


def test_convert_cli_round_trip_through_native(tmp_path, capsys):
  """``to-native`` then ``to-hf``: every tensor comes back bit for bit, and the native
  checkpoint computes the HF model's outputs."""
  from longformer_jax import convert
  hf, path = save_hf(TASK, tmp_path, seed=2)
  tokenizer = {"tokenizer.json": '{"model": {}}', "vocab.json": "{}", "merges.txt": "#"}
  for name, text in tokenizer.items():
    (path / name).write_text(text)
  native, back_dir = tmp_path / "native", tmp_path / "hf_again"
  convert.main(["to-native", str(path), str(native)])
  convert.main(["to-hf", str(native), str(back_dir)])
  assert capsys.readouterr().out.splitlines()[-1] == f"wrote {back_dir}"
  for name, text in tokenizer.items():  # the tokenizer travels with the weights
    assert (back_dir / name).read_text() == text, name
  lj.to_hf(lj.from_hf(path), tmp_path / "python_api")
  assert (tmp_path / "python_api" / "merges.txt").read_text() == "#"
  back = hf_heads()[TASK].from_pretrained(back_dir).eval()
  want, got = hf.state_dict(), back.state_dict()
  assert want.keys() == got.keys()
  for k in want:
    assert torch.equal(want[k], got[k]), k
  inputs = task_inputs(TASK, np.random.default_rng(8))
  run_both(TASK, hf, lj.load_native(native), inputs)
  torch_in = {k: torch.tensor(v) for k, v in inputs.items()}
  with torch.no_grad():
    assert torch.equal(hf(**torch_in).logits, back(**torch_in).logits)


# ---- python -m longformer_jax.main ----------------------------------------------------


def run_main(tmp_path, *flags):
  """``python -m longformer_jax.main`` on ``configs/default.py:tiny`` with data under
  ``tmp_path``; the finished process."""
  command = [sys.executable, "-m", "longformer_jax.main", "--config=configs/default.py:tiny",
             f"--workdir={tmp_path / 'run'}", f"--config.data.data_dir={tmp_path / 'data'}",
             *flags]
  return subprocess.run(command, cwd=ROOT, env=program_env(1), capture_output=True, text=True,
                        timeout=300)


# The command line training, resuming, evaluating and writing one metrics record per step
# (eval included) and its checkpoints: docs/pods.md's commands (tests/test_readme.py,
# check_pods), with the workdir in a bucket.


@pytest.mark.parametrize("flag,named", [
    ("--config.train_step=2", "--config.train_step: the config has no field 'train_step'"),
    ("--config.data.no_such_field=3", "--config.data.no_such_field:"),
    ("--no_such_flag=1", "Unknown command line flag 'no_such_flag'"),
    ("--config.train_steps=abc", "--config.train_steps=abc: invalid literal for int()"),
], ids=["config_key", "nested_config_key", "flag", "wrong_type"])
def test_main_names_an_unknown_flag_or_config_key(tmp_path, flag, named):
  """A mistyped flag or config key stops before any work, with one line naming it."""
  proc = run_main(tmp_path, flag)
  assert proc.returncode != 0
  assert named in proc.stderr and "Traceback" not in proc.stderr, proc.stderr[-3000:]
  assert not (tmp_path / "run").exists() and not (tmp_path / "data").exists()


def _parsers(main, argv):
  """The argparse parsers ``main(argv)`` builds (the top one, then its subcommands')."""
  import argparse
  built = []
  parse = argparse.ArgumentParser.parse_args

  def keep(self, *args, **kwargs):
    built.append(self)
    raise SystemExit(0)
  argparse.ArgumentParser.parse_args = keep
  try:
    with pytest.raises(SystemExit):
      main(argv)
  finally:
    argparse.ArgumentParser.parse_args = parse
  subcommands = [a.choices for a in built[0]._actions
                 if isinstance(a, argparse._SubParsersAction)]
  return built + [p for choices in subcommands for p in choices.values()]


@pytest.mark.parametrize("module", ["convert", "export", "summarize"])
def test_command_line_help_describes_every_argument(module):
  """Every argument and option of the command lines says what it is."""
  import importlib
  main = importlib.import_module(f"longformer_jax.{module}").main
  parsers = _parsers(main, [])
  assert len(parsers) >= (6 if module == "convert" else 1)
  for parser in parsers:
    assert parser.prog.startswith(f"python -m longformer_jax.{module}"), parser.prog
    for action in parser._actions:
      if action.dest not in ("help", "cmd"):
        assert action.help, f"{parser.prog}: {action.dest} has no help"

