"""Long-document tasks built from the King James Bible (real text an installable package ships).

The corpus: Debian's ``bible-kjv`` program and its ``bible-kjv-text`` data, unpacked
without installing them, print every verse as one line ``Ge1:1 In the beginning ...``:

    apt-get download bible-kjv bible-kjv-text
    dpkg-deb -x bible-kjv_*.deb kjv && dpkg-deb -x bible-kjv-text_*.deb kjv
    kjv/usr/bin/bible -f -p kjv/usr/lib "Gen1:1-Rev22:21" > kjv.txt   # 31,102 verses

Blocks of ten chapters are split 90/10 into train / held-out by a hash of their
name; the
pretraining text and the training examples of both tasks come from the train
chapters, the validation examples from the held-out ones only.

* ``testament`` (document classification, JSONL ``text``/``label``): a document is
  a run of 480-700 words of consecutive Old Testament verses (the filler) followed by
  a passage of 500-800 words of consecutive verses from elsewhere; the label is the
  passage's testament (``old`` or ``new``, balanced). Everything before the passage
  (``evidence_char``) is Old Testament filler, so a model reading the first 512
  tokens sees nothing that decides the label.
* ``intruder`` (extractive QA, SQuAD-format JSON): the context is a run of
  1,500-1,800 words of consecutive Old Testament verses with a passage of three
  consecutive New Testament verses inserted at a verse boundary drawn uniformly;
  the question is always "Where does the New Testament passage begin?", the answer
  the passage's first six words. Most answers lie past the first 512 tokens; a
  model must find the passage by what it says, as a reader finds evidence.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re

import numpy as np

NEW_TESTAMENT_FIRST_BOOK = "Mat"
QUESTION = "Where does the New Testament passage begin?"
_REF = re.compile(r"^(\d?[A-Za-z]+)(\d+):(\d+)\s+(.*)$")


@dataclasses.dataclass(frozen=True)
class Verse:
  book: str
  chapter: int
  text: str
  new_testament: bool


def read_verses(path: str) -> list[Verse]:
  """The verses of ``bible -f`` output, in order (ValueError naming the line if malformed)."""
  verses, new = [], False
  with open(path, encoding="utf-8") as f:
    for lineno, line in enumerate(f, 1):
      if not line.strip():
        continue
      m = _REF.match(line.strip())
      if not m:
        raise ValueError(f"{path}:{lineno}: not a 'BookC:V text' verse line: {line[:60]!r}")
      new = new or m[1] == NEW_TESTAMENT_FIRST_BOOK
      verses.append(Verse(m[1], int(m[2]), m[4], new))
  if not verses or not new:
    raise ValueError(f"{path}: expected the whole Bible (Gen1:1-Rev22:21), got "
                     f"{len(verses)} verses")
  return verses


def held_out(verse: Verse, fraction: float = 0.1) -> bool:
  """Whether the verse's block of ten chapters (of its book) is held out."""
  digest = hashlib.sha256(f"{verse.book}{verse.chapter // 10}".encode()).digest()
  return int.from_bytes(digest[:4], "little") < fraction * 2**32


def runs(verses: list[Verse], split: str) -> list[list[Verse]]:
  """Maximal runs of consecutive verses of one split (train or validation)."""
  out, cur = [], []
  for v in verses:
    if held_out(v) == (split == "validation"):
      cur.append(v)
    elif cur:
      out.append(cur)
      cur = []
  if cur:
    out.append(cur)
  return out


def words(verses) -> int:
  return sum(len(v.text.split()) for v in verses)


def take_words(run: list[Verse], start: int, n_words: int) -> list[Verse]:
  """Consecutive verses of ``run`` from ``start`` until they hold ``n_words`` words."""
  out, total = [], 0
  for v in run[start:]:
    if total >= n_words:
      break
    out.append(v)
    total += len(v.text.split())
  return out


@dataclasses.dataclass(frozen=True)
class Pool:
  """Runs of consecutive verses and their word counts (counted once)."""
  runs: list
  counts: list

  @classmethod
  def of(cls, runs_: list) -> "Pool":
    return cls(runs_, [words(r) for r in runs_])


def testament_pools(verses, split: str) -> tuple[Pool, Pool]:
  """(Old Testament, New Testament) runs of consecutive verses of ``split``."""
  all_runs = runs(verses, split)
  old = [r for r in ([v for v in r if not v.new_testament] for r in all_runs) if r]
  new = [r for r in ([v for v in r if v.new_testament] for r in all_runs) if r]
  return Pool.of(old), Pool.of(new)


