"""The Vision Longformer (vision.py), its datasets (data/images.py) and its training run."""

import numpy as np
import pytest

import jax
import jax.numpy as jnp
import tensorflow_datasets as tfds
from flax import nnx

from longformer_jax import families, layers, vision
from longformer_jax.data import images, pipeline

TINY = dict(image_size=16, patch_size=2, hidden_sizes=(8, 16), depths=(1, 1), num_heads=(2, 2),
            kernels=(3, 3), num_labels=3, grid_block=4, mlp_ratio=2, scan_layers=False)


def tiny_config(**overrides) -> vision.VisionConfig:
  return vision.VisionConfig(**{**TINY, **overrides})


def forward(model, x, **kwargs):
  """``model(x, **kwargs)`` as one compiled program (faster than op by op)."""
  graphdef, state = nnx.split(model)
  return jax.jit(lambda state, x: nnx.merge(graphdef, state)(x, **kwargs))(state, x)


def pixels(batch=2, size=16, seed=0):
  return np.random.default_rng(seed).normal(size=(batch, size, size, 3)).astype(np.float32)


# ---- the model ------------------------------------------------------------------------


def test_shapes_of_every_stage():
  cfg = tiny_config(num_global_tokens=2)
  model = vision.create_model(cfg)
  x = jax.eval_shape(model.embeddings, jnp.asarray(pixels()))
  assert x.shape == (2, 2 + 8 * 8, 8)  # the global tokens, then 8 x 8 patches
  assert jax.eval_shape(model.encoder.merges[0], x).shape == (2, 2 + 4 * 4, 16)
  assert [cfg.stage(s).attention_grid.kernel for s in range(2)] == [(3, 3), (3, 3)]
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)

  def loss(p):
    out = nnx.merge(graphdef, p, rest)(jnp.asarray(pixels()), labels=jnp.array([0, 2]),
                                       output_hidden_states=True)
    return out.loss, out

  # shapes only (the tiny config's training takes the gradients)
  (value, out), grads = jax.eval_shape(jax.value_and_grad(loss, has_aux=True), params)
  assert out.logits.shape == (2, 3) and out.logits.dtype == jnp.float32
  assert [h.shape for h in out.hidden_states] == [(2, 66, 8), (2, 18, 16)]
  assert value.shape == () and jax.tree.structure(grads) == jax.tree.structure(params)


@pytest.mark.parametrize("num_global", [0, 1])
def test_global_token_carries_a_far_patch_everywhere(num_global):
  """Two layers, 3 x 3 neighbourhoods: a change in patch (0, 0) reaches only patches
  within four rows and columns of it (two clamped neighbourhoods), unless a global
  token relays it (its output, a key of every patch in the second layer)."""
  cfg = vision.VisionConfig(image_size=16, patch_size=2, hidden_sizes=(8,), depths=(2,),
                            num_heads=(2,), kernels=(3,), num_labels=2, grid_block=4,
                            num_global_tokens=num_global, pool="cls" if num_global else "mean")
  model = vision.create_model(cfg)
  x = pixels(batch=1)
  y = x.copy()
  y[0, :2, :2] += 1.0  # patch (0, 0)
  run = lambda p: np.asarray(forward(model, p, output_hidden_states=True).hidden_states[-1][0])
  diff_NxE = np.abs(run(x) - run(y))[num_global:].reshape(8, 8, -1).max(-1)
  assert diff_NxE[0, 0] > 1e-3
  far = diff_NxE[5:, :].max(), diff_NxE[:, 5:].max()
  if num_global:
    assert min(far) > 1e-6
  else:
    assert max(far) == 0.0


@pytest.mark.parametrize("overrides,field", [
    (dict(image_size=15), "patch_size"),
    (dict(image_size=18), "halve"),
    (dict(depths=(1,)), "depths"),
    (dict(kernels=(3, 4)), "kernels"),
    (dict(num_global_tokens=0), "num_global_tokens"),
    (dict(pool="max"), "pool"),
    (dict(hidden_sizes=(8, 15)), "stage 1"),
])
def test_bad_configs_name_the_field(overrides, field):
  with pytest.raises(ValueError, match=field):
    tiny_config(**overrides)


