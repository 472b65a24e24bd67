"""The manual-page corpus of the summarisation experiment (experiments/corpora/manpage_corpus.py):
its troff formatter against GNU groff's rendering, and the NAME line as the summary."""

import os
import shutil
import sys

import pytest

EXPERIMENTS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                           "experiments")
if EXPERIMENTS not in sys.path:
  sys.path.insert(0, EXPERIMENTS)

from corpora import manpage_corpus  # noqa: E402

# What pod2man, the Tcl pages and man-pages use: macro definitions, nroff/troff
# conditionals with braces, strings, fonts, special characters, continuation lines.
PAGE = r""".\" a comment
.de Vb
.ft CW
.nf
..
.de Zz
.SH HIDDEN
..
.ig
Text troff ignores.
..
.ie n \{\
.  ds C+ C++
.  ds L" ""
.\}
.el \{\
.  ds C+ TYPESET C\v'-.1v'\h'-1p'\s-2+\h'-1p'+\s0\v'.1v'\h'-1p'
.\}
.if t .ds Q TYPESET
.TH WIDGET 3 "2024-01-01" "widgets 1.0" "Library Functions"
.SH NAME
widget_open, widget_close \- open and close a \fBwidget\fP handle
.SH SYNOPSIS
.nf
.B #include <widget.h>
.PP
.BI "int widget_open(const char *" path ", int " flags \
", mode_t " mode );
.RI "widget [" options "] " file ...
.fi
.SH DESCRIPTION
The
.BR widget_open ()
function opens the widget named by \fIpath\fR\(emin \*(C+ too\(emand returns
a handle\(aqs number; see
.IR widget (7).
.TP
.B WIDGET_RDONLY
Open for reading only\e.
.IP \(bu 2
A bullet\~item with a \[u00E9]t\['e] and \s-1SMALL\s0 text.
.SS "Return value"
Zero on success\&.
.Vb 1
\&    w = widget_open("x", 0, 0);
.Ve
.SH "SEE ALSO"
.BR open (2)
"""


def test_page_text_has_groffs_words():
  if shutil.which("groff") is None:
    pytest.skip("GNU groff is not installed")
  ours = manpage_corpus._WORD.findall("\n".join(
      title + "\n" + "\n".join(paragraphs)
      for title, paragraphs in manpage_corpus.page_sections(PAGE)))
  assert ours == manpage_corpus.groff_words(PAGE)


def test_name_line_is_the_summary_and_the_rest_the_document():
  sections = manpage_corpus.page_sections(PAGE)
  assert manpage_corpus.name_and_summary(sections) == (
      "widget_open, widget_close", "open and close a widget handle")
  doc = manpage_corpus.document(sections)
  assert doc.startswith("SYNOPSIS\n#include <widget.h>")
  assert "int widget_open(const char *path, int flags, mode_t mode);\nwidget [options] file..." in doc
  assert "function opens the widget named by path--in C++ too--and returns a handle's" in doc
  assert "\nSEE ALSO\nopen(2)" in doc and "NAME" not in doc
  assert "TYPESET" not in doc and "HIDDEN" not in doc and "ignores" not in doc
