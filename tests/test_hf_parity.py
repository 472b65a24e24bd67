"""Parity with HF transformers' PyTorch Longformer (random init, weights through from_hf/to_hf)."""

import json
import os
import shutil

import numpy as np
import pytest
import torch

transformers = pytest.importorskip("transformers")

import longformer_jax as lj  # noqa: E402
from conftest import (HF_ATOL, HF_INIT, PAD, VOCAB, batch, hf_heads, run_both, save_hf,  # noqa: E402
                      task_inputs)

HEADS = hf_heads()


@pytest.mark.parametrize("task", sorted(HEADS))
def test_head_parity_and_round_trip(task, tmp_path):
  hf, path = save_hf(task, tmp_path)
  ours = lj.from_hf(path)
  assert type(ours) is lj.TASKS[task][0]
  run_both(task, hf, ours, task_inputs(task, np.random.default_rng(1)))

  # ours -> HF is exact.
  lj.to_hf(ours, tmp_path / "back")
  back = HEADS[task].from_pretrained(tmp_path / "back").eval()
  ref_sd, back_sd = hf.state_dict(), back.state_dict()
  assert ref_sd.keys() == back_sd.keys()
  for k in ref_sd:
    assert torch.equal(ref_sd[k], back_sd[k]), k


def test_sequence_classification_default_global_and_explicit(tmp_path):
  hf, path = save_hf("sequence_classification", tmp_path, seed=3)
  ours = lj.from_hf(path)
  rng = np.random.default_rng(5)
  run_both("sequence_classification", hf, ours,
           task_inputs("sequence_classification", rng, with_global=False))
  run_both("sequence_classification", hf, ours, task_inputs("sequence_classification", rng))


