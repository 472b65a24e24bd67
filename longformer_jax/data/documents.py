"""Pieces shared by the fine-tuning datasets built from the files people have.

* File checks and JSONL reading whose errors name the config field, the file and
  the line.
* Deterministic splits by document id (Hyperpartisan's 80/10/10).
* The tokenizer of a dataset (``data_cfg.tokenizer``: a file or a checkpoint
  directory) with the RoBERTa special ids the examples are built with.
* Padding one example's pieces into the model's fixed length.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
from typing import Iterator, Mapping

import numpy as np
import tensorflow_datasets as tfds

from longformer_jax import fileio, tokenization

SPLIT_NAMES = ("train", "validation", "test")


def check_file(path, field: str, dataset: str) -> str:
  """``path`` (a file, or DIR:SPLIT of a tfds-prepared dataset) checked to exist."""
  if not path:
    raise ValueError(f"{dataset}: {field} is not set")
  path = os.fspath(path)
  if not fileio.isfile(path) and not is_tfds_split(path):
    raise FileNotFoundError(f"{dataset}: no file at {path} ({field})")
  return path


def dir_and_split(spec) -> tuple[str, str]:
  """``DIR:SPLIT`` as (DIR, SPLIT); ("", "") when ``spec`` has no ``:SPLIT`` (the colon
  of a ``gs://`` scheme is not one)."""
  spec = str(spec or "")
  scheme, sep, rest = spec.partition("://") if fileio.is_remote(spec) else ("", "", spec)
  directory, colon, split = rest.rpartition(":")
  return (scheme + sep + directory, split) if colon else ("", "")


def is_tfds_split(spec: str) -> bool:
  """Whether ``spec`` is ``DIR:SPLIT`` of a dataset prepared by tfds."""
  directory, _ = dir_and_split(spec)
  return bool(directory) and fileio.isfile(fileio.join(directory, "dataset_info.json"))


def split_files(cfg: Mapping, dataset: str) -> dict[str, str]:
  """``data_cfg.files`` ({split: path}; train required) checked to exist."""
  files = dict(cfg.get("files") or {})
  unknown = sorted(set(files) - set(SPLIT_NAMES))
  if unknown:
    raise ValueError(f"{dataset}: config.data.files has splits {unknown}, not among "
                     f"{SPLIT_NAMES}")
  if not files.get("train"):
    raise ValueError(f"{dataset}: config.data.files.train (the training file) is not set")
  return {split: check_file(path, f"config.data.files.{split}", dataset)
          for split, path in files.items() if path}


def read_jsonl(path: str, dataset: str) -> Iterator[tuple[int, dict]]:
  """(line number, record) of every non-blank line; errors name the file and line."""
  with fileio.open_read(path, text=True) as f:
    for lineno, line in enumerate(f, 1):
      if not line.strip():
        continue
      try:
        record = json.loads(line)
      except json.JSONDecodeError as e:
        raise ValueError(f"{dataset}: {path}:{lineno} is not JSON ({e.msg})") from None
      if not isinstance(record, dict):
        raise ValueError(f"{dataset}: {path}:{lineno} is not a JSON object")
      yield lineno, record


def load_json(path: str, dataset: str, what: str, pick=lambda obj: obj) -> list:
  """``pick(the file's JSON)``, which must be a list; errors name the file and format."""
  try:
    records = pick(json.loads(fileio.read_text(path)))
    if not isinstance(records, list):
      raise TypeError(f"a {type(records).__name__}, not a list")
  except (json.JSONDecodeError, KeyError, TypeError) as e:
    raise ValueError(f"{dataset}: {path} is not {what} ({type(e).__name__}: {e})") from None
  return records


def as_text(value) -> str:
  """A string field as str (tfds decodes text to bytes)."""
  return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def field_of(record: dict, name: str, kind, where: str, field: str):
  """``record[name]`` checked to be a ``kind``; the error names the config field."""
  value = record.get(name)
  if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
    raise ValueError(f"{where} has no {getattr(kind, '__name__', kind)} field {name!r} "
                     f"({field})")
  return value


def split_of_id(doc_id: str, fractions: tuple[float, ...], seed: int) -> str:
  """The split of a document: a hash of (seed, id) placed on the cumulative fractions
  of train / validation / test, so the split depends on nothing but the id."""
  digest = hashlib.sha256(f"{seed}:{doc_id}".encode()).digest()
  u = int.from_bytes(digest[:8], "big") / 2**64
  edges = np.cumsum(fractions)
  return SPLIT_NAMES[min(int(np.searchsorted(edges, u, side="right")), len(fractions) - 1)]


@dataclasses.dataclass(frozen=True)
class Specials:
  """The ids examples are built with: RoBERTa's <s>, </s>, <pad>."""

  bos: int
  eos: int
  pad: int

  @classmethod
  def of(cls, tok) -> "Specials":
    field = "config.data.tokenizer"
    return cls(tokenization.token_id(tok, "<s>", field),
               tokenization.token_id(tok, "</s>", field),
               tokenization.token_id(tok, "<pad>", field))


def spec_from(cls, cfg: Mapping, seq_len: int, fields: tuple[str, ...]):
  """``cls(seq_len, **fields)`` with each field from data_cfg where set (0 included),
  else ``cls``'s default."""
  return cls(seq_len, **{f: int(cfg[f]) for f in fields if cfg.get(f) is not None})


def tokenizer_of(cfg: Mapping, dataset: str):
  path = cfg.get("tokenizer")
  if not path:
    raise ValueError(f"{dataset}: config.data.tokenizer (a tokenizer.json, or a checkpoint "
                     "directory with tokenizer files) is not set")
  if not fileio.exists(path):
    raise FileNotFoundError(f"{dataset}: no tokenizer at {path} (config.data.tokenizer)")
  return tokenization.load_tokenizer(path)


def vocab_size(cfg: Mapping, dataset: str) -> int:
  return tokenizer_of(cfg, dataset).get_vocab_size(with_added_tokens=True)


def file_digest(path: str) -> str:
  h = hashlib.sha256()
  with fileio.open_read(path) as f:
    while block := f.read(1 << 20):
      h.update(block)
  return h.hexdigest()


def source_digest(path: str) -> str:
  """The content hash of a data file, or of a prepared tfds split (``DIR:SPLIT``)."""
  if fileio.isfile(path):
    return file_digest(path)
  if not is_tfds_split(path):
    raise FileNotFoundError(f"no file at {path}, nor a tfds dataset's DIR:SPLIT")
  directory, split = dir_and_split(path)
  return file_digest(fileio.join(directory, "dataset_info.json")) + ":" + split


def tfds_split(spec: str, field: str, dataset: str):
  """A split of a dataset prepared by tfds itself, named ``DIR:SPLIT`` (DIR holds its
  dataset_info.json, e.g. ``~/tensorflow_datasets/imdb_reviews/plain_text/1.0.0:test``):
  a random-access source of decoded examples. Needs array_record files (tfds's
  ``file_format="array_record"``): other formats need TensorFlow to read."""
  directory, split = dir_and_split(spec)
  if not is_tfds_split(spec or ""):
    raise FileNotFoundError(f"{dataset}: {field}={spec!r} is not DIR:SPLIT of a dataset "
                            "prepared by tfds (DIR holding dataset_info.json)")
  # tfds reads array_record files from local disk: a bucket's dataset is read from this
  # host's copy of it (fileio.local_mirror), fetched once.
  builder = tfds.builder_from_directory(fileio.local_mirror(directory))
  if split not in builder.info.splits:
    raise ValueError(f"{dataset}: {field}: {directory} has the splits "
                     f"{sorted(builder.info.splits)}, not {split!r}")
  try:
    return builder.as_data_source(split=split)
  except Exception as e:  # noqa: BLE001 - the message says what to do whatever the cause
    raise ValueError(f"{dataset}: {field}: {directory} cannot be read as a data source "
                     f"({type(e).__name__}: {e}); prepare it as array_record files "
                     "(python -m longformer_jax.prepare NAME DATA_DIR)") from None


def config_name(prefix: str, *parts) -> str:
  """A builder-config name from a hash of everything the prepared data depends on."""
  return prefix + "-" + hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:16]


