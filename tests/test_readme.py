"""The README's and docs/'s code blocks run as written, and their relative links resolve.

Every ```python and ```bash block of README.md and docs/*.md runs, in order, unless the
line before it is ``<!-- not run: REASON -->`` (a download, hardware, hours or a real
dataset). Python blocks of one file share a namespace and run in this process; bash
blocks run in ``bash -euo pipefail`` with the repository's ``configs/`` beside them,
except that a block made only of ``python -m longformer_jax.{convert,export,summarize}``
commands runs them here, through each module's ``main(argv)`` (the same argument parsing
and code, without a fresh interpreter per command).
Placeholders (``path/to/...``, ``ROBERTA_DIR``) name small local checkpoints made here
(:func:`substitute`), ``/tmp/`` is the test's own directory, and ``gs://my-bucket`` a
folder of the Cloud Storage emulator's bucket (docs/pods.md).
"""

import dataclasses
import glob
import importlib
import os
import re
import shlex
import shutil
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT, assert_clean_stderr, bucket_path, losses, program_env

transformers = pytest.importorskip("transformers")

README = os.path.join(ROOT, "README.md")
DOCS = [README] + sorted(glob.glob(os.path.join(ROOT, "docs", "*.md")))
RUN_LANGUAGES = ("python", "bash")
OTHER_LANGUAGES = ("text",)  # shown, never run (layout trees)
NOT_RUN = re.compile(r"^<!-- not run: (\S.*?) -->$")
FENCE = re.compile(r"^```([^\n`]*)\n(.*?)^```[ \t]*$", re.S | re.M)


@dataclasses.dataclass(frozen=True)
class Block:
  path: str
  line: int
  language: str
  code: str
  not_run: str | None  # the reason, when marked

  def __str__(self):
    return f"{os.path.relpath(self.path, ROOT)}:{self.line} ({self.language or 'no language'})"


def code_blocks(path) -> list[Block]:
  text = open(path, encoding="utf-8").read()
  blocks = []
  for m in FENCE.finditer(text):
    before = text[:m.start()].rstrip("\n").rsplit("\n", 1)[-1].strip()
    mark = NOT_RUN.match(before)
    blocks.append(Block(path, text.count("\n", 0, m.start()) + 1, m.group(1).strip(),
                        m.group(2), mark.group(1) if mark else None))
  return blocks


def runnable(path) -> list[Block]:
  return [b for b in code_blocks(path) if b.language in RUN_LANGUAGES and b.not_run is None]


# ---- the small checkpoints the placeholders stand for --------------------------------


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
  """Random-init HF directories shaped like the real ones, small enough for seconds."""
  import torch
  torch.manual_seed(0)
  root = tmp_path_factory.mktemp("doc_checkpoints")
  small = dict(vocab_size=50265, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
               intermediate_size=37)
  # Saved with an MLM head, as the published base checkpoints are (architectures names it).
  transformers.LongformerForMaskedLM(transformers.LongformerConfig(
      **small, attention_window=[8, 8], max_position_embeddings=4098)).save_pretrained(
          root / "longformer")
  transformers.RobertaModel(transformers.RobertaConfig(
      **small, max_position_embeddings=514)).save_pretrained(root / "roberta")
  transformers.LEDForConditionalGeneration(transformers.LEDConfig(
      vocab_size=50265, d_model=32, encoder_layers=2, decoder_layers=2,
      encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=48,
      decoder_ffn_dim=48, max_encoder_position_embeddings=64,
      max_decoder_position_embeddings=260, attention_window=[8, 8])).save_pretrained(
          root / "led")
  # The hub's cache, as huggingface_hub lays it out, holding the quick start's id.
  commit = "0123456789abcdef0123456789abcdef01234567"
  repo = root / "hub" / "models--allenai--longformer-base-4096"
  shutil.copytree(root / "longformer", repo / "snapshots" / commit)
  (repo / "refs").mkdir()
  (repo / "refs" / "main").write_text(commit)
  return root


DOC_BUCKET = "gs://my-bucket"


def substitute(code: str, tmp, checkpoints) -> str:
  code = code.replace("/tmp/", f"{tmp}/")  # first: the checkpoints live under /tmp too
  code = code.replace(DOC_BUCKET, bucket_path(tmp))
  placeholders = {
      "path/to/longformer-base-4096": checkpoints / "longformer",
      "path/to/checkpoint": checkpoints / "longformer",
      "path/to/led-base-16384": checkpoints / "led",
      "ROBERTA_DIR": checkpoints / "roberta",
      '"exported/"': repr(str(tmp / "exported")),
  }
  for placeholder, value in placeholders.items():
    code = code.replace(placeholder, str(value))
  return code


