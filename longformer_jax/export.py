"""A model's forward as a serialised ``jax.export`` artifact: weights included,
reloaded and run without this package's model code.

    exported = export.export_model(model, seq_len=4096)            # batch dynamic
    export.save(exported, "model.jax_exported")
    out = export.load("model.jax_exported")(input_ids, attention_mask,
                                            global_attention_mask)

The exported function takes ``input_ids``, ``attention_mask`` and
``global_attention_mask``, (B, ``seq_len``) int32, and returns the model's output
fields as a dict (``last_hidden_state``, ``logits``, ...); the loaded artifact also
takes shorter inputs (padded to ``seq_len``, per-token outputs cut back) and defaults
the masks as the model does (all ones; no global tokens); an example with more
global tokens than ``max_global_tokens`` raises, as in the model. The batch is symbolic
unless ``batch`` is given. ``platforms`` lists where the artifact may run; it is
lowered for each of them here, none needs to be present. The attention backend is
the model's ``attention_impl`` as resolved on this host ("auto" becomes "scan" on a
CPU host: name "blocked" or "pallas" to export for an accelerator). With
``pallas``, GPU artifacts hold Triton kernels, which are tied to this jaxlib's
version (``jax.export`` gives them no compatibility guarantee).

    python -m longformer_jax.export CHECKPOINT OUT --seq-len 4096 \\
        --platforms cpu,cuda,tpu --attention-impl blocked
"""

from __future__ import annotations

import argparse
import json
import os
from typing import Sequence

import jax
import jax.numpy as jnp
from jax import export as jax_export

from longformer_jax import attention, cli
from longformer_jax.attention import global_tokens as attention_global
from longformer_jax import inputs as inputs_lib
from longformer_jax import longformer_convert
from longformer_jax import model as model_lib
from longformer_jax import fileio, run_files

# Pallas on GPU lowers to Triton calls, which jax.export does not promise to keep
# loadable across versions; the artifact is still valid for this jaxlib.
_UNSTABLE_KERNELS = [jax_export.DisabledSafetyCheck.custom_call("__gpu$xla.gpu.triton")]
FORMAT = "longformer_jax.export/1"


def export_model(model, *, seq_len: int, batch: int | None = None,
                 platforms: Sequence[str] = ("cpu",)) -> ExportedModel:
  """The model's forward at ``seq_len`` tokens (see the module docstring).

  ``model.config.max_global_tokens`` bounds the global tokens per example (the
  program's shapes depend on it); it must be set. The program cannot raise, so it
  also returns each example's global count, which :class:`ExportedModel` checks.
  """
  bound = model.config.max_global_tokens
  if not bound:
    raise ValueError("export needs config.max_global_tokens (a static bound on global "
                     "tokens per example); pass it to from_hf / the config")
  impl = attention.resolve_impl(model.config.attention_impl)
  if impl == "pallas" and len(set(platforms)) > 1:
    raise ValueError(f"attention_impl='pallas' exports for one platform at a time (its "
                     f"kernels are compiled per platform), got platforms={tuple(platforms)}")
  if impl == "pallas" and batch is None and set(platforms) & {"cuda", "rocm"}:
    raise ValueError("attention_impl='pallas' on GPU needs a static batch (Triton grids "
                     "have static bounds): pass batch=")
  model.eval()

  def forward(input_ids, attention_mask, global_attention_mask):
    with attention_global.counts_checked_by_caller():
      out = model(input_ids, attention_mask, global_attention_mask,
                  max_global_tokens=bound)
    merged = inputs_lib.merged_mask(attention_mask, global_attention_mask)
    return dict(out.items(), global_tokens=(merged > 1).sum(-1, dtype=jnp.int32))

  b = jax_export.symbolic_shape("batch")[0] if batch is None else batch
  spec = jax.ShapeDtypeStruct((b, seq_len), jnp.int32)
  exported = jax_export.export(jax.jit(forward), platforms=tuple(platforms),
                               disabled_checks=_UNSTABLE_KERNELS)(spec, spec, spec)
  return ExportedModel(exported, bound, token_fields(forward, seq_len),
                       model.config.pad_token_id)


def token_fields(forward, seq_len: int) -> tuple[str, ...]:
  """The outputs of ``forward`` with a token axis (axis 1 follows the input's length):
  those a shorter input's call cuts back to its length."""
  if seq_len < 2:
    return ()
  shapes = [jax.eval_shape(forward, *[jax.ShapeDtypeStruct((1, n), jnp.int32)] * 3)
            for n in (seq_len, seq_len - 1)]
  return tuple(sorted(k for k, v in shapes[0].items()
                      if k != "global_tokens" and v.shape != shapes[1][k].shape))


