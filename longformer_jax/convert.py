"""HF checkpoints in and out, RoBERTa -> Longformer (paper section 5), native checkpoints.

The command line:
``python -m longformer_jax.convert {roberta,extend,bart-to-led,to-native,to-hf} ...``
(``--help``). The converters are libraries: ``longformer_convert.py`` (Longformer),
``led/convert.py`` (LED), ``hf_io.py`` (HF files); their public names are also
reachable here, as ``convert.from_hf`` and so on. No module of the package imports
this one.
"""

from __future__ import annotations

import argparse

from longformer_jax import cli, hf_io
from longformer_jax.led import convert as led_convert
from longformer_jax import model as model_lib
from longformer_jax.hf_io import load_state_dict  # noqa: F401  (convert.load_state_dict)
from longformer_jax.longformer_convert import (  # noqa: F401  (convert.<name>)
    NEW_POSITIONS, extend_checkpoint, extend_positions, from_hf, hf_name, hf_param_values,
    hf_state_dict, load_hf_weights, load_native, roberta_to_longformer, save_native, task_of,
    to_hf)

def main(argv=None):
  parser = argparse.ArgumentParser(prog="python -m longformer_jax.convert",
                                   description=__doc__.split("\n\n")[0])
  sub = parser.add_subparsers(dest="cmd", required=True)
  formatter = argparse.ArgumentDefaultsHelpFormatter
  p = sub.add_parser("roberta", help="RoBERTa HF checkpoint -> Longformer HF checkpoint",
                     formatter_class=formatter)
  p.add_argument("src", help="the RoBERTa HF directory")
  p.add_argument("dst", help="the Longformer HF directory to write")
  p.add_argument("--max-length", type=int, default=4096, help="positions of the new model")
  p.add_argument("--attention-window", type=int, default=512,
                 help="the sliding window of every layer")
  p = sub.add_parser("extend", help="HF Longformer checkpoint -> the same with more "
                     "positions (rows copied)", formatter_class=formatter)
  p.add_argument("src", help="the HF Longformer directory")
  p.add_argument("dst", help="the HF directory to write")
  p.add_argument("--max-length", type=int, required=True, help="positions of the new model")
  p.add_argument("--new-positions", choices=NEW_POSITIONS, default="copy",
                 help="copy the learned rows (default, the paper's) or draw them at random")
  p = sub.add_parser("bart-to-led", help="BART HF checkpoint -> LED HF checkpoint "
                     "(positions copied, global Q/K/V from the local ones)",
                     formatter_class=formatter)
  p.add_argument("src", help="the BART HF directory")
  p.add_argument("dst", help="the LED HF directory to write")
  p.add_argument("--max-length", type=int, default=16384,
                 help="encoder positions of the new model")
  p.add_argument("--attention-window", type=int, default=1024,
                 help="the encoder's sliding window of every layer")
  p = sub.add_parser("to-native", help="HF Longformer checkpoint -> orbax checkpoint",
                     formatter_class=formatter)
  p.add_argument("src", help="the HF Longformer directory")
  p.add_argument("dst", help="the orbax checkpoint directory to write")
  p.add_argument("--task", default=None, choices=sorted(model_lib.TASKS),
                 help="the head to load; none: the config's architectures")
  p = sub.add_parser("to-hf", help="training workdir (its newest checkpoint) or orbax "
                     "checkpoint -> HF Longformer directory", formatter_class=formatter)
  p.add_argument("src", help="a training workdir (its newest checkpoint) or an orbax "
                 "checkpoint directory")
  p.add_argument("dst", help="the HF directory to write")
  for command in sub.choices.values():
    cli.add_verbosity(command)
  args = parser.parse_args(argv)
  cli.setup_logging(args.verbosity)

  def command():
    args.src = hf_io.checkpoint_path(args.src)  # a hub id: the hub's cached copy
    return run_command(args)
  cli.run(command, args.verbosity)


def run_command(args) -> None:
  """Runs the parsed ``convert`` command."""
  if args.cmd == "roberta":
    roberta_to_longformer(args.src, args.dst, args.max_length, args.attention_window)
  elif args.cmd == "extend":
    extend_checkpoint(args.src, args.dst, args.max_length, new_positions=args.new_positions)
  elif args.cmd == "bart-to-led":
    led_convert.bart_to_led(args.src, args.dst, max_encoder_positions=args.max_length,
                            attention_window=args.attention_window)
  elif args.cmd == "to-native":
    save_native(from_hf(args.src, args.task), args.dst)
  else:
    from longformer_jax import workdir  # the training library: slow to import
    if workdir.is_workdir(args.src):
      step = workdir.export_hf(args.src, args.dst)
      print(f"exported step {step} of {args.src}")
    else:
      to_hf(load_native(args.src), args.dst)
  print(f"wrote {args.dst}")


if __name__ == "__main__":
  main()
