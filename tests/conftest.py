"""Helpers shared by the tests: tiny configs, fresh-process programs, HF references."""

import json
import os
import re
import subprocess
import sys
import tempfile

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROGRAMS = os.path.join(ROOT, "tests", "programs")
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)  # the configs/ package

# Programs in fresh processes share XLA's persistent compilation cache: the runs of one
# test (reference, killed, resumed) compile the same programs.
JIT_CACHE = os.path.join(tempfile.gettempdir(), "longformer_jax_test_jit_cache")

# The train and eval steps compiled with LLVM's optimisation off, here and in the programs
# the tests run (compile_options.FAST_COMPILE_ENV): the suite's models are tiny and their
# steps compiled far more than run. Model calls (the HF parity tests) compile as usual; the
# runs a test compares exactly all use the same setting.
os.environ.setdefault("LONGFORMER_JAX_FAST_COMPILE", "1")
# Nothing here reaches a model hub: hub ids read pre-filled caches (test_hf_parity,
# test_readme), and a missing path fails at once instead of trying the network.
os.environ.setdefault("HF_HUB_OFFLINE", "1")


# ---- the rotating share of sampled sweeps -----------------------------------------
# A sweep too long for every run (test_attention.py's oracle cases) runs a sample that
# covers each feature, plus one of ROTATION_SHARES shares of the rest: the share of the
# day, or LONGFORMER_JAX_TEST_ROTATION=K to rerun share K. The header names it.
ROTATION_SHARES = 8
ROTATION_ENV = "LONGFORMER_JAX_TEST_ROTATION"


def oracle_rotation() -> int:
  import datetime
  return int(os.environ.get(ROTATION_ENV, datetime.date.today().toordinal())) % ROTATION_SHARES


def pytest_configure(config):
  os.environ.setdefault(ROTATION_ENV, str(oracle_rotation()))  # workers use the same share


def pytest_terminal_summary(terminalreporter):
  terminalreporter.write_line(
      f"attention oracle sweep: rotating share {oracle_rotation()} of {ROTATION_SHARES} "
      f"(rerun it with {ROTATION_ENV}={oracle_rotation()})")


# ---- configs and runs -------------------------------------------------------------


def set_fields(config, overrides: dict):
  """Sets dotted config fields (``{"optim.lr": 1e-3}``) in place; returns the config."""
  for key, value in overrides.items():
    target = config
    *parents, leaf = key.split(".")
    for p in parents:
      target = target[p]
    target[leaf] = value
  return config


def tiny_config(tmp_path, **overrides):
  """``configs/default.py:tiny`` with its data under ``tmp_path`` and synchronous saves."""
  from configs import default
  c = default.get_config("tiny")
  c.data.data_dir = str(tmp_path / "data")
  c.async_checkpoints = False
  return set_fields(c, overrides)


def losses(workdir) -> dict:
  """{step: train loss} of a run's metrics.jsonl (local or in a bucket); asserts no step
  is logged twice."""
  from longformer_jax import metrics
  rows = metrics.read_jsonl(workdir)  # local or gs://
  steps = [r["step"] for r in rows]  # train and eval scalars of a step share one record
  assert len(steps) == len(set(steps)), f"steps logged more than once: {sorted(steps)}"
  return {r["step"]: r["loss"] for r in rows if "loss" in r}


# An INFO record of another library, in absl's format or logging's default one (the
# command lines write theirs as "HH:MM:SS message" and drop other libraries' INFO).
OTHER_INFO = re.compile(r"^(I\d{4} \d\d:\d\d|INFO[:\s])", re.M)


def assert_clean_stderr(stderr: str) -> None:
  """A command's stderr holds no traceback, no RuntimeWarning, no other library's INFO
  (but tensorstore's one line against the GCS emulator, :data:`TENSORSTORE_TOKEN_LINE`)."""
  stderr = TENSORSTORE_TOKEN_LINE.sub("", stderr)
  assert "Traceback" not in stderr, stderr[-3000:]
  assert "RuntimeWarning" not in stderr, stderr[-3000:]
  assert not OTHER_INFO.search(stderr), OTHER_INFO.search(stderr).group(0) + stderr[-3000:]


