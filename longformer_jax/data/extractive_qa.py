"""Extractive QA datasets: SQuAD-format JSON (SQuAD v1.1; TriviaQA converted to it), HotpotQA.

``data_cfg`` fields:

* ``files``: {split: path}.
* ``format``: ``squad`` (default): ``{"data": [{"paragraphs": [{"context", "qas":
  [{"id", "question", "answers": [{"text", "answer_start"}], "aliases": [...]?}]}]}]}``,
  ``aliases`` (optional, TriviaQA) being more gold texts; or ``hotpotqa``: HotpotQA's
  JSON list of ``{"_id", "question", "answer", "context": [[title, [sentence, ...]],
  ...]}``. A HotpotQA context is ``yes no`` then each paragraph as ``title: sentences``
  (so yes/no answers are spans); its answers are found at every occurrence. Only the
  answer is trained and scored (EM/F1), not the supporting facts. Or
  ``tfds_trivia_qa``: tfds's own ``trivia_qa`` (config ``rc``: questions with their
  evidence; tfds has ``rc``, ``rc.nocontext``, ``unfiltered``,
  ``unfiltered.nocontext``, and ``rc.wikipedia`` is the HF hub's name) as tfds prepared
  it, each ``files.SPLIT`` being ``DIR:SPLIT`` (DIR holding its dataset_info.json;
  array_record files): one example per question and Wikipedia page (the paper's
  Wikipedia setting: ``rc``'s web search results are not read), the answer's value and
  aliases found at every occurrence. A question tfds lists twice (``rc`` holds some under
  both its web and Wikipedia sources) is kept once, with a warning that counts them.
* ``find_all_occurrences``: train on every occurrence (as whole words) of every
  answer text and alias in the context (the paper's TriviaQA setup) rather than the listed
  ``answer_start`` positions only.
* ``doc_stride`` (overlap of consecutive windows, 128), ``max_query_length`` (64),
  ``max_occurrences`` (8): see :class:`WindowSpec` below.
* ``tokenizer``: a tokenizer.json or a checkpoint directory.

Stored examples hold the tokenised question and context with the context's
character offsets; :class:`Features` cuts them into windows of the model's length
for the ``question_answering`` task (see that module for the batch fields).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re

import numpy as np
import tensorflow_datasets as tfds

from longformer_jax import tokenization
from longformer_jax.data import documents, pipeline, registry
from longformer_jax.data import windows as windows_lib
from longformer_jax.data.windows import owner_windows, windows

log = logging.getLogger("longformer_jax")

NAME = "extractive_qa"
FORMATS = ("squad", "hotpotqa", "tfds_trivia_qa")
FIELDS = ("files", "format", "find_all_occurrences", "doc_stride", "max_query_length",
          "max_occurrences", "tokenizer")


def read_squad(path: str, find_all: bool = False):
  """(id, question, context, answers, where) of every question; ``answers`` are
  (text, answer_start or None, found anywhere?) as :func:`char_spans` takes them."""
  articles = documents.load_json(path, NAME, "SQuAD-format JSON with a 'data' list",
                                 lambda obj: obj["data"])
  for a, article in enumerate(articles):
    for p, para in enumerate(article.get("paragraphs") or ()):
      where = f"{NAME}: {path}, data[{a}].paragraphs[{p}]"
      context = documents.field_of(para, "context", str, where, "SQuAD format")
      for k, qa in enumerate(para.get("qas") or ()):
        at = f"{where}.qas[{k}]"
        question = documents.field_of(qa, "question", str, at, "SQuAD format")
        answers = [(documents.field_of(x, "text", str, f"{at}.answers[{j}]", "SQuAD format"),
                    x.get("answer_start"), find_all)
                   for j, x in enumerate(qa.get("answers") or ())]
        answers += [(alias, None, find_all) for alias in qa.get("aliases") or ()]
        if not answers:
          raise ValueError(f"{at} (id {qa.get('id')}) has no answers")
        yield str(qa.get("id", f"{a}.{p}.{k}")), question, context, answers, at


def read_hotpotqa(path: str):
  """HotpotQA questions in :func:`read_squad`'s form (see the module docstring)."""
  records = documents.load_json(path, NAME, "HotpotQA JSON, a list of questions")
  for k, rec in enumerate(records):
    where = f"{NAME}: {path}, record {k}"
    question = documents.field_of(rec, "question", str, where, "HotpotQA format")
    answer = documents.field_of(rec, "answer", str, where, "HotpotQA format")
    paragraphs = rec.get("context")
    if not isinstance(paragraphs, list):
      raise ValueError(f"{where} has no list field 'context' (HotpotQA format)")
    context = " ".join(["yes no"] + [f"{title}: {''.join(sentences)}"
                                     for title, sentences in paragraphs])
    # yes / no: the prefix's word, not every "no" of the paragraphs
    gold = (answer, "yes no ".index(answer), False) if answer in ("yes", "no") else (
        answer, None, True)
    yield str(rec.get("_id", k)), question, context, [gold], where


