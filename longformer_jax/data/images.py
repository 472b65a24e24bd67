"""Image classification datasets: tfds builders of fixed-size uint8 images and labels.

Three datasets, each prepared once into array_record files under ``data_dir``:

* ``image_folder``: ``data_cfg.root`` holding ``<label>/<image>.png|jpg|jpeg`` (labels
  are the sorted folder names); each file's split is a hash of its path under the root
  (``documents.split_of_id``), so it depends on nothing else.
* ``mark_pairs``: a generated long-range task. An S x S noise image holds two small
  squares (``mark_size``) of one of ``num_colours`` saturated colours, at least
  ``min_distance`` pixels apart (Chebyshev); the label depends on both: whether their
  colours match (``label="match"``), or the ordered colour pair (``label="pair"``,
  first mark the one met first in row-major order). A model whose patches see only
  their neighbourhood, pooled by a mean and read linearly, scores each mark apart and
  cannot compare them; a global token that attends to both can.
* ``tfds_images``: a tfds image dataset by name (``tfds_name``: ``imagenette``,
  ``cifar10``, ...) already prepared in ``data_dir`` as array_record (nothing is
  downloaded); read in place, each image resized as it is read.

Images are resized (shorter side to ``image_size``, then the centre square); the first
two datasets store them so. tfds keeps up to 1 GB of a split in memory while writing
and needs TensorFlow beyond that: a larger image folder raises unless it is installed.
Elements: ``pixel_values`` (S, S, C) float32, ``(x / 255 - mean) / std``;
``labels`` () int32; ``weight`` () float32.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import io
import json

import grain
import numpy as np
import tensorflow_datasets as tfds

from longformer_jax import fileio
from longformer_jax.data import documents, pipeline, registry

EXTENSIONS = (".png", ".jpg", ".jpeg")
# Saturated colours: every channel 0 or 255, which the noise never takes.
PALETTE = np.array([(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (255, 0, 255),
                    (0, 255, 255), (255, 255, 255), (0, 0, 0)], np.uint8)
# Background values 64, 80, ..., 176: far from the marks' 0 and 255, and few enough
# (3 bits a value) that the stored images compress.
NOISE_LEVELS, NOISE_LOW, NOISE_STEP = 8, 64, 16
LABEL_KINDS = ("match", "pair")
MEMORY_LIMIT = 900 << 20  # bytes of one split tfds writes without TensorFlow (1 GB)
MARK_DEFAULTS = dict(image_size=64, mark_size=4, num_colours=4, min_distance=None,
                     label="match", num_train=2000, num_eval=200, seed=0)
# Per-channel normalisation; ImageNet's statistics for photographs.
NORMALISE = dict(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))


def resize(image_HxWxC: np.ndarray, size: int) -> np.ndarray:
  """(size, size, C) uint8: shorter side scaled to ``size``, then the centre square."""
  from PIL import Image  # only for files and tfds images
  squeeze = image_HxWxC.ndim == 3 and image_HxWxC.shape[-1] == 1
  img = Image.fromarray(image_HxWxC[..., 0] if squeeze else image_HxWxC)
  scale = size / min(img.size)
  w, h = max(size, round(img.size[0] * scale)), max(size, round(img.size[1] * scale))
  img = img.resize((w, h), Image.BILINEAR)
  left, top = (w - size) // 2, (h - size) // 2
  out = np.asarray(img.crop((left, top, left + size, top + size)), np.uint8)
  return out[..., None] if out.ndim == 2 else out


# ---- mark_pairs: the generated long-range task --------------------------------------


def check_mark_params(*, image_size: int, mark_size: int, num_colours: int,
                      min_distance: int | None, label: str, **unused) -> int:
  """Raises ValueError naming the bad field; returns the effective ``min_distance``."""
  del unused
  for field, value in (("image_size", image_size), ("mark_size", mark_size)):
    if not isinstance(value, (int, np.integer)) or value < 1:
      raise ValueError(f"mark_pairs: {field} must be a positive integer, got {value!r}")
  if not 2 <= num_colours <= len(PALETTE):
    raise ValueError(f"mark_pairs: num_colours must be in [2, {len(PALETTE)}], got "
                     f"{num_colours}")
  if label not in LABEL_KINDS:
    raise ValueError(f"mark_pairs: label={label!r} is not one of {LABEL_KINDS}")
  dist = image_size // 2 if min_distance is None else min_distance
  if not mark_size <= dist <= (image_size - mark_size) * 3 // 4:
    raise ValueError(f"mark_pairs: min_distance={dist} must be in [mark_size={mark_size}, "
                     f"3/4 of image_size - mark_size = {(image_size - mark_size) * 3 // 4}]")
  return dist


def mark_label(colour_a: int, colour_b: int, *, num_colours: int, label: str) -> int:
  """The label of marks of colours a (first in row-major order) and b."""
  return int(colour_a == colour_b) if label == "match" else colour_a * num_colours + colour_b


def mark_pair_example(index: int, *, image_size: int, mark_size: int = 4,
                      num_colours: int = 4, min_distance: int | None = None,
                      label: str = "match", seed: int = 0) -> dict:
  """Example ``index``: ``{"image": uint8 (S, S, 3), "label": int32 ()}``, deterministic
  in (seed, index). With ``label="match"`` half the examples match."""
  dist = check_mark_params(image_size=image_size, mark_size=mark_size,
                           num_colours=num_colours, min_distance=min_distance, label=label)
  rng = np.random.default_rng((int(seed), int(index)))
  image = (NOISE_LOW + NOISE_STEP * rng.integers(NOISE_LEVELS, size=(image_size, image_size, 3))
           ).astype(np.uint8)
  while True:  # accepted with probability > 1/4 (dist <= 3/4 of the free span)
    corners = rng.integers(0, image_size - mark_size + 1, size=(2, 2))
    if np.abs(corners[0] - corners[1]).max() >= dist:
      break
  corners = corners[np.lexsort((corners[:, 1], corners[:, 0]))]  # row-major order
  if label == "match":
    a = int(rng.integers(num_colours))
    b = a if rng.integers(2) else (a + int(rng.integers(1, num_colours))) % num_colours
  else:
    a, b = (int(c) for c in rng.integers(num_colours, size=2))
  for (r, c), colour in zip(corners, (a, b)):
    image[r:r + mark_size, c:c + mark_size] = PALETTE[colour]
  return {"image": image,
          "label": np.int32(mark_label(a, b, num_colours=num_colours, label=label))}


def mark_num_labels(cfg: dict) -> int:
  k = cfg.get("num_colours") or MARK_DEFAULTS["num_colours"]
  return 2 if (cfg.get("label") or "match") == "match" else k * k


# ---- the builders --------------------------------------------------------------------


@dataclasses.dataclass
class ImagesConfig(tfds.core.BuilderConfig):
  """A builder config named by a hash of what the prepared data depends on; ``settings``
  holds it (JSON)."""

  settings: str = "{}"


class ImageBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Images of ``settings["image_size"]`` and ``num_channels`` with their labels;
  subclasses set ``name`` and ``_split_generators``."""

  VERSION = tfds.core.Version("1.0.0")
  code_path = None  # no checksums file: tfds fetches nothing

  @property
  def settings(self) -> dict:
    return json.loads(self.builder_config.settings)

  def _info(self) -> tfds.core.DatasetInfo:
    s = self.settings
    shape = (s["image_size"], s["image_size"], s["num_channels"])
    return tfds.core.DatasetInfo(
        builder=self, description=(self.__doc__ or "").split("\n")[0],
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Tensor(shape=shape, dtype=np.uint8,
                                          encoding=tfds.features.Encoding.ZLIB),
            "label": tfds.features.Scalar(dtype=np.int32)}),
        disable_shuffling=True)


