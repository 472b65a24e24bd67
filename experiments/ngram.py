"""Character n-gram baselines for a text8-style table: Kneser-Ney, Witten-Bell and xz.

Interpolated Kneser-Ney and interpolated Witten-Bell character LMs of orders 1-5 are
fitted on the train split of a text8-style zip (``corpora/text8_style.py``) and report bits per
character on the validation or test split, next to xz's compression of that split:

    python experiments/ngram.py gcide8.zip --orders 1 2 3 4 5 --split validation

An n-gram is an int64 code (symbol ids in base ``len(alphabet)``). Fitting counts the
order-N codes of the training text once (dense ``bincount`` or a sort); every lower
order is derived from the types of the order above, never from the text again:
Witten-Bell's raw counts by summing over the last symbol, Kneser-Ney's continuation
counts N1+(. u) by counting distinct left extensions. Scoring looks codes up with
``searchsorted``; nothing loops over characters in Python.

Each character is scored with up to N-1 preceding characters of the evaluated string
itself (fewer at its start; context is never taken from the training text). The
alphabet is the training text's characters.
"""

from __future__ import annotations

import argparse
import dataclasses
import lzma
import time

import numpy as np

from corpora import text8_style

KNESER_NEY, WITTEN_BELL = "kneser_ney", "witten_bell"
DENSE_COUNT_MAX = 1 << 24  # n-gram spaces up to this size are counted with bincount
LZMA_MAX_DICT = 1536 << 20  # the largest dictionary LZMA2 takes


@dataclasses.dataclass
class Level:
  """Order-k statistics: the k-gram types (sorted codes) and their counts (raw, or
  Kneser-Ney continuation counts), and per context (the (k-1)-gram prefix, sorted)
  the sum of those counts and the number of distinct following symbols."""

  gram_codes: np.ndarray      # (G,) int64, sorted
  gram_counts: np.ndarray     # (G,) float64
  context_codes: np.ndarray   # (C,) int64, sorted
  context_totals: np.ndarray  # (C,) float64
  context_types: np.ndarray   # (C,) float64
  discount: float = 0.0       # Kneser-Ney's D at this order (unused by Witten-Bell)


@dataclasses.dataclass
class CharNgramLM:
  """An interpolated character LM; ``levels[k - 1]`` holds order k.

  ``interpolate_uniform``: the order-1 distribution is interpolated with the uniform
  distribution over the alphabet (True), or is the bare (continuation) unigram (False,
  NLTK's convention).
  """

  alphabet: str
  method: str
  levels: list[Level]
  interpolate_uniform: bool = True

  @property
  def order(self) -> int:
    return len(self.levels)

  @property
  def base(self) -> int:
    return len(self.alphabet)


# ---- codes and counts -------------------------------------------------------------


def _code_points(text: str) -> np.ndarray:
  return np.frombuffer(text.encode("utf-32-le"), np.uint32)


def alphabet_of(text: str) -> str:
  """The distinct characters of ``text``, sorted."""
  present = np.flatnonzero(np.bincount(_code_points(text)))
  return "".join(map(chr, present))


def encode(text: str, alphabet: str) -> np.ndarray:
  """Symbol ids (T,) int64 of ``text`` (ValueError naming a character not in ``alphabet``)."""
  points, alpha_points = _code_points(text), _code_points(alphabet)
  size = max(int(alpha_points.max(initial=0)), int(points.max(initial=0))) + 1
  lut = np.full(size, -1, np.int64)
  lut[alpha_points] = np.arange(len(alpha_points))
  ids = lut[points]
  if ids.size and ids.min() < 0:
    bad = chr(int(points[np.argmin(ids)]))
    raise ValueError(f"character {bad!r} is not in the model's alphabet {alphabet!r}")
  return ids


def gram_codes(ids: np.ndarray, n: int, base: int) -> np.ndarray:
  """Codes (T-n+1,) of the n-grams of ``ids`` by start: sum_j ids[i+j] * base**(n-1-j)."""
  count = len(ids) - n + 1
  codes = ids[:count].astype(np.int64)
  for j in range(1, n):
    codes *= base
    codes += ids[j:j + count]
  return codes


