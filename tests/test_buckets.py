"""Paths through one layer (longformer_jax/fileio.py), local and ``gs://`` alike.

The bucket is the Cloud Storage emulator (``gcs_emulator`` in conftest.py): the bytes
go over HTTP to a real GCS JSON API, nothing is mocked. Runs that start processes give
each its own HOME, TMPDIR and working directory (``host_env``), so the bucket is the
only storage they share, as on a pod.
"""

import ast
import glob
import os
import re
import subprocess

import numpy as np
import pytest

from conftest import ROOT, bucket_path, host_env, local_leftovers, losses, program_command

# ---- one layer: no file access on a user path outside fileio.py ----------------------

# Modules whose calls touch files by path, the os functions that do, and the readers
# and writers that take a path or a file object (fine on a stream or an in-memory buffer).
FILE_MODULES = {"os.path", "shutil", "glob", "gzip", "lzma", "bz2", "tempfile", "pathlib"}
OS_FILE_CALLS = {"makedirs", "mkdir", "listdir", "scandir", "walk", "remove", "unlink",
                 "rename", "replace", "rmdir", "stat", "chdir", "getcwd"}
PATH_OR_STREAM = {"Image.open", "np.load", "np.save", "numpy.load", "numpy.save",
                  "zipfile.ZipFile", "tarfile.open"}
LAYER = "fileio.py"


def _dotted(node) -> str:
  parts = []
  while isinstance(node, ast.Attribute):
    parts.append(node.attr)
    node = node.value
  if isinstance(node, ast.Name):
    parts.append(node.id)
  return ".".join(reversed(parts))


def _streams(tree) -> set[str]:
  """Names bound to file objects or buffers: ``with ... as NAME`` and ``NAME = io.BytesIO()``."""
  names = set()
  for node in ast.walk(tree):
    if isinstance(node, ast.withitem) and isinstance(node.optional_vars, ast.Name):
      names.add(node.optional_vars.id)
    if (isinstance(node, ast.Assign) and isinstance(node.value, ast.Call)
        and _dotted(node.value.func).endswith("BytesIO")):
      names.update(t.id for t in node.targets if isinstance(t, ast.Name))
  return names


def file_calls(source: str) -> list[tuple[int, str]]:
  """(line, call) of each call in ``source`` that reads or writes files by path."""
  tree = ast.parse(source)
  modules, streams, found = set(), _streams(tree), []
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      modules.update(a.asname or a.name for a in node.names)
      found += [(node.lineno, f"import {a.name}") for a in node.names if a.name in FILE_MODULES]
    if isinstance(node, ast.ImportFrom) and node.module in FILE_MODULES | {"os"}:
      if node.module != "os" or any(a.name == "path" for a in node.names):
        found.append((node.lineno, f"from {node.module} import ..."))
  for node in ast.walk(tree):
    if not isinstance(node, ast.Call):
      continue
    name = _dotted(node.func)
    module, _, attr = name.rpartition(".")
    first = node.args[0] if node.args else None
    on_stream = (isinstance(first, ast.Name) and first.id in streams) or (
        isinstance(first, ast.Call) and _dotted(first.func).endswith("BytesIO"))
    if (name == "open" or (module in FILE_MODULES and module.split(".")[0] in modules | {"os"})
        or (module == "os" and attr in OS_FILE_CALLS)
        or (name in PATH_OR_STREAM and not on_stream)):
      found.append((node.lineno, name))
  return found


def test_no_file_access_outside_the_layer():
  """Every path goes through fileio: a new open() / os.path / shutil call elsewhere in
  the package fails here, naming the file and line."""
  package = os.path.join(ROOT, "longformer_jax")
  offenders = []
  for path in sorted(glob.glob(os.path.join(package, "**", "*.py"), recursive=True)):
    if os.path.relpath(path, package) == LAYER:
      continue
    with open(path, encoding="utf-8") as f:
      offenders += [f"{os.path.relpath(path, ROOT)}:{line}: {call}"
                    for line, call in file_calls(f.read())]
  assert not offenders, "file access outside longformer_jax/fileio.py:\n" + "\n".join(offenders)


