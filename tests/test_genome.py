"""Genome FASTA datasets (data/nucleotides.py, data/genome.py) on small generated files,
and configs/dna_lm.py and configs/dna_classify.py trained 2 steps."""

import gzip
import lzma
import shutil

import numpy as np
import pytest

from conftest import load_config, losses

from longformer_jax import data, tokenization
from longformer_jax.data import genome, nucleotides as nt

# IUPAC codes as the sets of bases they stand for: the closed form the complement
# table must follow (the complement of a code is the code of the complemented set).
IUPAC_SETS = {"A": "A", "C": "C", "G": "G", "T": "T", "R": "AG", "Y": "CT", "S": "CG",
              "W": "AT", "K": "GT", "M": "AC", "B": "CGT", "D": "AGT", "H": "ACT",
              "V": "ACG", "N": "ACGT"}
BASE_COMPLEMENT = dict(zip("ACGT", "TGCA"))
RECORD_LENGTHS = {"a.fa": (1000, 1310), "b.fa": (900,)}


def _sequence(rng, n: int) -> str:
  """Random bases, mostly uppercase, a lowercase (soft-masked) run and a few IUPAC codes."""
  seq = rng.choice(list("ACGT"), n)
  seq[rng.integers(0, n, 6)] = rng.choice(list("RYSWKMBDHVN"), 6)
  start = int(rng.integers(0, n - 50))
  seq[start:start + 50] = np.char.lower(seq[start:start + 50])
  return "".join(seq)


def _write_fasta(path, records: dict, width: int = 60):
  opener = {".gz": gzip.open, ".xz": lzma.open}.get(str(path)[-3:], open)
  with opener(path, "wt") as f:
    for rid, seq in records.items():
      f.write(f">{rid} a description\n")
      f.writelines(seq[i:i + width] + "\n" for i in range(0, len(seq), width))


@pytest.fixture(scope="module")
def fasta(tmp_path_factory):
  """(directory, {file: {record id: sequence}}): two FASTA files, three records."""
  root = tmp_path_factory.mktemp("fasta")
  rng = np.random.default_rng(0)
  files = {}
  for name, lengths in RECORD_LENGTHS.items():
    files[name] = {f"{name[0]}{i}": _sequence(rng, n) for i, n in enumerate(lengths)}
    _write_fasta(root / name, files[name])
  return root, files


def _cfg(root, name="genome_lm", files=("a.fa", "b.fa"), **kw):
  return dict(dict(name=name, data_dir=str(root / f"tfds_{name}"),
                   files=tuple(str(root / f) for f in files)), **kw)


def _take_all(cfg, split, seq_len, batch_size=4, n=3):
  """n train batches, or the whole of an eval split."""
  it = data.make_iterator(cfg, split=split, seq_len=seq_len, batch_size=batch_size, seed=0)
  return [next(it) for _ in range(n)] if split == "train" else list(it)


# ---- the vocabulary -------------------------------------------------------------------


def test_vocabulary_ids_and_case():
  assert nt.VOCAB[:5] == tokenization.SPECIAL_TOKENS  # RoBERTa's specials at its ids
  assert (nt.BOS, nt.PAD, nt.EOS, nt.MASK) == (0, 1, 2, 4) and nt.VOCAB_SIZE == 20
  np.testing.assert_array_equal(nt.encode("ACGTN"), [5, 6, 7, 8, 9])
  np.testing.assert_array_equal(nt.encode("acgtnryswkmbdhv"), nt.encode("ACGTNRYSWKMBDHV"))
  assert nt.decode(nt.encode("acgtRYSWKMBDHVn")) == "ACGTRYSWKMBDHVN"


def test_reverse_complement_closed_form_and_involution():
  for code, bases in IUPAC_SETS.items():
    complement = nt.decode(nt.reverse_complement(nt.encode(code)))
    assert set(IUPAC_SETS[complement]) == {BASE_COMPLEMENT[b] for b in bases}, code
  ids = nt.encode("ACGTTGCAnRYKMBVDHSW")
  assert nt.decode(nt.reverse_complement(ids)) == "WSDHBVKMRYNTGCAACGT"
  rng = np.random.default_rng(1)
  many = rng.integers(0, nt.VOCAB_SIZE, (3, 257)).astype(np.uint8)
  np.testing.assert_array_equal(nt.reverse_complement(nt.reverse_complement(many)), many)
  specials = np.arange(5, dtype=np.uint8)
  np.testing.assert_array_equal(nt.reverse_complement(specials), specials[::-1])