class MarkPairs(ImageBuilder, skip_registration=True):
  """mark_pairs: splits ``train`` (num_train) and ``validation`` (num_eval)."""

  name = "mark_pairs"

  def _split_generators(self, dl_manager):
    del dl_manager
    s = self.settings
    return {"train": self._generate_examples(0, s["num_train"]),
            "validation": self._generate_examples(s["num_train"], s["num_eval"])}

  def _generate_examples(self, first: int, count: int):
    s = self.settings
    params = {k: s[k] for k in ("image_size", "mark_size", "num_colours", "min_distance",
                                "label", "seed")}
    for i in range(count):
      yield i, mark_pair_example(first + i, **params)


def folder_files(root: str) -> tuple[tuple[str, ...], list[tuple[str, int]]]:
  """(label names, [(path under root, label)]) of ``root/<label>/<image>``, sorted."""
  if not root or not fileio.isdir(root):
    raise FileNotFoundError(f"image_folder: config.data.root={root!r} is not a directory")
  labels = tuple(d for d in fileio.listdir(root) if fileio.isdir(fileio.join(root, d)))
  files = [(f"{label}/{f}", i) for i, label in enumerate(labels)
           for f in fileio.listdir(fileio.join(root, label))
           if f.lower().endswith(EXTENSIONS)]
  if not files:
    raise FileNotFoundError(f"image_folder: config.data.root={root!r} holds no "
                            f"<label>/<image>{'|'.join(EXTENSIONS)} files")
  return labels, files


