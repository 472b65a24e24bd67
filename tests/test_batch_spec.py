"""``data.batch_spec``: the keys, shapes and dtypes of a run's batches from its config
alone, against the batches the real iterators yield, for every config the tests run
on generated data (each phase, the train and the eval split)."""

import numpy as np
import pytest

from conftest import load_config, set_fields, tiny_config
from test_candidate_selection import wikihop_file
from test_char_lm import corpus_zips  # noqa: F401  (a fixture)
from test_finetune import classification_cfg, documents, write_jsonl, write_semeval
from test_question_answering import generated_questions, hotpot_file, squad_file
from test_summarization import write_pairs
from test_token_classification import conll_documents, write_conll

# ---- each config with its generated data files ---------------------------------------

FINETUNE_FILES = {  # configs/NAME.py:tiny -> its generated files ({split: path}) under d
    "finetune_imdb": lambda d: dict(train=write_jsonl(d / "train.jsonl", documents(12)),
                                    validation=write_jsonl(d / "dev.jsonl", documents(5, 1))),
    "finetune_hyperpartisan": lambda d: dict(zip(("train", "labels"),
                                                 write_semeval(d, documents(60)))),
    "finetune_triviaqa": lambda d: dict(
        train=squad_file(d / "train.json", generated_questions(6)),
        validation=squad_file(d / "dev.json", generated_questions(3, seed=1))),
    "finetune_hotpotqa": lambda d: dict(train=hotpot_file(d / "train.json", 6),
                                        validation=hotpot_file(d / "dev.json", 3, seed=1)),
    "finetune_wikihop": lambda d: dict(train=wikihop_file(d / "train.json", 6),
                                       validation=wikihop_file(d / "dev.json", 3, seed=1)),
    "finetune_ontonotes": lambda d: dict(
        train=write_conll(d / "train.conll", conll_documents(4)),
        validation=write_conll(d / "dev.conll", conll_documents(2, seed=1))),
    "summarize_arxiv": lambda d: dict(train=write_pairs(d / "train.jsonl", 12, 0),
                                      validation=write_pairs(d / "dev.jsonl", 5, 1)),
}
CHAR_LM = ("text8,tiny", "enwik8,tiny", "text8,cpu")  # cpu: two phases, 256 and 512
CASES = (["default:tiny"] + [f"{name}:tiny" for name in FINETUNE_FILES]
         + [f"char_lm:{v}" for v in CHAR_LM] + ["mlm:cpu"])


def case_config(case: str, tmp_path, request):
  """The config of ``case`` (``NAME:VARIANT``) with its data generated under tmp_path."""
  name, variant = case.split(":")
  if name == "default":
    return tiny_config(tmp_path)
  c = load_config(name, variant)
  c.data.data_dir = str(tmp_path / "data")
  if name in FINETUNE_FILES:
    c.data.tokenizer = str(request.getfixturevalue("tokenizer_dir"))
    return set_fields(c, {f"data.files.{k}": v
                          for k, v in FINETUNE_FILES[name](tmp_path).items()})
  if name == "char_lm":
    c.data.path = str(request.getfixturevalue("corpus_zips")[1][variant.split(",")[0]])
    return c
  corpus = tmp_path / "corpus.txt"  # mlm:cpu, byte tokens
  corpus.write_text("the quick brown fox jumps over the lazy dog. " * 400)
  c.data.path = str(corpus)
  return c


# ---- the comparison --------------------------------------------------------------------


def structure(arrays: dict) -> dict:
  """{name: (shape, dtype)} of a batch or a spec."""
  return {k: (tuple(v.shape), np.dtype(v.dtype)) for k, v in arrays.items()}


def without_data(data_cfg: dict, root) -> dict:
  """``data_cfg`` with every file, directory and tokenizer pointing where nothing is."""
  missing = str(root / "missing")
  out = {k: (missing if k in ("data_dir", "path", "tokenizer") and v else v)
         for k, v in data_cfg.items()}
  if out.get("files"):
    out["files"] = {k: v and f"{missing}/{k}" for k, v in out["files"].items()}
  return out