def pack(pieces: list[np.ndarray], seq_len: int, pad: int) -> dict[str, np.ndarray]:
  """Concatenated pieces padded to ``seq_len``: ``input_ids`` and ``attention_mask``."""
  ids = np.concatenate(pieces).astype(np.int32)
  if len(ids) > seq_len:
    raise ValueError(f"{len(ids)} tokens do not fit seq_len={seq_len}")
  out = np.full(seq_len, pad, np.int32)
  out[:len(ids)] = ids
  mask = np.zeros(seq_len, np.int32)
  mask[:len(ids)] = 1
  return {"input_ids": out, "attention_mask": mask}


def document_spec(seq_len: int) -> dict:
  """(shape, dtype) of the rows every document element has: :func:`pack`'s
  ``input_ids`` and ``attention_mask`` and a ``global_attention_mask``."""
  row = ((seq_len,), np.int32)
  return {"input_ids": row, "attention_mask": row, "global_attention_mask": row}


EXAMPLE_INDEX = ((), np.int32)  # (shape, dtype) of an element's ``example_index``


def check_split_named(cfg: Mapping, split: str, dataset: str) -> None:
  """Raises ValueError, as the elements of a prepared dataset do, for a split the
  config gives no file (with ``split_fractions`` every split is named)."""
  if not cfg.get("split_fractions") and not (cfg.get("files") or {}).get(split):
    raise ValueError(f"{dataset}: no {split} split; set config.data.files.{split}")


