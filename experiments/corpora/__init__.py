"""Builders of the experiments' offline corpora, each runnable on its own:
``manpage_corpus`` (summarisation, Debian manual pages), ``text8_style`` (a text8-like
character corpus from a dictionary package) and ``kjv_tasks`` (long-document tasks from
the King James Bible)."""
