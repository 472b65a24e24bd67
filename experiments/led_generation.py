"""A 16,384-token input through a small LED's encoder, then 256 generated tokens:
ours against HF transformers' PyTorch LED, same weights, one run.

Model: a random LED (d 256, 6 + 6 layers, 4 heads, d_ff 1024, window 512, vocabulary
50,265, decoder positions 1,024), global attention on the first token, greedy, exactly
256 new tokens (``min_length`` = ``max_length`` = 257 with the start token). Each side
runs in a fresh process: one call to warm up (ours: compiles), then the timed call;
peak resident memory (VmHWM) of the whole process. The two outputs' token ids are
compared.

    python experiments/led_generation.py            # 16,384 tokens
    python experiments/led_generation.py --quick    # 2,048 tokens

Writes experiments/results/led_generation.{md,json}.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

from common import cpu_name, peak_rss, write_results

NEW_TOKENS = 256
CONFIG = dict(vocab_size=50265, d_model=256, encoder_layers=6, decoder_layers=6,
              encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=1024,
              decoder_ffn_dim=1024, max_encoder_position_embeddings=16384,
              max_decoder_position_embeddings=1024, attention_window=[512] * 6, dropout=0.0)


def make_checkpoint(path: str) -> None:
  import torch
  import transformers
  torch.manual_seed(0)
  transformers.LEDForConditionalGeneration(transformers.LEDConfig(**CONFIG)).save_pretrained(path)


def inputs(n: int):
  import numpy as np
  ids = np.random.default_rng(0).integers(3, CONFIG["vocab_size"], (1, n))
  gmask = np.zeros((1, n), np.int64)
  gmask[0, 0] = 1
  return ids, np.ones((1, n), np.int64), gmask


def worker(side: str, checkpoint: str, n: int) -> dict:
  ids, mask, gmask = inputs(n)
  settings = dict(max_length=NEW_TOKENS + 1, min_length=NEW_TOKENS + 1, num_beams=1)
  if side == "ours":
    import longformer_jax as lj
    from longformer_jax.led import generation
    model = lj.from_hf(checkpoint)
    run = lambda: generation.generate(model, ids, mask, gmask, **settings).block_until_ready()
  else:
    import torch
    import transformers
    torch.set_num_threads(os.cpu_count())
    model = transformers.LEDForConditionalGeneration.from_pretrained(checkpoint).eval()
    t = lambda x: torch.tensor(x)

    def run():
      with torch.no_grad():
        return model.generate(t(ids), attention_mask=t(mask), global_attention_mask=t(gmask),
                              do_sample=False, **settings).numpy()
  t0 = time.perf_counter()
  run()
  warm = time.perf_counter() - t0
  t0 = time.perf_counter()
  out = run()
  seconds = time.perf_counter() - t0
  return dict(side=side, n=n, seconds=seconds, warmup_s=warm, peak_bytes=peak_rss(),
              ids=[int(x) for x in out[0]])


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--quick", action="store_true")
  p.add_argument("--worker", nargs=3, help=argparse.SUPPRESS)
  args = p.parse_args()
  if args.worker:
    side, checkpoint, n = args.worker
    print(json.dumps(worker(side, checkpoint, int(n))))
    return
  n = 2048 if args.quick else 16384
  rows = {}
  with tempfile.TemporaryDirectory() as tmp:
    make_checkpoint(tmp)
    for side in ("ours", "hf"):
      print(f"{side}: encoding {n:,} tokens, generating {NEW_TOKENS}...", flush=True)
      proc = subprocess.run([sys.executable, __file__, "--worker", side, tmp, str(n)],
                            capture_output=True, text=True, check=True)
      rows[side] = json.loads(proc.stdout.strip().splitlines()[-1])
  same = rows["ours"]["ids"] == rows["hf"]["ids"]
  gib = lambda b: b / 2**30
  lines = [f"# LED: {n:,}-token input, {NEW_TOKENS} generated tokens (greedy)", "",
           f"Command: `python experiments/led_generation.py{' --quick' if args.quick else ''}`"
           f" on {os.cpu_count()}-core {cpu_name()}", "",
           "| | time (s) | warm-up (s) | peak memory (GiB) |", "|---|---:|---:|---:|"]
  for side, name in (("ours", "ours (jitted, static cache)"), ("hf", "HF transformers")):
    r = rows[side]
    lines.append(f"| {name} | {r['seconds']:.1f} | {r['warmup_s']:.1f} | "
                 f"{gib(r['peak_bytes']):.2f} |")
  lines += ["", f"Time ratio HF / ours: {rows['hf']['seconds'] / rows['ours']['seconds']:.2f}; "
            f"memory ratio: {rows['hf']['peak_bytes'] / rows['ours']['peak_bytes']:.2f}. "
            f"Generated ids {'identical' if same else 'DIFFERENT'}."]
  text = "\n".join(lines) + "\n"
  print(text)
  if not args.quick:
    write_results("led_generation", dict(n=n, new_tokens=NEW_TOKENS, config=CONFIG, rows=rows),
                  text, command="python experiments/led_generation.py")


if __name__ == "__main__":
  main()