# ---- FASTA files -----------------------------------------------------------------------


def test_fasta_records_and_gzip_equal_plain(fasta, tmp_path):
  """Records read back as written (uppercased), from plain, gzip and xz files whatever
  the line width; the gzip file prepares the same splits as the plain one."""
  root, files = fasta
  plain = dict(nt.read_fasta(root / "a.fa"))
  assert {k: nt.decode(v) for k, v in plain.items()} == {
      k: v.upper() for k, v in files["a.fa"].items()}
  for suffix in (".gz", ".xz"):
    _write_fasta(tmp_path / f"a.fa{suffix}", files["a.fa"], width=71)
    packed = dict(nt.read_fasta(tmp_path / f"a.fa{suffix}"))
    assert packed.keys() == plain.keys()
    for k in plain:
      np.testing.assert_array_equal(packed[k], plain[k])
  cfgs = [dict(name="genome_lm", data_dir=str(tmp_path / n), files=(str(p),), chunk_size=300)
          for n, p in (("plain", root / "a.fa"), ("gz", tmp_path / "a.fa.gz"))]
  for split in genome.SPLITS:
    streams = [data.corpora.load_split_tokens(data.prepare(c), split) for c in cfgs]
    np.testing.assert_array_equal(*streams)


@pytest.mark.parametrize("line,bad", [(1, "X"), (2, "-"), (4, "u")])
def test_bad_character_names_file_line_and_character(tmp_path, line, bad):
  lines = [">r1", "ACGTACGT", "ACGTRYAC", ">r2", "GGGG"]
  lines[line] = lines[line][:3] + bad + lines[line][4:]
  path = tmp_path / "bad.fa"
  path.write_text("\n".join(lines) + "\n")
  with pytest.raises(ValueError, match=rf"bad\.fa:{line + 1}: character '{bad}' \(column 4\)"):
    list(nt.read_fasta(path))
  with pytest.raises(ValueError, match=rf"bad\.fa:{line + 1}"):
    data.prepare(dict(name="genome_lm", data_dir=str(tmp_path / "d"), files=(str(path),)))


# ---- splits -----------------------------------------------------------------------------


def test_split_bounds_contiguous_disjoint_covering():
  for n in (0, 1, 7, 100, 1001, 123_457):
    for v, t in ((0.05, 0.05), (0.1, 0.0), (0.0, 0.2), (0.3, 0.3)):
      b = nt.split_bounds(n, v, t)
      assert b["train"][0] == 0 and b["test"][1] == n
      assert b["train"][1] == b["validation"][0] and b["validation"][1] == b["test"][0]
      assert all(lo <= hi for lo, hi in b.values())
      assert b["test"][1] - b["validation"][0] == round(n * (v + t))
  with pytest.raises(ValueError, match="validation_fraction"):
    nt.check_fractions(0.5, 0.5, "x")


def test_lm_splits_are_each_records_contiguous_regions(fasta):
  root, files = fasta
  cfg = _cfg(root, chunk_size=256, validation_fraction=0.1, test_fraction=0.05)
  builder = data.prepare(cfg)
  records = {r: s for f in files.values() for r, s in f.items()}
  meta = builder.info.metadata["records"]
  assert [m["id"] for m in meta] == ["a0", "a1", "b0"]
  for m in meta:
    n = len(records[m["id"]])
    assert m["length"] == n and m["bounds"] == {k: list(v) for k, v in nt.split_bounds(
        n, 0.1, 0.05).items()}
  for split in genome.SPLITS:
    want = "".join(records[m["id"]][slice(*m["bounds"][split])].upper() + "?" for m in meta)
    got = nt.decode(data.corpora.load_split_tokens(builder, split))
    assert got == want, split  # "?" is </s> after each record's region


