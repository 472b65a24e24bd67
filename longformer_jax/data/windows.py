"""Cutting examples longer than the model into overlapping windows.

Tasks whose examples can exceed ``seq_len`` (QA contexts, NER documents, WikiHop
supports) turn each stored example into one feature per window: a
:class:`WindowedFeatures` subclass builds the (example, window) table from the
examples' stored lengths, without decoding them, and makes a feature on access;
its ``element_spec`` gives a feature's structure without any example.
"""

from __future__ import annotations

import numpy as np


def windows(num_tokens: int, capacity: int, overlap: int) -> list[tuple[int, int]]:
  """(start, length) of the windows covering ``num_tokens`` tokens; consecutive
  windows share ``overlap`` tokens, the last one ends at the last token."""
  out, start = [], 0
  while True:
    length = min(capacity, num_tokens - start)
    out.append((start, length))
    if start + length >= num_tokens:
      return out
    start += capacity - overlap


def owner_windows(spans: list[tuple[int, int]], num_tokens: int) -> np.ndarray:
  """For each token, the window where it has the most context (the smaller of its
  left and right distances to the window's edges, ties broken towards the longer
  window, then the first): the original BERT SQuAD rule."""
  best = np.full(num_tokens, -1, np.int64)
  best_score = np.full(num_tokens, -np.inf)
  for w, (start, length) in enumerate(spans):
    t = np.arange(start, start + length)
    score = np.minimum(t - start, start + length - 1 - t) + 0.01 * length
    better = score > best_score[t]
    best[t[better]], best_score[t[better]] = w, score[better]
  return best


def window_table(counts_E) -> np.ndarray:
  """(F, 2) rows (example, window) for examples with ``counts_E`` windows each."""
  counts = np.asarray(counts_E, np.int64)
  examples = np.repeat(np.arange(len(counts)), counts)
  first = np.repeat(np.cumsum(counts) - counts, counts)
  return np.stack([examples, np.arange(len(examples)) - first], axis=1)


class WindowedFeatures:
  """Random access to the features of stored ``examples``, one per row of
  ``table``; subclasses set both and define ``feature(example, index, window)``."""

  examples = None
  table = np.zeros((0, 2), np.int64)

  def __len__(self) -> int:
    return len(self.table)

  def __getitem__(self, k: int) -> dict:
    e, w = self.table[int(k)]
    return self.feature(self.examples[int(e)], int(e), int(w))

  def feature(self, example: dict, example_index: int, window: int) -> dict:
    raise NotImplementedError

  @staticmethod
  def element_spec(spec) -> dict:
    """``{name: (shape, dtype)}`` of every feature cut by ``spec`` (what :meth:`feature`
    returns), from the spec alone."""
    raise NotImplementedError
