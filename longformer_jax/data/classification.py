"""Document classification datasets: JSONL files, Hyperpartisan's SemEval XML.

``data_cfg`` fields:

* ``files``: {split: path} (``train`` required; ``validation``, ``test``). With
  ``split_fractions`` (e.g. (0.8, 0.1, 0.1)) only ``files.train`` is read and its
  documents are split by id (``id_field``, default ``id``; the line number when
  absent) with ``split_seed``: the paper's Hyperpartisan split.
* ``format``: ``jsonl`` (one object a line: ``text_field`` and ``label_field``, an
  int or a string; a list of them for multi-label data), ``semeval_xml``
  (Hyperpartisan: ``files.train`` the articles XML, ``files.labels`` the
  ground-truth XML; label 1 = hyperpartisan) or ``tfds``: a dataset tfds prepared
  (e.g. ``imdb_reviews``), each ``files.SPLIT`` being ``DIR:SPLIT`` with DIR the
  directory of its dataset_info.json (array_record files, readable without
  TensorFlow).
* ``label_names``: the classes in id order (default: the labels of the training
  file, sorted; integer labels are their own ids). ``multi_label``: labels are
  lists (sigmoid, ``problem_type="multi_label_classification"``).
* ``tokenizer``: a tokenizer.json or a checkpoint directory (see ``tokenization``).

Prepared examples hold the whole tokenised document; an element is
``<s> tokens[:seq_len - 2] </s>`` padded, global attention on ``<s>``: batches
``input_ids``, ``attention_mask``, ``global_attention_mask`` (B, L), ``labels`` (B,)
int32 or (B, C) float32, ``example_index``, ``weight`` (B,).
"""

from __future__ import annotations

import xml.etree.ElementTree as ET

import numpy as np
import tensorflow_datasets as tfds

from longformer_jax import tokenization
from longformer_jax.data import documents, pipeline, registry

NAME = "document_classification"
FIELDS = ("files", "format", "text_field", "label_field", "id_field", "label_names",
          "multi_label", "split_fractions", "split_seed", "tokenizer")
FORMATS = ("jsonl", "semeval_xml", "tfds")


# ---- reading the files --------------------------------------------------------------


def _jsonl_records(path: str, cfg: dict):
  """(id, text, raw label, where) of every record of a JSONL file."""
  text_field, label_field = cfg.get("text_field") or "text", cfg.get("label_field")
  label_field = label_field or ("labels" if cfg.get("multi_label") else "label")
  id_field = cfg.get("id_field") or "id"
  for lineno, rec in documents.read_jsonl(path, NAME):
    where = f"{NAME}: {path}:{lineno}"
    text = documents.field_of(rec, text_field, str, where, "config.data.text_field")
    if label_field not in rec:
      raise ValueError(f"{where} has no field {label_field!r} (config.data.label_field)")
    yield str(rec.get(id_field, lineno)), text, rec[label_field], where


def _semeval_records(cfg: dict):
  """Hyperpartisan: articles XML (files.train) joined with the labels XML (files.labels)."""
  articles = documents.check_file(cfg["files"].get("train"), "config.data.files.train", NAME)
  labels_path = documents.check_file((cfg["files"] or {}).get("labels"),
                                     "config.data.files.labels", NAME)
  try:
    truth = {a.get("id"): a.get("hyperpartisan") == "true"
             for a in ET.parse(labels_path).getroot().iter("article")}
    root = ET.parse(articles).getroot()
  except ET.ParseError as e:
    raise ValueError(f"{NAME}: malformed XML ({e}) in config.data.files") from None
  for k, article in enumerate(root.iter("article")):
    doc_id = article.get("id")
    where = f"{NAME}: {articles}, article {k} (id {doc_id})"
    if doc_id not in truth:
      raise ValueError(f"{where} has no label in {labels_path} (config.data.files.labels)")
    title = article.get("title") or ""
    body = " ".join(" ".join(p.itertext()).strip() for p in article.iter("p"))
    yield doc_id, (title + "\n" + body).strip(), int(truth[doc_id]), where


