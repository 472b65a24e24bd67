"""Character n-gram baselines (experiments/ngram.py): against NLTK's language models,
closed forms, and the xz baseline; plus text8_style's wikifil normalisation."""

import os
import sys

import numpy as np
import pytest

EXPERIMENTS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                           "experiments")
if EXPERIMENTS not in sys.path:
  sys.path.insert(0, EXPERIMENTS)

import ngram  # noqa: E402
from corpora import text8_style  # noqa: E402

WORDS = ("the", "cat", "sat", "on", "a", "mat", "and", "dog", "ran", "far", "into",
         "mud", "big", "red", "quick", "brown", "fox", "jumps", "over", "lazy")


def word_text(n_words: int, seed: int) -> str:
  rng = np.random.default_rng(seed)
  return " ".join(rng.choice(WORDS, n_words))


# "@" occurs only at the start of the training text, so no scored context begins there.
TRAIN = "@" + word_text(90, seed=0)
HELD_OUT = word_text(30, seed=1) + " " + "".join(
    np.random.default_rng(2).choice(sorted(set(TRAIN) - {"@"}), 80))  # unseen contexts too


def nltk_probs(model, text: str, order: int, first: int = 0) -> np.ndarray:
  """NLTK's P(text[i] | up to order-1 preceding characters from ``first`` on), i >= first."""
  return np.array([model.score(text[i], tuple(text[max(first, i - order + 1):i]))
                   for i in range(first, len(text))])


def fit_nltk(model_cls, order: int, **kwargs):
  """An NLTK model on the unpadded everygrams (orders 1..order) of TRAIN, vocabulary its chars."""
  everygrams = pytest.importorskip("nltk.util").everygrams
  model = model_cls(order, **kwargs)
  model.fit([list(everygrams(tuple(TRAIN), max_len=order))], sorted(set(TRAIN)))
  return model


def both_texts(model, ref, order: int):
  """(ours, NLTK's) probabilities of every HELD_OUT character and of TRAIN after its "@"."""
  ours = np.concatenate([ngram.char_probs(model, HELD_OUT), ngram.char_probs(model, TRAIN[1:])])
  theirs = np.concatenate([nltk_probs(ref, HELD_OUT, order), nltk_probs(ref, TRAIN, order, 1)])
  return ours, theirs


@pytest.mark.parametrize("order", [2, 3, 4])
def test_kneser_ney_matches_nltk(order):
  """nltk.lm.KneserNeyInterpolated, one discount for every order.

  NLTK's conventions, reproduced by ``interpolate_uniform=False``: its lowest order is
  the bare continuation unigram N1+(. w) / N1+(. .), never mixed with a uniform
  distribution (so its vocabulary's extra <UNK> entry plays no part). An unseen context
  backs off with weight 1, as ours does. One corner differs: NLTK's back-off weight at a
  lower order counts the distinct symbols after h in raw counts, ours those with a
  continuation count, so they part only for an (h, w) that occurs solely at the very
  start of the training text, where nothing precedes it (NLTK divides by zero if h
  occurs only there). TRAIN starts with a symbol found nowhere else, and no scored
  context holds it, so the two coincide at every position checked.
  """
  lm = pytest.importorskip("nltk.lm")
  ref = fit_nltk(lm.KneserNeyInterpolated, order, discount=0.1)
  ours, theirs = both_texts(
      ngram.fit_kneser_ney(TRAIN, order, 0.1, interpolate_uniform=False), ref, order)
  assert len(ours) > 400
  np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-9)
  wrong, _ = both_texts(
      ngram.fit_kneser_ney(TRAIN, order, 0.15, interpolate_uniform=False), ref, order)
  assert np.abs(wrong - theirs).max() > 1e-3


@pytest.mark.parametrize("order", [2, 3, 4])
def test_witten_bell_matches_nltk(order):
  """nltk.lm.WittenBellInterpolated: its lowest order is the maximum-likelihood unigram
  (``interpolate_uniform=False``); with our default uniform floor the two must differ."""
  lm = pytest.importorskip("nltk.lm")
  ref = fit_nltk(lm.WittenBellInterpolated, order)
  ours, theirs = both_texts(ngram.fit_witten_bell(TRAIN, order, interpolate_uniform=False),
                            ref, order)
  np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-9)
  floored, _ = both_texts(ngram.fit_witten_bell(TRAIN, order), ref, order)
  assert np.abs(floored - theirs).max() > 1e-3


