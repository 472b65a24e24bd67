"""Tokenizers: a trained byte-level BPE, read back from vocab.json + merges.txt or
tokenizer.json, tokenises as transformers' RoBERTa tokenizers do on the same files."""

import os

import pytest

from longformer_jax import tokenization

transformers = pytest.importorskip("transformers")

TEXTS = ["The quick brown fox, jumps over the lazy dog.", "  spaces\tand\nnewlines  ",
         "Ünïcödé — punctuation!? 1234", "a <mask> token"]


@pytest.fixture(scope="module")
def bpe_dir(tmp_path_factory):
  root = tmp_path_factory.mktemp("bpe")
  corpus = root / "corpus.txt"
  corpus.write_text(" ".join(TEXTS[:3]) * 50 + "\nthe lazy dog sleeps all day long\n" * 30)
  tokenization.train_bpe([corpus], root / "tok", vocab_size=400, min_frequency=2)
  return root / "tok"


def test_trained_bpe_has_roberta_special_ids(bpe_dir):
  tok = tokenization.load_tokenizer(bpe_dir)
  assert [tok.token_to_id(t) for t in tokenization.SPECIAL_TOKENS] == [0, 1, 2, 3, 4]
  assert sorted(os.listdir(bpe_dir)) == ["merges.txt", "tokenizer.json", "vocab.json"]


@pytest.mark.parametrize("source", ["vocab_merges", "tokenizer_json"])
def test_ids_and_offsets_equal_the_reference(bpe_dir, tmp_path, source):
  if source == "vocab_merges":
    path = tmp_path / "pair"
    path.mkdir()
    for f in ("vocab.json", "merges.txt"):
      (path / f).write_bytes((bpe_dir / f).read_bytes())
  else:
    path = bpe_dir / "tokenizer.json"
  ours = tokenization.load_tokenizer(path)
  slow = transformers.RobertaTokenizer(str(bpe_dir / "vocab.json"), str(bpe_dir / "merges.txt"))
  fast = transformers.RobertaTokenizerFast(str(bpe_dir / "vocab.json"),
                                           str(bpe_dir / "merges.txt"))
  for text in TEXTS:
    enc = ours.encode(text)
    assert enc.ids == slow(text)["input_ids"] == fast(text)["input_ids"], text
    ref = fast(text, return_offsets_mapping=True)["offset_mapping"]
    assert [tuple(o) for o in enc.offsets] == [tuple(o) for o in ref], text
  pair = ours.encode(TEXTS[0], TEXTS[1])
  assert pair.ids == slow(TEXTS[0], TEXTS[1])["input_ids"]
  assert ours.decode(ours.encode(TEXTS[2]).ids) == TEXTS[2]


def test_missing_tokenizer_is_named(tmp_path):
  with pytest.raises(FileNotFoundError, match="vocab.json"):
    tokenization.load_tokenizer(tmp_path)