class ImageFolder(ImageBuilder, skip_registration=True):
  """image_folder: splits train / validation / test by a hash of each file's path."""

  name = "image_folder"

  def _split_generators(self, dl_manager):
    del dl_manager
    s = self.settings
    _, files = folder_files(s["root"])
    by_split = {}
    for path, label in files:
      split = documents.split_of_id(path, tuple(s["split_fractions"]), s["split_seed"])
      by_split.setdefault(split, []).append((path, label))
    return {split: self._generate_examples(items) for split, items in by_split.items()}

  def _generate_examples(self, items):
    from PIL import Image
    s = self.settings
    mode = "RGB" if s["num_channels"] == 3 else "L"
    for path, label in items:
      with Image.open(io.BytesIO(fileio.read_bytes(fileio.join(s["root"], path)))) as img:
        pixels = np.asarray(img.convert(mode))
      yield path, {"image": resize(pixels, s["image_size"]), "label": np.int32(label)}


def tfds_source(cfg: dict, data_dir: str):
  """The prepared tfds builder named by ``tfds_name`` (FileNotFoundError if absent)."""
  name = cfg.get("tfds_name")
  if not name:
    raise ValueError("tfds_images: config.data.tfds_name is not set")
  builder = tfds.builder(name, data_dir=data_dir)
  if not builder.is_prepared() and pipeline.fetch_prepared(cfg, builder.data_dir):
    builder = tfds.builder(name, data_dir=data_dir)  # copied from config.data.data_dir's bucket
  if not builder.is_prepared():
    raise FileNotFoundError(
        f"tfds_images: {name} is not prepared in {data_dir} (config.data.data_dir); "
        f"prepare it there: python -m longformer_jax.prepare {name} {data_dir} (the prepare "
        "extra); nothing is downloaded during a run")
  return builder


# ---- the pipeline's side: settings, elements, registration ---------------------------

COLOUR_NAMES = ("red", "green", "blue", "yellow", "magenta", "cyan", "white", "black")
_GREY = dict(mean=(0.5,), std=(0.5,))  # generated images: no photograph statistics


def _image_size(cfg: dict, dataset: str) -> int:
  size = cfg.get("image_size")
  if not isinstance(size, (int, np.integer)) or size < 1:
    raise ValueError(f"{dataset}: config.data.image_size must be a positive int, got {size!r}")
  return int(size)


def _channels(cfg: dict) -> int:
  channels = cfg.get("num_channels") or 3
  if channels not in (1, 3):
    raise ValueError(f"config.data.num_channels must be 1 or 3, got {channels!r}")
  return channels


