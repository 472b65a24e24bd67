"""WikiHop (QAngaroo) multi-hop multiple choice from its JSON files.

``data_cfg`` fields:

* ``files``: {split: path} of WikiHop JSON: a list of ``{"id", "query", "answer",
  "candidates": [...], "supports": [...]}`` (``train.json``, ``dev.json``). The
  query's relation keeps its words (``country_of_citizenship x`` -> ``country of
  citizenship x``).
* ``doc_stride`` (overlap of windows over the documents, 256), ``max_candidates``
  (the static candidate slots, 80: WikiHop has at most 79), ``max_prefix_tokens``
  (the most tokens <s>, query and candidates may take, 512: they are all global, so
  ``config.model.max_global_tokens`` must hold them).
* ``tokenizer``: a tokenizer.json or a checkpoint directory.

:class:`Features` cuts stored examples into windows for the ``candidate_selection`` task.
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import tensorflow_datasets as tfds

from longformer_jax import tokenization
from longformer_jax.data import documents, pipeline, registry
from longformer_jax.data import windows as windows_lib
from longformer_jax.data.windows import windows

NAME = "wikihop"
FIELDS = ("files", "doc_stride", "max_candidates", "max_prefix_tokens", "tokenizer")


def read_wikihop(path: str):
  """(id, query, candidates, answer index, supports, where) of every record."""
  records = documents.load_json(path, NAME, "WikiHop JSON, a list of records")
  for k, rec in enumerate(records):
    where = f"{NAME}: {path}, record {k} (id {rec.get('id')})"
    query = documents.field_of(rec, "query", str, where, "WikiHop format")
    answer = documents.field_of(rec, "answer", str, where, "WikiHop format")
    candidates = rec.get("candidates")
    if not isinstance(candidates, list) or not candidates:
      raise ValueError(f"{where} has no list field 'candidates' (WikiHop format)")
    if answer not in candidates:
      raise ValueError(f"{where}: the answer {answer!r} is not among its candidates")
    supports = rec.get("supports") or []
    yield (str(rec.get("id", k)), query.replace("_", " "), [str(c) for c in candidates],
           candidates.index(answer), [str(s) for s in supports], where)


class WikiHop(documents.FileBuilder, skip_registration=True):
  """Tokenised queries, candidates and supporting documents."""

  name = NAME

  def features(self):
    ints = lambda: tfds.features.Tensor(shape=(None,), dtype=np.int32)
    return tfds.features.FeaturesDict({
        "id": tfds.features.Text(), "candidates": tfds.features.Text(),
        "question_ids": ints(), "candidate_ids": ints(), "candidate_lengths": ints(),
        "support_ids": ints(), "label": tfds.features.Scalar(dtype=np.int32)})

  def _generate_examples(self, cfg: dict, path: str):
    tok = tokenization.load_tokenizer(cfg["tokenizer"])
    eos = documents.Specials.of(tok).eos
    encode = lambda text: tok.encode(text, add_special_tokens=False).ids
    for qid, query, candidates, label, supports, _ in read_wikihop(path):
      cands = [encode(" " + c) for c in candidates]
      docs = [ids + [eos] for ids in map(encode, supports)]
      yield qid, {"id": qid, "candidates": json.dumps(candidates),
                  "question_ids": np.asarray(encode(query), np.int32),
                  "candidate_ids": np.asarray(sum(cands, []), np.int32),
                  "candidate_lengths": np.asarray([len(c) for c in cands], np.int32),
                  "support_ids": np.asarray(sum(docs, []), np.int32), "label": label}


def _builder(cfg: dict, data_dir: str, seq_len: int | None):
  del seq_len
  return documents.file_builder(WikiHop, cfg, data_dir, "wh", ("files",))


def _lengths(example) -> tuple:
  return (len(example["question_ids"]), len(example["candidate_ids"]),
          len(example["candidate_lengths"]), len(example["support_ids"]))


# ---- examples -> features (host side, for tasks.candidate_selection) --------------


@dataclasses.dataclass(frozen=True)
class CandidateWindows:
  seq_len: int
  doc_stride: int = 256
  max_candidates: int = 80
  max_prefix_tokens: int = 512  # <s>, query and candidates: all global

  def capacity(self, prefix_len: int) -> int:
    return self.seq_len - prefix_len - 1


class Features(windows_lib.WindowedFeatures):
  """The windows of stored examples, from their lengths (question, candidates'
  total, number of candidates, documents)."""

  def __init__(self, examples, lengths_Ex4: np.ndarray, spec: CandidateWindows,
               specials: documents.Specials):
    self.examples, self.spec, self.s = examples, spec, specials
    counts = []
    for e, (q, c_total, c_count, docs) in enumerate(np.asarray(lengths_Ex4).reshape(-1, 4)):
      if c_count > spec.max_candidates:
        raise ValueError(f"example {e} has {c_count} candidates, more than "
                         f"config.data.max_candidates={spec.max_candidates}")
      prefix = 2 + int(q) + int(c_total) + int(c_count)
      if prefix > spec.max_prefix_tokens:
        raise ValueError(f"example {e}: the question and candidates take {prefix} tokens, "
                         f"more than config.data.max_prefix_tokens={spec.max_prefix_tokens}")
      cap = spec.capacity(prefix)
      if cap <= spec.doc_stride:
        raise ValueError(f"example {e}: the question and candidates take {prefix} tokens, "
                         f"leaving {cap} of seq_len={spec.seq_len} for documents; "
                         f"config.data.doc_stride={spec.doc_stride} needs more")
      counts.append(len(windows(max(int(docs), 1), cap, spec.doc_stride)))
    self.table = windows_lib.window_table(counts)

  def feature(self, example: dict, example_index: int, window: int) -> dict:
    s, spec = self.s, self.spec
    q = np.asarray(example["question_ids"], np.int32)
    lengths = np.asarray(example["candidate_lengths"], np.int64)
    cands = np.split(np.asarray(example["candidate_ids"], np.int32), np.cumsum(lengths)[:-1])
    docs = np.asarray(example["support_ids"], np.int32)
    prefix = [[s.bos], q, [s.eos]]
    positions, at = [], len(q) + 2
    for c in cands:
      positions.append(at)
      prefix += [c, [s.eos]]
      at += len(c) + 1
    spans = windows(max(len(docs), 1), spec.capacity(at), spec.doc_stride)
    start, length = spans[window]
    out = documents.pack(prefix + [docs[start:start + length], [s.eos]], spec.seq_len, s.pad)
    out["global_attention_mask"] = (np.arange(spec.seq_len) < at).astype(np.int32)
    out["candidate_positions"] = np.full(spec.max_candidates, -1, np.int32)
    out["candidate_positions"][:len(positions)] = positions
    out["labels"] = np.int32(example["label"])
    out["example_index"] = np.int32(example_index)
    return out

  @staticmethod
  def element_spec(spec: CandidateWindows) -> dict:
    return dict(documents.document_spec(spec.seq_len),
                candidate_positions=((spec.max_candidates,), np.int32),
                labels=((), np.int32), example_index=documents.EXAMPLE_INDEX)


def window_spec(cfg: dict, seq_len: int) -> CandidateWindows:
  return documents.spec_from(CandidateWindows, cfg, seq_len,
                             ("doc_stride", "max_candidates", "max_prefix_tokens"))


def _elements(builder, cfg: dict, *, split: str, seq_len: int, **shard):
  if split not in builder.info.splits:
    raise ValueError(f"{NAME}: no {split} split; set config.data.files.{split}")
  specials = documents.Specials.of(documents.tokenizer_of(cfg, NAME))
  spec = window_spec(cfg, seq_len)
  features = Features(builder.as_data_source()[split],
                             documents.cached_lengths(builder, split, _lengths), spec, specials)
  return pipeline.example_dataset(features, documents.WithWeight(), split=split, **shard)


def _element_spec(cfg: dict, *, split: str, seq_len: int, model_cfg=None) -> dict:
  del model_cfg
  documents.check_split_named(cfg, split, NAME)
  return documents.WithWeight.spec(Features.element_spec(window_spec(cfg, seq_len)))


registry.register(registry.Dataset(
    name=NAME, splits=documents.SPLIT_NAMES, builder=_builder, elements=_elements,
    vocab_size=lambda cfg: documents.vocab_size(cfg, NAME), num_labels=lambda cfg: 1,
    fields=FIELDS, doc=__doc__.split("\n")[0], element_spec=_element_spec))