def cached_lengths(builder, split: str, lengths_of) -> np.ndarray:
  """``lengths_of(example)`` (a tuple of ints) for every example of a prepared split,
  computed once and cached beside the data (so window tables need no decoding)."""
  path = fileio.join(builder.data_dir, f"lengths-{split}.npy")
  if path.exists():
    return np.load(io.BytesIO(path.read_bytes()))
  rows = [tuple(lengths_of(x)) for x in builder.as_data_source()[split]]
  out = np.asarray(rows, np.int64).reshape(len(rows), -1)
  buffer = io.BytesIO()
  np.save(buffer, out)
  fileio.write_atomic(path, buffer.getvalue())
  return out


class WithWeight:
  """A feature (dict) with its ``weight`` added: the element function of datasets
  whose features are built by a task."""

  def __call__(self, feature: dict, weight: float = 1.0) -> dict:
    return dict(feature, weight=np.float32(weight))

  @staticmethod
  def spec(feature_spec: dict) -> dict:
    """The element spec (``{name: (shape, dtype)}``) of features of ``feature_spec``."""
    return dict(feature_spec, weight=((), np.float32))


# ---- tfds builders over the user's files ----------------------------------------------


@dataclasses.dataclass
class SettingsConfig(tfds.core.BuilderConfig):
  """A builder config named by a hash of what the prepared data depends on; ``settings``
  holds the data_cfg fields it is built from (JSON)."""

  settings: str = "{}"


class FileBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """A tfds builder over ``data_cfg.files``: a split per file, its examples from
  ``_generate_examples(settings, path)``; subclasses set ``name`` and ``features()``."""

  VERSION = tfds.core.Version("1.0.0")
  code_path = None

  def features(self) -> tfds.features.FeaturesDict:
    raise NotImplementedError

  @property
  def settings(self) -> dict:
    return json.loads(self.builder_config.settings)

  def _info(self):
    return tfds.core.DatasetInfo(builder=self, description=(self.__doc__ or "").split("\n")[0],
                                 features=self.features(), disable_shuffling=True)

  def _split_generators(self, dl_manager):
    del dl_manager
    cfg = self.settings
    return {split: self._generate_examples(cfg, path)
            for split, path in split_files(cfg, self.name).items()}


def file_builder(cls: type, cfg: Mapping, data_dir: str, prefix: str, fields, **extra):
  """``cls`` set up with the data_cfg ``fields`` (plus ``extra`` settings), named by a
  hash of them, the tokenizer and the data files' contents."""
  tokenizer_of(cfg, cls.name)  # raises naming data_cfg.tokenizer
  settings = {k: cfg.get(k) for k in fields}
  settings.update(extra, tokenizer=os.fspath(cfg["tokenizer"]))
  identity = [settings, tokenization.tokenizer_digest(cfg["tokenizer"])]
  identity += [source_digest(check_file(p, f"config.data.files.{split}", cls.name))
               for split, p in sorted((cfg.get("files") or {}).items()) if p]
  config = SettingsConfig(name=config_name(prefix, *identity),
                          settings=json.dumps(settings, sort_keys=True))
  return cls(config=config, data_dir=data_dir, file_format="array_record")
