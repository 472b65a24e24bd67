"""Prepares a dataset of tfds's catalog (``imdb_reviews``, ``scientific_papers/arxiv``,
``imagenette/320px-v2``, ...) as array_record files, locally or into a bucket.

    python -m longformer_jax.prepare imdb_reviews/plain_text gs://bkt/tensorflow_datasets

The project's own datasets (kv_recall, text corpora, JSONL, FASTA...) need nothing of
this: a run prepares them itself. tfds's catalog builders download and unpack their
archives with TensorFlow's ``tf.io.gfile`` and find their own files with
``importlib_resources``, which the ``prepare`` extra installs
(``pip install -e ".[prepare]"``); nothing else in the project imports TensorFlow.

A ``gs://`` destination is prepared on local disk (this host's cache of that bucket
folder) and then uploaded, ``dataset_info.json`` last, so that a host that sees the
marker sees the whole dataset. The printed ``DIR:SPLIT`` names are what configs take
(``files.train``, ``files.validation``, ...); image datasets take the name itself
(``data.tfds_name``) with ``data.data_dir`` the destination.
"""

from __future__ import annotations

import argparse
import importlib
import logging

from longformer_jax import cli, fileio

log = logging.getLogger("longformer_jax")

EXTRA_MODULES = ("tensorflow", "importlib_resources")  # what ``.[prepare]`` installs


def require_prepare_extra() -> None:
  """ImportError naming the extra when a module tfds's catalog builders need is missing."""
  missing = []
  for name in EXTRA_MODULES:
    try:
      importlib.import_module(name)
    except ImportError:
      missing.append(name)
  if missing:
    raise ImportError(f"preparing a dataset of tfds's catalog needs {', '.join(missing)}: "
                      "install the prepare extra (pip install -e \".[prepare]\")")


def prepare_catalog_dataset(name: str, data_dir: str, *, download_dir: str | None = None,
                            manual_dir: str | None = None) -> str:
  """Prepares tfds's ``name`` (``DATASET[/CONFIG][:VERSION]``) under ``data_dir`` as
  array_record files unless it is there; returns the dataset's folder (what
  ``DIR:SPLIT`` names take as DIR)."""
  require_prepare_extra()
  import tensorflow_datasets as tfds

  from longformer_jax.data import pipeline
  cfg = {"data_dir": data_dir}
  builder = tfds.builder(name, data_dir=pipeline.local_data_dir(cfg),
                         file_format="array_record")
  remote = pipeline.bucket_folder(cfg, builder.data_dir)
  if remote is not None and fileio.isfile(fileio.join(remote, pipeline.DATASET_MARKER)):
    log.info("%s is already prepared in %s", name, remote)
    return str(remote)
  if not builder.is_prepared():
    created = fileio.first_missing(pipeline.local_data_dir(cfg), builder.data_dir)
    try:
      pipeline.download_and_prepare(builder, download_dir=download_dir, manual_dir=manual_dir)
    except BaseException:
      if created is not None:
        fileio.rmtree(created)
      raise
  if remote is None:
    return str(builder.data_dir)
  fileio.copy_tree(builder.data_dir, remote, last=(pipeline.DATASET_MARKER,))
  log.info("uploaded %s to %s", name, remote)
  return str(remote)


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(prog="python -m longformer_jax.prepare",
                                   description=__doc__.split("\n\n")[0],
                                   formatter_class=argparse.ArgumentDefaultsHelpFormatter)
  parser.add_argument("name", help="tfds's DATASET[/CONFIG][:VERSION], e.g. imdb_reviews")
  parser.add_argument("data_dir", help="where prepared datasets live (local or gs://)")
  parser.add_argument("--download-dir", default=None,
                      help="where the raw archives go (default: DATA_DIR/downloads)")
  parser.add_argument("--manual-dir", default=None,
                      help="archives downloaded by hand, for datasets that need them")
  cli.add_verbosity(parser)
  args = parser.parse_args(argv)
  cli.setup_logging(args.verbosity)
  folder = cli.run(lambda: prepare_catalog_dataset(
      args.name, args.data_dir, download_dir=args.download_dir, manual_dir=args.manual_dir),
      args.verbosity)
  info = fileio.read_json(fileio.join(folder, "dataset_info.json"))
  for split in info.get("splits", ()):
    examples = sum(int(n) for n in split.get("shardLengths", ()))
    print(f"{folder}:{split['name']}\t{examples:,} examples")


if __name__ == "__main__":
  main()