def computed_once(tmp_path_factory, name: str, compute):
  """``compute()`` (JSON-able), computed by one pytest-xdist worker of this run and read
  by the others (a module fixture would run once per worker that needs it)."""
  if not os.environ.get("PYTEST_XDIST_WORKER"):
    return compute()
  import fcntl
  root = tmp_path_factory.getbasetemp().parent  # this run's folder, shared by its workers
  path = root / f"{name}.json"
  with open(root / f"{name}.lock", "w") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    if not path.exists():
      path.write_text(json.dumps(compute()))
  return json.loads(path.read_text())


def program_env(devices: int) -> dict:
  return dict(os.environ,
              XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
              PYTHONPATH=ROOT, JAX_COMPILATION_CACHE_DIR=JIT_CACHE)


def program_command(name: str, *args) -> list[str]:
  return [sys.executable, os.path.join(PROGRAMS, name), *map(str, args)]


def run_program(name: str, *args, devices: int = 1, timeout: int = 900):
  """Runs ``tests/programs/NAME`` with ``devices`` fake CPU devices; asserts it succeeds
  and returns the JSON object of its last output line, or None if it printed none."""
  proc = subprocess.run(program_command(name, *args), env=program_env(devices),
                        capture_output=True, text=True, timeout=timeout)
  assert proc.returncode == 0, proc.stderr[-3000:]
  lines = proc.stdout.strip().splitlines()
  return json.loads(lines[-1]) if lines and lines[-1].startswith("{") else None


def train_in_subprocess(tmp_path, name, devices=1, **overrides) -> str:
  """Trains the tiny config in a fresh process; returns its workdir."""
  workdir = str(tmp_path / name)
  run_program("train_tiny.py", workdir, tmp_path / "data", json.dumps(overrides),
              devices=devices)
  return workdir


@pytest.fixture(scope="module")
def full_run_losses(tmp_path_factory):
  """Losses of the whole tiny run (20 steps), never interrupted; one run serves every
  worker."""
  def compute():
    root = tmp_path_factory.mktemp("full")
    return sorted(losses(train_in_subprocess(root, "reference")).items())
  return dict(computed_once(tmp_path_factory, "tiny_reference_losses", compute))


# ---- Cloud Storage: the emulator, and hosts that share nothing but a bucket ----------

BUCKET = "longformer-test"
# The one line the emulator's runs add to stderr: tensorstore (orbax's array store)
# saying it uses the fixed token the emulator is given (fileio.configure_clients).
TENSORSTORE_TOKEN_LINE = re.compile(
    r"^I\d{4} [\d:.]+\s+\d+ google_auth_provider\.cc:\d+\] Using GOOGLE_AUTH_TOKEN_FOR_TESTING\n",
    re.M)


@pytest.fixture(scope="session")
def gcs_emulator():
  """The Cloud Storage JSON API on a free local port (``tests/programs/gcs_emulator.py``,
  in memory, bucket :data:`BUCKET`), stopped at the end; its client variables are set in
  this process (and so in the processes it starts) while it runs. Yields them."""
  import socket
  import time
  import portpicker
  port = portpicker.pick_unused_port()
  # Its request log goes to a file: a pipe nobody reads would fill and stall it.
  log = tempfile.NamedTemporaryFile("w+", prefix="gcs_emulator-", suffix=".log")
  proc = subprocess.Popen(program_command("gcs_emulator.py", port, BUCKET),
                          stdout=log, stderr=subprocess.STDOUT, text=True)
  deadline = time.time() + 60
  while True:
    try:
      socket.create_connection(("127.0.0.1", port), timeout=1).close()
      break
    except OSError:
      if proc.poll() is not None or time.time() > deadline:
        proc.kill()
        log.seek(0)
        raise RuntimeError(f"the GCS emulator did not start: {log.read()[-2000:]}")
      time.sleep(0.2)
  url = f"http://127.0.0.1:{port}"
  env = {"STORAGE_EMULATOR_HOST": url, "TENSORSTORE_GCS_HTTP_URL": url}
  saved = {k: os.environ.get(k) for k in env}
  os.environ.update(env)
  from longformer_jax import fileio
  fileio.configure_clients()
  yield env
  for k, v in saved.items():
    if v is None:
      os.environ.pop(k, None)
    else:
      os.environ[k] = v
  proc.terminate()
  proc.wait(timeout=30)
  log.close()