class ExportedModel:
  """An exported forward and its global-token bound. Calling it runs the program and
  raises (eagerly, or under ``jit`` when it runs) if an example had more global
  tokens than the bound; it returns the model's output fields.

  Inputs shorter than the exported length are padded to it (``pad_token_id``, masked
  out) and the per-token outputs cut back to their length; ``attention_mask``
  defaults to all ones and ``global_attention_mask`` to no global tokens, as in the
  model."""

  def __init__(self, exported: jax_export.Exported, max_global_tokens: int,
               token_outputs: Sequence[str] = (), pad_token_id: int = 1):
    self.exported, self.max_global_tokens = exported, int(max_global_tokens)
    self.token_outputs, self.pad_token_id = tuple(token_outputs), int(pad_token_id)
    self.seq_len = exported.in_avals[0].shape[1]

  def __call__(self, input_ids, attention_mask=None, global_attention_mask=None):
    n = input_ids.shape[-1]
    if n > self.seq_len:
      raise ValueError(f"input_ids has {n} tokens; the artifact takes at most "
                       f"{self.seq_len} (export it with a larger --seq-len)")
    if attention_mask is None:
      attention_mask = jnp.ones_like(input_ids)
    if global_attention_mask is None:
      global_attention_mask = jnp.zeros_like(input_ids)
    pad = [(0, 0)] * (input_ids.ndim - 1) + [(0, self.seq_len - n)]
    args = [jnp.pad(jnp.asarray(x, jnp.int32), pad, constant_values=fill) for x, fill in
            ((input_ids, self.pad_token_id), (attention_mask, 0), (global_attention_mask, 0))]
    out = dict(self.exported.call(*args))
    attention_global.check_global_bound(out.pop("global_tokens"), self.max_global_tokens)
    return {k: v[:, :n] if k in self.token_outputs else v for k, v in out.items()}


def save(model: ExportedModel, path: str | os.PathLike) -> None:
  """Writes the artifact atomically (never a half-written file): one JSON line, then
  the serialised ``jax.export`` program."""
  header = dict(format=FORMAT, max_global_tokens=model.max_global_tokens,
                platforms=list(model.exported.platforms),
                token_outputs=list(model.token_outputs), pad_token_id=model.pad_token_id)
  fileio.write_atomic(path, json.dumps(header).encode() + b"\n" + model.exported.serialize())


def load(path: str | os.PathLike) -> ExportedModel:
  """The artifact :func:`save` wrote, ready to call."""
  header, program = fileio.read_bytes(path).split(b"\n", 1)
  meta = json.loads(header)
  if meta.get("format") != FORMAT:
    raise ValueError(f"{path} is not a {FORMAT} artifact (header {header[:80]!r})")
  return ExportedModel(jax_export.deserialize(bytearray(program)), meta["max_global_tokens"],
                       meta.get("token_outputs", ()), meta.get("pad_token_id", 1))


def main(argv=None) -> None:
  p = argparse.ArgumentParser(
      prog="python -m longformer_jax.export",
      description="A Longformer (an HF directory or a training workdir's newest checkpoint) "
      "-> a serialised jax.export artifact of its forward, loadable without this package's "
      "model code (longformer_jax.export.load).",
      formatter_class=argparse.ArgumentDefaultsHelpFormatter)
  p.add_argument("checkpoint", help="an HF Longformer directory or a training workdir")
  p.add_argument("out", help="the artifact file to write")
  p.add_argument("--seq-len", type=int, required=True,
                 help="the sequence length of the inputs the artifact takes")
  p.add_argument("--batch", type=int, default=None, help="a static batch size; none: dynamic")
  p.add_argument("--platforms", default="cpu", help="comma-separated: cpu,cuda,rocm,tpu")
  p.add_argument("--attention-impl", default="auto",
                 help="the attention backend compiled in: auto, scan, blocked, pallas")
  p.add_argument("--max-global-tokens", type=int, default=None,
                 help="the static bound on global tokens per example; none: the config's")
  p.add_argument("--task", default=None, choices=sorted(model_lib.TASKS),
                 help="the head of an HF directory; none: its config's architectures")
  cli.add_verbosity(p)
  args = p.parse_args(argv)
  cli.setup_logging(args.verbosity)
  cli.run(lambda: export_command(args), args.verbosity)


def export_command(args) -> None:
  """Runs the parsed ``export`` command."""
  overrides = dict(attention_impl=args.attention_impl)
  if args.max_global_tokens is not None:
    overrides["max_global_tokens"] = args.max_global_tokens
  if run_files.is_workdir(args.checkpoint):
    from longformer_jax import workdir  # the training library: slow to import
    model, info = workdir.trained_model(args.checkpoint, **overrides)
    print(f"step {info['step']} of {args.checkpoint}")
  else:
    model = longformer_convert.from_hf(args.checkpoint, args.task, **overrides)
  exported = export_model(model, seq_len=args.seq_len, batch=args.batch,
                          platforms=args.platforms.split(","))
  save(exported, args.out)
  program = exported.exported
  print(f"wrote {args.out}: for {', '.join(program.platforms)}, inputs "
        f"{[str(a.shape) for a in program.in_avals]}")


if __name__ == "__main__":
  main()
