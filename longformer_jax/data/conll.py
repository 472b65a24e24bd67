"""NER datasets from CoNLL-format files (CoNLL-2003, OntoNotes 5 in CoNLL-2012 NER form).

``data_cfg`` fields:

* ``files``: {split: path}. One token a line, columns split by white space: the
  word in the first column, its BIO/IOB2 tag in ``tag_column`` (default -1, the
  last). A blank line ends a sentence; ``-DOCSTART-`` and ``#begin document``
  lines start a document (``#end document`` lines are skipped).
* ``group_by``: ``document`` (default: an example is a whole document, the long
  inputs this model is for) or ``sentence``.
* ``label_names``: the tags in id order (default: ``O``, then the training file's
  other tags sorted).
* ``doc_stride``: overlap of consecutive windows over long documents (128).
* ``tokenizer``: a tokenizer.json or a checkpoint directory.

Stored examples hold the document's sub-words, the word of each and the tags of
the words; :class:`Features` cuts them into windows for the ``token_classification``
task.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import tensorflow_datasets as tfds

from longformer_jax import outputs as out_lib
from longformer_jax import fileio, tokenization
from longformer_jax.data import documents, pipeline, registry
from longformer_jax.data import windows as windows_lib
from longformer_jax.data.windows import owner_windows, windows

NAME = "conll_ner"
FIELDS = ("files", "tag_column", "group_by", "label_names", "doc_stride", "tokenizer")
_DOC_MARKERS = ("-DOCSTART-", "#begin document")


def read_conll(path: str, cfg: dict):
  """(id, sentences [[(word, tag)]]) of each document (or sentence) of a file."""
  column, by_sentence = int(cfg.get("tag_column") or -1), cfg.get("group_by") == "sentence"
  if cfg.get("group_by") not in (None, "document", "sentence"):
    raise ValueError(f"{NAME}: config.data.group_by={cfg['group_by']!r} is not 'document' "
                     "or 'sentence'")
  doc, sentence, count = [], [], 0

  def flush_sentence():
    nonlocal sentence
    if sentence:
      doc.append(sentence)
    sentence = []

  def documents_out():
    nonlocal doc, count
    out = [doc] if not by_sentence else [[s] for s in doc]
    doc = []
    for d in out:
      if d:
        count += 1
        yield f"{fileio.path(path).name}:{count}", d

  with fileio.open_read(path, text=True) as f:
    for lineno, line in enumerate(f, 1):
      parts = line.split()
      if not parts:
        flush_sentence()
      elif line.startswith(_DOC_MARKERS):
        flush_sentence()
        yield from documents_out()
      elif line.startswith("#end document"):
        flush_sentence()
      else:
        if len(parts) < 2:
          raise ValueError(f"{NAME}: {path}:{lineno} has one column; a word and its tag "
                           "are needed")
        tag = parts[column]
        if tag != "O" and not (tag[:2] in ("B-", "I-") and len(tag) > 2):
          raise ValueError(f"{NAME}: {path}:{lineno}: tag {tag!r} is not O, B-X or I-X "
                           f"(column {column}, config.data.tag_column)")
        sentence.append((parts[0], tag))
  flush_sentence()
  yield from documents_out()


def label_names(cfg: dict) -> tuple:
  if cfg.get("label_names"):
    return tuple(cfg["label_names"])
  path = documents.split_files(cfg, NAME)["train"]
  seen = {tag for _, doc in read_conll(path, cfg) for s in doc for _, tag in s}
  return ("O",) + tuple(sorted(seen - {"O"}))


def encode_words(tok, words: list[str]):
  """Sub-word ids of the words joined by spaces, and the word of each sub-word."""
  starts = np.cumsum([0] + [len(w) + 1 for w in words[:-1]])
  enc = tok.encode(" ".join(words), add_special_tokens=False)
  offsets = np.asarray(enc.offsets, np.int64).reshape(-1, 2)
  word_ids = np.searchsorted(starts, offsets[:, 0], side="right") - 1
  return np.asarray(enc.ids, np.int32), word_ids.astype(np.int32)


class Conll(documents.FileBuilder, skip_registration=True):
  """Tokenised documents with a tag per word."""

  name = NAME

  def features(self):
    ints = lambda: tfds.features.Tensor(shape=(None,), dtype=np.int32)
    return tfds.features.FeaturesDict({
        "id": tfds.features.Text(), "input_ids": ints(), "word_ids": ints(), "tags": ints(),
        "sentence_lengths": ints()})

  def _generate_examples(self, cfg: dict, path: str):
    tok = tokenization.load_tokenizer(cfg["tokenizer"])
    names = list(cfg["label_names"])
    for doc_id, sentences in read_conll(path, cfg):
      words = [w for s in sentences for w, _ in s]
      unknown = sorted({t for s in sentences for _, t in s} - set(names))
      if unknown:
        raise ValueError(f"{NAME}: {path}, document {doc_id}: tags {unknown} are not in "
                         f"config.data.label_names {names}")
      ids, word_ids = encode_words(tok, words)
      yield doc_id, {"id": doc_id, "input_ids": ids, "word_ids": word_ids,
                     "tags": np.asarray([names.index(t) for s in sentences for _, t in s],
                                        np.int32),
                     "sentence_lengths": np.asarray([len(s) for s in sentences], np.int32)}


def _builder(cfg: dict, data_dir: str, seq_len: int | None):
  del seq_len
  documents.tokenizer_of(cfg, NAME)  # before reading the tags: names the field first
  return documents.file_builder(Conll, cfg, data_dir, "ner", ("files", "tag_column", "group_by"),
                                label_names=list(label_names(cfg)))


def num_tokens(builder, split: str) -> np.ndarray:
  """Sub-words per example of a split, cached beside the data."""
  return documents.cached_lengths(builder, split, lambda x: (len(x["input_ids"]),))[:, 0]


# ---- examples -> features (host side, for tasks.token_classification) -------------


@dataclasses.dataclass(frozen=True)
class TokenWindows:
  seq_len: int
  doc_stride: int = 128

  def check(self) -> None:
    if self.seq_len < 3:
      raise ValueError(f"seq_len={self.seq_len} leaves no room between <s> and </s>")
    if not 0 <= self.doc_stride < self.seq_len - 2:
      raise ValueError(f"config.data.doc_stride={self.doc_stride} (the overlap of windows) "
                       f"must be in [0, {self.seq_len - 2}) for seq_len={self.seq_len}")


class Features(windows_lib.WindowedFeatures):
  """The windows of stored examples, from their token counts."""

  def __init__(self, examples, num_tokens_E, spec: TokenWindows, specials: documents.Specials):
    spec.check()
    self.examples, self.spec, self.s = examples, spec, specials
    self.table = windows_lib.window_table(
        [len(windows(max(int(n), 1), spec.seq_len - 2, spec.doc_stride))
         for n in np.asarray(num_tokens_E)])

  def feature(self, example: dict, example_index: int, window: int) -> dict:
    s, L = self.s, self.spec.seq_len
    ids = np.asarray(example["input_ids"], np.int32)
    word_ids = np.asarray(example["word_ids"], np.int64)
    tags = np.asarray(example["tags"], np.int32)
    spans = windows(max(len(ids), 1), L - 2, self.spec.doc_stride)
    start, length = spans[window]
    length = min(length, len(ids) - start)
    out = documents.pack([[s.bos], ids[start:start + length], [s.eos]], L, s.pad)
    out["global_attention_mask"] = np.zeros(L, np.int32)
    out["global_attention_mask"][0] = 1
    t = np.arange(start, start + length)
    first = np.ones(len(ids), bool)
    first[1:] = word_ids[1:] != word_ids[:-1]
    owned = owner_windows(spans, max(len(ids), 1))[:len(ids)] == window
    keep = (first & owned)[t]
    out["word_index"] = np.full(L, -1, np.int32)
    out["word_index"][1 + np.flatnonzero(keep)] = word_ids[t[keep]]
    out["labels"] = np.full(L, out_lib.IGNORE_INDEX, np.int32)
    out["labels"][1 + np.flatnonzero(keep)] = tags[word_ids[t[keep]]]
    out["example_index"] = np.int32(example_index)
    return out

  @staticmethod
  def element_spec(spec: TokenWindows) -> dict:
    spec.check()
    row = ((spec.seq_len,), np.int32)
    return dict(documents.document_spec(spec.seq_len), word_index=row, labels=row,
                example_index=documents.EXAMPLE_INDEX)


def window_spec(cfg: dict, seq_len: int) -> TokenWindows:
  return documents.spec_from(TokenWindows, cfg, seq_len, ("doc_stride",))


def _elements(builder, cfg: dict, *, split: str, seq_len: int, **shard):
  if split not in builder.info.splits:
    raise ValueError(f"{NAME}: no {split} split; set config.data.files.{split}")
  specials = documents.Specials.of(documents.tokenizer_of(cfg, NAME))
  spec = window_spec(cfg, seq_len)
  features = Features(builder.as_data_source()[split], num_tokens(builder, split),
                             spec, specials)
  return pipeline.example_dataset(features, documents.WithWeight(), split=split, **shard)


def _element_spec(cfg: dict, *, split: str, seq_len: int, model_cfg=None) -> dict:
  del model_cfg
  documents.check_split_named(cfg, split, NAME)
  return documents.WithWeight.spec(Features.element_spec(window_spec(cfg, seq_len)))


registry.register(registry.Dataset(
    name=NAME, splits=documents.SPLIT_NAMES, builder=_builder, elements=_elements,
    vocab_size=lambda cfg: documents.vocab_size(cfg, NAME),
    num_labels=lambda cfg: len(label_names(cfg)), fields=FIELDS,
    doc=__doc__.split("\n")[0], label_names=label_names, element_spec=_element_spec))
