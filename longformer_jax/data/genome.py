"""Genome datasets from FASTA files: a nucleotide LM and the classification of fragments.

``data_cfg`` fields (both datasets):

* ``files``: FASTA files (plain, gzip or xz), one or more records each, in the
  vocabulary of :mod:`.nucleotides` (bases and IUPAC codes, either case).
* ``validation_fraction``, ``test_fraction`` (0.05 each by default): every record is
  split into contiguous regions that never overlap: its head trains, then a
  validation region, then the test tail (:func:`nucleotides.split_bounds`).
* ``reverse_complement``: train elements are reverse-complemented with probability
  1/2, drawn from (seed, global element index).

``genome_lm`` (also ``chunk_size``, ``eval_stride``): a split is one stream, the
records' regions in file order, each followed by ``</s>``. Elements are the causal-LM
crops and evaluation windows of :mod:`.language_modeling` (same fields and protocol)
with weight 0 on targets that are ``</s>``: the task's ``bpc`` is bits per base.

``genome_classification`` (also ``annotations``): file i is class i, named by its stem
(``ecoli.fa.gz`` -> ``ecoli``); or ``annotations``, a TSV of ``record_id<TAB>start<TAB>
end<TAB>label`` lines (0-based, half-open; ``#`` comments), labels regions, the classes
being its sorted labels. Each labelled region is cut by its record's split bounds;
stored examples are those pieces: ``id`` (``stem/record:start-end``), ``bases`` uint8,
``label``. Elements are fragments of seq_len - 2 bases as ``<s> bases </s>`` padded,
global attention on ``<s>`` (:class:`.classification.ClassificationElement`: batches
``input_ids``, ``attention_mask``, ``global_attention_mask`` (B, L), ``labels``,
``example_index``, ``weight`` (B,)). Train fragments start anywhere in a piece drawn
with probability proportional to its length; evaluation fragments tile each piece.
"""

from __future__ import annotations

import json
import os

import grain
import numpy as np
import tensorflow_datasets as tfds

from longformer_jax import fileio
from longformer_jax.data import (classification, corpora, documents, language_modeling,
                                 nucleotides, pipeline, registry, windows)

LM, CLASSIFY = "genome_lm", "genome_classification"
SPLITS = documents.SPLIT_NAMES
COMMON_FIELDS = ("files", "validation_fraction", "test_fraction", "reverse_complement")
LM_FIELDS = COMMON_FIELDS + ("chunk_size", "eval_stride")
CLASSIFY_FIELDS = COMMON_FIELDS + ("annotations",)
DEFAULT_FRACTION = 0.05
RC_STREAM = 1  # the reverse-complement coin's random stream, beside the crops' (seed, g)
SPECIALS = documents.Specials(bos=nucleotides.BOS, eos=nucleotides.EOS, pad=nucleotides.PAD)


# ---- the data_cfg fields and the files ------------------------------------------------


def fasta_files(cfg: dict, dataset: str) -> list[str]:
  """``config.data.files`` (a path or a sequence of them), checked to exist."""
  files = cfg.get("files") or ()
  files = (files,) if isinstance(files, (str, os.PathLike)) else tuple(files)
  if not files:
    raise ValueError(f"{dataset}: config.data.files (the FASTA files) is not set")
  return [documents.check_file(p, "config.data.files", dataset) for p in files]


def fractions(cfg: dict, dataset: str) -> tuple[float, float]:
  """(validation_fraction, test_fraction) of data_cfg, defaults filled in, checked."""
  v, t = (DEFAULT_FRACTION if cfg.get(k) is None else float(cfg[k])
          for k in ("validation_fraction", "test_fraction"))
  nucleotides.check_fractions(v, t, dataset)
  return v, t


def file_stem(path: str) -> str:
  """A file's name without ``.gz`` and one more extension: its class name."""
  name = fileio.path(path).name
  name = name[:-3] if name.endswith(".gz") else name
  return name.rsplit(".", 1)[0] if "." in name.lstrip(".") else name


def read_annotations(path: str):
  """(where, record id, start, end, label) of every line of an annotation TSV."""
  with fileio.open_read(path, text=True) as f:
    for lineno, line in enumerate(f, 1):
      if not line.strip() or line.startswith("#"):
        continue
      where = f"{CLASSIFY}: {path}:{lineno}"
      cols = line.rstrip("\r\n").split("\t")
      if len(cols) != 4:
        raise ValueError(f"{where}: expected record_id<TAB>start<TAB>end<TAB>label, got "
                         f"{len(cols)} columns")
      try:
        start, end = int(cols[1]), int(cols[2])
      except ValueError:
        raise ValueError(f"{where}: start and end must be integers, got {cols[1]!r} and "
                         f"{cols[2]!r}") from None
      if not 0 <= start < end:
        raise ValueError(f"{where}: the region [{start}, {end}) is empty or negative")
      yield where, cols[0], start, end, cols[3].strip()