def count_codes(codes: np.ndarray, space: int) -> tuple[np.ndarray, np.ndarray]:
  """(sorted distinct codes, their counts) of ``codes`` in ``[0, space)``."""
  if space <= DENSE_COUNT_MAX:  # a linear pass instead of a sort
    counts = np.bincount(codes, minlength=space)
    types = np.flatnonzero(counts)
    return types.astype(np.int64), counts[types]
  types, counts = np.unique(codes, return_counts=True)
  return types, counts


def _run_starts(keys: np.ndarray) -> np.ndarray:
  """Indices where a new run of equal values starts in sorted, non-empty ``keys``."""
  return np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]])


def _make_level(codes: np.ndarray, counts: np.ndarray, base: int, discount=0.0) -> Level:
  """A Level from sorted k-gram codes and their counts; a context's k-grams are one run."""
  prefix = codes // base
  starts = _run_starts(prefix)
  counts = counts.astype(np.float64)
  return Level(codes, counts, prefix[starts], np.add.reduceat(counts, starts),
               np.diff(np.r_[starts, len(codes)]).astype(np.float64), float(discount))


def _raw_tables(ids: np.ndarray, order: int, base: int, log) -> list:
  """[(codes, counts)] of raw k-gram counts, k = 1..order, from one pass over the text.

  c_k(u) sums c_{k+1}(u w) over w, plus one for the text's last k-gram (the only
  occurrence not followed by a symbol).
  """
  log(f"counting {order}-grams of {len(ids):,} characters")
  tables = [count_codes(gram_codes(ids, order, base), base ** order)]
  for k in range(order - 1, 0, -1):
    codes, counts = tables[0]
    prefix = codes // base
    starts = _run_starts(prefix)
    codes, counts = prefix[starts], np.add.reduceat(counts, starts)
    last = int(gram_codes(ids[len(ids) - k:], k, base)[0])
    at = int(np.searchsorted(codes, last))
    if at < len(codes) and codes[at] == last:
      counts[at] += 1
    else:
      codes, counts = np.insert(codes, at, last), np.insert(counts, at, 1)
    tables.insert(0, (codes, counts))
  return tables


def _check_fit_args(train: str, order: int) -> tuple[str, np.ndarray]:
  if order < 1:
    raise ValueError(f"order must be at least 1, got {order}")
  if len(train) < order:
    raise ValueError(f"training text of {len(train)} characters is shorter than order {order}")
  alphabet = alphabet_of(train)
  if len(alphabet) ** order >= 2 ** 62:
    raise ValueError(f"{len(alphabet)} symbols ** order {order} overflows int64 n-gram codes")
  return alphabet, encode(train, alphabet)


def _progress(verbose: bool):
  """A ``log(message)`` printing the seconds since it was made, or doing nothing."""
  start = time.perf_counter()

  def log(message: str) -> None:
    if verbose:
      print(f"  [{time.perf_counter() - start:6.1f}s] {message}", flush=True)

  return log


# ---- fitting ----------------------------------------------------------------------


def chen_goodman_discount(counts: np.ndarray) -> float:
  """D = n1 / (n1 + 2 n2) from the counts' count-of-counts (0.5 when both are zero)."""
  n1, n2 = int(np.sum(counts == 1)), int(np.sum(counts == 2))
  return n1 / (n1 + 2 * n2) if n1 + 2 * n2 else 0.5


def _discounts(discount, order: int) -> list:
  """One discount (or None: estimate it) per order, index k-1."""
  if discount is None or np.ndim(discount) == 0:
    return [discount] * order
  if len(discount) != order:
    raise ValueError(f"{len(discount)} discounts given for order {order}")
  return list(discount)