def _mark_settings(cfg: dict) -> dict:
  s = {k: (cfg.get(k) if cfg.get(k) is not None else v) for k, v in MARK_DEFAULTS.items()}
  s["min_distance"] = check_mark_params(**s)
  for field in ("num_train", "num_eval"):
    if s[field] < 1:
      raise ValueError(f"mark_pairs: {field} must be positive, got {s[field]}")
  return dict(s, num_channels=3)


def _folder_settings(cfg: dict) -> dict:
  root = str(fileio.path(cfg.get("root") or ""))
  fractions = tuple(cfg.get("split_fractions") or (0.8, 0.1, 0.1))
  if len(fractions) != 3 or min(fractions) < 0 or abs(sum(fractions) - 1) > 1e-6:
    raise ValueError(f"image_folder: config.data.split_fractions={fractions} must be three "
                     "fractions (train, validation, test) summing to 1")
  return dict(root=root, image_size=_image_size(cfg, "image_folder"),
              num_channels=_channels(cfg), split_fractions=fractions,
              split_seed=int(cfg.get("split_seed") or 0))


def _tfds_split(builder, cfg: dict, split: str) -> str:
  """The source split read as ``split``: train, or the eval split it has."""
  if split == "train":
    return "train"
  theirs = cfg.get("eval_source_split") or (
      "validation" if "validation" in builder.info.splits else "test")
  if theirs not in builder.info.splits:
    raise ValueError(f"tfds_images: config.data.eval_source_split={theirs!r} is not one of "
                     f"{sorted(builder.info.splits)}")
  return theirs


class Resized:
  """A source example -> ``{"image", "label"}`` with the image resized (decoded first
  if stored as file bytes)."""

  def __init__(self, size: int, channels: int):
    self.size, self.channels = size, channels

  def __call__(self, example: dict) -> dict:
    image = example["image"]
    if isinstance(image, bytes):
      from PIL import Image
      image = Image.open(io.BytesIO(image)).convert("RGB" if self.channels == 3 else "L")
    image = np.asarray(image, np.uint8)
    if image.shape[-1] != self.channels:
      raise ValueError(f"tfds_images: images have {image.shape[-1]} channels, "
                       f"config.data.num_channels={self.channels}")
    return {"image": resize(image, self.size), "label": example["label"]}


def _tfds_elements(builder, cfg: dict, *, split: str, seq_len: int, **shard):
  del seq_len
  size, _, channels = image_shape(cfg)
  source = builder.as_data_source()[_tfds_split(builder, cfg, split)]
  resized = grain.MapDataset.source(source).map(Resized(size, channels))
  return pipeline.example_dataset(resized, ImageElement(channels, **NORMALISE), split=split,
                                  **shard)


def _builder_of(cls, settings: dict, data_dir: str, identity=()):
  name = documents.config_name(cls.name, settings, *identity)
  config = ImagesConfig(name=name, settings=json.dumps(settings, sort_keys=True))
  return cls(config=config, data_dir=data_dir, file_format="array_record")


def _folder_builder(cfg: dict, data_dir: str, seq_len: int | None):
  del seq_len
  s = _folder_settings(cfg)
  _, files = folder_files(s["root"])  # the listing, sizes and times name the prepared data
  stored = len(files) * s["image_size"] ** 2 * s["num_channels"]
  if stored > MEMORY_LIMIT and importlib.util.find_spec("tensorflow") is None:
    raise ValueError(f"image_folder: {len(files)} images of config.data.image_size="
                     f"{s['image_size']} take {stored >> 20} MiB, more than tfds writes "
                     "without TensorFlow (install it, or use a smaller image_size)")
  stats = [(p, *fileio.size_and_mtime(fileio.join(s["root"], p))) for p, _ in files]
  return _builder_of(ImageFolder, s, data_dir, [stats])