def _tfds_records(cfg: dict, split: str):
  """A split prepared by tfds itself (``imdb_reviews``...): ``files.SPLIT`` = DIR:SPLIT."""
  field = f"config.data.files.{split}"
  source = documents.tfds_split((cfg.get("files") or {}).get(split), field, NAME)
  text_field, label_field = cfg.get("text_field") or "text", cfg.get("label_field") or "label"
  for k in range(len(source)):
    rec, where = source[k], f"{NAME}: {field}, example {k}"
    if text_field not in rec or label_field not in rec:
      raise ValueError(f"{where} has no field {text_field!r} or {label_field!r} "
                       "(config.data.text_field, config.data.label_field)")
    label = rec[label_field]
    label = [int(x) for x in label] if np.ndim(label) else int(label)
    yield f"{split}:{k}", documents.as_text(rec[text_field]), label, where


def read_records(cfg: dict, split: str):
  fmt = cfg.get("format") or "jsonl"
  if fmt not in FORMATS:
    raise ValueError(f"{NAME}: config.data.format={fmt!r} is not one of {FORMATS}")
  by_id = cfg.get("split_fractions")
  source = "train" if by_id else split
  if fmt == "semeval_xml":
    records = _semeval_records(cfg)
  elif fmt == "tfds":
    records = _tfds_records(cfg, source)
  else:
    files = {k: v for k, v in (cfg.get("files") or {}).items() if k != "labels"}
    records = _jsonl_records(documents.split_files(dict(cfg, files=files), NAME)[source], cfg)
  for doc_id, text, label, where in records:
    if not by_id or documents.split_of_id(doc_id, tuple(by_id),
                                          int(cfg.get("split_seed") or 0)) == split:
      yield doc_id, text, label, where


def label_names(cfg: dict) -> tuple:
  """The classes in id order: ``data_cfg.label_names`` or those of the training data."""
  if cfg.get("label_names"):
    return tuple(cfg["label_names"])
  seen = set()
  for *_, label, _ in read_records(cfg, "train"):
    seen.update(label if isinstance(label, list) else [label])
  if seen and all(isinstance(x, int) and not isinstance(x, bool) for x in seen):
    return tuple(range(max(seen) + 1))
  return tuple(sorted(seen, key=str))


def _label_ids(label, names: tuple, multi: bool, where: str) -> list[int]:
  values = label if isinstance(label, list) else [label]
  if not multi and (isinstance(label, list) or len(values) != 1):
    raise ValueError(f"{where}: label {label!r} is a list; set config.data.multi_label=True")
  try:
    return [names.index(v) for v in values]
  except ValueError:
    raise ValueError(f"{where}: label {label!r} is not one of config.data.label_names "
                     f"{list(names)}") from None


# ---- the builder ---------------------------------------------------------------------


class DocumentClassification(documents.FileBuilder, skip_registration=True):
  """Tokenised documents with their labels, per split."""

  name = NAME

  def features(self):
    cfg = self.settings
    num = len(cfg["label_names"])
    label = (tfds.features.Tensor(shape=(num,), dtype=np.float32) if cfg.get("multi_label")
             else tfds.features.Scalar(dtype=np.int32))
    return tfds.features.FeaturesDict({
        "id": tfds.features.Text(),
        "input_ids": tfds.features.Tensor(shape=(None,), dtype=np.int32), "label": label})

  def _split_generators(self, dl_manager):
    del dl_manager
    cfg = self.settings
    splits = ["train", "validation", "test"] if cfg.get("split_fractions") else [
        s for s in documents.SPLIT_NAMES if (cfg.get("files") or {}).get(s)]
    return {s: self._generate_examples(cfg, s) for s in splits}

  def _generate_examples(self, cfg: dict, split: str):
    tok = tokenization.load_tokenizer(cfg["tokenizer"])
    names, multi = tuple(cfg["label_names"]), bool(cfg.get("multi_label"))
    for doc_id, text, label, where in read_records(cfg, split):
      ids = np.asarray(tok.encode(text, add_special_tokens=False).ids, np.int32)
      label_ids = _label_ids(label, names, multi, where)
      if multi:
        value = np.zeros(len(names), np.float32)
        value[label_ids] = 1.0
      else:
        value = np.int32(label_ids[0])
      yield doc_id, {"id": doc_id, "input_ids": ids, "label": value}


