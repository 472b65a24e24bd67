"""configs/*.py: read without JAX, and every field settable from the command line."""

import glob
import os
import subprocess
import sys

import ml_collections
import pytest
from absl import flags
from ml_collections import config_flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = sorted(os.path.basename(p)[:-3] for p in glob.glob(os.path.join(ROOT, "configs", "*.py"))
                 if not p.endswith("__init__.py"))
# The variants of each config (the first is its default); "tiny" where none are listed.
VARIANTS = {
    "char_lm": ["text8", "enwik8,large", "text8,cpu", "text8,tiny", "text8,hf",
                "text8,ablation,window=fixed,dilation=off"],
    "default": ["", "no_global", "tiny"],
    "mlm": ["", "cpu"],
}
HEAVY = ("jax", "flax", "optax", "tensorflow", "tensorflow_datasets")


def variants_of(name: str) -> list[str]:
  return VARIANTS.get(name, ["", "tiny"])


@pytest.mark.parametrize("name", CONFIGS)
def test_config_imports_no_jax(name):
  code = (f"import sys; from configs import {name}\n"
          f"{name}.get_config({variants_of(name)[0]!r})\n"
          f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))")
  out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                       timeout=60)
  assert out.returncode == 0, out.stderr
  assert out.stdout.strip() == "[]", f"configs/{name}.py imports {out.stdout.strip()}"


def leaves(c: ml_collections.ConfigDict, prefix: str = ""):
  """(path, value, field type) of every non-ConfigDict field."""
  for key in c.keys():
    value, path = c[key], f"{prefix}{key}"
    if isinstance(value, ml_collections.ConfigDict):
      yield from leaves(value, path + ".")
    else:
      yield path, value, c.get_type(key)


def override_of(value, field_type):
  """A value other than ``value`` of ``field_type``, and its command-line text."""
  if field_type is bool:
    new = not value
  elif field_type is int:
    new = 4 if value is None else value + 1
  elif field_type is float:
    new = 0.5 if value is None else value + 0.5
  elif field_type is str:
    new = "x" if value is None else value + "_x"
  elif field_type in (tuple, list):
    items = (("batch", ("data", "fsdp")),) if value is None else tuple(value)
    new = field_type(items + items[:1] if items else ("x",))
    # comma-separated elements (a trailing comma keeps one element one)
    return new, ",".join(repr(x) for x in new) + ("," if len(new) == 1 else "")
  else:
    raise AssertionError(f"a field of type {field_type.__name__}: the command line cannot set it")
  return new, str(new)


def get_path(c, path: str):
  for key in path.split("."):
    c = c[key]
  return c


def parse(argv: list[str]) -> ml_collections.ConfigDict:
  """``--config`` parsed from ``argv`` by absl flags, as ``main.py`` parses it."""
  values = flags.FlagValues()
  config_flags.DEFINE_config_file("config", None, flag_values=values, sys_argv=argv)
  values(argv)
  return values.config


@pytest.mark.parametrize("name,variant", [(n, v) for n in CONFIGS for v in variants_of(n)])
def test_every_field_overrides(name, variant):
  argv = ["prog", f"--config={os.path.join(ROOT, 'configs', name)}.py:{variant}"]
  expected = {}
  for key, value, field_type in leaves(parse(argv)):
    expected[key], text = override_of(value, field_type)
    argv.append(f"--config.{key}={text}")
  config = parse(argv)
  for key, want in expected.items():
    got = get_path(config, key)
    assert (got, type(got)) == (want, type(want)), f"--config.{key}"


@pytest.mark.parametrize("name", ["finetune_triviaqa", "finetune_hotpotqa"])
def test_qa_configs_take_the_documented_format_flag(name):
  """docs/finetuning.md: --config.data.format=tfds_trivia_qa on a QA config."""
  argv = ["prog", f"--config={os.path.join(ROOT, 'configs', name)}.py",
          "--config.data.format=tfds_trivia_qa"]
  assert parse(argv).data.format == "tfds_trivia_qa"
  assert parse(argv[:2]).data.format == ("hotpotqa" if "hotpot" in name else "squad")


@pytest.mark.parametrize("text,want", [
    ("neg,pos", ("neg", "pos")), ("'neg', 'pos'", ("neg", "pos")), ("3,4", (3, 4)),
    ("neg", ("neg",)), ("a b,1e-3", ("a b", 1e-3))])
def test_tuple_override_of_bare_words(text, want):
  """``--config.data.label_names=neg,pos`` is two names, not one ``'neg,pos'``."""
  argv = ["prog", f"--config={os.path.join(ROOT, 'configs', 'finetune_imdb')}.py:tiny",
          f"--config.data.label_names={text}"]
  assert parse(argv).data.label_names == want


def test_default_paths_follow_one_setting(monkeypatch):
  """With LONGFORMER_JAX_ROOT set (a pod's bucket), no config variant keeps a default path
  under /tmp: data folders, checkpoints to start from and tfds folders all move under it."""
  import importlib
  from longformer_jax import recipes
  root = "gs://pod-bucket/longformer"
  monkeypatch.setenv(recipes.ROOT_ENV, root)
  moved = 0
  for name in CONFIGS:
    module = importlib.import_module(f"configs.{name}")
    for variant in variants_of(name):
      for key, value, _ in leaves(module.get_config(variant)):
        values = value if isinstance(value, (tuple, list)) else [value]
        for v in (v for v in values if isinstance(v, str)):
          assert not v.startswith("/tmp"), f"configs/{name}.py:{variant} {key}={v!r}"
          moved += v.startswith(root + "/")
      data_dir = module.get_config(variant).data.data_dir
      assert data_dir == f"{root}/longformer_jax_data", (name, variant, data_dir)
  assert moved >= 2 * len(CONFIGS)