def label_names(cfg: dict) -> tuple[str, ...]:
  """The classes in id order: the annotations' sorted labels, else the files' stems."""
  if cfg.get("annotations"):
    path = documents.check_file(cfg["annotations"], "config.data.annotations", CLASSIFY)
    return tuple(sorted({row[-1] for row in read_annotations(path)}))
  stems = [file_stem(p) for p in fasta_files(cfg, CLASSIFY)]
  if len(set(stems)) != len(stems):
    raise ValueError(f"{CLASSIFY}: the stems of config.data.files {stems} name the classes "
                     "and must differ (or set config.data.annotations)")
  return tuple(stems)


def read_records(files: list[str]):
  """(file, record id, ids uint8) of every record of the files, in order."""
  for path in files:
    for rid, ids in nucleotides.read_fasta(path):
      yield path, rid, ids


def labelled_regions(settings: dict, records: list) -> list[tuple[int, int, int, int]]:
  """(record index, start, end, label id) of every labelled region (module docstring)."""
  names = list(settings["label_names"])
  if not settings.get("annotations"):
    files = list(settings["files"])
    return [(r, 0, len(ids), files.index(path)) for r, (path, _, ids) in enumerate(records)]
  index: dict[str, int] = {}
  for r, (path, rid, _) in enumerate(records):
    index[rid] = -1 if rid in index else r  # -1: in more than one record
  regions = []
  for where, rid, start, end, label in read_annotations(settings["annotations"]):
    if rid not in index:
      raise ValueError(f"{where}: record {rid!r} is in none of config.data.files")
    if index[rid] < 0:
      raise ValueError(f"{where}: record id {rid!r} names more than one record of "
                       "config.data.files; annotated records need unique ids")
    size = len(records[index[rid]][2])
    if end > size:
      raise ValueError(f"{where}: end {end} is past the {size} bases of record {rid!r}")
    regions.append((index[rid], start, end, names.index(label)))
  return regions


# ---- the builders -----------------------------------------------------------------------


class _GenomeBuilder(documents.FileBuilder, skip_registration=True):
  """Records of FASTA files split by contiguous regions; subclasses turn the records and
  their bounds into each split's examples (``split_examples``). Splits with no example
  are not written. ``metadata["records"]``: each record's file, id, length and bounds."""

  def _info(self):
    return tfds.core.DatasetInfo(builder=self, description=(self.__doc__ or "").split("\n")[0],
                                 features=self.features(), metadata=tfds.core.MetadataDict(),
                                 disable_shuffling=True)

  def split_examples(self, records: list, bounds: list, split: str) -> list:
    raise NotImplementedError

  def _split_generators(self, dl_manager):
    del dl_manager
    cfg = self.settings
    records = list(read_records(cfg["files"]))
    bounds = [nucleotides.split_bounds(len(ids), cfg["validation_fraction"],
                                       cfg["test_fraction"]) for _, _, ids in records]
    self.info.metadata["records"] = [
        dict(file=path, id=rid, length=len(ids), bounds={k: list(v) for k, v in b.items()})
        for (path, rid, ids), b in zip(records, bounds)]
    examples = {split: self.split_examples(records, bounds, split) for split in SPLITS}
    return {split: self._generate_examples(rows) for split, rows in examples.items() if rows}

  def _generate_examples(self, rows: list):
    yield from enumerate(rows)


class GenomeLM(_GenomeBuilder, skip_registration=True):
  """Nucleotide streams, one per split: chunks of ``tokens`` uint8 and their ``index``."""

  name = LM

  def features(self):
    return tfds.features.FeaturesDict({
        "tokens": tfds.features.Tensor(shape=(None,), dtype=np.uint8,
                                       encoding=tfds.features.Encoding.ZLIB),
        "index": tfds.features.Scalar(dtype=np.int32)})

  def split_examples(self, records, bounds, split):
    eos = np.array([nucleotides.EOS], np.uint8)
    parts = []
    for (_, _, ids), b in zip(records, bounds):
      start, end = b[split]
      if end > start:
        parts += [ids[start:end], eos]
    stream = np.concatenate(parts) if parts else np.zeros((0,), np.uint8)
    chunk = self.settings["chunk_size"]
    return [{"tokens": stream[start:start + chunk], "index": np.int32(i)}
            for i, start in enumerate(range(0, len(stream), chunk))]