IN_PROCESS = ("longformer_jax.convert", "longformer_jax.export", "longformer_jax.summarize")


def commands(code: str) -> list[list[str]]:
  """The block's commands as argument lists (continuations joined, comments dropped)."""
  argvs = [shlex.split(line, comments=True) for line in code.replace("\\\n", " ").split("\n")]
  return [a for a in argvs if a]


def run_bash(block: Block, code: str, cwd):
  argvs = commands(code)
  if argvs and all(a[:2] == ["python", "-m"] and a[2] in IN_PROCESS for a in argvs):
    for argv in argvs:
      importlib.import_module(argv[2]).main(argv[3:])
    return
  env = program_env(1)
  env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
  proc = subprocess.run(["bash", "-euo", "pipefail", "-c", code], cwd=cwd, env=env,
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, f"{block} failed:\n{code}\n{proc.stderr[-3000:]}"
  assert_clean_stderr(proc.stderr)


# ---- what each file's blocks leave behind --------------------------------------------


def check_readme(ns, tmp):
  assert ns["out"].loss.shape == ()
  assert (tmp / "exported" / "model.safetensors").exists()


def check_model(ns, tmp):
  assert ns["probs"].shape == (1, 2)
  assert set(ns["grads"].keys()) >= {"longformer", "classifier"}
  assert (tmp / "model.jax_exported").exists()
  assert (tmp / "lf_hf" / "config.json").exists()


def check_led(ns, tmp):
  assert ns["ids"].shape == (1, 256)


def check_pods(ns, tmp):
  """The command lines trained 4 steps, resumed to 8 and evaluated, all in the bucket:
  one metrics record per step (its eval in it), checkpoints 4 and 8, the HF export."""
  from longformer_jax import fileio, metrics
  bucket = bucket_path(tmp)
  assert fileio.listdir(f"{bucket}/run/checkpoints") == ["4", "8"]
  train_losses = losses(f"{bucket}/run")  # asserts one record per step
  assert sorted(train_losses) == list(range(1, 9))
  assert all(np.isfinite(v) and v > 0 for v in train_losses.values())
  records = {r["step"]: r for r in metrics.read_jsonl(f"{bucket}/run")}
  assert [s for s, r in sorted(records.items()) if "eval_accuracy" in r] == [4, 8]
  assert 0 <= records[8]["validation_eval_accuracy"] <= 1  # --mode=evaluate, merged
  assert fileio.isfile(f"{bucket}/hf/config.json")
  assert type(ns["model"]).__name__ == "LongformerForSequenceClassification"
  assert not [p for p in os.listdir(tmp) if p.startswith("gs:")]  # nothing named gs: here


def check_genomes_and_images(ns, tmp):
  out = np.asarray(ns["out"])
  assert out.shape == (2, 49, 4, 16) and np.isfinite(out).all() and np.abs(out).sum() > 0


CHECKS = {"README.md": check_readme, "docs/model.md": check_model, "docs/led.md": check_led,
          "docs/genomes_and_images.md": check_genomes_and_images, "docs/pods.md": check_pods}
RUN_DOCS = [os.path.relpath(p, ROOT) for p in DOCS if runnable(p)]


@pytest.mark.parametrize("doc", RUN_DOCS)
def test_doc_code_blocks_run(doc, checkpoints, tmp_path, monkeypatch, request):
  """Every unmarked python / bash block of the file, in order."""
  if doc == "docs/pods.md":
    request.getfixturevalue("gcs_emulator")
  import huggingface_hub.constants  # hub ids read the pre-filled cache, never the network
  monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(checkpoints / "hub"))
  monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
  monkeypatch.setenv("HF_HUB_CACHE", str(checkpoints / "hub"))
  monkeypatch.setenv("HF_HUB_OFFLINE", "1")
  (tmp_path / "configs").symlink_to(os.path.join(ROOT, "configs"))
  monkeypatch.chdir(tmp_path)  # relative outputs land here, configs/ resolves
  namespace = {}
  path = os.path.join(ROOT, doc)
  for block in runnable(path):
    code = substitute(block.code, tmp_path, checkpoints)
    if block.language == "python":
      exec(compile(code, f"{doc}:{block.line}", "exec"), namespace)  # pylint: disable=exec-used
    else:
      run_bash(block, code, tmp_path)
  CHECKS[doc](namespace, tmp_path)