def test_classification_pieces_are_disjoint_and_cover_records(fasta):
  root, files = fasta
  cfg = _cfg(root, "genome_classification")
  assert data.pipeline.label_names(cfg) == ("a", "b") and data.num_labels(cfg) == 2
  builder = data.prepare(cfg)
  covered = {}
  for split in genome.SPLITS:
    for x in builder.as_data_source()[split]:
      stem, rid, span = x["id"].decode().replace("/", ":").split(":")
      assert stem == rid[0]
      lo, hi = map(int, span.split("-"))
      covered.setdefault(rid, []).append((lo, hi))
      assert int(x["label"]) == "ab".index(rid[0])
      assert nt.decode(x["bases"]) == files[f"{rid[0]}.fa"][rid][lo:hi].upper()
  for rid, spans in covered.items():
    spans.sort()
    n = len(files[f"{rid[0]}.fa"][rid])
    assert spans[0][0] == 0 and spans[-1][1] == n
    assert all(a[1] == b[0] for a, b in zip(spans, spans[1:])), spans


def test_annotations_label_regions_cut_by_the_split_bounds(fasta, tmp_path):
  root, _ = fasta
  tsv = tmp_path / "regions.tsv"
  tsv.write_text("# record\tstart\tend\tlabel\na0\t0\t400\tgene\na0\t850\t1000\tintergenic\n"
                 "b0\t100\t900\tgene\n")
  cfg = _cfg(root, "genome_classification", annotations=str(tsv), data_dir=str(tmp_path / "d"))
  assert data.pipeline.label_names(cfg) == ("gene", "intergenic")
  source = data.prepare(cfg).as_data_source()
  ids = {s: sorted(x["id"].decode() for x in source[s]) for s in genome.SPLITS}
  assert ids == {"train": ["a/a0:0-400", "a/a0:850-900", "b/b0:100-810"],
                 "validation": ["a/a0:900-950", "b/b0:810-855"],
                 "test": ["a/a0:950-1000", "b/b0:855-900"]}
  tsv.write_text("zz\t0\t10\tgene\n")
  with pytest.raises(ValueError, match=r"regions\.tsv:1: record 'zz'"):
    data.prepare(dict(cfg, data_dir=str(tmp_path / "d2")))
  tsv.write_text("a0\t0\t10\tgene\n")
  shutil.copy(root / "a.fa", tmp_path / "c.fa")  # a second record named a0
  with pytest.raises(ValueError, match=r"regions\.tsv:1: record id 'a0' names more than one"):
    data.prepare(dict(cfg, data_dir=str(tmp_path / "d3"),
                      files=cfg["files"] + (str(tmp_path / "c.fa"),)))


@pytest.mark.parametrize("name", ["genome_lm", "genome_classification"])
def test_an_empty_split_is_not_written_and_refused_by_name(fasta, tmp_path, name):
  root, _ = fasta
  cfg = _cfg(root, name, test_fraction=0.0, data_dir=str(tmp_path / "d"))
  assert sorted(data.prepare(cfg).info.splits) == ["train", "validation"]
  with pytest.raises(ValueError, match="the test split holds no"):
    data.make_iterator(cfg, split="test", seq_len=32, batch_size=2, seed=0)


# ---- elements -----------------------------------------------------------------------------


@pytest.mark.parametrize("name,seq_len", [("genome_lm", 32), ("genome_classification", 40)])
def test_element_spec_matches_the_batches(fasta, name, seq_len):
  root, _ = fasta
  cfg = _cfg(root, name, reverse_complement=True)
  for split in genome.SPLITS:
    spec = data.batch_spec(cfg, split=split, seq_len=seq_len, batch_size=4)
    for b in _take_all(cfg, split, seq_len):
      assert {k: (v.shape, v.dtype) for k, v in b.items()} == {
          k: (s.shape, s.dtype) for k, s in spec.items()}, split


def test_lm_eval_scores_every_base_once(fasta):
  root, _ = fasta
  cfg = _cfg(root, eval_stride=16)
  stream = data.corpora.load_split_tokens(data.prepare(cfg), "validation")
  batches = _take_all(cfg, "validation", 32)
  weight = sum(b["weight"].sum() for b in batches)
  # targets are tokens 1..T-1; the </s> ending each record's region is not scored
  assert weight == len(stream) - 1 - (stream == nt.EOS).sum()
  assert all(((b["labels"] == nt.EOS) <= (b["weight"] == 0)).all() for b in batches)