def read_tfds_trivia_qa(spec: str, field: str):
  """tfds ``trivia_qa`` questions in :func:`read_squad`'s form, one per entity page."""
  source = documents.tfds_split(spec, field, NAME)
  text = documents.as_text
  seen, repeats = set(), 0
  for k in range(len(source)):
    rec, where = source[k], f"{NAME}: {field}, example {k}"
    answer = rec["answer"]
    golds = [text(answer["value"])] + [text(a) for a in answer["aliases"]]
    pages = rec["entity_pages"]
    for j, context in enumerate(pages["wiki_context"]):
      qid = f"{text(rec['question_id'])}--{text(pages['filename'][j])}"
      if qid in seen:
        repeats += 1
        continue
      seen.add(qid)
      yield (qid, text(rec["question"]), text(context),
             [(g, None, True) for g in dict.fromkeys(golds)], f"{where}, page {j}")
  if repeats:
    log.warning("%s: %s lists %d question-page pairs more than once; each is kept once",
                NAME, spec, repeats)


def char_spans(context: str, answers, where: str) -> list[tuple[int, int]]:
  """Character spans [start, end) of the gold answers in the context: each answer's
  ``answer_start`` (checked), and with ``anywhere`` every occurrence of its text as
  whole words ("no" is not found inside "not")."""
  spans = []
  for j, (text, start, anywhere) in enumerate(answers):
    if start is not None:
      if context[start:start + len(text)] != text:
        raise ValueError(f"{where}.answers[{j}]: answer_start {start} does not point at "
                         f"{text!r} in the context")
      spans.append((start, start + len(text)))
    if anywhere and text:
      pattern = rf"(?<!\w){re.escape(text)}(?!\w)"
      spans += [m.span() for m in re.finditer(pattern, context)]
  return sorted(set(spans))


def token_spans(offsets_Tx2: np.ndarray, spans: list[tuple[int, int]]) -> np.ndarray:
  """(first, last) token of each character span: the tokens that overlap it."""
  out = []
  ends, starts = offsets_Tx2[:, 1], offsets_Tx2[:, 0]
  for a, b in spans:
    inside = np.flatnonzero((ends > a) & (starts < b) & (ends > starts))
    if len(inside):
      out.append((inside[0], inside[-1]))
  return np.asarray(sorted(set(out)), np.int32).reshape(-1, 2)


class ExtractiveQA(documents.FileBuilder, skip_registration=True):
  """Tokenised questions and contexts, with the gold answers' token spans."""

  name = NAME

  def features(self):
    ints = lambda *shape: tfds.features.Tensor(shape=shape, dtype=np.int32)
    return tfds.features.FeaturesDict({
        "id": tfds.features.Text(), "context": tfds.features.Text(),
        "answers": tfds.features.Text(),  # JSON list of the gold texts
        "question_ids": ints(None), "context_ids": ints(None),
        "offsets": ints(None, 2), "spans": ints(None, 2)})

  def _generate_examples(self, cfg: dict, path: str):
    tok = tokenization.load_tokenizer(cfg["tokenizer"])
    fmt = cfg.get("format") or "squad"
    if fmt == "squad":
      records = read_squad(path, bool(cfg.get("find_all_occurrences")))
    elif fmt == "hotpotqa":
      records = read_hotpotqa(path)
    else:
      records = read_tfds_trivia_qa(path, "config.data.files")
    for qid, question, context, answers, where in records:
      enc = tok.encode(context, add_special_tokens=False)
      offsets = np.asarray(enc.offsets, np.int32).reshape(-1, 2)
      spans = token_spans(offsets, char_spans(context, answers, where))
      golds = list(dict.fromkeys(text for text, *_ in answers))
      yield qid, {"id": qid, "context": context, "answers": json.dumps(golds),
                  "question_ids": np.asarray(tok.encode(question, add_special_tokens=False).ids,
                                             np.int32),
                  "context_ids": np.asarray(enc.ids, np.int32), "offsets": offsets,
                  "spans": spans}


def _builder(cfg: dict, data_dir: str, seq_len: int | None):
  del seq_len  # examples are stored whole; windows are cut per seq_len
  if (cfg.get("format") or "squad") not in FORMATS:
    raise ValueError(f"{NAME}: config.data.format={cfg['format']!r} is not one of {FORMATS}")
  return documents.file_builder(ExtractiveQA, cfg, data_dir, "qa",
                                ("files", "format", "find_all_occurrences"))


# ---- elements ------------------------------------------------------------------------


# ---- examples -> features (host side, for tasks.question_answering) ---------------