def _builder(cfg: dict, data_dir: str, seq_len: int | None):
  del seq_len  # documents are stored whole
  documents.tokenizer_of(cfg, NAME)  # before reading the labels: names the field first
  return documents.file_builder(DocumentClassification, cfg, data_dir, "dc", FIELDS,
                                label_names=list(label_names(cfg)))


# ---- elements ------------------------------------------------------------------------


class ClassificationElement:
  """A stored document (+ weight) -> ``<s> tokens </s>`` padded, global on ``<s>``."""

  def __init__(self, seq_len: int, specials: documents.Specials):
    self.seq_len, self.s = seq_len, specials

  def __call__(self, example: dict, weight: float = 1.0) -> dict:
    body = np.asarray(example["input_ids"], np.int32)[:self.seq_len - 2]
    out = documents.pack([[self.s.bos], body, [self.s.eos]], self.seq_len, self.s.pad)
    out["global_attention_mask"] = np.zeros(self.seq_len, np.int32)
    out["global_attention_mask"][0] = 1
    label = np.asarray(example["label"])  # tfds gives a single label as a Python int
    out["labels"] = label.astype(np.float32 if label.ndim else np.int32)
    out["example_index"] = np.int32(example["example_index"])
    out["weight"] = np.float32(weight)
    return out

  @staticmethod
  def spec(seq_len: int, num_labels: int | None = None) -> dict:
    """``{name: (shape, dtype)}`` of an element; ``num_labels`` for multi-label data."""
    labels = ((), np.int32) if num_labels is None else ((num_labels,), np.float32)
    return dict(documents.document_spec(seq_len), labels=labels,
                example_index=documents.EXAMPLE_INDEX, weight=((), np.float32))


def _elements(builder, cfg: dict, *, split: str, seq_len: int, **shard):
  if split not in builder.info.splits:
    raise ValueError(f"{NAME}: no {split} split; set config.data.files.{split} or "
                     "config.data.split_fractions")
  specials = documents.Specials.of(documents.tokenizer_of(cfg, NAME))
  return pipeline.example_dataset(pipeline.Indexed(builder.as_data_source()[split]),
                                  ClassificationElement(seq_len, specials), split=split,
                                  **shard)


def _label_count(cfg: dict, model_cfg) -> int:
  """The classes of multi-label data from the configs alone (their default is the
  training file's labels): ``data_cfg.label_names``, else the model's ``num_labels``."""
  if cfg.get("label_names"):
    return len(cfg["label_names"])
  num = getattr(model_cfg, "num_labels", None)
  if num is None or num < 1:
    raise ValueError(f"{NAME}: multi-label batches are as wide as the classes; without data "
                     "they come from config.data.label_names or the model config's num_labels")
  return int(num)


def _element_spec(cfg: dict, *, split: str, seq_len: int, model_cfg=None) -> dict:
  documents.check_split_named(cfg, split, NAME)
  return ClassificationElement.spec(
      seq_len, _label_count(cfg, model_cfg) if cfg.get("multi_label") else None)


registry.register(registry.Dataset(
    name=NAME, splits=documents.SPLIT_NAMES, builder=_builder, elements=_elements,
    vocab_size=lambda cfg: documents.vocab_size(cfg, NAME),
    num_labels=lambda cfg: len(label_names(cfg)), fields=FIELDS,
    doc=__doc__.split("\n")[0], label_names=label_names, element_spec=_element_spec))