def test_wrong_images_and_attention_probabilities_raise():
  model = vision.create_model(tiny_config())
  with pytest.raises(ValueError, match="image_size"):
    model(pixels(size=8))
  stage = tiny_config().stage(0)
  with nnx.use_eager_sharding(False):
    attn_layer = layers.SelfAttention(stage, 0, nnx.Rngs(0))
  x = jnp.zeros((1, 65, 8))
  with pytest.raises(ValueError, match="output_attentions"):
    attn_layer(x, jnp.ones((1, 65), bool), jnp.arange(65)[None] < 1, None,
               output_attentions=True)
  with pytest.raises(ValueError, match="HF"):
    families.get("vision").to_hf(model, "/nonexistent")


# ---- the datasets ---------------------------------------------------------------------


def find_marks(image, mark_size):
  """[(row, col, colour)] of the marks: squares whose every channel is 0 or 255."""
  saturated = np.all((image == 0) | (image == 255), axis=-1)
  rows, cols = np.nonzero(saturated)
  found = []
  for r, c in zip(rows, cols):
    if not any(r - fr in range(mark_size) and c - fc in range(mark_size) for fr, fc, _ in found):
      colour = int(np.flatnonzero((images.PALETTE == image[r, c]).all(-1))[0])
      found.append((int(r), int(c), colour))
  return found


@pytest.mark.parametrize("label", ["match", "pair"])
def test_mark_pairs_labels_depend_on_both_marks(label):
  params = dict(image_size=32, mark_size=4, num_colours=4, min_distance=16, label=label)
  labels = []
  for i in range(40):
    ex = images.mark_pair_example(i, **params)
    (r0, c0, a), (r1, c1, b) = find_marks(ex["image"], 4)
    assert max(abs(r0 - r1), abs(c0 - c1)) >= 16
    assert ex["image"][r0:r0 + 4, c0:c0 + 4].std(axis=(0, 1)).max() == 0  # one colour
    want = int(a == b) if label == "match" else a * 4 + b
    assert int(ex["label"]) == want
    labels.append(want)
  if label == "match":
    assert 0.25 < np.mean(labels) < 0.75  # both classes, about half each
  np.testing.assert_array_equal(images.mark_pair_example(3, **params)["image"],
                                images.mark_pair_example(3, **params)["image"])


def test_mark_pairs_bad_fields():
  with pytest.raises(ValueError, match="min_distance"):
    images.mark_pair_example(0, image_size=32, min_distance=40)
  with pytest.raises(ValueError, match="num_colours"):
    images.mark_pair_example(0, image_size=32, num_colours=9)


def check_splits_and_spec(cfg, splits, tmp_path):
  """Splits hold disjoint images; batches are exactly the element_spec."""
  seen = {}
  for split in splits:
    it = pipeline.make_iterator(cfg, split=split, seq_len=1, batch_size=2, seed=0,
                                num_epochs=1)
    batch = next(it)
    spec = pipeline.batch_spec(cfg, split=split, seq_len=1, batch_size=2)
    assert {k: (v.shape, v.dtype) for k, v in batch.items()} == \
        {k: (s.shape, s.dtype) for k, s in spec.items()}
    source = pipeline.prepare(cfg).as_data_source()[split]
    seen[split] = {source[i]["image"].tobytes() for i in range(len(source))}
  for i, a in enumerate(splits):
    for b in splits[i + 1:]:
      assert not seen[a] & seen[b], (a, b)
  return seen


def test_mark_pairs_dataset(tmp_path):
  cfg = dict(name="mark_pairs", data_dir=str(tmp_path), image_size=32, min_distance=16,
             num_train=12, num_eval=6)
  seen = check_splits_and_spec(cfg, ("train", "validation"), tmp_path)
  assert (len(seen["train"]), len(seen["validation"])) == (12, 6)
  assert pipeline.num_labels(cfg) == 2
  assert pipeline.label_names(cfg) == ("different", "same")


