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

The ``candidate_selection`` task cuts stored examples into windows.
"""

from __future__ import annotations

import json

import numpy as np
import tensorflow_datasets as tfds

from longformer_jax import tokenization
from longformer_jax.data import documents, pipeline, registry
from longformer_jax.tasks import candidate_selection as cs_lib

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


def window_spec(cfg: dict, seq_len: int) -> cs_lib.CandidateWindows:
  return documents.spec_from(cs_lib.CandidateWindows, cfg, seq_len,
                             ("doc_stride", "max_candidates", "max_prefix_tokens"))


def _elements(builder, cfg: dict, *, split: str, seq_len: int, **shard):
  if split not in builder.info.splits:
    raise ValueError(f"{NAME}: no {split} split; set data_cfg.files.{split}")
  specials = documents.Specials.of(documents.tokenizer_of(cfg, NAME))
  spec = window_spec(cfg, seq_len)
  features = cs_lib.Features(builder.as_data_source()[split],
                             documents.cached_lengths(builder, split, _lengths), spec, specials)
  return pipeline.example_dataset(features, documents.WithWeight(), split=split, **shard)


def _element_spec(cfg: dict, *, split: str, seq_len: int, model_cfg=None) -> dict:
  del model_cfg
  documents.check_split_named(cfg, split, NAME)
  return documents.WithWeight.spec(cs_lib.Features.element_spec(window_spec(cfg, seq_len)))


registry.register(registry.Dataset(
    name=NAME, splits=documents.SPLIT_NAMES, builder=_builder, elements=_elements,
    vocab_size=lambda cfg: documents.vocab_size(cfg, NAME), num_labels=lambda cfg: 1,
    fields=FIELDS, doc=__doc__.split("\n")[0], element_spec=_element_spec))
