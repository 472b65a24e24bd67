"""Nucleotide sequences: the vocabulary, reverse complements, FASTA files, contiguous splits.

Ids: RoBERTa's special tokens at RoBERTa's ids (``<s>`` 0, ``<pad>`` 1, ``</s>`` 2,
``<unk>`` 3, ``<mask>`` 4, as :mod:`longformer_jax.tokenization` trains them), then
the bases ``A C G T N`` (5-9) and the IUPAC ambiguity codes ``R Y S W K M B D H V``
(10-19): 20 ids. Input is case-insensitive: soft-masked (lowercase) bases are the
same ids as uppercase ones.

FASTA: plain, gzip or xz (by its magic bytes), one or more records, each a ``>`` header
(its first word is the record id) and sequence lines; blank lines and ``;`` comment
lines are skipped. A character outside the alphabet is a ValueError naming the file,
the line and the character.
"""

from __future__ import annotations

import os
from typing import Iterator

import numpy as np

from longformer_jax import fileio
from longformer_jax.tokenization import SPECIAL_TOKENS

BOS, PAD, EOS, UNK, MASK = range(len(SPECIAL_TOKENS))
BASES = "ACGTN"
AMBIGUITY = "RYSWKMBDHV"  # IUPAC: R=AG Y=CT S=CG W=AT K=GT M=AC B=CGT D=AGT H=ACT V=ACG
SYMBOLS = BASES + AMBIGUITY
VOCAB = SPECIAL_TOKENS + tuple(SYMBOLS)
VOCAB_SIZE = len(VOCAB)
# The complement of each code: the complement of the set of bases it stands for.
COMPLEMENTS = dict(zip("ACGTNRYSWKMBDHV", "TGCANYRSWMKVHDB"))

_ENCODE = np.full(256, -1, np.int16)  # byte -> id, -1 for characters not in the alphabet
for _i, _c in enumerate(SYMBOLS, len(SPECIAL_TOKENS)):
  _ENCODE[ord(_c)] = _ENCODE[ord(_c.lower())] = _i
_COMPLEMENT_IDS = np.arange(VOCAB_SIZE, dtype=np.uint8)  # specials are their own complement
for _c, _d in COMPLEMENTS.items():
  _COMPLEMENT_IDS[VOCAB.index(_c)] = VOCAB.index(_d)
_DECODE = np.array([t if len(t) == 1 else "?" for t in VOCAB])


def encode(text: str | bytes, where: str = "sequence") -> np.ndarray:
  """Ids (uint8, one per character) of a nucleotide string; ValueError naming ``where``
  and the first character outside the alphabet."""
  raw = np.frombuffer(text.encode("ascii", "replace") if isinstance(text, str) else text,
                      np.uint8)
  ids = _ENCODE[raw]
  bad = np.flatnonzero(ids < 0)
  if bad.size:
    col = int(bad[0])
    raise ValueError(f"{where}: character {chr(raw[col])!r} (column {col + 1}) is not a "
                     f"nucleotide code ({BASES} or IUPAC {AMBIGUITY}, either case)")
  return ids.astype(np.uint8)


def decode(ids: np.ndarray) -> str:
  """The uppercase string of base ids; special ids show as ``?``."""
  return "".join(_DECODE[np.asarray(ids, np.int64)])


def reverse_complement(ids: np.ndarray) -> np.ndarray:
  """The reverse complement of ids (..., L), along the last axis; special ids are kept
  (and reversed with the rest)."""
  return _COMPLEMENT_IDS[np.asarray(ids)[..., ::-1]]


def read_fasta(path: str) -> Iterator[tuple[str, np.ndarray]]:
  """(record id, ids uint8 (n,)) of every record of a FASTA file (module docstring)."""
  path = os.fspath(path)
  if not fileio.isfile(path):
    raise FileNotFoundError(f"no FASTA file at {path}")
  name, pieces = None, []
  with fileio.open_read(path, decompress=True) as f:  # gzip and xz too
    for lineno, line in enumerate(f, 1):
      line = line.strip()
      if not line or line.startswith(b";"):
        continue
      if line.startswith(b">"):
        if name is not None:
          yield name, _joined(pieces)
        words = line[1:].split()
        name, pieces = (words[0].decode("utf-8", "replace") if words else f"record{lineno}"), []
        continue
      if name is None:
        raise ValueError(f"{path}:{lineno}: sequence before the first '>' header")
      pieces.append(encode(line, f"{path}:{lineno}"))
  if name is None:
    raise ValueError(f"{path} holds no FASTA record (no '>' header)")
  yield name, _joined(pieces)


def _joined(pieces: list[np.ndarray]) -> np.ndarray:
  return np.concatenate(pieces) if pieces else np.zeros((0,), np.uint8)


def check_fractions(validation_fraction: float, test_fraction: float, where: str) -> None:
  """ValueError naming the fields unless both are >= 0 and they leave some training data."""
  v, t = float(validation_fraction), float(test_fraction)
  if v < 0 or t < 0 or v + t >= 1:
    raise ValueError(f"{where}: config.data.validation_fraction={v} and test_fraction={t} must "
                     "be >= 0 with a sum below 1")


def split_bounds(n: int, validation_fraction: float,
                 test_fraction: float) -> dict[str, tuple[int, int]]:
  """Half-open base ranges of train / validation / test in a record of n bases: the
  record's head trains, then a contiguous validation region, then the test tail."""
  held_out = int(round(n * (validation_fraction + test_fraction)))
  a = n - held_out
  b = a + min(int(round(n * validation_fraction)), held_out)
  return {"train": (0, a), "validation": (a, b), "test": (b, n)}
