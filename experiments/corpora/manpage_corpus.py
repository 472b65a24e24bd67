"""A summarisation corpus from Debian manual pages, built offline.

Each manual page is a document-summary pair: the summary is its NAME line's description
("ls \\- list directory contents" gives "list directory contents"); the document is the
rest of the page (SYNOPSIS, DESCRIPTION, OPTIONS, ...) as plain text, one upper-case
heading line per section. The pages come from Debian packages fetched with
``apt-get download`` and unpacked with ``dpkg-deb -x`` (nothing is installed); their
troff source is read by a small formatter here that follows the ``man`` macros, the
requests pod2man and the Tcl pages use, and troff's escapes, in nroff mode
(``--check`` scores its words against GNU groff's rendering of every page).

    python experiments/corpora/manpage_corpus.py --out manpages [--check]

Writes ``train.jsonl``, ``validation.jsonl`` and ``test.jsonl`` (fields id, title,
package, document, summary) and ``stats.json`` under ``--out``. Pages that only include
another page (``.so``), pages without a NAME description and every page after the
first with a given summary (PCRE2's 88 pages share one) are dropped; the split hashes
the lower-cased summary (90/5/5).
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys

PACKAGES = (
    "manpages", "manpages-dev", "libssl-doc", "perl-doc", "tcl8.6-doc", "tk8.6-doc",
    "libx11-doc", "libxt-dev", "git-man", "coreutils", "util-linux", "procps", "iproute2",
    "openssh-client", "systemd", "libsystemd-dev", "libcurl4-doc", "libbsd-dev",
    "libpcre2-dev", "liburing-dev", "libzmq3-dev", "libselinux1-dev")

SPECIAL_CHARS = {
    "em": "--", "en": "-", "hy": "-", "mi": "-", "aq": "'", "dq": '"', "lq": '"', "rq": '"',
    "oq": "'", "cq": "'", "bu": "*", "co": "(C)", "rg": "(R)", "tm": "(TM)", "mu": "x",
    "ga": "`", "ti": "~", "ha": "^", "rs": "\\", "sl": "/", "ba": "|", "or": "|", "+-": "+-",
    "<=": "<=", ">=": ">=", "!=": "!=", "==": "==", "->": "->", "<-": "<-", "de": "deg",
    "lB": "[", "rB": "]", "lC": "{", "rC": "}", "la": "<", "ra": ">", "Fo": "<<", "Fc": ">>",
    "pc": ".", "at": "@", "sh": "#", "Do": "$", "eu": "EUR", "ct": "c", "fm": "'", "sd": '"',
    "ss": "ss", "ae": "ae", "AE": "AE", "oe": "oe", "OE": "OE", "ua": "^", "da": "v",
    "ul": "_", "ru": "_", "bv": "|", "br": "|", "tf": "therefore", "if": "infinity",
    "pl": "+", "eq": "=", "sc": "S", "ps": "P", "dg": "+", "dd": "++",
}

# one alternative per troff escape family; _escape turns each match into text
_ESCAPE = re.compile(r"""\\(?:
    (?P<font>f(?:\[[^\]]*\]|\(..|.))
  | (?P<size>s(?:[+-]?\d|\([+-]?\d\d|\[[^\]]*\]|'[^']*'))
  | (?P<named>\((?P<two>..)|\[(?P<long>[^\]]*)\])
  | (?P<string>\*(?:\((?P<s2>..)|\[(?P<sl>[^\]]*)\]|(?P<s1>.)))
  | (?P<register>n(?:\(..|\[[^\]]*\]|[+-]?.))
  | (?P<drawn>[hvwlLoDbxXNRZSC]'[^']*')
  | (?P<zero>[zk].)
  | (?P<char>.)
  )""", re.X)

_SIMPLE = {"e": "\\", "\\": "\\", "-": "-", " ": " ", "~": " ", "0": " ", "&": "", "|": "",
           "^": "", "%": "", ":": "", "c": "", "/": "", ",": "", ")": "", "t": " ", "'": "'",
           "`": "`", ".": ".", "{": "", "}": "", "a": "", "d": "", "u": "", "r": "", "p": "",
           "!": "", "?": "", "E": "\\"}


def expand_escapes(text: str, strings: dict[str, str]) -> str:
  """``text`` with troff escapes replaced by what nroff prints for them."""

  def escape(m: re.Match) -> str:
    if m.group("named"):
      name = m.group("two") or m.group("long")
      if name.startswith("u") and len(name) > 1 and all(c in "0123456789ABCDEF" for c in name[1:]):
        return chr(int(name[1:], 16))
      return SPECIAL_CHARS.get(name, "")
    if m.group("string"):
      return strings.get(m.group("s2") or m.group("sl") or m.group("s1"), "")
    if m.group("char"):
      return _SIMPLE.get(m.group("char"), m.group("char"))
    return ""

  text = re.sub(r'\\".*', "", text)  # comment
  return _ESCAPE.sub(escape, text)


def split_args(rest: str) -> list[str]:
  """A request's arguments: blank-separated, double quotes group, "" is a quote."""
  args, i, n = [], 0, len(rest)
  while i < n:
    while i < n and rest[i] in " \t":
      i += 1
    if i >= n:
      break
    if rest[i] == '"':
      i += 1
      buf = []
      while i < n:
        if rest[i] == '"':
          if i + 1 < n and rest[i + 1] == '"':
            buf.append('"')
            i += 2
            continue
          i += 1
          break
        buf.append(rest[i])
        i += 1
      args.append("".join(buf))
    else:
      j = i
      while j < n and rest[j] not in " \t":
        j += 1
      args.append(rest[i:j])
      i = j
  return args


class Page:
  """Formats one page's troff source into sections of paragraphs (nroff mode)."""

  BREAKS = {"PP", "LP", "P", "sp", "Sp", "TP", "TQ", "HP", "IP", "br", "SY", "YS", "RS", "RE",
            "Ip", "ti", "in", "bp", "ns", "rs"}
  FONT_ONE = {"B", "I", "SM", "SB", "CW"}
  FONT_ALTERNATE = {"BR", "BI", "IB", "IR", "RB", "RI"}
  NO_FILL_ON = {"nf", "EX", "Vb", "DS", "ft CW"}
  NO_FILL_OFF = {"fi", "EE", "Ve", "DE"}

  def __init__(self):
    self.strings: dict[str, str] = {}
    self.sections: list[tuple[str, list[str]]] = []
    self.paragraph: list[str] = []
    self.fill = True
    self.else_taken = False

  def heading(self, title: str) -> None:
    self.flush()
    self.sections.append((" ".join(title.split()).upper(), []))

  def flush(self) -> None:
    text = ("\n" if not self.fill else " ").join(self.paragraph)
    text = text.strip() if not self.fill else " ".join(text.split())
    if text and self.sections:
      self.sections[-1][1].append(text)
    self.paragraph = []

  def text(self, line: str) -> None:
    out = expand_escapes(line, self.strings)
    if self.fill:
      out = out.strip()
      if not out:
        self.flush()
        return
    self.paragraph.append(out.rstrip())

  def format(self, lines: list[str]) -> list[tuple[str, list[str]]]:
    self.lines, self.i = lines, 0
    while self.i < len(lines):
      line = lines[self.i]
      self.i += 1
      self.line(line)
    self.flush()
    return self.sections

  def skip_block(self, terminator: str = "..") -> None:
    while self.i < len(self.lines) and self.lines[self.i].strip() != terminator:
      self.i += 1
    self.i += 1

  def skip_braces(self, rest: str) -> None:
    """Skips a false conditional's ``\\{ ... \\}`` body that starts in ``rest``."""
    depth = rest.count("\\{") - rest.count("\\}")
    while depth > 0 and self.i < len(self.lines):
      depth += self.lines[self.i].count("\\{") - self.lines[self.i].count("\\}")
      self.i += 1

  def conditional(self, name: str, rest: str) -> None:
    if name == "el":
      taken, body = self.else_taken, rest
    else:
      cond, _, body = rest.strip().partition(" ")
      taken = cond in ("n", "!t")
      if name == "ie":
        self.else_taken = not taken
    if not taken:
      self.skip_braces(body)
      return
    body = body.strip().replace("\\}", "")
    if body.startswith("\\{"):
      body = body[2:].strip()
    if body:
      self.line(body)

  def line(self, line: str) -> None:
    if line.startswith("\\}"):
      line = line[2:]
    if not line.startswith((".", "'")):
      self.text(line)
      return
    name, _, rest = line[1:].lstrip().partition(" ")
    if "\\}" in name:
      name = name.replace("\\}", "")
    if not name or name.startswith('\\"'):
      return
    if name in ("de", "de1", "am", "ig"):
      self.skip_block()
    elif name in ("if", "ie", "el"):
      self.conditional(name, rest)
    elif name == "ds":
      key, _, value = rest.partition(" ")
      self.strings[key] = expand_escapes(value.removeprefix('"'), self.strings)
    elif name in ("SH", "Sh"):
      self.heading(" ".join(split_args(expand_escapes(rest, self.strings)))
                   or self.next_text_line())
    else:
      self.request(name, rest)

  def next_text_line(self) -> str:
    if self.i < len(self.lines):
      self.i += 1
      return expand_escapes(self.lines[self.i - 1], self.strings)
    return ""

  def request(self, name: str, rest: str) -> None:
    args = split_args(rest)
    if name in self.NO_FILL_ON or (name == "ft" and args[:1] == ["CW"]):
      self.flush()
      self.fill = False
    elif name in self.NO_FILL_OFF:
      self.flush()
      self.fill = True
    elif name == "SS":
      self.flush()
      self.paragraph.append(expand_escapes(" ".join(args), self.strings))
      self.flush()
    elif name in self.BREAKS:
      self.flush()
      if name in ("IP", "Ip") and args and args[0].strip():
        self.text(args[0])
    elif name in self.FONT_ONE:
      self.text(" ".join(args)) if args else self.text(self.next_text_line())
    elif name in self.FONT_ALTERNATE:
      self.text("".join(args))
    elif name == "OP":
      self.text("[" + " ".join(args) + "]")
    elif name in ("UE", "ME") and args:
      self.text(args[0])
    elif name == "TH" or name == "IX":
      return
    # every other request (.so, .nr, .ta, .ne, .ad, .hy, .UR, ...) prints nothing


def page_sections(source: str) -> list[tuple[str, list[str]]]:
  # a line ending in a lone backslash continues on the next one
  joined = re.sub(r"(?<!\\)((?:\\\\)*)\\\n", r"\1", source)
  return Page().format(joined.splitlines())


_NAME_SEPARATOR = re.compile(r"\s+(?:-|--|\u2014)\s+")


def name_and_summary(sections) -> tuple[str, str] | None:
  """The NAME section's ``names - description``, split; None where there is none."""
  for title, paragraphs in sections:
    if title == "NAME" and paragraphs:
      parts = _NAME_SEPARATOR.split(" ".join(paragraphs), maxsplit=1)
      if len(parts) == 2 and parts[1].strip():
        return parts[0].strip(), parts[1].strip()
  return None


def document(sections) -> str:
  return "\n\n".join(title + "\n" + "\n\n".join(paragraphs)
                     for title, paragraphs in sections if title != "NAME" and paragraphs)


def read_page(path: str) -> str:
  opener = gzip.open if path.endswith(".gz") else open
  with opener(path, "rb") as f:
    return f.read().decode("utf-8", errors="replace")


def unpack(packages, cache: str) -> dict[str, str]:
  """``apt-get download`` + ``dpkg-deb -x`` each package once; package -> its root."""
  debs, roots = os.path.join(cache, "debs"), {}
  os.makedirs(debs, exist_ok=True)
  missing = [p for p in packages if not glob.glob(os.path.join(debs, f"{p}_*.deb"))]
  if missing:
    print(f"downloading {len(missing)} packages", file=sys.stderr)
    subprocess.run(["apt-get", "download", *missing], cwd=debs, check=True)
  for p in packages:
    root = os.path.join(cache, "root", p)
    if not os.path.isdir(root):
      deb, = glob.glob(os.path.join(debs, f"{p}_*.deb"))
      shutil.rmtree(root + ".partial", ignore_errors=True)
      os.makedirs(root + ".partial")
      subprocess.run(["dpkg-deb", "-x", deb, root + ".partial"], check=True)
      os.rename(root + ".partial", root)
    roots[p] = root
  return roots


def pages(roots: dict[str, str]):
  """(package, title, path) of every English manual page file (links skipped)."""
  for package, root in roots.items():
    for path in sorted(glob.glob(os.path.join(root, "usr/share/man/man*/*"))):
      if os.path.isfile(path) and not os.path.islink(path):
        yield package, os.path.basename(path).removesuffix(".gz"), path


def records(roots: dict[str, str], min_words: int = 40, max_summary_words: int = 30):
  """The corpus records and the count of pages dropped for each reason."""
  seen, out = set(), []
  dropped = dict(include=0, no_summary=0, short=0, duplicate=0)
  for package, title, path in pages(roots):
    source = read_page(path)
    if re.match(r"\s*\.so\s", source) and len(source.splitlines()) < 3:
      dropped["include"] += 1
      continue
    sections = page_sections(source)
    named = name_and_summary(sections)
    if named is None or len(named[1].split()) > max_summary_words:
      dropped["no_summary"] += 1
      continue
    doc = document(sections)
    if len(doc.split()) < min_words:
      dropped["short"] += 1
      continue
    key = " ".join(named[1].lower().split())
    if key in seen:
      dropped["duplicate"] += 1
      continue
    seen.add(key)
    out.append(dict(id=f"{package}/{title}", title=title, package=package,
                    document=doc, summary=named[1]))
  return out, dropped


_WORD = re.compile(r"[A-Za-z0-9_]+")


def groff_words(source: str) -> list[str] | None:
  """The words GNU groff prints for a page (its header and footer lines dropped), or
  None where groff is not installed: the reference for ``page_sections``."""
  try:
    out = subprocess.run(["groff", "-man", "-Tutf8", "-rLL=2000n", "-rHY=0", "-P-cbou"],
                         input=source.encode(), capture_output=True, check=True).stdout
  except FileNotFoundError:
    return None
  lines = [line for line in out.decode("utf-8", errors="replace").splitlines() if line.strip()]
  return _WORD.findall("\n".join(lines[1:-1]))


def groff_agreement(roots: dict[str, str]) -> dict | None:
  """Word-level F1 of our text against groff's over every page (bags of words)."""
  scores = []
  for _, _, path in pages(roots):
    source = read_page(path)
    theirs = groff_words(source)
    if theirs is None:
      return None
    ours = _WORD.findall("\n".join(t + "\n" + "\n".join(ps) for t, ps in page_sections(source)))
    a, b = collections.Counter(ours), collections.Counter(theirs)
    scores.append(2 * sum((a & b).values()) / max(len(ours) + len(theirs), 1))
  scores.sort()
  return dict(pages=len(scores), mean_f1=sum(scores) / len(scores),
              pages_at_least_0_99=sum(s >= 0.99 for s in scores) / len(scores),
              min_f1=scores[0])


def split_of(summary: str) -> str:
  bucket = int(hashlib.sha1(summary.lower().encode()).hexdigest()[:8], 16) % 20
  return "test" if bucket == 0 else "validation" if bucket == 1 else "train"


def write_jsonl(path: str, rows) -> None:
  with open(path + ".partial", "w", encoding="utf-8") as f:
    for r in rows:
      f.write(json.dumps(r, ensure_ascii=False) + "\n")
  os.replace(path + ".partial", path)


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--out", required=True, help="directory for the split JSONL files")
  p.add_argument("--cache", default=None, help="where packages are downloaded and unpacked "
                 "(default: OUT/cache)")
  p.add_argument("--packages", nargs="+", default=list(PACKAGES))
  p.add_argument("--check", action="store_true",
                 help="also score the text of every page against GNU groff's (stats.json)")
  args = p.parse_args(argv)
  cache = args.cache or os.path.join(args.out, "cache")
  os.makedirs(args.out, exist_ok=True)
  roots = unpack(args.packages, cache)
  rows, dropped = records(roots)
  splits = {name: [r for r in rows if split_of(r["summary"]) == name]
            for name in ("train", "validation", "test")}
  for name, split in splits.items():
    write_jsonl(os.path.join(args.out, f"{name}.jsonl"), split)
  words = sorted(len(r["document"].split()) for r in rows)
  stats = dict(packages=args.packages, pages=len(rows), dropped=dropped,
               splits={k: len(v) for k, v in splits.items()},
               document_words_median=words[len(words) // 2] if words else 0,
               document_words_p90=words[int(len(words) * 0.9)] if words else 0)
  if args.check:
    stats["groff_word_agreement"] = groff_agreement(roots)
  with open(os.path.join(args.out, "stats.json"), "w") as f:
    json.dump(stats, f, indent=2)
  print(json.dumps(stats, indent=2))


if __name__ == "__main__":
  main()