class ImageElement:
  """A stored example (+ weight) -> ``pixel_values`` normalised, ``labels``, ``weight``."""

  def __init__(self, channels: int, mean, std):
    pick = (lambda v: np.asarray(v[:3] if len(v) >= 3 else v * 3, np.float32)) \
        if channels == 3 else (lambda v: np.asarray([np.mean(v)], np.float32))
    self.mean, self.std = pick(mean), pick(std)

  def __call__(self, example: dict, weight: float = 1.0) -> dict:
    x = np.asarray(example["image"], np.float32) / 255.0
    return {"pixel_values": ((x - self.mean) / self.std).astype(np.float32),
            "labels": np.int32(example["label"]), "weight": np.float32(weight)}

  @staticmethod
  def spec(image_size: int, channels: int) -> dict:
    """``{name: (shape, dtype)}`` of an element."""
    return {"pixel_values": ((image_size, image_size, channels), np.float32),
            "labels": ((), np.int32), "weight": ((), np.float32)}


def image_shape(cfg: dict) -> tuple[int, int, int]:
  """(S, S, C) of a dataset's images, from its config alone."""
  if cfg.get("name") == "mark_pairs":
    return (_mark_settings(cfg)["image_size"],) * 2 + (3,)
  return (_image_size(cfg, cfg.get("name")),) * 2 + (_channels(cfg),)


def _elements_of(stats: dict):
  def elements(builder, cfg: dict, *, split: str, seq_len: int, **shard) -> grain.MapDataset:
    del seq_len  # the images' size is the dataset's
    channels = builder.settings["num_channels"]
    element = ImageElement(channels, **(stats or NORMALISE))
    return pipeline.example_dataset(builder.as_data_source()[split], element, split=split,
                                    **shard)
  return elements


def _element_spec(cfg: dict, *, split: str, seq_len: int, model_cfg=None) -> dict:
  del split, seq_len, model_cfg
  size, _, channels = image_shape(cfg)
  return ImageElement.spec(size, channels)


def _tfds_labels(cfg: dict) -> tuple:
  return tuple(tfds_source(cfg, cfg.get("data_dir") or "").info.features["label"].names)


def _mark_names(cfg: dict) -> tuple:
  s = _mark_settings(cfg)
  if s["label"] == "match":
    return ("different", "same")
  colours = COLOUR_NAMES[:s["num_colours"]]
  return tuple(f"{a}-{b}" for a in colours for b in colours)


_COMMON = ("image_size", "num_channels")
registry.register(registry.Dataset(
    name="mark_pairs", splits=("train", "validation"),
    builder=lambda cfg, data_dir, seq_len: _builder_of(MarkPairs, _mark_settings(cfg), data_dir),
    elements=_elements_of(_GREY), vocab_size=lambda cfg: 0, num_labels=mark_num_labels,
    fields=tuple(MARK_DEFAULTS), doc="two distant coloured marks whose pair is the label",
    label_names=_mark_names, element_spec=_element_spec))
registry.register(registry.Dataset(
    name="image_folder", splits=documents.SPLIT_NAMES, builder=_folder_builder,
    elements=_elements_of(None), vocab_size=lambda cfg: 0,
    num_labels=lambda cfg: len(folder_files(_folder_settings(cfg)["root"])[0]),
    fields=("root", "split_fractions", "split_seed") + _COMMON,
    doc="images in root/<label>/ folders",
    label_names=lambda cfg: folder_files(_folder_settings(cfg)["root"])[0],
    element_spec=_element_spec))
registry.register(registry.Dataset(
    name="tfds_images", splits=("train", "validation"),
    builder=lambda cfg, data_dir, seq_len: tfds_source(cfg, data_dir),
    elements=_tfds_elements, vocab_size=lambda cfg: 0,
    num_labels=lambda cfg: len(_tfds_labels(cfg)),
    fields=("tfds_name", "eval_source_split") + _COMMON,
    doc="a prepared tfds image dataset (imagenette, cifar10, ...)",
    label_names=_tfds_labels, element_spec=_element_spec))