def bucket_path(tmp_path) -> str:
  """A folder of the emulator's bucket that belongs to one test."""
  return f"gs://{BUCKET}/{os.path.basename(tmp_path)}-{os.getpid()}"


def host_env(root, name: str, devices: int = 1) -> dict:
  """The environment of one host: its own HOME (and so its own cache of the bucket's
  data), TMPDIR and working directory (``root/name``, returned as ``env["PWD"]``)."""
  host = root / name
  for d in ("home", "tmp", "cwd"):
    (host / d).mkdir(parents=True, exist_ok=True)
  env = program_env(devices)
  env.update(HOME=str(host / "home"), TMPDIR=str(host / "tmp"), PWD=str(host / "cwd"))
  env.pop("LONGFORMER_JAX_CACHE", None)
  env.pop("XDG_CACHE_HOME", None)
  return env


def local_leftovers(host) -> list[str]:
  """What a host (a folder of :func:`host_env`) left on its disk outside caches: anything
  in its working directory (a run folder, a stray ``gs:`` folder), any file in its HOME
  outside ``~/.cache``, anything in this package's cache but copies of bucket files
  (``~/.cache/longformer_jax/remote``)."""
  out = [f"cwd/{name}" for name in os.listdir(host / "cwd")]
  home = host / "home"
  for dirpath, dirnames, filenames in os.walk(home):
    rel = os.path.relpath(dirpath, home)
    if rel == ".":
      dirnames[:] = [d for d in dirnames if d != ".cache"]
    out += [f"home/{rel}/{f}" for f in filenames]
  ours = home / ".cache" / "longformer_jax"
  if ours.exists():
    out += [f"home/.cache/longformer_jax/{n}" for n in os.listdir(ours) if n != "remote"]
  return sorted(out)


# ---- fine-tuning configs on generated files ------------------------------------------

WORDS = ("the film was great and moving . a dull plot , bad acting and a weak script . "
         "news article about politics economy election vote party left right").split()


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory):
  """A byte-level BPE (300 ids) trained on sentences of WORDS."""
  from longformer_jax import tokenization
  root = tmp_path_factory.mktemp("tok")
  rng = np.random.default_rng(0)
  (root / "corpus.txt").write_text("\n".join(" ".join(rng.choice(WORDS, 30))
                                             for _ in range(300)))
  tokenization.train_bpe([root / "corpus.txt"], root / "bpe", vocab_size=300)
  return root / "bpe"


def load_config(name, variant="tiny"):
  import importlib
  return importlib.import_module(f"configs.{name}").get_config(variant)


def tiny_run(tmp_path, name, tokenizer_dir, files):
  """Trains ``configs/NAME.py:tiny`` on ``files`` ({split: path}); its last metrics."""
  from longformer_jax import train
  c = load_config(name)
  c.data.data_dir, c.data.tokenizer = str(tmp_path / "data"), str(tokenizer_dir)
  c.async_checkpoints = False
  set_fields(c, {f"data.files.{k}": v for k, v in files.items()})
  return train.train_and_evaluate(c, str(tmp_path / name))


# ---- the HF reference (PyTorch transformers, random init) ----------------------------

PAD, SEP, VOCAB = 1, 2, 99


# Weights drawn at std 0.3, not transformers' 0.02: at 0.02 the heads' outputs barely vary
# (multiple-choice logits by 5e-5), so a wrong GELU, a missing tanh or a global mask one
# token off moves them by less than a tolerance could separate from fp32 rounding. At 0.3
# the fp32 difference to HF is at most 7.6e-6 and each such fault moves an output by
# 3.5e-4 or more (tests/test_planted_faults.py).
HF_INIT = 0.3
HF_ATOL = 2e-5  # the measured fp32 difference, with room for other shapes and seeds


