"""``python -m longformer_jax.prepare``: tfds's own builders of imdb_reviews,
scientific_papers/arxiv and imagenette prepare from raw archives in their real download
layouts (small fakes, unpacked by tfds's extractor), and the project reads the result.

Only the network is replaced: the download manager hands tfds a local archive per URL.
These tests need the ``prepare`` extra (TensorFlow); without it they are skipped, and
the message that names the extra is tested instead.
"""

import io
import json
import tarfile
import zipfile
from unittest import mock

import numpy as np
import pytest

from longformer_jax import fileio, prepare

WORDS = ["the", "vote", "party", "won", "a", "close", "election", "after", "months", "of", "debate"]


def needs_extra():
  pytest.importorskip("tensorflow", reason="the prepare extra (pip install -e '.[prepare]')")
  pytest.importorskip("importlib_resources")


def offline_downloads(archives: dict):
  """tfds's DownloadManager with each URL's download replaced by a local archive (the
  extraction, checks and preparation are tfds's own)."""
  import promise
  import tensorflow_datasets as tfds
  from etils import epath

  def fetch(self, resource):
    url = getattr(resource, "url", resource)  # a Resource or its URL
    for key, path in archives.items():
      if key in url:
        return promise.Promise.resolve(epath.Path(path))
    raise AssertionError(f"unexpected download {url}")
  return mock.patch.object(tfds.download.DownloadManager, "_download_or_get_cache", fetch)


def add_file(tar_or_zip, name: str, data: bytes):
  if isinstance(tar_or_zip, zipfile.ZipFile):
    tar_or_zip.writestr(name, data)
    return
  info = tarfile.TarInfo(name)
  info.size = len(data)
  tar_or_zip.addfile(info, io.BytesIO(data))


def imdb_archive(path) -> dict:
  """aclImdb_v1.tar.gz's layout: aclImdb/{train,test}/{pos,neg}/ID_RATING.txt, unsup."""
  reviews = {}
  rng = np.random.default_rng(0)
  with tarfile.open(path, "w:gz") as tar:
    for split in ("train", "test"):
      for label in ("neg", "pos"):
        for k in range(3):
          text = f"{label} {split} {k}: " + " ".join(rng.choice(WORDS, 12))
          reviews[text] = (split, int(label == "pos"))
          add_file(tar, f"aclImdb/{split}/{label}/{k}_{3 + 4 * (label == 'pos')}.txt",
                   text.encode())
    add_file(tar, "aclImdb/train/unsup/0_0.txt", b"an unlabelled review")
    add_file(tar, "aclImdb/README", b"Large Movie Review Dataset v1.0")
  return reviews


def arxiv_archive(path, name: str) -> dict:
  """arxiv-dataset.zip's layout: arxiv-dataset/{train,val,test}.txt, one JSON per line
  with paragraphs as lists and the abstract's sentences in <S> ... </S>."""
  pairs = {}
  with zipfile.ZipFile(path, "w") as z:
    for split in ("train", "val", "test"):
      lines = []
      for k in range(2):
        article_id = f"{name}-{split}-{k}"
        paragraphs = [f"paragraph {j} of {article_id} on the vote ." for j in range(3)]
        sentences = [f"we study {article_id} .", "the party won ."]
        lines.append(json.dumps({
            "article_id": article_id, "article_text": paragraphs,
            "abstract_text": [f"<S> {s} </S>" for s in sentences],
            "labels": None, "section_names": ["introduction", "results"],
            "sections": [paragraphs[:2], paragraphs[2:]]}))
        pairs[article_id] = ("\n".join(paragraphs), "\n".join(f" {s} " for s in sentences))
      add_file(z, f"{name}-dataset/{split}.txt", ("\n".join(lines) + "\n").encode())
  return pairs


def imagenette_archive(path) -> dict:
  """imagenette2-320.tgz's layout: imagenette2-320/{train,val}/WNID/NAME.JPEG."""
  from PIL import Image
  wnids = ["n01440764", "n03417042"]  # tench, garbage truck
  colours = {}
  with tarfile.open(path, "w:gz") as tar:
    for split in ("train", "val"):
      for w, wnid in enumerate(wnids):
        for k in range(2):
          colour = (200 * (w == 0), 100, 200 * (w == 1))
          buffer = io.BytesIO()
          Image.new("RGB", (40, 32), colour).save(buffer, format="JPEG", quality=95)
          add_file(tar, f"imagenette2-320/{split}/{wnid}/{wnid}_{split}{k}.JPEG",
                   buffer.getvalue())
          colours[(split, wnid, k)] = colour
    add_file(tar, "imagenette2-320/noisy_imagenette.csv", b"path,noisy_labels_0\n")
  return colours


@pytest.fixture(autouse=True)
def root_handlers():
  """The command line's log handler writes to the stderr of the test that ran it: removed
  after each test."""
  import logging
  before = list(logging.getLogger().handlers)
  yield
  logging.getLogger().handlers[:] = before