def test_image_folder_dataset(tmp_path):
  from PIL import Image
  rng = np.random.default_rng(0)
  names = []
  for label in ("cat", "dog", "emu"):
    (tmp_path / "root" / label).mkdir(parents=True)
    for i in range(10):
      shape = (int(rng.integers(10, 30)), int(rng.integers(10, 30)), 3)
      Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(
          tmp_path / "root" / label / f"{i}.png")
      names.append(f"{label}/{i}.png")
  (tmp_path / "root" / "notes.txt").write_text("not an image")
  cfg = dict(name="image_folder", data_dir=str(tmp_path / "data"),
             root=str(tmp_path / "root"), image_size=8, split_fractions=(0.6, 0.2, 0.2))
  seen = check_splits_and_spec(cfg, ("train", "validation", "test"), tmp_path)
  assert sum(map(len, seen.values())) == 30
  assert pipeline.label_names(cfg) == ("cat", "dog", "emu")
  builder = pipeline.prepare(cfg)
  total = sum(builder.info.splits[s].num_examples for s in ("train", "validation", "test"))
  assert total == 30
  with pytest.raises(FileNotFoundError, match="root"):
    pipeline.get_builder(dict(cfg, root=str(tmp_path / "missing")))


class VisionTestImages(tfds.core.GeneratorBasedBuilder):
  """A registered tfds image dataset (as imagenette or cifar10 are): 12 x 10 images,
  train 6 and test 3 (no validation split)."""

  VERSION = tfds.core.Version("1.0.0")
  code_path = None

  def _info(self):
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
        "image": tfds.features.Tensor(shape=(12, 10, 3), dtype=np.uint8),
        "label": tfds.features.ClassLabel(names=["ant", "bee"])}), disable_shuffling=True)

  def _split_generators(self, dl_manager):
    return {"train": self._generate_examples(0, 6), "test": self._generate_examples(6, 3)}

  def _generate_examples(self, first, count):
    for i in range(first, first + count):
      yield i, {"image": np.full((12, 10, 3), 20 * i, np.uint8), "label": i % 2}


def test_tfds_images_reads_a_prepared_dataset(tmp_path):
  cfg = dict(name="tfds_images", data_dir=str(tmp_path), tfds_name="vision_test_images",
             image_size=8)
  with pytest.raises(FileNotFoundError, match="not prepared"):
    pipeline.get_builder(cfg)
  VisionTestImages(data_dir=str(tmp_path), file_format="array_record").download_and_prepare()
  assert pipeline.label_names(cfg) == ("ant", "bee") and pipeline.num_labels(cfg) == 2
  batch = next(pipeline.make_iterator(cfg, split="validation", seq_len=1, batch_size=4, seed=0))
  spec = pipeline.batch_spec(cfg, split="validation", seq_len=1, batch_size=4)
  assert {k: (v.shape, v.dtype) for k, v in batch.items()} == \
      {k: (s.shape, s.dtype) for k, s in spec.items()}
  np.testing.assert_array_equal(batch["labels"], [0, 1, 0, 0])  # test's 3, then padding
  np.testing.assert_array_equal(batch["weight"], [1, 1, 1, 0])
  want = (np.full(3, 120 / 255, np.float32) - images.NORMALISE["mean"]) / images.NORMALISE["std"]
  np.testing.assert_allclose(batch["pixel_values"][0, 3, 5], want, rtol=1e-5)


# ---- training -------------------------------------------------------------------------


@pytest.mark.parametrize("variant", ["tiny"])
def test_tiny_config_trains(tmp_path, variant):
  from conftest import load_config
  from longformer_jax import train
  c = load_config("image_classify", variant)
  c.data.data_dir = str(tmp_path / "data")
  c.async_checkpoints = False
  metrics = train.train_and_evaluate(c, str(tmp_path / "run"))
  assert np.isfinite(metrics["loss"]) and 0.0 <= metrics["eval_accuracy"] <= 1.0
  from longformer_jax import workdir
  with pytest.raises(ValueError, match="no HF checkpoints"):  # not an AttributeError
    workdir.export_hf(str(tmp_path / "run"), str(tmp_path / "hf"))
  assert not (tmp_path / "hf").exists()
  local = load_config("image_classify", "tiny,local_only")
  cfg = train.model_config(local, train.resolve_phases(local)[0])
  assert (cfg.num_global_tokens, cfg.pool, cfg.image_size) == (0, "mean", 32)
  local.init_from_hf = "/a/checkpoint"
  with pytest.raises(ValueError, match="init_from_hf"):
    train.model_config(local, train.resolve_phases(local)[0])
