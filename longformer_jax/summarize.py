"""Command line: summarise documents with an LED.

    python -m longformer_jax.summarize MODEL INPUT [--output OUT.jsonl] [--num_beams 4] ...

* ``MODEL``: a training workdir of a seq2seq run (its newest checkpoint and the
  run's tokenizer) or an HF LED directory (with its tokenizer files).
* ``INPUT``: a text file (one document: the whole file) or a JSONL file (one
  document a line, its text in ``--text_field``, its id in ``--id_field``).
* Output: JSONL ``{id, summary}`` lines to ``--output`` (written to a temporary
  file and renamed into place), else the summaries to stdout.

Generation settings default to the model's (its ``generation_config.json``, or the
run's ``config.seq2seq.generation``); the flags override them with HF's names.
Documents are cut to ``--max_input_length`` tokens (default: the encoder's
positions) and batched ``--batch_size`` at a time, each batch padded to a power of
two so that few shapes compile.
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np

from longformer_jax import cli, fileio, longformer_convert, tokenization
from longformer_jax import workdir as workdir_lib
from longformer_jax.data import documents
from longformer_jax.tasks.seq2seq import generated_tokens
from longformer_jax.run_files import write_jsonl_atomic

_GENERATION_FLAGS = {"num_beams": int, "max_length": int, "min_length": int,
                     "length_penalty": float, "no_repeat_ngram_size": int}


def load_model(path: str):
  """(LED model in eval mode, tokenizer) of a workdir or an HF LED directory."""
  if workdir_lib.is_workdir(path):
    model, info = workdir_lib.trained_model(path)
    tokenizer = info.get("tokenizer")
  else:
    model = longformer_convert.from_hf(path)
    tokenizer = path
  if not hasattr(model, "generate"):
    raise ValueError(f"{path} holds a {type(model).__name__}, not an LED for generation")
  if not tokenizer:
    raise ValueError(f"{path} names no tokenizer; pass --tokenizer")
  return model, tokenization.load_tokenizer(tokenizer)


def read_documents(path: str, text_field: str, id_field: str) -> list[tuple[str, str]]:
  """(id, text) of every document of a text file (one) or a JSONL file (one a line)."""
  if not fileio.isfile(path):
    raise FileNotFoundError(f"summarize: no input file at {path}")
  if not path.endswith(".jsonl"):
    return [(fileio.path(path).name, fileio.read_text(path))]
  out = []
  for lineno, rec in documents.read_jsonl(path, "summarize"):
    where = f"summarize: {path}:{lineno}"
    text = documents.field_of(rec, text_field, str, where, "--text_field")
    out.append((str(rec.get(id_field, lineno)), text))
  return out


def encode_batch(texts: list[str], tok, max_input_length: int) -> tuple[np.ndarray, np.ndarray]:
  """``<s> text </s>`` rows padded to a power of two (at most ``max_input_length``)."""
  specials = documents.Specials.of(tok)
  rows = [[specials.bos] + tok.encode(t, add_special_tokens=False).ids[:max_input_length - 2]
          + [specials.eos] for t in texts]
  longest = max(len(r) for r in rows)
  length = min(1 << (longest - 1).bit_length(), max_input_length)
  ids = np.full((len(rows), length), specials.pad, np.int32)
  mask = np.zeros((len(rows), length), np.int32)
  for i, r in enumerate(rows):
    ids[i, :len(r)], mask[i, :len(r)] = r, 1
  return ids, mask


def summarize(model, tok, texts: list[str], *, batch_size: int = 4,
              max_input_length: int | None = None, progress=None, **generation) -> list[str]:
  """The summaries of ``texts``; ``generation`` overrides the model's settings."""
  limit = max_input_length or model.config.max_encoder_position_embeddings
  out = []
  for start in range(0, len(texts), batch_size):
    chunk = texts[start:start + batch_size]
    chunk = chunk + [chunk[-1]] * (batch_size - len(chunk))  # one batch shape
    ids, mask = encode_batch(chunk, tok, limit)
    generated = np.asarray(model.generate(ids, mask, **generation))
    for row in generated[:len(texts) - start]:
      out.append(tok.decode(generated_tokens(row, tok), skip_special_tokens=True).strip())
    if progress:
      progress(min(start + batch_size, len(texts)), len(texts))
  return out


def main(argv=None) -> None:
  p = argparse.ArgumentParser(prog="python -m longformer_jax.summarize",
                              description=__doc__.split("\n")[0],
                              formatter_class=argparse.ArgumentDefaultsHelpFormatter)
  p.add_argument("model", help="a seq2seq training workdir or an HF LED directory")
  p.add_argument("input", help="a text file (one document) or a JSONL file")
  p.add_argument("--output", default=None, help="JSONL {id, summary}; none: stdout")
  p.add_argument("--tokenizer", default=None, help="a tokenizer directory; none: the model's")
  p.add_argument("--text_field", default="document", help="the JSONL field of the text")
  p.add_argument("--id_field", default="id", help="the JSONL field of the id")
  p.add_argument("--batch_size", type=int, default=4, help="documents per generate call")
  p.add_argument("--max_input_length", type=int, default=None,
                 help="tokens kept of each document; none: the model's positions")
  for name, kind in _GENERATION_FLAGS.items():
    p.add_argument(f"--{name}", type=kind, default=None,
                   help="as HF generate's argument of that name; none: the model's "
                   "generation config")
  cli.add_verbosity(p)
  args = p.parse_args(argv)
  cli.setup_logging(args.verbosity)
  cli.run(lambda: summarize_command(args), args.verbosity)


def summarize_command(args) -> None:
  """Runs the parsed ``summarize`` command."""
  model, tok = load_model(args.model)
  if args.tokenizer:
    tok = tokenization.load_tokenizer(args.tokenizer)
  docs = read_documents(args.input, args.text_field, args.id_field)
  overrides = {k: getattr(args, k) for k in _GENERATION_FLAGS if getattr(args, k) is not None}
  report = lambda done, total: print(f"summarised {done}/{total}", file=sys.stderr, flush=True)
  summaries = summarize(model, tok, [t for _, t in docs], batch_size=args.batch_size,
                        max_input_length=args.max_input_length, progress=report, **overrides)
  if args.output is None:
    for (doc_id, _), summary in zip(docs, summaries):
      print(summary if len(docs) == 1 else json.dumps({"id": doc_id, "summary": summary}))
    return
  write_jsonl_atomic(args.output, [{"id": d, "summary": s} for (d, _), s in zip(docs, summaries)])


if __name__ == "__main__":
  main()