def first_batch(data_cfg: dict, phase, split: str, seed: int) -> dict:
  """The first batch the run's iterator of ``split`` yields (one process)."""
  from longformer_jax import data as data_lib
  it = data_lib.make_iterator(data_cfg, split=split, seq_len=phase.seq_len,
                              batch_size=phase.batch_size, seed=seed + phase.index,
                              num_epochs=None if split == "train" else 1)
  return next(it)


@pytest.mark.parametrize("case", CASES)
def test_batch_spec_equals_the_batches(case, tmp_path, request):
  """Each phase's spec, from the config with no data or tokenizer where it points,
  has the keys, shapes and dtypes of the first train and eval batch."""
  import jax
  from longformer_jax import data as data_lib
  from longformer_jax import train
  c = case_config(case, tmp_path, request)
  data_cfg = train.data_config(c)
  offline = without_data(data_cfg, tmp_path)
  for phase in train.resolve_phases(c):
    model_cfg = train.model_config(c, phase)
    for split in ("train", c.eval_split):
      spec = data_lib.batch_spec(offline, model_cfg, split=split, seq_len=phase.seq_len,
                                 batch_size=phase.batch_size)
      assert all(isinstance(v, jax.ShapeDtypeStruct) for v in spec.values())
      batch = first_batch(data_cfg, phase, split, c.seed)
      assert structure(spec) == structure(batch), (case, phase.index, split)
  assert not (tmp_path / "missing").exists()


def test_multi_label_width_comes_from_the_config(tmp_path, tokenizer_dir):
  """Multi-label batches are (B, classes) float32; without data the classes come
  from ``data_cfg.label_names`` or the model's ``num_labels``, else an error."""
  from longformer_jax import data as data_lib
  from longformer_jax.config import LongformerConfig
  labels = [["sports"], ["politics", "economy"], [], ["economy"], ["sports"], ["politics"]]
  cfg = classification_cfg(tmp_path, tokenizer_dir, multi_label=True, files=dict(
      train=write_jsonl(tmp_path / "train.jsonl", documents(6), "labels", labels)))
  batch = next(data_lib.make_iterator(cfg, split="train", seq_len=32, batch_size=6, seed=0))
  args = dict(split="train", seq_len=32, batch_size=6)
  offline = without_data(cfg, tmp_path)
  got = data_lib.batch_spec(offline, LongformerConfig(num_labels=3), **args)
  assert structure(got) == structure(batch) and got["labels"].shape == (6, 3)
  named = dict(offline, label_names=["economy", "politics", "sports"])
  assert structure(data_lib.batch_spec(named, **args)) == structure(batch)
  with pytest.raises(ValueError, match=r"config.data.label_names or the model config's num_labels"):
    data_lib.batch_spec(offline, **args)


def test_what_the_iterator_refuses_is_refused(tmp_path):
  """The arguments and config fields make_iterator refuses, named the same way."""
  from longformer_jax import data as data_lib
  kv = dict(tiny_config(tmp_path).data.to_dict(), seq_len=128)
  with pytest.raises(ValueError, match=r"split='test' is not one of"):
    data_lib.batch_spec(kv, split="test", seq_len=128, batch_size=8)
  with pytest.raises(ValueError, match=r"batch_size must be a positive integer"):
    data_lib.batch_spec(kv, split="train", seq_len=128, batch_size=0)
  with pytest.raises(ValueError, match=r"differs from config.data.seq_len=128"):
    data_lib.batch_spec(kv, split="train", seq_len=64, batch_size=8)
  qa = dict(load_config("finetune_triviaqa", "").data.to_dict(), files=dict(train="train.json"))
  with pytest.raises(ValueError, match=r"config.data.doc_stride=256 \(the overlap"):
    data_lib.batch_spec(qa, split="train", seq_len=128, batch_size=2)
  with pytest.raises(ValueError, match=r"no validation split; set config.data.files.validation"):
    data_lib.batch_spec(qa, split="validation", seq_len=4096, batch_size=2)