def _pick_span(rng, pool: Pool, n_words: int, where: str) -> list[Verse]:
  """A random stretch of consecutive verses with at least ``n_words`` words."""
  long_enough = [r for r, c in zip(pool.runs, pool.counts) if c >= n_words + 50]
  if not long_enough:
    raise ValueError(f"no run of {where} verses holds {n_words} words")
  sizes = np.array([len(r) for r in long_enough], float)
  for _ in range(100):
    run = long_enough[rng.choice(len(long_enough), p=sizes / sizes.sum())]
    span = take_words(run, int(rng.integers(len(run))), n_words)
    if words(span) >= n_words:
      return span
  raise ValueError(f"could not draw {n_words} consecutive words of {where} verses")


def testament_examples(verses, split: str, n: int, seed: int, *, filler_words=(480, 700),
                       passage_words=(500, 800)) -> list[dict]:
  """The ``testament`` classification documents (see the module docstring)."""
  rng = np.random.default_rng(seed)
  old, new = testament_pools(verses, split)
  out = []
  for i in range(n):
    label = "new" if i % 2 else "old"
    passage = _pick_span(rng, new if label == "new" else old,
                         int(rng.integers(*passage_words)), label)
    filler = _pick_span(rng, old, int(rng.integers(*filler_words)), "Old Testament")
    filler_text = " ".join(v.text for v in filler)
    text = filler_text + " " + " ".join(v.text for v in passage)
    out.append(dict(id=f"{split}-{i}", text=text, label=label,
                    evidence_char=len(filler_text) + 1))
  return out


def _weights(pool, min_len: int) -> np.ndarray:
  w = np.array([max(len(r) - min_len + 1, 0) for r in pool], float)
  return w / w.sum()


def intruder_examples(verses, split: str, n: int, seed: int, *, context_words=(1500, 1800),
                      passage_verses: int = 3, answer_words: int = 6) -> list[dict]:
  """The ``intruder`` QA examples as SQuAD-format articles (see the module docstring)."""
  rng = np.random.default_rng(seed)
  old, new = testament_pools(verses, split)
  new = [r for r in new.runs if len(r) >= passage_verses]
  articles = []
  for i in range(n):
    span = _pick_span(rng, old, int(rng.integers(*context_words)), "Old Testament")
    run = new[rng.choice(len(new), p=_weights(new, passage_verses))]
    at = int(rng.integers(len(run) - passage_verses + 1))
    passage = " ".join(v.text for v in run[at:at + passage_verses])
    cut = int(rng.integers(len(span) + 1))  # a verse boundary, uniformly
    before = " ".join(v.text for v in span[:cut])
    after = " ".join(v.text for v in span[cut:])
    start = len(before) + 1 if before else 0
    context = " ".join(x for x in (before, passage, after) if x)
    answer = " ".join(passage.split()[:answer_words]).rstrip(".,;:?!")
    qa = dict(id=f"{split}-{i}", question=QUESTION,
              answers=[dict(text=answer, answer_start=start)])
    articles.append(dict(title=f"{span[0].book} {span[0].chapter}",
                         paragraphs=[dict(context=context, qas=[qa])]))
  return articles


def truncate_contexts(articles: list[dict], max_chars_of) -> list[dict]:
  """A copy whose contexts are cut to ``max_chars_of(question, context)`` characters
  (the 512-token baseline); questions whose answer is cut off keep their gold answer,
  so they count as misses."""
  out = []
  for art in articles:
    para = art["paragraphs"][0]
    qa = para["qas"][0]
    keep = max_chars_of(qa["question"], para["context"])
    context = para["context"][:keep]
    answers = qa["answers"] if qa["answers"][0]["answer_start"] + len(
        qa["answers"][0]["text"]) <= keep else [dict(text=qa["answers"][0]["text"])]
    out.append(dict(art, paragraphs=[dict(context=context, qas=[dict(qa, answers=answers)])]))
  return out


def write_jsonl(path: str, records) -> None:
  with open(path, "w") as f:
    for r in records:
      f.write(json.dumps(r) + "\n")


def write_squad(path: str, articles) -> None:
  with open(path, "w") as f:
    json.dump(dict(version="1.1", data=articles), f)
