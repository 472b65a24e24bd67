"""Training system: golden step, mesh layouts, multi-process, SIGKILL resume, errors."""

import json
import os
import re
import signal
import subprocess

import numpy as np
import pytest

from conftest import (bucket_path, host_env, local_leftovers, losses, program_command,
                      program_env, run_program, tiny_config, train_in_subprocess)


def test_golden_one_step(tmp_path):
  """Loss and grad norm after one step of the tiny config on fixed data.

  If a deliberate change to the model, the data generator or the optimizer moves
  these numbers, update them in the same commit and say why; an unexplained change
  is a bug.
  """
  import jax
  from longformer_jax import train
  c = tiny_config(tmp_path, train_steps=1, eval_every=1000, checkpoint_every=1000,
                  **{"optim.warmup_steps": 0})
  runner = train.Runner(c, str(tmp_path / "golden"))
  state, _, it = runner.init_or_restore()
  _, step_fn, _ = runner.functions(runner.phases[0])
  state, m = step_fn(state, runner.to_global(next(it)))
  m = jax.device_get(m)
  np.testing.assert_allclose(float(m["loss"]), GOLDEN_LOSS, rtol=1e-5)
  np.testing.assert_allclose(float(m["grad_norm"]), GOLDEN_GRAD_NORM, rtol=1e-4)


GOLDEN_LOSS = 2.076249599456787
GOLDEN_GRAD_NORM = 0.6764810085296631


def test_gradient_accumulation_equals_one_large_batch(tmp_path):
  """accum=2 over micro-batches of unequal weight (3 and 1 real examples of 4) gives
  the whole batch's mean loss and gradient, not the mean of the two micro-batch means."""
  import jax
  from longformer_jax import train
  batch = None
  steps = {}
  for accum in (1, 2):
    c = tiny_config(tmp_path, train_steps=1, **{"optim.warmup_steps": 0,
                                                "optim.grad_accum": accum})
    runner = train.Runner(c, str(tmp_path / f"accum{accum}"))
    state, _, it = runner.init_or_restore()
    if batch is None:
      batch = dict(next(it))
      batch["weight"] = np.array([1, 1, 1, 0, 1, 0, 0, 0], batch["weight"].dtype)
    _, step_fn, _ = runner.functions(runner.phases[0])
    new_state, m = step_fn(state, runner.to_global(batch))
    steps[accum] = jax.device_get((m["loss"], m["grad_norm"], new_state["params"]))
  (loss1, norm1, params1), (loss2, norm2, params2) = steps[1], steps[2]
  np.testing.assert_allclose(loss2, loss1, rtol=1e-6)
  np.testing.assert_allclose(norm2, norm1, rtol=1e-5)
  for a, b in zip(jax.tree.leaves(params2), jax.tree.leaves(params1)):
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)


# Layout tests compare 4 steps (one eval, at the end) without periodic checkpoints: a
# sharded step's cost is mostly compiling its partitioned program, and 4 steps of AdamW
# already move the loss.
SHORT_RUN = {"train_steps": 4, "checkpoint_every": 1000}


@pytest.fixture(scope="module")
def single_device_losses(tmp_path_factory):
  """Losses of the short run on one device: the reference of every layout."""
  root = tmp_path_factory.mktemp("single")
  got = losses(train_in_subprocess(root, "one_device", devices=1, **SHORT_RUN))
  assert len(got) == SHORT_RUN["train_steps"] and len(set(got.values())) > 1
  return got


@pytest.mark.slow
def test_mesh_layouts_give_the_same_losses(tmp_path, single_device_losses):
  single = single_device_losses
  # (data, fsdp, tensor, sequence) on 4 devices: parameters split two ways at once
  # (fsdp x tensor). Data parallelism across processes is the two-host test's layout;
  # the batch split with the sequence split (data 2 x sequence 4) is test_seqpar's, whose
  # values and gradients equal one device's.
  for layout in [(1, 2, 2, 1)]:
    mesh = dict(zip(["mesh.data", "mesh.fsdp", "mesh.tensor", "mesh.sequence"], layout))
    got = losses(train_in_subprocess(tmp_path, "mesh_" + "x".join(map(str, layout)),
                                     devices=4, **mesh, **SHORT_RUN))
    assert got.keys() == single.keys()
    np.testing.assert_allclose([got[s] for s in single], list(single.values()), atol=1e-5,
                               rtol=0, err_msg=f"layout {layout}")