def _sequences(batch, name):
  """The bases of each row: an LM window (inputs and the last label), or the fragment
  between <s> and </s>."""
  if name == "genome_lm":
    return [np.append(x, y[-1]) for x, y in zip(batch["input_ids"], batch["labels"])]
  return [x[1:int(m.sum()) - 1] for x, m in zip(batch["input_ids"], batch["attention_mask"])]


@pytest.mark.parametrize("name,seq_len", [("genome_lm", 32), ("genome_classification", 40)])
def test_reverse_complement_augmentation(fasta, name, seq_len):
  """With the option on, about half of the train elements are the reverse complements
  of the same elements without it (same seed); the draws repeat exactly."""
  root, _ = fasta
  plain, flipped, again = (_take_all(_cfg(root, name, reverse_complement=rc), "train",
                                     seq_len, batch_size=16, n=2) for rc in (False, True, True))
  same = flips = 0
  for p, f, a in zip(plain, flipped, again):
    np.testing.assert_array_equal(f["input_ids"], a["input_ids"])
    for x, y in zip(_sequences(p, name), _sequences(f, name)):
      same += int(np.array_equal(x, y))
      flips += int(np.array_equal(nt.reverse_complement(x), y) and not np.array_equal(x, y))
  assert same + flips == 32 and 8 <= flips <= 24, (same, flips)


# ---- the configs ------------------------------------------------------------------------------


def test_dna_configs_reuse_the_char_lm_architecture():
  from configs import char_lm, dna_classify, dna_lm
  lm, paper = dna_lm.get_config(""), char_lm.get_config("text8")
  assert lm.model.pre_layer_norm and lm.model.position_embedding_type == "relative_sinusoidal"
  assert lm.model.attention_window == paper.model.attention_window and lm.model.causal
  assert [p["seq_len"] for p in lm.phases] == [p["seq_len"] for p in paper.phases]
  assert len(dna_lm.get_config("large").model.attention_window) == 30
  assert dna_lm.get_config("cpu").data.name == "genome_lm"
  assert dna_classify.get_config("cpu").model.max_global_tokens == 1
  with pytest.raises(ValueError, match="variant"):
    dna_lm.get_config("huge")


def test_dna_lm_has_the_char_lm_parameters_less_the_vocabulary():
  """The char LM's 41,119,488 parameters (tests/test_char_lm.py) with 20 token ids instead
  of 256: the tied embedding rows (512 each) and LM-head biases of 236 ids fewer."""
  from longformer_jax import model as model_lib
  from longformer_jax import train
  config = load_config("dna_lm", "")
  cfg = train.model_config(config, train.resolve_phases(config)[0])
  assert cfg.vocab_size == nt.VOCAB_SIZE
  assert model_lib.param_count(cfg, "causal_lm") == 41_119_488 - (256 - 20) * (512 + 1)


@pytest.mark.parametrize("name,store", [("dna_lm", "bucket"), ("dna_classify", "local")])
def test_tiny_config_trains_two_steps(fasta, tmp_path, name, store, request, monkeypatch):
  """Each config's 2 steps; the LM's FASTA files (one gzipped), prepared data and workdir
  in the emulator's bucket (the same code as local paths, through fileio)."""
  import gzip
  from longformer_jax import fileio, train
  root, _ = fasta
  base = str(tmp_path)
  files = [str(root / f) for f in RECORD_LENGTHS]
  if store == "bucket":
    from conftest import bucket_path
    request.getfixturevalue("gcs_emulator")
    monkeypatch.setenv(fileio.CACHE_ENV, str(tmp_path / "cache"))
    base = bucket_path(tmp_path)
    fileio.write_atomic(f"{base}/a.fa.gz", gzip.compress(fileio.read_bytes(files[0])))
    fileio.copy_file(files[1], f"{base}/b.fa")
    files = [f"{base}/a.fa.gz", f"{base}/b.fa"]
  c = load_config(name)
  c.data.data_dir, c.async_checkpoints = f"{base}/data", False
  c.data.files = tuple(files)
  c.eval_every, c.log_every = 2, 1
  out = train.train_and_evaluate(c, f"{base}/run")
  rows = losses(f"{base}/run")
  assert sorted(rows) == [1, 2] and all(np.isfinite(list(rows.values())))
  metric = "eval_bpc" if name == "dna_lm" else "eval_accuracy"
  assert np.isfinite(out[metric]) and out[metric] >= 0