def test_every_code_block_is_run_or_says_why_not():
  """Blocks name their language; a shown-only language or a not-run mark is the only
  way out of the test above, and each file that runs blocks has its checks."""
  blocks = [b for p in DOCS for b in code_blocks(p)]
  assert blocks
  for b in blocks:
    assert b.language in RUN_LANGUAGES + OTHER_LANGUAGES, f"{b}: give the block a language"
    if b.language in OTHER_LANGUAGES:
      assert b.not_run is None, f"{b}: a {b.language} block is never run; drop the mark"
  assert set(RUN_DOCS) == set(CHECKS), (RUN_DOCS, sorted(CHECKS))
  # Marks only in front of blocks: a stray one is a block that lost its mark.
  for p in DOCS:
    lines = open(p, encoding="utf-8").read().split("\n")
    for i, line in enumerate(lines):
      if line.startswith("<!-- not run"):
        assert NOT_RUN.match(line) and i + 1 < len(lines) and lines[i + 1].startswith("```"), (
            f"{os.path.relpath(p, ROOT)}:{i + 1}: a not-run mark goes on the line before a block")


def test_readme_first_block_is_the_install_and_test_commands():
  """CI and the tests run the README's first block's commands."""
  first = code_blocks(README)[0]
  assert first.language == "bash" and "python -m pytest -q tests" in first.code
  assert "pip install -e \".[test]\"" in first.code


# ---- links -----------------------------------------------------------------------------

LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def slug(heading: str) -> str:
  """GitHub's anchor of a heading."""
  s = re.sub(r"[^\w\- ]", "", heading.strip().lower())
  return s.replace(" ", "-")


def anchors(path) -> set[str]:
  text = FENCE.sub("", open(path, encoding="utf-8").read())
  return {slug(m) for m in re.findall(r"^#+ (.+)$", text, re.M)}


@pytest.mark.parametrize("doc", [os.path.relpath(p, ROOT) for p in DOCS])
def test_relative_links_resolve(doc):
  """Every relative link and image of the file names a file that exists, and an anchor
  into a markdown file names one of its headings."""
  path = os.path.join(ROOT, doc)
  text = FENCE.sub("", open(path, encoding="utf-8").read())
  links = LINK.findall(text)
  for link in links:
    if re.match(r"[a-z]+:", link):
      continue  # http(s), mailto
    target, _, anchor = link.partition("#")
    resolved = os.path.normpath(os.path.join(os.path.dirname(path), target)) if target else path
    assert os.path.exists(resolved), f"{doc}: {link} -> {resolved} does not exist"
    assert resolved.startswith(ROOT + os.sep), f"{doc}: {link} leaves the repository"
    if anchor and resolved.endswith(".md"):
      assert anchor in anchors(resolved), f"{doc}: {link}: no heading #{anchor}"


# ---- docs/architecture.md against the package ------------------------------------------


def test_architecture_lists_every_module():
  """docs/architecture.md's module tree names exactly the package's modules: a module
  added, moved or removed shows up here until the page says so."""
  path = os.path.join(ROOT, "docs", "architecture.md")
  tree = next(b.code for b in code_blocks(path) if b.code.startswith("longformer_jax/"))
  listed, package = set(), None
  for line in tree.split("\n")[1:]:
    if re.match(r"^\S", line):  # the next top-level folder (configs/, experiments/...)
      break
    m = re.match(r"^( +)(\S+)", line)
    if not m or not (m.group(2).endswith(".py") or m.group(2).endswith("/")):
      continue
    depth, name = len(m.group(1)) // 2, m.group(2)
    if depth == 1 and name.endswith("/"):
      package = name
    elif depth == 1:
      listed.add(name)
    elif depth == 2:
      listed.add(package + name)
  package_root = os.path.join(ROOT, "longformer_jax")
  actual = {os.path.relpath(p, package_root).replace(os.sep, "/")
            for p in glob.glob(os.path.join(package_root, "**", "*.py"), recursive=True)}
  assert listed == actual, (f"not in docs/architecture.md: {sorted(actual - listed)}; "
                            f"listed but absent: {sorted(listed - actual)}")