def test_the_missing_extra_is_named(monkeypatch, tmp_path):
  monkeypatch.setattr(prepare, "EXTRA_MODULES", ("importlib_resources_absent",))
  with pytest.raises(ImportError, match=r"importlib_resources_absent.*\.\[prepare\]"):
    prepare.prepare_catalog_dataset("imdb_reviews", str(tmp_path))
  assert not any(tmp_path.iterdir())


@pytest.mark.slow
def test_imdb_reviews_prepares_into_a_bucket(tmp_path, monkeypatch, request, capsys):
  """aclImdb -> tfds's imdb_reviews -> uploaded to the bucket -> the classification
  reader's DIR:SPLIT on this host's copy: every review with its label."""
  needs_extra()
  from conftest import bucket_path

  from longformer_jax.data import classification
  request.getfixturevalue("gcs_emulator")
  monkeypatch.setenv(fileio.CACHE_ENV, str(tmp_path / "cache"))
  reviews = imdb_archive(tmp_path / "aclImdb_v1.tar.gz")
  root = bucket_path(tmp_path) + "/tfds"
  with offline_downloads({"aclImdb": tmp_path / "aclImdb_v1.tar.gz"}):
    prepare.main(["imdb_reviews/plain_text", root])
  folder = f"{root}/imdb_reviews/plain_text/1.0.0"
  printed = capsys.readouterr().out.splitlines()
  assert printed == [f"{folder}:train\t6 examples", f"{folder}:test\t6 examples",
                     f"{folder}:unsupervised\t1 examples"]
  for split in ("train", "test"):
    cfg = {"format": "tfds", "files": {split: f"{folder}:{split}"}}
    got = {text: (split, label)
           for _, text, label, _ in classification.read_records(cfg, split)}
    assert got == {t: v for t, v in reviews.items() if v[0] == split}


@pytest.mark.slow
def test_arxiv_prepares_and_reads_as_summaries(tmp_path):
  """arxiv-dataset.zip -> tfds's scientific_papers/arxiv -> the summarisation reader:
  articles joined by paragraph, abstracts without the <S> tags."""
  needs_extra()
  from longformer_jax.data import summarization
  archives = {"1b3rmCSIoh6VhD4HKWjI4HOW": tmp_path / "arxiv.zip",
              "1lvsqvsFi3W-pE1SqNZI0s8NR9rC1tsja": tmp_path / "pubmed.zip"}
  pairs = arxiv_archive(archives["1b3rmCSIoh6VhD4HKWjI4HOW"], "arxiv")
  arxiv_archive(archives["1lvsqvsFi3W-pE1SqNZI0s8NR9rC1tsja"], "pubmed")
  with offline_downloads(archives):
    folder = prepare.prepare_catalog_dataset("scientific_papers/arxiv", str(tmp_path / "tfds"))
  assert folder == str(tmp_path / "tfds/scientific_papers/arxiv/1.1.1")
  cfg = {"format": "tfds", "files": {s: f"{folder}:{s}" for s in ("train", "validation")},
         "text_field": "article", "summary_field": "abstract"}
  for split, raw in (("train", "-train-"), ("validation", "-val-")):
    got = sorted((text, summary) for _, text, summary in summarization.read_pairs(cfg, split))
    assert got == sorted(v for k, v in pairs.items() if raw in k)


@pytest.mark.slow
def test_imagenette_prepares_and_reads_as_images(tmp_path):
  """imagenette2-320.tgz -> tfds's imagenette/320px-v2 -> the tfds_images pipeline:
  each JPEG's colour under its class."""
  needs_extra()
  from longformer_jax import data as data_lib
  from longformer_jax.data import images, pipeline
  colours = imagenette_archive(tmp_path / "imagenette2-320.tgz")
  with offline_downloads({"imagenette2-320.tgz": tmp_path / "imagenette2-320.tgz"}):
    prepare.main(["imagenette/320px-v2", str(tmp_path / "tfds")])
  cfg = {"name": "tfds_images", "tfds_name": "imagenette/320px-v2", "image_size": 8,
         "data_dir": str(tmp_path / "tfds"), "eval_source_split": "validation"}
  names = pipeline.label_names(cfg)
  assert names[0] == "n01440764" and len(names) == 10
  batch = next(iter(data_lib.make_iterator(cfg, split="validation", batch_size=4, seq_len=1,
                                           seed=0)))
  assert batch["pixel_values"].shape == (4, 8, 8, 3)
  for pixels, label in zip(batch["pixel_values"], batch["labels"]):
    rgb = (pixels.mean((0, 1)) * images.NORMALISE["std"] + images.NORMALISE["mean"]) * 255
    expected = colours[("val", names[label], 0)]
    np.testing.assert_allclose(rgb, expected, atol=3)