class GenomeClassification(_GenomeBuilder, skip_registration=True):
  """Labelled regions cut by the split bounds: ``id`` (stem/record:start-end), ``bases``,
  ``label``."""

  name = CLASSIFY

  def features(self):
    return tfds.features.FeaturesDict({
        "id": tfds.features.Text(),
        "bases": tfds.features.Tensor(shape=(None,), dtype=np.uint8,
                                      encoding=tfds.features.Encoding.ZLIB),
        "label": tfds.features.Scalar(dtype=np.int32)})

  def split_examples(self, records, bounds, split):
    rows = []
    for r, start, end, label in labelled_regions(self.settings, records):
      a, b = bounds[r][split]
      lo, hi = max(start, a), min(end, b)
      if hi > lo:
        path, rid, ids = records[r]
        rows.append({"id": f"{file_stem(path)}/{rid}:{lo}-{hi}", "bases": ids[lo:hi],
                     "label": np.int32(label)})
    return rows


def _builder(cls: type, cfg: dict, data_dir: str, digests: list[str], **extra):
  """``cls`` named by a hash of the settings and the contents of the files read."""
  files = fasta_files(cfg, cls.name)
  v, t = fractions(cfg, cls.name)
  settings = dict(files=files, validation_fraction=v, test_fraction=t, **extra)
  identity = [settings] + [documents.file_digest(p) for p in files] + digests
  config = documents.SettingsConfig(name=documents.config_name(cls.name, *identity),
                                    settings=json.dumps(settings, sort_keys=True))
  return cls(config=config, data_dir=data_dir, file_format="array_record")


def _lm_builder(cfg: dict, data_dir: str, seq_len: int | None):
  del seq_len  # streams are stored whole
  chunk = int(cfg.get("chunk_size") or corpora.DEFAULT_CHUNK_SIZE)
  if chunk < 1:
    raise ValueError(f"{LM}: config.data.chunk_size must be positive, got {chunk}")
  return _builder(GenomeLM, cfg, data_dir, [], chunk_size=chunk)


def _classify_builder(cfg: dict, data_dir: str, seq_len: int | None):
  del seq_len  # pieces are stored whole
  names = list(label_names(cfg))
  annotations = os.fspath(cfg.get("annotations") or "")
  digests = [documents.file_digest(annotations)] if annotations else []
  return _builder(GenomeClassification, cfg, data_dir, digests, annotations=annotations,
                  label_names=names)


# ---- elements ----------------------------------------------------------------------------


def _coin(seed: int, g: int) -> bool:
  """The reverse-complement coin of global element g: heads with probability 1/2."""
  return bool(np.random.default_rng((seed, int(g), RC_STREAM)).random() < 0.5)


class LMWindow:
  """(local index k, crop or eval window) -> the same with weight 0 on ``</s>`` targets;
  with ``seed`` set (train), reverse-complemented when the coin of its global index
  shard_index + k * shard_count comes up."""

  def __init__(self, seed: int | None, shard_index: int = 0, shard_count: int = 1):
    self.seed, self.shard_index, self.shard_count = seed, shard_index, shard_count

  def __call__(self, k: int, element: dict) -> dict:
    if self.seed is not None and _coin(self.seed, self.shard_index + k * self.shard_count):
      window = np.concatenate([element["input_ids"], element["labels"][-1:]])
      flipped = nucleotides.reverse_complement(window).astype(np.int32)
      element = dict(element, input_ids=flipped[:-1], labels=flipped[1:])
    weight = element["weight"] * (element["labels"] != nucleotides.EOS)
    return dict(element, weight=weight.astype(np.float32))


def _lm_elements(builder, cfg: dict, *, split: str, seq_len: int, seed: int,
                 shard_index: int, shard_count: int, num_epochs: int | None):
  if split not in builder.info.splits:
    raise ValueError(f"{LM}: the {split} split holds no bases "
                     "(config.data.validation_fraction, test_fraction)")
  tokens = language_modeling.split_tokens(builder, split, nucleotides.VOCAB_SIZE)
  train = split == "train"
  ds = language_modeling.lm_dataset(
      tokens, train=train, seq_len=seq_len, seed=seed, shard_index=shard_index,
      shard_count=shard_count, num_epochs=num_epochs, eval_stride=cfg.get("eval_stride"))
  flip = train and bool(cfg.get("reverse_complement"))
  return ds.map_with_index(LMWindow(seed if flip else None, shard_index, shard_count))


_PIECES: dict[tuple[str, str], list] = {}