@pytest.mark.parametrize("windows,n", [([8, 4], 16), ([4, 16], 37), ([6, 6], 3)])
def test_per_layer_windows_and_lengths(windows, n, tmp_path):
  hf, path = save_hf("base", tmp_path, seed=7, attention_window=windows)
  ours = lj.from_hf(path, block_size=4)
  rng = np.random.default_rng(n)
  ids, mask, gmask, types = batch(rng, b=2, n=n, lengths=(n, max(1, n // 2)))
  gmask[:, n // 2:] = 0
  run_both("base", hf, ours, dict(input_ids=ids, attention_mask=mask,
                                  global_attention_mask=gmask, token_type_ids=types))


def test_pytorch_bin_checkpoint(tmp_path):
  hf, path = save_hf("masked_lm", tmp_path)
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  shutil.copy(path / "config.json", bin_dir / "config.json")
  torch.save(hf.state_dict(), bin_dir / "pytorch_model.bin")
  run_both("masked_lm", hf, lj.from_hf(bin_dir), task_inputs("masked_lm", np.random.default_rng(2)))


def test_base_checkpoint_into_task_head(tmp_path, caplog):
  hf, path = save_hf("base", tmp_path)
  ours = lj.from_hf(path, task="sequence_classification")
  assert "newly initialised" in caplog.text and "classifier" in caplog.text
  ids, mask, gmask, types = batch(np.random.default_rng(0))
  body = ours.longformer(ids, mask, gmask, types).last_hidden_state
  with torch.no_grad():
    ref = hf(torch.tensor(ids), torch.tensor(mask), torch.tensor(gmask), torch.tensor(types))
  assert np.abs(np.asarray(body) - ref.last_hidden_state.numpy()).max() <= HF_ATOL


def test_native_checkpoint_round_trip(tmp_path):
  _, path = save_hf("token_classification", tmp_path)
  ours = lj.from_hf(path)
  lj.save_native(ours, tmp_path / "native")
  again = lj.load_native(tmp_path / "native")
  inputs = task_inputs("token_classification", np.random.default_rng(3))
  np.testing.assert_array_equal(np.asarray(ours(**inputs).logits),
                                np.asarray(again(**inputs).logits))


def test_roberta_to_longformer_matches_roberta_when_window_covers_all(tmp_path):
  torch.manual_seed(0)
  rcfg = transformers.RobertaConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2,
                                    num_attention_heads=4, intermediate_size=37,
                                    max_position_embeddings=20, pad_token_id=PAD,
                                    initializer_range=HF_INIT)
  roberta = transformers.RobertaForMaskedLM(rcfg).eval()
  roberta.save_pretrained(tmp_path / "roberta")
  lj.convert.main(["roberta", str(tmp_path / "roberta"), str(tmp_path / "lf"),
                   "--max-length", "64", "--attention-window", "32"])
  ours = lj.from_hf(tmp_path / "lf")
  assert ours.config.max_position_embeddings == 66
  pos = np.asarray(ours.longformer.embeddings.position_embeddings.embedding[...])
  old = roberta.roberta.embeddings.position_embeddings.weight.detach().numpy()
  np.testing.assert_array_equal(pos[2:20], old[2:20])
  np.testing.assert_array_equal(pos[20:38], old[2:20])  # copied again past the old length
  # 16 tokens, radius 16: every token sees every other, so Longformer == RoBERTa.
  ids, mask, _, _ = batch(np.random.default_rng(4), b=2, n=16, lengths=(16, 11))
  with torch.no_grad():
    ref = roberta(torch.tensor(ids), attention_mask=torch.tensor(mask)).logits.numpy()
  got = np.asarray(ours(ids, mask).logits)
  valid = mask.astype(bool)
  assert np.abs(got[valid] - ref[valid]).max() <= HF_ATOL


def test_extend_longformer_checkpoint_copies_positions_and_keeps_short_outputs(tmp_path):
  hf, path = save_hf("masked_lm", tmp_path, max_position_embeddings=34)  # 32 positions
  (path / "tokenizer.json").write_text("{}")
  lj.convert.main(["extend", str(path), str(tmp_path / "long"), "--max-length", "96"])
  assert sorted(p.name for p in tmp_path.iterdir()) == ["hf_masked_lm", "long"]
  assert (tmp_path / "long" / "tokenizer.json").read_text() == "{}"
  long = transformers.LongformerForMaskedLM.from_pretrained(tmp_path / "long").eval()
  assert long.config.max_position_embeddings == 98
  assert long.config.attention_window == hf.config.attention_window
  old = hf.longformer.embeddings.position_embeddings.weight.detach()
  new = long.longformer.embeddings.position_embeddings.weight.detach()
  for start in (2, 34, 66):  # the 32 learned rows, again and again
    assert torch.equal(new[start:start + 32], old[2:34])
  ids, mask, gmask, _ = batch(np.random.default_rng(6), b=3, n=21)
  args = dict(attention_mask=torch.tensor(mask), global_attention_mask=torch.tensor(gmask))
  with torch.no_grad():  # inputs within the old length: the same model
    np.testing.assert_array_equal(long(torch.tensor(ids), **args).logits.numpy(),
                                  hf(torch.tensor(ids), **args).logits.numpy())
  with pytest.raises(FileExistsError, match="not empty"):
    lj.convert.extend_checkpoint(path, tmp_path / "long", 128)
  with pytest.raises(ValueError, match="shorten"):
    lj.convert.extend_checkpoint(path, tmp_path / "short", 16)
  with pytest.raises(ValueError, match="'zeros'"):
    lj.convert.extend_checkpoint(path, tmp_path / "zeros", 96, new_positions="zeros")
  assert sorted(p.name for p in tmp_path.iterdir()) == ["hf_masked_lm", "long"]


def test_extend_with_random_new_positions():
  """The paper's ablation: the learned rows kept, the new ones N(0, std^2), not copies."""
  old_PxD = np.random.default_rng(0).normal(size=(34, 64)).astype(np.float32)
  new_PxD = lj.convert.extend_positions(old_PxD, 4098, 2, init="random", std=0.02, seed=1)
  np.testing.assert_array_equal(new_PxD[:34], old_PxD)
  fresh = new_PxD[34:].astype(np.float64)  # 4064 x 64 draws: std within 2% of 0.02
  assert abs(fresh.std() - 0.02) < 4e-4 and abs(fresh.mean()) < 4e-4
  copied = lj.convert.extend_positions(old_PxD, 4098, 2)
  assert not (new_PxD[34:] == copied[34:]).all(axis=1).any()


# ---- errors name the bad field -------------------------------------------------
def test_bad_checkpoints_are_named(tmp_path):
  _, path = save_hf("base", tmp_path)
  from safetensors.numpy import load_file, save_file
  sd = load_file(path / "model.safetensors")
  bad = tmp_path / "bad"
  bad.mkdir()
  shutil.copy(path / "config.json", bad / "config.json")
  save_file({**sd, "encoder.layer.0.mystery.weight": np.zeros(3, np.float32)},
            bad / "model.safetensors")
  with pytest.raises(ValueError, match="mystery"):
    lj.from_hf(bad)
  sd["embeddings.word_embeddings.weight"] = np.zeros((VOCAB + 1, 32), np.float32)
  save_file(sd, bad / "model.safetensors")
  with pytest.raises(ValueError, match="word_embeddings.*shape"):
    lj.from_hf(bad)
  cfg = json.loads((path / "config.json").read_text())
  cfg["model_type"] = "bert"
  (bad / "config.json").write_text(json.dumps(cfg))
  with pytest.raises(ValueError, match="model_type"):
    lj.from_hf(bad)
  no_weights = tmp_path / "no_weights"
  no_weights.mkdir()
  shutil.copy(path / "config.json", no_weights / "config.json")
  with pytest.raises(FileNotFoundError, match="model.safetensors"):
    lj.from_hf(no_weights)


def test_bad_inputs_are_named(tmp_path):
  _, path = save_hf("base", tmp_path)
  ours = lj.from_hf(path, max_global_tokens=2)
  ids, mask, gmask, _ = batch(np.random.default_rng(0))
  with pytest.raises(ValueError, match=r"input_ids\[1, 3\] = 99"):
    bad = ids.copy()
    bad[1, 3] = VOCAB
    ours(bad, mask)
  with pytest.raises(ValueError, match="attention_mask has shape"):
    ours(ids, mask[:, :-1])
  with pytest.raises(ValueError, match="marks 4 tokens.*max_global_tokens=2"):
    ours(ids, mask, gmask)
  with pytest.raises(ValueError, match="max_position_embeddings"):
    long = np.full((1, 90), 5)
    ours(long)
  with pytest.raises(ValueError, match="sep_token_id"):
    qa = lj.from_hf(save_hf("question_answering", tmp_path)[1])
    qa(np.full((1, 9), 5))


def test_scanned_encoder_parity_and_round_trip(tmp_path):
  hf, path = save_hf("masked_lm", tmp_path, attention_window=[8, 8])
  scanned = lj.from_hf(path, scan_layers=True, remat="full")
  assert scanned.longformer.encoder.layers.attention.self_attn.query.kernel.shape == (2, 32, 32)
  run_both("masked_lm", hf, scanned, task_inputs("masked_lm", np.random.default_rng(6)))
  lj.to_hf(scanned, tmp_path / "back")
  back = HEADS["masked_lm"].from_pretrained(tmp_path / "back").eval()
  for k, v in hf.state_dict().items():
    assert torch.equal(v, back.state_dict()[k]), k


def test_scan_needs_uniform_layers():
  with pytest.raises(ValueError, match="scan_layers"):
    lj.LongformerConfig(num_hidden_layers=2, attention_window=[8, 4], scan_layers=True)


def test_hub_ids_read_the_hub_cache(tmp_path):
  """``from_hf("org/name")`` and a tokenizer given as a hub id read huggingface_hub's
  cache (HF_HOME, offline: no network), the same model as the directory; an id the cache
  lacks is one line saying how to fetch it."""
  import subprocess
  import sys
  _, path = save_hf("masked_lm", tmp_path)
  commit = "0123456789abcdef0123456789abcdef01234567"
  repo = tmp_path / "hf_home" / "hub" / "models--tiny-org--lf-tiny"
  shutil.copytree(path, repo / "snapshots" / commit)
  (repo / "refs").mkdir()
  (repo / "refs" / "main").write_text(commit)
  code = f"""
import numpy as np, longformer_jax as lj
from longformer_jax import hf_io
ids = np.arange(3, 19, dtype=np.int32)[None]
a = lj.from_hf("tiny-org/lf-tiny")
b = lj.from_hf({str(path)!r})
assert np.array_equal(np.asarray(a(ids).logits), np.asarray(b(ids).logits))
assert hf_io.checkpoint_path("tiny-org/lf-tiny").endswith({commit!r})
try:
  lj.from_hf("tiny-org/not-cached")
except FileNotFoundError as e:
  print("ERROR", e)
"""
  env = dict(os.environ, HF_HOME=str(tmp_path / "hf_home"), HF_HUB_OFFLINE="1")
  proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                        timeout=300, cwd=tmp_path)
  assert proc.returncode == 0, proc.stderr[-3000:]
  (line,) = [x for x in proc.stdout.splitlines() if x.startswith("ERROR")]
  assert "tiny-org/not-cached: no such directory" in line
  assert "hf download tiny-org/not-cached --local-dir DIR" in line