@pytest.mark.parametrize("code,caught", [
    ("open(p)", True), ("os.path.join(a, b)", True), ("import shutil\nshutil.rmtree(d)", True),
    ("os.makedirs(d)", True), ("import shutil", True), ("np.load(p)", True),
    ("Image.open(p)", True), ("import gzip\ngzip.open(p)", True),
    ("np.load(io.BytesIO(b))", False), ("Image.open(io.BytesIO(b))", False),
    ("with fileio.open_read(p) as f:\n  zipfile.ZipFile(f)", False), ("zipfile.ZipFile(p)", True),
    ("b = io.BytesIO()\nnp.save(b, x)", False), ("glob = x\nglob.astype(y)", False),
    ("import glob\nglob.glob(p)", True), ("from os import path", True),
    ("fileio.open_read(p)", False), ("os.fspath(p)", False), ("os.environ.get(k)", False),
])
def test_the_rule_catches_file_access(code, caught):
  assert bool(file_calls(code)) == caught, code


# ---- the layer itself, on a local folder and on the bucket ---------------------------


@pytest.fixture(params=["local", "bucket"])
def store(request, tmp_path):
  """A folder that does not exist yet: under tmp_path, or in the emulator's bucket."""
  if request.param == "local":
    return str(tmp_path / "store")
  request.getfixturevalue("gcs_emulator")
  return bucket_path(tmp_path) + "/store"


def test_reads_writes_and_listings_behave_the_same(store):
  from longformer_jax import fileio
  fileio.write_json(f"{store}/a/b.json", {"x": 1})
  fileio.write_atomic(f"{store}/c.txt", "one")
  fileio.append_text(f"{store}/m.jsonl", "1\n")
  fileio.append_text(f"{store}/m.jsonl", "2\n")
  assert fileio.read_json(f"{store}/a/b.json") == {"x": 1}
  assert fileio.read_text(f"{store}/m.jsonl") == "1\n2\n"
  assert fileio.listdir(store) == ["a", "c.txt", "m.jsonl"]
  assert fileio.walk_files(store) == ["a/b.json", "c.txt", "m.jsonl"]
  assert fileio.isdir(f"{store}/a") and fileio.isfile(f"{store}/c.txt")
  assert not fileio.exists(f"{store}/nothing") and fileio.listdir(f"{store}/nothing") == []
  with open(fileio.local_copy(f"{store}/c.txt")) as f:
    assert f.read() == "one"
  fileio.rmtree(store)
  assert not fileio.exists(f"{store}/c.txt")


def test_a_failed_staged_directory_leaves_nothing(store):
  from longformer_jax import fileio
  with pytest.raises(RuntimeError, match="midway"):
    with fileio.staged_dir(store, marker="config.json") as tmp:
      with open(os.path.join(tmp, "weights"), "w") as f:
        f.write("w")
      raise RuntimeError("midway")
  assert fileio.walk_files(store) == []
  with fileio.staged_dir(store, marker="config.json") as tmp:
    for name in ("config.json", "weights"):
      with open(os.path.join(tmp, name), "w") as f:
        f.write(name)
  assert fileio.walk_files(store) == ["config.json", "weights"]
  with pytest.raises(FileExistsError, match="not empty"):
    with fileio.staged_dir(store):
      pass


def test_gzip_and_xz_are_read_through_the_layer(store):
  import gzip as gzip_lib
  import lzma as lzma_lib
  from longformer_jax import fileio
  text = b">r1\nACGT\n" * 100
  for name, packed in (("plain", text), ("a.gz", gzip_lib.compress(text)),
                       ("a.xz", lzma_lib.compress(text))):
    fileio.write_atomic(f"{store}/{name}", packed)
    with fileio.open_read(f"{store}/{name}", decompress=True) as f:
      assert f.read() == text, name