def fit_kneser_ney(train: str, order: int, discount=None, *, interpolate_uniform: bool = True,
                   verbose: bool = False) -> CharNgramLM:
  """Interpolated Kneser-Ney with an absolute discount D_k per order.

  P_k(w|h) = (max(a(h w) - D_k, 0) + D_k T(h) P_{k-1}(w|h')) / S(h): a the raw counts
  at the top order and the continuation counts N1+(. u) (distinct symbols before u)
  below, S(h) = sum_w a(h w), T(h) the number of w with a(h w) > 0; an unseen h takes
  P_{k-1}, and P_0 is uniform. ``discount``: None (per order,
  :func:`chen_goodman_discount` of that order's counts), one float, or one per order
  (index k-1). With the alphabet the training text's, the uniform share reaches only
  symbols of continuation count zero (a first character found nowhere else); without
  ``interpolate_uniform`` the order-1 level is the bare continuation unigram.
  """
  alphabet, ids = _check_fit_args(train, order)
  base, log = len(alphabet), _progress(verbose)
  discounts = _discounts(discount, order)
  log(f"counting {order}-grams of {len(ids):,} characters")
  codes, counts = count_codes(gram_codes(ids, order, base), base ** order)
  seen_above, levels = codes, []  # the (k+1)-grams the text holds (raw types)
  for k in range(order, 0, -1):
    if k < order:  # N1+(. u): distinct symbols seen before u
      codes, counts = count_codes(seen_above % base ** k, base ** k)
      # The k-grams the text holds: those after some symbol, and the one it starts with.
      seen_above = np.union1d(codes, gram_codes(ids[:k], k, base))
    d = chen_goodman_discount(counts) if discounts[k - 1] is None else float(discounts[k - 1])
    if k == 1 and not interpolate_uniform:
      d = 0.0
    if not 0.0 <= d <= 1.0:
      raise ValueError(f"discount at order {k} must lie in [0, 1], got {d}")
    levels.insert(0, _make_level(codes, counts, base, d))
    log(f"order {k}: {len(codes):,} types, {len(levels[0].context_codes):,} contexts, D={d:.4f}")
  return CharNgramLM(alphabet, KNESER_NEY, levels, interpolate_uniform)


def fit_witten_bell(train: str, order: int, *, interpolate_uniform: bool = True,
                    verbose: bool = False) -> CharNgramLM:
  """Interpolated Witten-Bell: P(w|h) = (c(h w) + T(h) P(w|h')) / (c(h) + T(h)), T(h) the
  number of distinct symbols seen after h; without ``interpolate_uniform`` the order-1
  level is the maximum-likelihood unigram."""
  alphabet, ids = _check_fit_args(train, order)
  log = _progress(verbose)
  tables = _raw_tables(ids, order, len(alphabet), log)
  levels = [_make_level(codes, counts, len(alphabet)) for codes, counts in tables]
  for k, level in enumerate(levels, 1):
    log(f"order {k}: {len(level.gram_codes):,} types, {len(level.context_codes):,} contexts")
  return CharNgramLM(alphabet, WITTEN_BELL, levels, interpolate_uniform)


def fit(train: str, order: int, method: str, **kwargs) -> CharNgramLM:
  """:func:`fit_kneser_ney` or :func:`fit_witten_bell` by name."""
  fits = {KNESER_NEY: fit_kneser_ney, WITTEN_BELL: fit_witten_bell}
  if method not in fits:
    raise ValueError(f"method must be one of {sorted(fits)}, got {method!r}")
  return fits[method](train, order, **kwargs)


# ---- scoring ----------------------------------------------------------------------


