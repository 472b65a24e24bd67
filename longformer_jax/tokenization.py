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

from longformer_jax import fileio

SPECIAL_TOKENS = ("<s>", "<pad>", "</s>", "<unk>", "<mask>")


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
  """The files a tokenizer is read from, local or on a bucket (raises
  FileNotFoundError naming ``path``); a hub id reads the hub's cached copy."""
  from longformer_jax import hf_io
  path = fileio.path(hf_io.checkpoint_path(path))
  if path.is_file():
    return [str(path)]
  if (path / "tokenizer.json").is_file():
    return [str(path / "tokenizer.json")]
  pair = [str(path / f) for f in ("vocab.json", "merges.txt")]
  if all(fileio.isfile(f) for f in pair):
    return pair
  raise FileNotFoundError(f"no tokenizer at {path}: expected a tokenizer.json file or a "
                          "directory with tokenizer.json or vocab.json + merges.txt")


def load_tokenizer(path: str | os.PathLike):
  """A ``tokenizers.Tokenizer`` from a file or checkpoint directory (module docstring)."""
  from tokenizers import Tokenizer
  files = [fileio.local_copy(f) for f in tokenizer_files(path)]  # the library reads files
  if len(files) == 1:
    return Tokenizer.from_file(files[0])
  return _roberta_from_vocab(*files)


def tokenizer_digest(path: str | os.PathLike) -> str:
  """A content hash of the tokenizer's files (prepared data is keyed by it)."""
  h = hashlib.sha256()
  for f in tokenizer_files(path):
    h.update(fileio.read_bytes(f))
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
  for f in files:
    if not fileio.isfile(f):
      raise FileNotFoundError(f"train_bpe: no text file at {f}")
  files = [fileio.local_copy(f) for f in files]  # the trainer reads local files
  tok = Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(
      vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=list(SPECIAL_TOKENS),
      initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
  tok.train(files, trainer)
  with fileio.staged_dir(out_dir, marker="tokenizer.json", allow_existing=True) as tmp:
    tok.model.save(tmp)  # vocab.json + merges.txt
    full = _roberta_from_vocab(f"{tmp}/vocab.json", f"{tmp}/merges.txt")
    full.save(f"{tmp}/tokenizer.json")
  return full