@dataclasses.dataclass(frozen=True)
class WindowSpec:
  """How examples are cut: the model length, the overlap of consecutive windows and
  the longest question kept (longer ones are truncated)."""

  seq_len: int
  doc_stride: int = 128
  max_query_length: int = 64
  max_occurrences: int = 8  # answer occurrences kept per window (static K)

  def capacity(self, query_len: int) -> int:
    """Context tokens a window holds after <s> q </s></s> ... </s>."""
    return self.seq_len - min(query_len, self.max_query_length) - 4

  def check(self) -> None:
    room = self.capacity(self.max_query_length)
    if room < 1:
      raise ValueError(f"seq_len={self.seq_len} leaves no room for the context after a "
                       f"config.data.max_query_length={self.max_query_length} question")
    if not 0 <= self.doc_stride < room:
      raise ValueError(f"config.data.doc_stride={self.doc_stride} (the overlap of windows) "
                       f"must be in [0, {room}) for seq_len={self.seq_len}")


class Features(windows_lib.WindowedFeatures):
  """The windows of stored examples; ``lengths_Ex2`` holds each example's (question,
  context) token counts."""

  def __init__(self, examples, lengths_Ex2: np.ndarray, spec: WindowSpec,
               specials: documents.Specials):
    spec.check()
    self.examples, self.spec, self.s = examples, spec, specials
    self.table = windows_lib.window_table(
        [len(windows(int(c), spec.capacity(int(q)), spec.doc_stride))
         for q, c in np.asarray(lengths_Ex2).reshape(-1, 2)])

  def feature(self, example: dict, example_index: int, window: int) -> dict:
    spec, s = self.spec, self.s
    q = np.asarray(example["question_ids"], np.int32)[:spec.max_query_length]
    ctx = np.asarray(example["context_ids"], np.int32)
    spans = windows(len(ctx), spec.capacity(len(q)), spec.doc_stride)
    start, length = spans[window]
    first = len(q) + 3  # position of the window's first context token
    out = documents.pack([[s.bos], q, [s.eos, s.eos], ctx[start:start + length], [s.eos]],
                         spec.seq_len, s.pad)
    L = spec.seq_len
    out["global_attention_mask"] = (np.arange(L) < len(q) + 1).astype(np.int32)
    pos = np.arange(first, first + length)
    out["end_mask"] = np.zeros(L, np.int32)
    out["end_mask"][pos] = 1
    out["start_mask"] = np.zeros(L, np.int32)
    out["start_mask"][pos[owner_windows(spans, len(ctx))[start:start + length] == window]] = 1
    out["offsets"] = np.full((L, 2), -1, np.int32)
    out["offsets"][pos] = np.asarray(example["offsets"], np.int32).reshape(-1, 2)[
        start:start + length]
    gold = np.asarray(example["spans"], np.int64).reshape(-1, 2)
    inside = gold[(gold[:, 0] >= start) & (gold[:, 1] < start + length)]
    inside = inside[:spec.max_occurrences] - start + first
    if len(inside) == 0:
      inside = np.zeros((1, 2), np.int64)  # no answer here: point at <s>
    out["start_positions"] = np.full(spec.max_occurrences, -1, np.int32)
    out["end_positions"] = np.full(spec.max_occurrences, -1, np.int32)
    out["start_positions"][:len(inside)], out["end_positions"][:len(inside)] = inside.T
    out["example_index"] = np.int32(example_index)
    return out

  @staticmethod
  def element_spec(spec: WindowSpec) -> dict:
    spec.check()
    L, K = spec.seq_len, spec.max_occurrences
    row, occurrences = ((L,), np.int32), ((K,), np.int32)
    return dict(documents.document_spec(L), start_mask=row, end_mask=row,
                offsets=((L, 2), np.int32), start_positions=occurrences,
                end_positions=occurrences, example_index=documents.EXAMPLE_INDEX)


def window_spec(cfg: dict, seq_len: int) -> WindowSpec:
  return documents.spec_from(WindowSpec, cfg, seq_len,
                             ("doc_stride", "max_query_length", "max_occurrences"))


def _elements(builder, cfg: dict, *, split: str, seq_len: int, **shard):
  if split not in builder.info.splits:
    raise ValueError(f"{NAME}: no {split} split; set config.data.files.{split}")
  specials = documents.Specials.of(documents.tokenizer_of(cfg, NAME))
  lengths = documents.cached_lengths(
      builder, split, lambda x: (len(x["question_ids"]), len(x["context_ids"])))
  features = Features(builder.as_data_source()[split], lengths,
                             window_spec(cfg, seq_len), specials)
  return pipeline.example_dataset(features, documents.WithWeight(), split=split, **shard)


def _element_spec(cfg: dict, *, split: str, seq_len: int, model_cfg=None) -> dict:
  del model_cfg
  documents.check_split_named(cfg, split, NAME)
  return documents.WithWeight.spec(Features.element_spec(window_spec(cfg, seq_len)))


registry.register(registry.Dataset(
    name=NAME, splits=documents.SPLIT_NAMES, builder=_builder, elements=_elements,
    vocab_size=lambda cfg: documents.vocab_size(cfg, NAME), num_labels=lambda cfg: 2,
    fields=FIELDS, doc=__doc__.split("\n")[0], element_spec=_element_spec))