def _lookup(sorted_codes: np.ndarray, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """(index, found) of each query in ``sorted_codes`` (index clipped into range)."""
  if not len(sorted_codes):
    return np.zeros(len(queries), np.int64), np.zeros(len(queries), bool)
  at = np.minimum(np.searchsorted(sorted_codes, queries), len(sorted_codes) - 1)
  return at, sorted_codes[at] == queries


def _interpolate(model: CharNgramLM, k: int, grams: np.ndarray, lower: np.ndarray) -> np.ndarray:
  """P_k(w | h) for k-gram codes (Q,) ``grams`` = (h, w), given ``lower`` (Q,) = P_{k-1}(w | h').

  An unseen context h takes the lower order as is.
  """
  level = model.levels[k - 1]
  ctx_at, seen = _lookup(level.context_codes, grams // model.base)
  gram_at, found = _lookup(level.gram_codes, grams)
  count = np.where(found, level.gram_counts[gram_at], 0.0)
  total = np.where(seen, level.context_totals[ctx_at], 1.0)
  types = np.where(seen, level.context_types[ctx_at], 0.0)
  if k == 1 and not model.interpolate_uniform:
    p = count / total
  elif model.method == KNESER_NEY:
    d = level.discount
    p = (np.maximum(count - d, 0.0) + d * types * lower) / total
  else:
    p = (count + types * lower) / (total + types)
  return np.where(seen, p, lower)


def char_probs(model: CharNgramLM, text: str) -> np.ndarray:
  """P(text[i] | up to order-1 preceding characters of ``text``), (len(text),) float64."""
  ids = encode(text, model.alphabet)
  probs = np.full(len(ids), 1.0 / model.base)
  for k in range(1, min(model.order, len(ids)) + 1):
    # The k-gram starting at j ends at position j + k - 1; earlier positions keep P_{k-1}.
    probs[k - 1:] = _interpolate(model, k, gram_codes(ids, k, model.base), probs[k - 1:])
  return probs


def bits_per_char(model: CharNgramLM, text: str) -> float:
  """Mean -log2 P of the characters of ``text`` (see :func:`char_probs`)."""
  return float(-np.mean(np.log2(char_probs(model, text))))


def context_distribution(model: CharNgramLM, context: str) -> np.ndarray:
  """P(w | the last order-1 characters of ``context``) for every w, (len(alphabet),)."""
  ids = encode(context, model.alphabet)
  ids = ids[len(ids) - min(len(ids), model.order - 1):]
  probs = np.full(model.base, 1.0 / model.base)
  symbols = np.arange(model.base, dtype=np.int64)
  for k in range(1, len(ids) + 2):
    history = gram_codes(ids[len(ids) - (k - 1):], k - 1, model.base)[0] if k > 1 else 0
    probs = _interpolate(model, k, history * model.base + symbols, probs)
  return probs


# ---- xz -----------------------------------------------------------------------------


def xz_size(data: bytes, dict_size: int) -> int:
  """Bytes of ``data`` compressed by xz -9e with an LZMA2 dictionary of ``dict_size``."""
  filters = [{"id": lzma.FILTER_LZMA2, "preset": 9 | lzma.PRESET_EXTREME,
              "dict_size": int(min(max(dict_size, 4096), LZMA_MAX_DICT))}]
  return len(lzma.compress(data, format=lzma.FORMAT_XZ, filters=filters))


def xz_bits_per_char(train: str, test: str) -> dict[str, float]:
  """xz's bits per character of ``test``: alone, and conditional on ``train``.

  "alone" (8 |xz(test)| / |test|) is what the compressor learns from the test text
  itself, so it is no match for a model fitted on train. "conditional"
  (8 (|xz(train + test)| - |xz(train)|) / |test|) lets it draw on the training text as
  the models do (the dictionary holds both, so every match in train is reachable);
  the container's fixed overhead cancels in the difference.
  """
  train_bytes, test_bytes = train.encode("utf-8"), test.encode("utf-8")
  dict_size = len(train_bytes) + len(test_bytes)
  alone = xz_size(test_bytes, dict_size)
  conditional = xz_size(train_bytes + test_bytes, dict_size) - xz_size(train_bytes, dict_size)
  return {"alone": 8.0 * alone / len(test), "conditional": 8.0 * conditional / len(test)}


# ---- command line -----------------------------------------------------------------


def baseline_table(train: str, held_out: str, orders, *, verbose: bool = True) -> list[dict]:
  """[{order, kneser_ney, witten_bell}] bits per character of ``held_out``."""
  rows = []
  for order in orders:
    row = {"order": order}
    for method in (KNESER_NEY, WITTEN_BELL):
      if verbose:
        print(f"{method}, order {order}:", flush=True)
      row[method] = bits_per_char(fit(train, order, method, verbose=verbose), held_out)
    rows.append(row)
  return rows


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("corpus", help="a text8-style zip (member 'text8')")
  parser.add_argument("--orders", type=int, nargs="+", default=[1, 2, 3, 4, 5])
  parser.add_argument("--split", choices=("validation", "test"), default="validation")
  parser.add_argument("--max-train-chars", type=int, default=None,
                      help="fit on the first N characters of the train split only")
  parser.add_argument("--no-xz", action="store_true", help="skip the xz rows")
  args = parser.parse_args(argv)
  splits = text8_style.split_text(args.corpus)
  train, held_out = splits["train"][:args.max_train_chars], splits[args.split]
  print(f"train: {len(train):,} characters; {args.split}: {len(held_out):,} characters")
  rows = baseline_table(train, held_out, args.orders)
  print("\n| order | KN bpc | WB bpc |\n|---|---|---|")
  for r in rows:
    print(f"| {r['order']} | {r[KNESER_NEY]:.4f} | {r[WITTEN_BELL]:.4f} |")
  if not args.no_xz:
    xz = xz_bits_per_char(train, held_out)
    print(f"\n| xz -9e | bpc |\n|---|---|\n| {args.split} alone | {xz['alone']:.4f} |\n"
          f"| {args.split} after train | {xz['conditional']:.4f} |")


if __name__ == "__main__":
  main()