def split_pieces(builder, split: str) -> list[tuple[np.ndarray, int]]:
  """(bases uint8, label) of the stored pieces of a split in example order, cached."""
  key = (os.fspath(builder.data_dir), split)
  if key not in _PIECES:
    source = builder.as_data_source()[split] if split in builder.info.splits else []
    if len(_PIECES) >= 4:
      _PIECES.pop(next(iter(_PIECES)))
    _PIECES[key] = [(np.asarray(x["bases"]), int(x["label"])) for x in source]
  return _PIECES[key]


class Fragments:
  """The fragments of a split's pieces: ``tile(g, weight)``, the g-th of the tiles
  (pieces cut into consecutive fragments of seq_len - 2 bases, the last one shorter),
  and ``crop(g)``, a fragment drawn from (seed, g): a tile's piece, then a start in it
  (pieces drawn in proportion to their tiles), reverse-complemented on the coin."""

  def __init__(self, pieces: list, seq_len: int, seed: int = 0, flip: bool = False):
    self.pieces, self.length, self.seed, self.flip = pieces, seq_len - 2, seed, flip
    self.element = classification.ClassificationElement(seq_len, SPECIALS)
    rows = [(p, start) for p, (bases, _) in enumerate(pieces)
            for start, _ in windows.windows(len(bases), self.length, 0)]
    self.table = np.asarray(rows, np.int64).reshape(-1, 2)  # (F, 2): piece, start

  def __len__(self) -> int:
    return len(self.table)

  def tile(self, g: int, weight: float = 1.0) -> dict:
    p, start = self.table[int(g)]
    return self._element(int(p), int(start), weight, False)

  def crop(self, g: int) -> dict:
    rng = np.random.default_rng((self.seed, int(g)))
    p = int(self.table[rng.integers(len(self.table)), 0])
    start = int(rng.integers(0, max(len(self.pieces[p][0]) - self.length, 0) + 1))
    return self._element(p, start, 1.0, self.flip and _coin(self.seed, g))

  def _element(self, p: int, start: int, weight: float, flip: bool) -> dict:
    bases, label = self.pieces[p]
    fragment = bases[start:start + self.length]
    if flip:
      fragment = nucleotides.reverse_complement(fragment)
    return self.element({"input_ids": fragment, "label": label, "example_index": p}, weight)


def _classify_elements(builder, cfg: dict, *, split: str, seq_len: int, seed: int,
                       shard_index: int, shard_count: int, num_epochs: int | None):
  if seq_len < 3:
    raise ValueError(f"{CLASSIFY}: seq_len={seq_len} leaves no room for a base between "
                     "<s> and </s>")
  train = split == "train"
  frags = Fragments(split_pieces(builder, split), seq_len, seed,
                    train and bool(cfg.get("reverse_complement")))
  if not len(frags):
    raise ValueError(f"{CLASSIFY}: the {split} split holds no labelled bases "
                     "(config.data.validation_fraction, test_fraction, annotations)")
  if not train:
    return pipeline.eval_dataset(len(frags), frags.tile, shard_index, shard_count, num_epochs)
  total = pipeline.FOREVER if num_epochs is None else len(frags) * num_epochs
  total -= total % shard_count
  if total < 1:
    raise ValueError(f"{CLASSIFY}: shard_count={shard_count} exceeds the {len(frags)} "
                     "train fragments")
  ds = grain.MapDataset.range(total).slice(slice(shard_index, None, shard_count))
  return ds.map(frags.crop)


def _classify_spec(cfg: dict, *, split: str, seq_len: int, model_cfg=None) -> dict:
  del cfg, split, model_cfg
  return classification.ClassificationElement.spec(seq_len)


registry.register(registry.Dataset(
    name=LM, splits=SPLITS, builder=_lm_builder, elements=_lm_elements,
    vocab_size=lambda cfg: nucleotides.VOCAB_SIZE,
    num_labels=lambda cfg: nucleotides.VOCAB_SIZE, fields=LM_FIELDS,
    doc="FASTA records as nucleotide streams (causal LM, bits per base)",
    element_spec=language_modeling.lm_element_spec))
registry.register(registry.Dataset(
    name=CLASSIFY, splits=SPLITS, builder=_classify_builder, elements=_classify_elements,
    vocab_size=lambda cfg: nucleotides.VOCAB_SIZE,
    num_labels=lambda cfg: len(label_names(cfg)), fields=CLASSIFY_FIELDS,
    doc="fragments of FASTA records labelled by file or by an annotation TSV",
    label_names=label_names, element_spec=_classify_spec))