MODELS = [(method, uniform) for method in (ngram.KNESER_NEY, ngram.WITTEN_BELL)
          for uniform in (True, False)]


@pytest.mark.parametrize("method,uniform", MODELS)
def test_every_context_distribution_sums_to_one(method, uniform):
  rng = np.random.default_rng(3)
  symbols = sorted(set(TRAIN))
  unseen = ["".join(rng.choice(symbols, 4)) for _ in range(20)]  # mostly unseen contexts
  seen = [TRAIN[i - 4:i] for i in rng.integers(4, len(TRAIN), 20)]
  for order in (1, 2, 3, 4):
    model = ngram.fit(TRAIN, order, method, interpolate_uniform=uniform)
    for context in ["", "@", "zz", " the cat "] + unseen + seen:
      probs = ngram.context_distribution(model, context)
      assert probs.shape == (len(symbols),) and probs.min() >= 0
      assert abs(probs.sum() - 1.0) < 1e-12, (order, context)


def test_order_one_without_smoothing_is_the_empirical_unigram():
  symbols = sorted(set(TRAIN))
  counts = np.array([TRAIN.count(s) for s in symbols], float)
  empirical = counts / counts.sum()
  for model in (ngram.fit_kneser_ney(TRAIN, 1, 0.0),
                ngram.fit_witten_bell(TRAIN, 1, interpolate_uniform=False)):
    np.testing.assert_allclose(ngram.context_distribution(model, "ab"), empirical, atol=1e-15)
  # Every symbol of the alphabet is seen, so Kneser-Ney's uniform share D * V / V gives
  # back exactly what the discount took; Witten-Bell's floor is add-one smoothing.
  kn = ngram.fit_kneser_ney(TRAIN, 1, 0.7)
  np.testing.assert_allclose(ngram.context_distribution(kn, ""), empirical, atol=1e-15)
  wb = ngram.fit_witten_bell(TRAIN, 1)
  np.testing.assert_allclose(ngram.context_distribution(wb, ""),
                             (counts + 1) / (counts.sum() + len(symbols)), atol=1e-15)


@pytest.mark.parametrize("method", [ngram.KNESER_NEY, ngram.WITTEN_BELL])
def test_vectorised_pass_matches_context_tables(method):
  model = ngram.fit(TRAIN, 4, method)
  text = HELD_OUT
  ids = ngram.encode(text, model.alphabet)
  positions = np.r_[0, 1, 2, np.random.default_rng(4).integers(3, len(text), 40)]
  per_table = np.array([-np.log2(ngram.context_distribution(model, text[:i])[ids[i]])
                        for i in positions])
  np.testing.assert_allclose(-np.log2(ngram.char_probs(model, text)[positions]), per_table,
                             rtol=1e-12)
  every = [-np.log2(ngram.context_distribution(model, text[:i])[ids[i]])
           for i in range(len(text))]
  assert abs(ngram.bits_per_char(model, text) - np.mean(every)) < 1e-12


def test_unseen_character_is_named():
  model = ngram.fit_witten_bell(TRAIN, 2)
  with pytest.raises(ValueError, match="'#'"):
    ngram.char_probs(model, "the #cat")
  with pytest.raises(ValueError, match="order"):
    ngram.fit_kneser_ney("ab", 3)


def test_xz_conditional_on_train_sees_the_repeat():
  rng = np.random.default_rng(5)
  train = "".join(rng.choice(list("abcdefghijklmnopqrstuvwxyz "), 20000))
  test = train[7000:9000]  # in train verbatim: one long match
  bpc = ngram.xz_bits_per_char(train, test)
  assert bpc["alone"] > 4.0  # random symbols: about log2(27) bits each
  assert bpc["conditional"] < 0.1 * bpc["alone"]


def test_text8_style_normalisation():
  entry = ('Caloric \\Ca*lor"ic\\, a. [F. calorif[`e]re.]\n   (k[.a]*l[o^]r"[i^]k)'
           " 0[deg] to 1913, {Foot pound}.\n   [1913 Webster]\n")
  text = text8_style.normalise(text8_style.strip_markup(entry))
  assert text == "caloric a f calorifere zero degrees to one nine one three foot pound"
  assert text8_style.normalise("  Don't--Stop! ÉTÉ\t42 ") == "don t stop t four two"