@pytest.mark.parametrize("store", ["bucket"], indirect=True)  # local: their own tests
def test_corpora_images_and_native_checkpoints_in_the_bucket(store, tmp_path, monkeypatch):
  """A text corpus, an image folder and a native checkpoint read from (and prepared
  into) the store, with the same bytes, labels and logits as their sources."""
  import io

  from PIL import Image

  import longformer_jax as lj
  from longformer_jax import data, fileio
  from longformer_jax.data import pipeline
  monkeypatch.setenv(fileio.CACHE_ENV, str(tmp_path / "cache"))
  (tmp_path / "cwd").mkdir()
  monkeypatch.chdir(tmp_path / "cwd")  # where a path mistaken for a local one would land
  text = "Ünïcödé lines of a corpus.\n" * 40
  fileio.write_atomic(f"{store}/corpus.txt", text.encode())
  cfg = dict(name="text_corpus", data_dir=f"{store}/tfds", path=f"{store}/corpus.txt",
             validation_fraction=0.25)
  builder = data.prepare(cfg)
  stream = [data.load_split_tokens(builder, s) for s in ("train", "validation")]
  assert np.concatenate(stream).tobytes() == text.encode()

  rng = np.random.default_rng(0)
  for label in ("cat", "dog"):
    for i in range(3):
      png = io.BytesIO()
      Image.fromarray(rng.integers(0, 256, (12, 9, 3), dtype=np.uint8)).save(png, "PNG")
      fileio.write_atomic(f"{store}/images/{label}/{i}.png", png.getvalue())
  cfg = dict(name="image_folder", data_dir=f"{store}/tfds", root=f"{store}/images",
             image_size=8, split_fractions=(0.5, 0.5, 0.0))
  assert pipeline.label_names(cfg) == ("cat", "dog")
  builder = pipeline.prepare(cfg)
  assert sum(builder.info.splits[s].num_examples for s in builder.info.splits) == 6

  model = lj.create_model(lj.LongformerConfig(
      vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
      intermediate_size=8, attention_window=4, max_position_embeddings=40), "masked_lm")
  model.eval()  # load_native's mode: no dropout
  lj.save_native(model, f"{store}/native")
  again = lj.load_native(f"{store}/native")
  ids = rng.integers(3, 50, (1, 8)).astype(np.int32)
  np.testing.assert_array_equal(np.asarray(model(ids).logits), np.asarray(again(ids).logits))
  assert not os.listdir(tmp_path / "cwd")  # no stray gs: folder
  if fileio.is_remote(store):  # copies of bucket files, in this host's cache only
    assert os.listdir(tmp_path / "cache") == ["remote"] and os.listdir(tmp_path) == [
        "cache", "cwd"]


# ---- a run in the bucket, through the command lines ---------------------------------


ASYNC_SAVES = '{"async_checkpoints": true}'


def _run(argv, env, timeout=600, status=0):
  proc = subprocess.run(argv, env=env, cwd=env["PWD"], capture_output=True, text=True,
                        timeout=timeout)
  assert proc.returncode == status, proc.stderr[-3000:]
  return proc


@pytest.mark.slow
def test_preempted_run_in_a_bucket_resumes_exactly(tmp_path, gcs_emulator, full_run_losses):
  """The tiny run (asynchronous saves) with its workdir and data in the bucket: SIGTERM
  after step 7, rerun on a host with an empty disk, the losses of an uninterrupted local
  run to the bit. (--mode=evaluate, convert to-hf and from_hf in a bucket: docs/pods.md,
  run by tests/test_readme.py; export to and from a bucket: tests/test_finetune.py.)"""
  from longformer_jax import fileio
  bucket = bucket_path(tmp_path)
  run, data = f"{bucket}/run", f"{bucket}/data"
  first = host_env(tmp_path, "first")
  # SIGTERM while step 8 runs (step 7 is logged as step 8 computes): save 8, exit with
  # the status a scheduler restarts on
  stopped = _run(program_command("train_tiny.py", run, data, ASYNC_SAVES, "--signal=TERM",
                                 "--signal-at-step=7"), first, status=143)
  assert "stopped at step 8 on SIGTERM" in stopped.stderr
  assert "8" in fileio.listdir(f"{run}/checkpoints") and max(losses(run)) == 8
  second = host_env(tmp_path, "second")  # another host: nothing on its disk
  resumed = _run(program_command("train_tiny.py", run, data, ASYNC_SAVES), second)
  assert re.findall(r"resumed from step (\d+)", resumed.stderr) == ["8"]
  assert "copied" in resumed.stderr  # its data came from the bucket, not prepared again
  assert losses(run) == full_run_losses
  for host in ("first", "second"):
    assert local_leftovers(tmp_path / host) == [], host
