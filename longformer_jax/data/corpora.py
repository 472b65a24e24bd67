"""Language-modelling corpora as tfds builders: text8, enwik8 and a local text corpus.

Every split is one token stream stored as consecutive chunks (``chunk_size``
tokens each, the last one shorter): features ``bytes`` uint8 (None,) for the
character corpora, ``tokens`` (None,) for ``text_corpus`` (uint8 raw UTF-8 bytes,
or int32 ids of an HF ``tokenizers`` tokenizer), plus ``index`` int32, the
chunk's rank. Concatenating the chunks of a split in ``index`` order gives the
split's stream back exactly (see :func:`load_split_tokens`).

text8 / enwik8 splits follow the Longformer paper: the first 90M characters
train, the next 5M validation, the rest (5M) test. Files shorter than 100M
characters (samples, tests) are split 90% / 5% / 5%.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import urllib.request
import zipfile

import numpy as np
import tensorflow_datasets as tfds

from longformer_jax import fileio, tokenization
from longformer_jax.data import documents

DEFAULT_CHUNK_SIZE = 65536
PAPER_TRAIN, PAPER_VALID = 90_000_000, 5_000_000
CHAR_URLS = {"text8": "http://mattmahoney.net/dc/text8.zip",
             "enwik8": "http://mattmahoney.net/dc/enwik8.zip"}
DOWNLOAD_TIMEOUT_S = 60


def char_split_bounds(n: int) -> dict[str, tuple[int, int]]:
  """Half-open character ranges of train / validation / test for a corpus of n chars."""
  if n >= PAPER_TRAIN + 2 * PAPER_VALID:
    a, b = PAPER_TRAIN, PAPER_TRAIN + PAPER_VALID
  else:
    a = int(n * 0.9)
    b = a + int(n * 0.05)
  return {"train": (0, a), "validation": (a, b), "test": (b, n)}


def ensure_corpus_zip(name: str, path: str, *, download: bool = True) -> str:
  """Returns ``path`` once the zip exists there, downloading it from the known URL if not.

  Raises FileNotFoundError naming the expected path and the ``path`` field when
  the file is absent and it cannot be downloaded.
  """
  path = os.fspath(path)
  if fileio.exists(path):
    return path
  url = CHAR_URLS[name]
  if not download:
    raise FileNotFoundError(f"{name}: no corpus zip at {path} (config.data.path) and "
                            f"downloading {url} is off (config.data.download=False)")
  try:  # the zip whole in memory (text8: 31 MB, enwik8: 36 MB), then one atomic write
    with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as r:
      fileio.write_atomic(path, r.read())
  except Exception as e:  # no network, DNS failure, HTTP error, read-only disk...
    raise FileNotFoundError(f"{name}: no corpus zip at {path} (config.data.path) and "
                            f"downloading {url} failed: {e}") from None
  return path


def zip_member_size(path: str, member: str) -> int:
  """Uncompressed size in bytes of ``member`` inside the zip at ``path``."""
  with fileio.open_read(path) as f, zipfile.ZipFile(f) as z:
    try:
      return z.getinfo(member).file_size
    except KeyError:
      raise ValueError(f"config.data.path={path} holds no member {member!r} "
                       f"(it has {z.namelist()[:5]})") from None


def read_zip_member(path: str, member: str) -> bytes:
  zip_member_size(path, member)  # raises ValueError naming the path if absent
  with fileio.open_read(path) as f, zipfile.ZipFile(f) as z:
    return z.read(member)


def _chunk_examples(stream: np.ndarray, key: str, chunk_size: int):
  """Yields ``(i, {key: stream[i*c:(i+1)*c], "index": i})`` covering the stream."""
  for i, start in enumerate(range(0, len(stream), chunk_size)):
    yield i, {key: stream[start:start + chunk_size], "index": np.int32(i)}


def _chunk_features(key: str, dtype) -> tfds.features.FeaturesDict:
  return tfds.features.FeaturesDict({
      key: tfds.features.Tensor(shape=(None,), dtype=dtype,
                                encoding=tfds.features.Encoding.ZLIB),
      "index": tfds.features.Scalar(dtype=np.int32),
  })


def load_split_tokens(builder: tfds.core.DatasetBuilder, split: str) -> np.ndarray:
  """The whole stream of a prepared split, (T,) in its stored dtype (uint8 or int32)."""
  source = builder.as_data_source(split=split)
  chunks = [source[i] for i in range(len(source))]
  if not chunks:
    return np.zeros((0,), np.uint8)
  key = "bytes" if "bytes" in chunks[0] else "tokens"
  chunks.sort(key=lambda c: int(c["index"]))
  return np.concatenate([np.asarray(c[key]) for c in chunks])


# ---- text8 / enwik8 ---------------------------------------------------------------


@dataclasses.dataclass
class CharCorpusConfig(tfds.core.BuilderConfig):
  """``path``: the corpus zip (not part of the identity); ``chunk_size``: bytes per chunk."""

  path: str = ""
  chunk_size: int = DEFAULT_CHUNK_SIZE

  @classmethod
  def make(cls, path: str = "", chunk_size: int = DEFAULT_CHUNK_SIZE) -> "CharCorpusConfig":
    if chunk_size < 1:
      raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    return cls(name=f"chunk{chunk_size}", path=os.fspath(path or ""), chunk_size=chunk_size)


class _CharCorpus(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """A byte-level corpus read from a zip with one member; splits train/validation/test."""

  VERSION = tfds.core.Version("1.0.0")
  code_path = None  # no checksums file: tfds fetches nothing for this builder
  MEMBER = ""

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self, description=f"{self.MEMBER}: byte-level LM corpus, chunked.",
        features=_chunk_features("bytes", np.uint8), metadata=tfds.core.MetadataDict(),
        disable_shuffling=True)

  def _split_generators(self, dl_manager):
    del dl_manager
    cfg = self.builder_config
    if not cfg.path:
      raise ValueError(f"{self.name}: config.data.path (the {self.MEMBER}.zip) is not set")
    data = np.frombuffer(read_zip_member(cfg.path, self.MEMBER), np.uint8)
    bounds = char_split_bounds(len(data))
    self.info.metadata["num_chars"] = int(len(data))
    self.info.metadata["split_bounds"] = {k: list(v) for k, v in bounds.items()}
    return {split: self._generate_examples(data[a:b], cfg.chunk_size)
            for split, (a, b) in bounds.items()}

  def _generate_examples(self, stream: np.ndarray, chunk_size: int):
    yield from _chunk_examples(stream, "bytes", chunk_size)


class Text8(_CharCorpus, skip_registration=True):
  """text8: 100M characters of Wikipedia, a-z and space (``text8.zip`` holding ``text8``)."""

  name = "text8"
  MEMBER = "text8"


class Enwik8(_CharCorpus, skip_registration=True):
  """enwik8: the first 100M bytes of a Wikipedia XML dump (``enwik8.zip`` holding ``enwik8``)."""

  name = "enwik8"
  MEMBER = "enwik8"


CHAR_BUILDERS = {"text8": Text8, "enwik8": Enwik8}


# ---- local text corpus ------------------------------------------------------------


@dataclasses.dataclass
class TextCorpusConfig(tfds.core.BuilderConfig):
  """A local plain-text or JSONL file, optionally tokenised; named by a content hash.

  ``format``: "text" (the file is the stream), "jsonl" (one JSON object a line,
  the text in ``text_field``; documents are joined by "\\n" in byte mode, or
  followed by ``eos_token`` when tokenised) or "auto" (by extension: .jsonl and
  .json are JSONL). ``validation_fraction``: the tail of the stream kept for
  validation.
  """

  path: str = ""
  tokenizer: str | None = None
  text_field: str = "text"
  format: str = "auto"
  validation_fraction: float = 0.05
  eos_token: str | None = None
  chunk_size: int = DEFAULT_CHUNK_SIZE

  @classmethod
  def make(cls, *, path: str, tokenizer: str | None = None, text_field: str = "text",
           format: str = "auto", validation_fraction: float = 0.05,
           eos_token: str | None = None,
           chunk_size: int = DEFAULT_CHUNK_SIZE) -> "TextCorpusConfig":
    """Validates the fields (ValueError / FileNotFoundError naming them) and names the config."""
    if not path:
      raise ValueError("text_corpus: config.data.path (the text or JSONL file) is not set")
    path = os.fspath(path)
    if not fileio.isfile(path):
      raise FileNotFoundError(f"text_corpus: no file at {path} (config.data.path)")
    if tokenizer and not fileio.exists(tokenizer):
      raise FileNotFoundError(f"text_corpus: no tokenizer at {tokenizer} (config.data.tokenizer)")
    if format == "auto":
      format = "jsonl" if path.endswith((".jsonl", ".json")) else "text"
    if format not in ("text", "jsonl"):
      raise ValueError(f"text_corpus: format={format!r} is not one of auto, text, jsonl")
    if not 0.0 < validation_fraction < 1.0:
      raise ValueError(f"text_corpus: validation_fraction must be in (0, 1), "
                       f"got {validation_fraction}")
    if chunk_size < 1:
      raise ValueError(f"text_corpus: chunk_size must be positive, got {chunk_size}")
    tok_digest = tokenization.tokenizer_digest(tokenizer) if tokenizer else None
    identity = json.dumps([documents.file_digest(path), tok_digest,
                           text_field, format, validation_fraction, eos_token, chunk_size])
    name = "tc-" + hashlib.sha256(identity.encode()).hexdigest()[:16]
    return cls(name=name, path=path, tokenizer=tokenizer or None, text_field=text_field,
               format=format, validation_fraction=float(validation_fraction),
               eos_token=eos_token, chunk_size=chunk_size)


load_tokenizer = tokenization.load_tokenizer


def read_documents(cfg: TextCorpusConfig):
  """Yields the documents of the corpus as str (lines of a text file keep their "\\n")."""
  if cfg.format == "text":
    with fileio.open_read(cfg.path, text=True) as f:
      yield from f
    return
  for lineno, record in documents.read_jsonl(cfg.path, "text_corpus"):
    yield documents.field_of(record, cfg.text_field, str,
                             f"text_corpus: {cfg.path}:{lineno}", "config.data.text_field")


def tokenize_corpus(cfg: TextCorpusConfig) -> tuple[np.ndarray, int]:
  """The corpus as one stream and its vocab size: uint8 bytes (256) or int32 ids."""
  if not cfg.tokenizer:
    if cfg.format == "text":
      return np.frombuffer(fileio.read_bytes(cfg.path), np.uint8), 256
    text = "".join(doc + "\n" for doc in read_documents(cfg))
    return np.frombuffer(text.encode("utf-8"), np.uint8), 256
  tok = load_tokenizer(cfg.tokenizer)
  vocab = tok.get_vocab_size(with_added_tokens=True)
  eos = []
  if cfg.eos_token is not None:
    eos_id = tok.token_to_id(cfg.eos_token)
    if eos_id is None:
      raise ValueError(f"text_corpus: eos_token={cfg.eos_token!r} is not in the vocabulary "
                       f"of {cfg.tokenizer} (config.data.eos_token)")
    eos = [eos_id]
  pieces, batch = [], []

  def flush():
    for enc in tok.encode_batch(batch, add_special_tokens=False):
      pieces.append(np.asarray(enc.ids + eos, np.int32))
    batch.clear()

  for doc in read_documents(cfg):
    batch.append(doc)
    if len(batch) >= 1024:
      flush()
  flush()
  stream = np.concatenate(pieces) if pieces else np.zeros((0,), np.int32)
  if stream.size and (stream.min() < 0 or stream.max() >= vocab):
    raise ValueError(f"text_corpus: token id {int(stream.max())} >= vocab size {vocab} "
                     f"of {cfg.tokenizer} (config.data.tokenizer)")
  return stream, vocab


class TextCorpus(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """A local text / JSONL corpus as a token stream; splits train and validation."""

  VERSION = tfds.core.Version("1.0.0")
  name = "text_corpus"
  code_path = None  # no checksums file: tfds fetches nothing for this builder

  def _info(self) -> tfds.core.DatasetInfo:
    dtype = np.int32 if self.builder_config.tokenizer else np.uint8
    return tfds.core.DatasetInfo(
        builder=self, description="Local text corpus, chunked token stream.",
        features=_chunk_features("tokens", dtype), metadata=tfds.core.MetadataDict(),
        disable_shuffling=True)

  def _split_generators(self, dl_manager):
    del dl_manager
    cfg = self.builder_config
    stream, vocab = tokenize_corpus(cfg)
    n = len(stream)
    cut = int(round(n * (1.0 - cfg.validation_fraction)))
    if cut < 1 or cut >= n:
      raise ValueError(f"text_corpus: {cfg.path} gives {n} tokens, too few to split with "
                       f"validation_fraction={cfg.validation_fraction}")
    self.info.metadata["num_tokens"] = int(n)
    self.info.metadata["vocab_size"] = int(vocab)
    return {"train": self._generate_examples(stream[:cut], cfg.chunk_size),
            "validation": self._generate_examples(stream[cut:], cfg.chunk_size)}

  def _generate_examples(self, stream: np.ndarray, chunk_size: int):
    yield from _chunk_examples(stream, "tokens", chunk_size)
