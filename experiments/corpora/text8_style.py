"""A text8-style character corpus from the GNU Collaborative International Dictionary of English.

text8 (Matt Mahoney) is 100M characters of Wikipedia filtered by ``wikifil.pl`` down to
27 symbols: lowercase ``a-z`` and space, digits spelled out. The same filter applied to
the dictionary Debian's ``dict-gcide`` package ships (about 40 MB of definitions,
Webster's 1913 plus WordNet) gives an offline corpus of the same kind:

    apt-get download dict-gcide && dpkg-deb -x dict-gcide_*.deb gcide
    python experiments/corpora/text8_style.py gcide --out gcide8.zip

The package holds dictd files: ``gcide.dict.dz`` (gzip-compatible) and ``gcide.index``
(one ``headword<TAB>offset<TAB>length`` line per headword, numbers in dictd's base64).
Each definition is read once through the index (several headwords share one), the
``00-...`` database-information entries are skipped, the dictionary markup is removed
(:func:`strip_markup`) and the text is normalised as ``wikifil.pl`` does
(:func:`normalise`). The zip holds one member named ``text8``, so the project's text8
builder (``longformer_jax/data/corpora.py``) reads it as is and splits it 90% / 5% / 5%
(``char_split_bounds``); :func:`split_text` gives the same three strings.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import os
import re
import zipfile

DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
MEMBER = "text8"
DICTD_BASE64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"

# Syllabified headword with stress marks: ``\Ca*lor"ic\`` (it repeats the headword).
_HEADWORD = re.compile(r"\\[^\\\n]*\\")
# Source notes closing each sense: ``[1913 Webster]``, ``[WordNet 1.5 +PJC]``.
_SOURCE_NOTE = re.compile(r"\[[^\[\]\n]*\b(?:Webster|WordNet|PJC|RHUD)\b[^\[\]\n]*\]")
# A parenthesised group; it is a respelled pronunciation when it holds syllable or
# stress marks between letters: ``(k[.a]*l[o^]r`[i^]*f[i^]*k[=a]"sh[u^]n)``.
_PAREN = re.compile(r"\(([^()]{0,400})\)")
_PRONUNCIATION_MARK = re.compile(r"\*|[a-zA-Z\]][\"`][a-zA-Z\[]")
# A character code: a letter or two with an accent mark (``[=a]``, ``['e]``, ``[o^]``,
# ``[,c]``) or a named code (``[ae]``, ``[imac]``, ``[deg]``).
_CHAR_CODE = re.compile(r"\[[`'\"=.^~,*\-]?([a-zA-Z]{1,6})[`'\"=.^~,*\-]?\]")
_NAMED_CODES = {"imac": "i", "aum": "a", "asl": "a", "add": "a", "udd": "u", "eth": "th",
                "thorn": "th", "yogh": "y", "dsdot": "d", "deg": " degrees "}
# Syllable and stress marks left inside words (``ca*lor"ic``): the word is joined.
_IN_WORD_MARK = re.compile(r"(?<=[A-Za-z])[*\"`](?=[A-Za-z])")


def _dictd_number(digits: str) -> int:
  value = 0
  for ch in digits:
    value = value * 64 + DICTD_BASE64.index(ch)
  return value


def dictd_files(unpacked_dir: str) -> list[str]:
  """Paths of the distinct dictd data files (``*.dict.dz`` or ``*.dict``) under a directory."""
  paths, digests = [], set()
  for root, _, names in sorted(os.walk(unpacked_dir)):
    for name in sorted(names):
      if name.endswith((".dict.dz", ".dict")):
        path = os.path.join(root, name)
        with open(path, "rb") as f:
          digest = hashlib.sha256(f.read()).hexdigest()
        if digest not in digests:  # an unpacked tree may hold the same file twice
          digests.add(digest)
          paths.append(path)
  if not paths:
    raise FileNotFoundError(f"no dictd data file (*.dict.dz, *.dict) under {unpacked_dir}")
  return paths


def read_entries(dict_path: str) -> list[str]:
  """The definitions of one dictd file, in file order, each once, without ``00-`` entries.

  The index beside the data file (``NAME.index``) locates them; with no index the
  whole file is one entry.
  """
  opener = gzip.open if dict_path.endswith(".dz") else open  # dictzip is gzip-compatible
  with opener(dict_path, "rb") as f:
    data = f.read()
  index_path = re.sub(r"\.dict(\.dz)?$", ".index", dict_path)
  if not os.path.exists(index_path):
    return [data.decode("latin-1")]
  spans = set()
  with open(index_path, encoding="latin-1") as f:
    for line in f:
      headword, offset, length = line.rstrip("\n").split("\t")[:3]
      if not headword.startswith("00-"):  # database name, URL and licence text
        spans.add((_dictd_number(offset), _dictd_number(length)))
  # latin-1 maps bytes to characters one to one; any non-ASCII letter becomes a space.
  return [data[o:o + n].decode("latin-1") for o, n in sorted(spans)]


def _char_code(m: re.Match) -> str:
  return _NAMED_CODES.get(m.group(1), m.group(1))


def _paren(m: re.Match) -> str:
  return " " if _PRONUNCIATION_MARK.search(m.group(1)) else m.group(0)


def strip_markup(entry: str) -> str:
  """Plain text of one GCIDE definition: pronunciations and source notes removed,
  character codes turned into their base letters, syllable marks joined."""
  text = _HEADWORD.sub(" ", entry)
  text = _SOURCE_NOTE.sub(" ", text)
  text = _PAREN.sub(_paren, text)
  text = _CHAR_CODE.sub(_char_code, text)
  return _IN_WORD_MARK.sub("", text)


def _byte_table() -> bytes:
  table = bytearray(b" " * 256)
  for c in range(ord("a"), ord("z") + 1):
    table[c] = table[c - 32] = c
  for c in range(ord("0"), ord("9") + 1):
    table[c] = c  # spelled out after the translation
  return bytes(table)


_TABLE = _byte_table()


def normalise(text: str) -> str:
  """text8's filter (wikifil.pl): lowercase, digits spelled out (``7`` -> `` seven ``),
  every other character a space, runs of spaces one space; ends stripped."""
  data = text.encode("latin-1", errors="replace").translate(_TABLE)
  for digit, word in enumerate(DIGIT_WORDS):
    data = data.replace(str(digit).encode(), f" {word} ".encode())
  return re.sub(rb" {2,}", b" ", data).strip().decode("ascii")


def build_corpus(unpacked_dir: str, max_chars: int | None = None) -> str:
  """The normalised text of every definition under ``unpacked_dir``, entries joined by
  a space, cut to its first ``max_chars`` characters when given."""
  entries = [strip_markup(e) for path in dictd_files(unpacked_dir) for e in read_entries(path)]
  text = normalise("\n".join(entries))
  return text[:max_chars] if max_chars else text


def write_zip(text: str, path: str) -> None:
  """Writes ``text`` as the ``text8`` member of a deflated zip at ``path``."""
  with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as z:
    z.writestr(MEMBER, text.encode("ascii"))


def split_text(path: str) -> dict[str, str]:
  """{train, validation, test} strings of a text8-style zip, split as the text8 builder does."""
  # Imported here: the data package pulls in the tfds stack, which only this needs.
  from longformer_jax.data import corpora
  text = corpora.read_zip_member(path, MEMBER).decode("ascii")
  return {split: text[a:b] for split, (a, b) in corpora.char_split_bounds(len(text)).items()}


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("unpacked_dir", help="the dict-gcide package unpacked by dpkg-deb -x")
  parser.add_argument("--out", default="gcide8.zip", help="zip to write (member 'text8')")
  parser.add_argument("--max-chars", type=int, default=None,
                      help="keep only the first N characters")
  args = parser.parse_args(argv)
  text = build_corpus(args.unpacked_dir, args.max_chars)
  write_zip(text, args.out)
  from longformer_jax.data import corpora
  bounds = corpora.char_split_bounds(len(text))
  print(f"{args.out}: {len(text):,} characters, {len(set(text))} symbols")
  for split, (a, b) in bounds.items():
    print(f"  {split}: {b - a:,} characters [{a:,}, {b:,})")


if __name__ == "__main__":
  main()
