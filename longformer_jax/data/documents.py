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
import json
import os
from typing import Iterator, Mapping

import numpy as np

from longformer_jax import tokenization

SPLIT_NAMES = ("train", "validation", "test")


def check_file(path, field: str, dataset: str) -> str:
  if not path:
    raise ValueError(f"{dataset}: {field} is not set")
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{dataset}: no file at {path} ({field})")
  return path


def split_files(cfg: Mapping, dataset: str) -> dict[str, str]:
  """``data_cfg.files`` ({split: path}; train required) checked to exist."""
  files = dict(cfg.get("files") or {})
  unknown = sorted(set(files) - set(SPLIT_NAMES))
  if unknown:
    raise ValueError(f"{dataset}: data_cfg.files has splits {unknown}, not among "
                     f"{SPLIT_NAMES}")
  if not files.get("train"):
    raise ValueError(f"{dataset}: data_cfg.files.train (the training file) is not set")
  return {split: check_file(path, f"data_cfg.files.{split}", dataset)
          for split, path in files.items() if path}


def read_jsonl(path: str, dataset: str) -> Iterator[tuple[int, dict]]:
  """(line number, record) of every non-blank line; errors name the file and line."""
  with open(path, encoding="utf-8") as f:
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
    field = "data_cfg.tokenizer"
    return cls(tokenization.token_id(tok, "<s>", field),
               tokenization.token_id(tok, "</s>", field),
               tokenization.token_id(tok, "<pad>", field))


def tokenizer_of(cfg: Mapping, dataset: str):
  path = cfg.get("tokenizer")
  if not path:
    raise ValueError(f"{dataset}: data_cfg.tokenizer (a tokenizer.json, or a checkpoint "
                     "directory with tokenizer files) is not set")
  if not os.path.exists(path):
    raise FileNotFoundError(f"{dataset}: no tokenizer at {path} (data_cfg.tokenizer)")
  return tokenization.load_tokenizer(path)


def vocab_size(cfg: Mapping, dataset: str) -> int:
  return tokenizer_of(cfg, dataset).get_vocab_size(with_added_tokens=True)


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


def cached_lengths(builder, split: str, lengths_of) -> np.ndarray:
  """``lengths_of(example)`` (a tuple of ints) for every example of a prepared split,
  computed once and cached beside the data (so window tables need no decoding)."""
  path = os.path.join(builder.data_dir, f"lengths-{split}.npy")
  if os.path.exists(path):
    return np.load(path)
  rows = [tuple(lengths_of(x)) for x in builder.as_data_source()[split]]
  out = np.asarray(rows, np.int64).reshape(len(rows), -1)
  tmp = f"{path}.tmp-{os.getpid()}.npy"
  np.save(tmp, out)
  os.replace(tmp, path)
  return out


class WithWeight:
  """A feature (dict) with its ``weight`` added: the element function of datasets
  whose features are built by a task."""

  def __call__(self, feature: dict, weight: float = 1.0) -> dict:
    return dict(feature, weight=np.float32(weight))