def hf_config(**kw):
  import transformers
  base = dict(vocab_size=VOCAB, initializer_range=HF_INIT, hidden_size=32, num_hidden_layers=2,
              num_attention_heads=4,
              intermediate_size=37, attention_window=[8, 4], max_position_embeddings=80,
              type_vocab_size=2, num_labels=3, pad_token_id=PAD, sep_token_id=SEP,
              bos_token_id=0, eos_token_id=SEP)
  base.update(kw)
  return transformers.LongformerConfig(**base)


def hf_heads() -> dict:
  import transformers
  return {
      "base": transformers.LongformerModel,
      "masked_lm": transformers.LongformerForMaskedLM,
      "sequence_classification": transformers.LongformerForSequenceClassification,
      "token_classification": transformers.LongformerForTokenClassification,
      "question_answering": transformers.LongformerForQuestionAnswering,
      "multiple_choice": transformers.LongformerForMultipleChoice,
  }


HEAD_NAMES = ("base", "masked_lm", "multiple_choice", "question_answering",
              "sequence_classification", "token_classification")
FIELDS = {"base": ["last_hidden_state", "pooler_output"],
          "question_answering": ["start_logits", "end_logits"]}


def batch(rng, b=3, n=21, lengths=(21, 15, 9)):
  """(input_ids, attention_mask, global_attention_mask, token_type_ids) with padding."""
  ids = rng.integers(3, VOCAB, size=(b, n))
  mask = np.zeros((b, n), np.int64)
  for e, length in enumerate(lengths[:b]):
    mask[e, :length] = 1
  ids[mask == 0] = PAD
  gmask = np.zeros((b, n), np.int64)
  gmask[0, [0, min(5, n - 1)]] = 1
  if b > 2:
    gmask[2, :4] = 1
  types = rng.integers(0, 2, size=(b, n)) * mask
  return ids, mask, gmask, types


def qa_batch(rng, b=3, n=23, q_lens=(3, 5, 1), lengths=(23, 17, 12)):
  """<s> question </s></s> context </s> rows (input_ids, attention_mask)."""
  ids, mask, _, _ = batch(rng, b, n, lengths)
  for e in range(b):
    ids[e, 0] = 0
    q = q_lens[e]
    ids[e, q + 1:q + 3] = SEP
    ids[e, lengths[e] - 1] = SEP
  return ids, mask


def task_inputs(task, rng, with_global=True):
  """Inputs of one head: QA and multiple choice with question tokens, others a batch."""
  if task == "question_answering":
    ids, mask = qa_batch(rng)
    return dict(input_ids=ids, attention_mask=mask)  # question tokens global by default
  if task == "multiple_choice":
    ids, mask = qa_batch(rng)
    return dict(input_ids=np.stack([ids, ids[::-1]], 1),
                attention_mask=np.stack([mask, mask[::-1]], 1))
  ids, mask, gmask, types = batch(rng)
  out = dict(input_ids=ids, attention_mask=mask, token_type_ids=types)
  if with_global:
    out["global_attention_mask"] = gmask
  return out


def save_hf(task, tmp_path, seed=0, **cfg):
  """A random HF model of ``task`` saved under ``tmp_path``: (model, directory)."""
  import torch
  torch.manual_seed(seed)
  if task == "question_answering":
    cfg.setdefault("num_labels", 2)
  hf = hf_heads()[task](hf_config(**cfg)).eval()
  path = tmp_path / f"hf_{task}"
  hf.save_pretrained(path)
  return hf, path


def run_both(task, hf, ours, inputs):
  """Asserts our model's outputs equal the HF model's on ``inputs`` within ``HF_ATOL``."""
  import torch
  torch_in = {k: torch.tensor(v) for k, v in inputs.items() if v is not None}
  with torch.no_grad():
    ref = hf(**torch_in)
  out = ours(**inputs)
  for field in FIELDS.get(task, ["logits"]):
    a, b = np.asarray(out[field]), ref[field].numpy()
    assert a.shape == b.shape, (field, a.shape, b.shape)
    assert np.abs(a - b).max() <= HF_ATOL, (task, field, np.abs(a - b).max())


@pytest.fixture
def np_rng():
  return np.random.default_rng(0)