def launch_two_hosts(tmp_path, hosts, workdir, data, flags=((), ())):
  """The short run as two processes of one device each, one a host (``host_env``: own
  HOME, TMPDIR, working directory and data cache): they share the bucket, nothing else.
  ``flags[i]``: process i's extra arguments. Returns the started processes."""
  import portpicker
  port = portpicker.pick_unused_port()
  procs = []
  for pid, host in enumerate(hosts):
    overrides = {"distributed.enabled": True, "distributed.coordinator_address":
                 f"127.0.0.1:{port}", "distributed.num_processes": 2,
                 "distributed.process_id": pid, **SHORT_RUN, "checkpoint_every": 2}
    env = host_env(tmp_path, host, devices=1)
    procs.append(subprocess.Popen(
        program_command("train_tiny.py", workdir, data, json.dumps(overrides), *flags[pid]),
        env=env, cwd=env["PWD"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        text=True))
  return procs


def finish(procs, timeout=600) -> list[str]:
  errors = [p.communicate(timeout=timeout)[1] for p in procs]
  assert all(p.returncode == 0 for p in procs), errors[0][-3000:] + errors[1][-3000:]
  return errors


@pytest.mark.slow
def test_two_hosts_sharing_only_a_bucket(tmp_path, single_device_losses, gcs_emulator):
  """Two processes as two hosts whose only shared storage is the bucket: workdir
  (multi-host orbax checkpoints, metrics written by process 0) and prepared data (process 0
  prepares and uploads, process 1 waits and copies) there. One host is killed after step 3
  (the job then restarted: the other process stopped, both relaunched on fresh disks); the
  run resumes from the bucket's checkpoint of step 2, computes step 3 again to the same
  bits, and its losses match one device's."""
  bucket = bucket_path(tmp_path)
  data = f"{bucket}/data"
  killed = launch_two_hosts(tmp_path, ("a0", "a1"), f"{bucket}/run", data,
                            flags=(("--signal=KILL", "--signal-at-step=3"), ()))
  killed[0].communicate(timeout=600)
  assert killed[0].returncode == -signal.SIGKILL
  killed[1].kill()  # what a scheduler does to the rest of a job that lost a host
  killed[1].communicate(timeout=60)
  before = losses(f"{bucket}/run")
  assert sorted(before) == [1, 2, 3]
  errors = finish(launch_two_hosts(tmp_path, ("b0", "b1"), f"{bucket}/run", data))
  assert re.findall(r"resumed from step (\d+)", errors[0]) == ["2"]
  after = losses(f"{bucket}/run")
  # step 3 again from the restored state of step 2: the same bits as before the kill
  assert after[3] == before[3] and {s: after[s] for s in (1, 2)} == {1: before[1], 2: before[2]}
  assert after.keys() == single_device_losses.keys()
  np.testing.assert_allclose(list(after.values()), list(single_device_losses.values()),
                             atol=1e-5, rtol=0)
  for host in ("a0", "a1", "b0", "b1"):
    assert local_leftovers(tmp_path / host) == [], host


def run_tiny(tmp_path, name: str, *flags, **overrides) -> subprocess.CompletedProcess:
  """The tiny run in a fresh process, asynchronous saves (the default) unless told."""
  overrides = {"async_checkpoints": True, **overrides}
  return subprocess.run(
      program_command("train_tiny.py", tmp_path / name, tmp_path / "data",
                      json.dumps(overrides), *flags),
      env=program_env(1), capture_output=True, text=True, timeout=600)


def resumed_step(stderr: str) -> int:
  found = re.findall(r"resumed from step (\d+)", stderr)
  assert len(found) == 1, stderr[-3000:]
  return int(found[0])


@pytest.mark.slow
def test_sigkill_during_async_saves_resumes_exactly(tmp_path, full_run_losses):
  # killed at step 11: the asynchronous save of step 10 may still be in flight
  killed = run_tiny(tmp_path, "run", "--signal=KILL", "--signal-at-step=11")
  assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
  assert max(losses(tmp_path / "run")) == 11
  resumed = run_tiny(tmp_path, "run")
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert resumed_step(resumed.stderr) in (5, 10)  # the newest complete save
  assert losses(tmp_path / "run") == full_run_losses  # exact, step for step


# SIGTERM (save at the next step, resume there exactly) is tested with the workdir in a
# bucket: tests/test_buckets.py::test_preempted_run_in_a_bucket_resumes_exactly.


def test_unreadable_checkpoint_is_skipped(tmp_path, caplog):
  from longformer_jax import train
  c = tiny_config(tmp_path, train_steps=10, eval_every=1000, checkpoint_every=5)
  workdir = str(tmp_path / "run")
  train.train_and_evaluate(c, workdir)
  ckpts = os.path.join(workdir, "checkpoints")
  assert sorted(os.listdir(ckpts)) == ["10", "5"]
  for root, _, files in os.walk(os.path.join(ckpts, "10", "state")):
    for f in files:
      with open(os.path.join(root, f), "w") as fh:
        fh.write("truncated")
  runner = train.Runner(tiny_config(tmp_path, train_steps=10), workdir)
  _, step, _ = runner.init_or_restore()
  assert step == 5
  assert "step 10 is unreadable" in caplog.text


def test_nan_loss_stops_and_names_the_step(tmp_path):
  from longformer_jax import train
  c = tiny_config(tmp_path, **{"optim.lr": 1e9, "optim.clip_norm": 0.0, "optim.warmup_steps": 0,
                               "eval_every": 1000})
  with pytest.raises(FloatingPointError, match=r"at step \d+"):
    train.train_and_evaluate(c, str(tmp_path / "nan"))


@pytest.mark.parametrize("overrides,match", [
    ({"mesh.data": 3}, "config.mesh"),
    ({"optim.grad_accum": 3}, "grad_accum=3"),
    ({"seq_len": 512}, "max_position_embeddings"),
    ({"model.max_global_tokens": None}, "max_global_tokens"),
    ({"optim.schedule": "cosine"}, "config.optim.schedule"),
    ({"model.attention_window": 7}, "attention_window"),
    ({"optim.trainable": "no_such_parameter"}, "config.optim.trainable"),
    ({"optim.trainable": "(unclosed"}, "config.optim.trainable"),
])
def test_bad_configs_are_named_before_compiling(tmp_path, overrides, match):
  from longformer_jax import train
  with pytest.raises(ValueError, match=match):
    train.Runner(tiny_config(tmp_path, **overrides), str(tmp_path / "bad"))


def test_scanned_encoder_trains(tmp_path):
  """A scanned encoder (stacked, sharded params) with remat trains; that remat and scan
  leave values unchanged is tests/test_layers.py's and test_model_api.py's to check."""
  from longformer_jax import train
  train.train_and_evaluate(
      tiny_config(tmp_path, train_steps=4, eval_every=1000, checkpoint_every=0,
                  **{"model.scan_layers": True, "model.remat": "dots"}),
      str(tmp_path / "scan"))
  rows = losses(str(tmp_path / "scan"))
  assert sorted(rows) == [1, 2, 3, 4] and all(np.isfinite(v) for v in rows.values())


def test_char_lm_phases_run_in_one_launch(tmp_path):
  """Two phases (sequence 256 -> 512, window x2, LR halved) on a tiny text8-like zip."""
  import zipfile
  from configs import char_lm
  from longformer_jax import train
  rng = np.random.default_rng(0)
  text = "".join(rng.choice(list("abcdefgh "), size=200_000))
  path = tmp_path / "text8.zip"
  with zipfile.ZipFile(path, "w") as z:
    z.writestr("text8", text)
  c = char_lm.get_config("text8,cpu")
  c.data.data_dir, c.data.path = str(tmp_path / "data"), str(path)
  c.phases = (dict(c.phases[0], steps=4), dict(c.phases[1], steps=3))
  c.eval_every, c.eval_batches, c.async_checkpoints, c.log_every = 4, 2, False, 1
  runner = train.Runner(c, str(tmp_path / "lm"))
  assert [train.model_config(c, p).attention_window for p in runner.phases] == [
      (16, 64), (32, 128)]
  out = runner.run()
  rows = losses(str(tmp_path / "lm"))
  assert sorted(rows) == list(range(1, 8)) and all(np.isfinite(list(rows.values())))
  # 9 symbols: a model that learnt nothing sits near log2(256) = 8 bits, uniform over
  # the used symbols at log2(9) = 3.17; a few steps must already be well below 8.
  assert 0 < out["eval_bpc"] < 8
  with open(os.path.join(tmp_path / "lm", "metrics.jsonl")) as f:
    lrs = {r["step"]: r["lr"] for r in map(json.loads, f) if "lr" in r}
  assert lrs[7] < lrs[4]  # phase 2 runs at half the peak LR


def test_mask_tokens_statistics():
  import jax
  import jax.numpy as jnp
  from longformer_jax import tasks
  ids = jnp.full((64, 512), 7, jnp.int32)
  valid = jnp.arange(512)[None, :] < 400
  inputs, targets = tasks.mask_tokens(ids, jnp.broadcast_to(valid, ids.shape),
                                      jax.random.key(0), vocab_size=100, mask_token_id=99)
  inputs, targets = np.asarray(inputs), np.asarray(targets)
  assert not targets[:, 400:].any()  # padding is never a target
  assert abs(targets[:, :400].mean() - 0.15) < 0.01
  t = inputs[targets]
  assert abs((t == 99).mean() - 0.8) < 0.02
  assert abs((t == 7).mean() - (0.1 + 0.1 / 100)) < 0.02  # kept, or drawn at random as 7
  assert (inputs[~targets] == 7).all()


@pytest.mark.slow
def test_mlm_continues_from_an_hf_checkpoint(tmp_path):
  import jax
  import torch
  import transformers
  from flax import nnx
  from configs import mlm
  from longformer_jax import checkpoint as ckpt_lib, train
  torch.manual_seed(0)
  hf = transformers.LongformerForMaskedLM(transformers.LongformerConfig(
      vocab_size=257, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
      intermediate_size=64, attention_window=[16, 16], max_position_embeddings=130,
      pad_token_id=1)).eval()
  hf.save_pretrained(tmp_path / "init")
  corpus = tmp_path / "corpus.txt"
  corpus.write_text("the quick brown fox jumps over the lazy dog. " * 400)
  c = mlm.get_config("cpu")
  c.init_from_hf, c.data.path = str(tmp_path / "init"), str(corpus)
  c.data.data_dir, c.seq_len, c.train_steps = str(tmp_path / "data"), 128, 3
  c.optim.warmup_steps = 1
  c.eval_every, c.eval_batches, c.log_every, c.async_checkpoints = 3, 1, 1, False
  runner = train.Runner(c, str(tmp_path / "run"))
  state, _, _ = runner.init_or_restore()
  got = np.asarray(jax.device_get(
      state["params"]["longformer"]["embeddings"]["word_embeddings"]["embedding"][...]))
  want = hf.longformer.embeddings.word_embeddings.weight.detach().numpy()
  np.testing.assert_array_equal(got, want)
  # Continued with only the position table trainable (optim.trainable, paper section 5):
  # every other parameter, the LM-head bias without axis names included, keeps the
  # checkpoint's value bit for bit; the checkpoint with its masked optimizer restores.
  c.optim.trainable = "position_embeddings"
  out = train.train_and_evaluate(c, str(tmp_path / "run2"))
  assert np.isfinite(out["eval_bits_per_token"]) and out["eval_bits_per_token"] > 0
  trained = train.Runner(c, str(tmp_path / "run2"))
  target = ckpt_lib.abstract_with_shardings(trained.abstract_state, trained.state_shardings)
  after, step = trained.ckpt.restore_state(target)
  assert step == 3
  before, after = (dict(nnx.to_flat_state(s["params"])) for s in (state, after))
  moved = [k for k in after if not np.array_equal(jax.device_get(after[k][...]),
                                                  jax.device_get(before[k][...]))]
  assert moved == [("longformer", "embeddings", "position_embeddings", "embedding")], moved
  # Over 4 devices with parameters split (fsdp): loaded shard by shard, same values.
  r = run_program("init_from_hf_sharded.py", tmp_path / "init", corpus, tmp_path / "data",
                  tmp_path / "sharded", devices=4)
  # every matrix is split (and some vectors, as the rules say)
  assert r["equal"] and r["split"] >= r["matrices"] > 10, r


def test_rerunning_a_finished_run_reports_its_eval(tmp_path):
  from longformer_jax import train
  c = tiny_config(tmp_path, train_steps=5, eval_every=5, checkpoint_every=5,
                  eval_without_global=True)  # the README's ablation, off in the tiny config
  first = train.train_and_evaluate(c, str(tmp_path / "run"))
  again = train.train_and_evaluate(c, str(tmp_path / "run"))
  assert again["eval_accuracy"] == first["eval_accuracy"]
  assert again["eval_no_global_loss"] == first["eval_no_global_loss"]
  assert first["eval_no_global_loss"] != first["eval_loss"]  # the global tokens were dropped
  assert len(losses(str(tmp_path / "run"))) == 5  # nothing retrained or logged twice


def test_a_workdir_refuses_another_runs_config(tmp_path, monkeypatch, caplog):
  """A rerun may change how often it reports or saves; a config that differs in anything
  else is another run, refused with the fields and the flag that overrides; every start
  is recorded in runs.jsonl. (A long evaluation logs its progress: here every batch.)"""
  from longformer_jax import train
  workdir = str(tmp_path / "run")
  c = tiny_config(tmp_path, train_steps=2, eval_every=2, checkpoint_every=2)
  train.train_and_evaluate(c, workdir)
  other = tiny_config(tmp_path, train_steps=2, eval_every=2, checkpoint_every=2,
                      **{"model.hidden_dropout_prob": 0.3, "optim.lr": 1e-3})
  with pytest.raises(ValueError, match=r"holds another run: config.model.hidden_dropout_prob: "
                     r"0.0 -> 0.3; config.optim.lr: 0.003 -> 0.001. .* --allow_config_change"):
    train.train_and_evaluate(other, workdir)
  assert json.loads((tmp_path / "run" / "experiment.json").read_text())["optim"]["lr"] != 1e-3
  monkeypatch.setattr(train, "EVAL_PROGRESS_S", 0.0)
  caplog.set_level("INFO", logger="longformer_jax")
  cadence = tiny_config(tmp_path, train_steps=2, eval_every=2, checkpoint_every=2,
                        log_every=2)
  train.train_and_evaluate(cadence, workdir)  # finished: evaluates, reports
  assert re.search(r"evaluating \w+ on validation: 1 batches in \d+s", caplog.text)
  train.train_and_evaluate(other, workdir, allow_config_change=True)
  starts = [json.loads(line) for line in (tmp_path / "run" / "runs.jsonl").read_text()
            .splitlines()]
  assert [s["from_step"] for s in starts] == [0, 2, 2]
  assert set(starts[1]["changed"]) == {"log_every"}
  assert "model.hidden_dropout_prob" in starts[2]["changed"]
