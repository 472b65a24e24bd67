"""Summarisation datasets: (document, summary) pairs from JSONL files or from a split
tfds prepared (``scientific_papers/arxiv``: ``article`` -> ``abstract``).

``data_cfg`` fields:

* ``files``: {split: path} (``train`` required; ``validation``, ``test``): JSONL
  files, or ``DIR:SPLIT`` of a dataset prepared by tfds with
  ``file_format="array_record"`` (DIR holding its dataset_info.json) when
  ``format="tfds"``.
* ``format``: ``jsonl`` (default) or ``tfds``.
* ``text_field`` (default ``document``; ``article`` for arXiv), ``summary_field``
  (default ``summary``; ``abstract`` for arXiv), ``id_field`` (default ``id``; the
  line number, or the tfds index, when absent).
* ``max_target_length``: the summary's tokens, ``<s>`` and ``</s>`` included (HF's
  ``max_target_length``; default 256); longer summaries are cut, as HF's
  tokenisation with ``truncation=True`` cuts them.
* ``tokenizer``: a tokenizer.json or a checkpoint directory.

Prepared examples hold the whole tokenised document and summary and the summary's
text (the ROUGE reference). An element is the encoder input ``<s> document[:seq_len
- 2] </s>`` padded, global attention on ``<s>`` (LED's summarisation setting), and
``labels`` = ``<s> summary </s>`` padded with -100 to ``max_target_length``: batches
``input_ids``, ``attention_mask``, ``global_attention_mask`` (B, N), ``labels`` (B,
T), ``example_index``, ``weight`` (B,).
"""

from __future__ import annotations

import numpy as np
import tensorflow_datasets as tfds

from longformer_jax import tokenization
from longformer_jax.data import documents, pipeline, registry
from longformer_jax.outputs import IGNORE_INDEX

NAME = "summarization"
FIELDS = ("files", "format", "text_field", "summary_field", "id_field", "max_target_length",
          "tokenizer")
FORMATS = ("jsonl", "tfds")
DEFAULT_TARGET_LENGTH = 256


def _fields(cfg: dict) -> tuple[str, str, str]:
  return (cfg.get("text_field") or "document", cfg.get("summary_field") or "summary",
          cfg.get("id_field") or "id")


def _jsonl_pairs(path: str, cfg: dict):
  text_field, summary_field, id_field = _fields(cfg)
  for lineno, rec in documents.read_jsonl(path, NAME):
    where = f"{NAME}: {path}:{lineno}"
    text = documents.field_of(rec, text_field, str, where, "config.data.text_field")
    summary = documents.field_of(rec, summary_field, str, where, "config.data.summary_field")
    yield str(rec.get(id_field, lineno)), text, summary


def _tfds_pairs(cfg: dict, split: str):
  field = f"config.data.files.{split}"
  source = documents.tfds_split((cfg.get("files") or {}).get(split), field, NAME)
  text_field, summary_field, id_field = _fields(cfg)
  for k in range(len(source)):
    rec = source[k]
    if text_field not in rec or summary_field not in rec:
      raise ValueError(f"{NAME}: {field}, example {k} has no field {text_field!r} or "
                       f"{summary_field!r} (config.data.text_field, config.data.summary_field)")
    doc_id = documents.as_text(rec[id_field]) if id_field in rec else f"{split}:{k}"
    yield doc_id, documents.as_text(rec[text_field]), documents.as_text(rec[summary_field])


def read_pairs(cfg: dict, split: str):
  """(id, document, summary) of every example of ``split``."""
  fmt = cfg.get("format") or "jsonl"
  if fmt not in FORMATS:
    raise ValueError(f"{NAME}: config.data.format={fmt!r} is not one of {FORMATS}")
  if fmt == "tfds":
    return _tfds_pairs(cfg, split)
  return _jsonl_pairs(documents.split_files(cfg, NAME)[split], cfg)


def target_length(cfg: dict) -> int:
  length = int(cfg.get("max_target_length") or DEFAULT_TARGET_LENGTH)
  if length < 3:
    raise ValueError(f"{NAME}: config.data.max_target_length={length} leaves no room for a "
                     "summary token between <s> and </s>")
  return length


