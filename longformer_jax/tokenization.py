"""Tokenizers: HF ``tokenizers`` loaded from a checkpoint directory, or trained here.

* :func:`load_tokenizer` takes a ``tokenizer.json`` file, or a directory holding
  ``tokenizer.json`` or RoBERTa's ``vocab.json`` + ``merges.txt`` (byte-level BPE
  with ``<s> A </s>`` / ``<s> A </s></s> B </s>`` templates, as the reference's
  fast RoBERTa tokenizer builds them). Encodings carry character offsets, which
  span and word alignment use.
* :func:`train_bpe` trains a byte-level BPE on local text files with RoBERTa's
  special tokens at RoBERTa's ids (``<s>`` 0, ``<pad>`` 1, ``</s>`` 2, ``<unk>`` 3;
  ``<mask>`` 4) and writes ``tokenizer.json``, ``vocab.json`` and ``merges.txt``.
"""

from __future__ import annotations

import hashlib
import os
from typing import Iterable

SPECIAL_TOKENS = ("<s>", "<pad>", "</s>", "<unk>", "<mask>")
_FILES = ("tokenizer.json", "vocab.json", "merges.txt")


def _roberta_from_vocab(vocab: str, merges: str):
  from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors
  tok = Tokenizer(models.BPE.from_file(vocab, merges))
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  specials = [t for t in SPECIAL_TOKENS if tok.token_to_id(t) is not None]
  tok.add_special_tokens([AddedToken(t, normalized=False)
                          for t in specials])
  for needed in ("<s>", "</s>"):
    if tok.token_to_id(needed) is None:
      raise ValueError(f"{vocab} has no {needed} token, which RoBERTa's templates need")
  tok.post_processor = processors.RobertaProcessing(
      ("</s>", tok.token_to_id("</s>")), ("<s>", tok.token_to_id("<s>")),
      trim_offsets=True, add_prefix_space=False)
  return tok


def tokenizer_files(path: str | os.PathLike) -> list[str]:
  """The files a tokenizer is read from (raises FileNotFoundError naming ``path``)."""
  path = os.fspath(path)
  if os.path.isfile(path):
    return [path]
  if os.path.isfile(os.path.join(path, "tokenizer.json")):
    return [os.path.join(path, "tokenizer.json")]
  pair = [os.path.join(path, f) for f in ("vocab.json", "merges.txt")]
  if all(os.path.isfile(f) for f in pair):
    return pair
  raise FileNotFoundError(f"no tokenizer at {path}: expected a tokenizer.json file or a "
                          "directory with tokenizer.json or vocab.json + merges.txt")


def load_tokenizer(path: str | os.PathLike):
  """A ``tokenizers.Tokenizer`` from a file or checkpoint directory (module docstring)."""
  from tokenizers import Tokenizer
  files = tokenizer_files(path)
  if len(files) == 1:
    return Tokenizer.from_file(files[0])
  return _roberta_from_vocab(*files)


def tokenizer_digest(path: str | os.PathLike) -> str:
  """A content hash of the tokenizer's files (prepared data is keyed by it)."""
  h = hashlib.sha256()
  for f in tokenizer_files(path):
    with open(f, "rb") as fh:
      for block in iter(lambda: fh.read(1 << 20), b""):
        h.update(block)
  return h.hexdigest()


def token_id(tok, token: str, field: str) -> int:
  """The id of a special token; ValueError naming ``field`` if the vocabulary lacks it."""
  i = tok.token_to_id(token)
  if i is None:
    raise ValueError(f"the tokenizer has no token {token!r} ({field})")
  return i


def train_bpe(files: Iterable[str | os.PathLike], out_dir: str | os.PathLike, *,
              vocab_size: int = 8192, min_frequency: int = 2):
  """Trains a byte-level BPE with RoBERTa's special tokens; writes it to ``out_dir``.

  Returns the tokenizer (with RoBERTa's templates, as :func:`load_tokenizer` reads it).
  """
  from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
  files = [os.fspath(f) for f in files]
  for f in files:
    if not os.path.isfile(f):
      raise FileNotFoundError(f"train_bpe: no text file at {f}")
  tok = Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(
      vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=list(SPECIAL_TOKENS),
      initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
  tok.train(files, trainer)
  out_dir = os.fspath(out_dir)
  tmp = out_dir + ".partial"
  os.makedirs(tmp, exist_ok=True)
  tok.model.save(tmp)  # vocab.json + merges.txt
  full = _roberta_from_vocab(os.path.join(tmp, "vocab.json"), os.path.join(tmp, "merges.txt"))
  full.save(os.path.join(tmp, "tokenizer.json"))
  if os.path.exists(out_dir):
    for f in _FILES:
      if os.path.exists(os.path.join(out_dir, f)):
        os.remove(os.path.join(out_dir, f))
    for f in _FILES:
      os.replace(os.path.join(tmp, f), os.path.join(out_dir, f))
    os.rmdir(tmp)
  else:
    os.replace(tmp, out_dir)
  return full