class Summarization(documents.FileBuilder, skip_registration=True):
  """Tokenised documents with their tokenised and raw summaries, per split."""

  name = NAME

  def features(self):
    return tfds.features.FeaturesDict({
        "id": tfds.features.Text(), "summary": tfds.features.Text(),
        "input_ids": tfds.features.Tensor(shape=(None,), dtype=np.int32),
        "summary_ids": tfds.features.Tensor(shape=(None,), dtype=np.int32)})

  def _split_generators(self, dl_manager):
    del dl_manager
    cfg = self.settings
    return {s: self._generate_examples(cfg, s) for s in documents.SPLIT_NAMES
            if (cfg.get("files") or {}).get(s)}

  def _generate_examples(self, cfg: dict, split: str):
    tok = tokenization.load_tokenizer(cfg["tokenizer"])
    seen = set()
    for doc_id, text, summary in read_pairs(cfg, split):
      if doc_id in seen:
        raise ValueError(f"{NAME}: id {doc_id!r} appears twice in the {split} split "
                         "(config.data.id_field)")
      seen.add(doc_id)
      encode = lambda s: np.asarray(tok.encode(s, add_special_tokens=False).ids, np.int32)
      yield doc_id, {"id": doc_id, "summary": summary, "input_ids": encode(text),
                     "summary_ids": encode(summary)}


def _builder(cfg: dict, data_dir: str, seq_len: int | None):
  del seq_len  # documents are stored whole
  documents.split_files(cfg, NAME)  # errors name data_cfg.files first
  target_length(cfg)
  return documents.file_builder(Summarization, cfg, data_dir, "sum", FIELDS)


class SummarizationElement:
  """A stored pair (+ weight) -> encoder input with global <s>, and padded labels."""

  def __init__(self, seq_len: int, max_target_length: int, specials: documents.Specials):
    self.seq_len, self.target_len, self.s = seq_len, max_target_length, specials

  def __call__(self, example: dict, weight: float = 1.0) -> dict:
    body = np.asarray(example["input_ids"], np.int32)[:self.seq_len - 2]
    out = documents.pack([[self.s.bos], body, [self.s.eos]], self.seq_len, self.s.pad)
    out["global_attention_mask"] = np.zeros(self.seq_len, np.int32)
    out["global_attention_mask"][0] = 1
    summary = np.asarray(example["summary_ids"], np.int32)[:self.target_len - 2]
    labels = np.full(self.target_len, IGNORE_INDEX, np.int32)
    labels[:len(summary) + 2] = np.concatenate([[self.s.bos], summary, [self.s.eos]])
    out["labels"] = labels
    out["example_index"] = np.int32(example["example_index"])
    out["weight"] = np.float32(weight)
    return out

  @staticmethod
  def spec(seq_len: int, max_target_length: int) -> dict:
    """``{name: (shape, dtype)}`` of an element."""
    return dict(documents.document_spec(seq_len), labels=((max_target_length,), np.int32),
                example_index=documents.EXAMPLE_INDEX, weight=((), np.float32))


def _elements(builder, cfg: dict, *, split: str, seq_len: int, **shard):
  if split not in builder.info.splits:
    raise ValueError(f"{NAME}: no {split} split; set config.data.files.{split}")
  specials = documents.Specials.of(documents.tokenizer_of(cfg, NAME))
  element = SummarizationElement(seq_len, target_length(cfg), specials)
  return pipeline.example_dataset(pipeline.Indexed(builder.as_data_source()[split]),
                                  element, split=split, **shard)


def _element_spec(cfg: dict, *, split: str, seq_len: int, model_cfg=None) -> dict:
  del model_cfg
  documents.check_split_named(cfg, split, NAME)
  return SummarizationElement.spec(seq_len, target_length(cfg))


registry.register(registry.Dataset(
    name=NAME, splits=documents.SPLIT_NAMES, builder=_builder, elements=_elements,
    vocab_size=lambda cfg: documents.vocab_size(cfg, NAME), num_labels=lambda cfg: 0,
    fields=FIELDS, doc=__doc__.split("\n")[0], element_spec=_element_spec))
