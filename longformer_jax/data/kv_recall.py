"""kv_recall: a generated long-document classification task that needs global attention.

Layout of one example of length L:

* position 0 holds a query key K_j;
* positions 1..L-1 hold random filler tokens, except for ``num_pairs`` adjacent
  pairs (K_i, V_i) with distinct keys, each starting at least ``min_distance``
  tokens after position 0 (default L // 2);
* exactly one pair holds the query key; ``label`` is the index of its value V_j
  among the ``num_values`` value tokens.

With ``copies`` > 1 each pair is planted that many times (at distinct positions),
which strengthens the signal a model must find. With ``fused=True`` each pair is one token (K_i, V_i) from a range of
num_keys x num_values pair tokens: one attention hop (token 0 to the matching
pair) answers, instead of two (value into key within the window, then key to
token 0), so small models learn it in minutes.

Since every pair lies far from position 0, a sliding window around token 0 never
sees the answer: the task is solved by global attention on token 0.

Token ids: 0..3 are reserved (0 <s>, 1 <pad>, 2 </s>, 3 <unk>), then keys, values
and fillers in disjoint ranges (see :func:`kv_recall_token_ranges`).

Generation is a pure function of (seed, index): example i of the train split is
``kv_recall_example(i, ...)`` and example i of the validation split is
``kv_recall_example(num_train + i, ...)``, so the splits are disjoint and anything
can be regenerated without the prepared files.
"""

from __future__ import annotations

import dataclasses

import grain
import numpy as np
import tensorflow_datasets as tfds

from longformer_jax.data import pipeline, registry

BOS_ID, PAD_ID, EOS_ID, UNK_ID = 0, 1, 2, 3
NUM_RESERVED = 4

# Defaults of the generator (and of data configs that leave a field out).
DEFAULTS = dict(num_pairs=8, num_keys=64, num_values=16, num_fillers=256,
                min_distance=None, num_train=10000, num_eval=500, seed=0, fused=False,
                copies=1)


def kv_recall_token_ranges(num_keys: int, num_values: int, num_fillers: int,
                           fused: bool = False) -> dict[str, tuple[int, int]]:
  """Half-open id ranges ``(start, stop)`` of the keys, values, fillers (and fused pairs)."""
  keys = (NUM_RESERVED, NUM_RESERVED + num_keys)
  values = (keys[1], keys[1] + num_values)
  fillers = (values[1], values[1] + num_fillers)
  pairs = (fillers[1], fillers[1] + (num_keys * num_values if fused else 0))
  return {"keys": keys, "values": values, "fillers": fillers, "pairs": pairs}


def kv_recall_vocab_size(num_keys: int, num_values: int, num_fillers: int,
                         fused: bool = False) -> int:
  """Number of token ids: the reserved ones, keys, values, fillers (and fused pairs)."""
  return kv_recall_token_ranges(num_keys, num_values, num_fillers, fused)["pairs"][1]


def check_kv_recall_params(*, seq_len: int, num_pairs: int, num_keys: int, num_values: int,
                           num_fillers: int, min_distance: int | None = None,
                           **unused) -> int:
  """Raises ValueError naming the bad field; returns the effective ``min_distance``."""
  del unused
  for field, value in (("seq_len", seq_len), ("num_pairs", num_pairs),
                       ("num_keys", num_keys), ("num_values", num_values),
                       ("num_fillers", num_fillers)):
    if not isinstance(value, (int, np.integer)) or value < 1:
      raise ValueError(f"kv_recall: {field} must be a positive integer, got {value!r}")
  if num_pairs > num_keys:
    raise ValueError(f"kv_recall: num_pairs={num_pairs} needs as many distinct keys, "
                     f"but num_keys={num_keys}")
  dist = seq_len // 2 if min_distance is None else min_distance
  if dist < 1:
    raise ValueError(f"kv_recall: min_distance must be >= 1, got {min_distance}")
  if 2 * num_pairs > seq_len - dist:
    raise ValueError(f"kv_recall: {num_pairs} pairs (num_pairs) do not fit in the "
                     f"{seq_len - dist} positions from min_distance={dist} to seq_len={seq_len}")
  return dist


def kv_recall_example(index: int, *, seq_len: int, num_pairs: int = DEFAULTS["num_pairs"],
                      num_keys: int = DEFAULTS["num_keys"],
                      num_values: int = DEFAULTS["num_values"],
                      num_fillers: int = DEFAULTS["num_fillers"],
                      min_distance: int | None = None, seed: int = 0,
                      fused: bool = False, copies: int = 1) -> dict:
  """Example ``index``: ``{"input_ids": int32 (seq_len,), "label": int32 ()}``.

  Deterministic in (seed, index). Pair starts are drawn as ``num_pairs`` sorted
  distinct slots of the ``seq_len - min_distance - num_pairs`` available, the k-th
  shifted by k, so pairs never overlap and the last value sits at most at L - 1.
  """
  dist = check_kv_recall_params(seq_len=seq_len, num_pairs=num_pairs * copies,
                                num_keys=num_keys * copies, num_values=num_values,
                                num_fillers=num_fillers, min_distance=min_distance)
  ranges = kv_recall_token_ranges(num_keys, num_values, num_fillers, fused)
  rng = np.random.default_rng((int(seed), int(index)))
  ids = rng.integers(*ranges["fillers"], size=seq_len, dtype=np.int64)
  keys = rng.choice(num_keys, size=num_pairs, replace=False)
  values = rng.integers(0, num_values, size=num_pairs)
  planted = num_pairs * copies
  slots = np.sort(rng.choice(seq_len - dist - planted, size=planted, replace=False))
  starts = rng.permutation(dist + slots + np.arange(planted))
  keys, values = np.repeat(keys, copies), np.repeat(values, copies)
  if fused:
    ids[starts] = ranges["pairs"][0] + keys * num_values + values
  else:
    ids[starts] = ranges["keys"][0] + keys
    ids[starts + 1] = ranges["values"][0] + values
  query = int(rng.integers(num_pairs)) * copies
  ids[0] = ranges["keys"][0] + keys[query]
  return {"input_ids": ids.astype(np.int32), "label": np.int32(values[query])}


@dataclasses.dataclass
class KvRecallConfig(tfds.core.BuilderConfig):
  """Generator parameters; the config name spells them out (one directory each)."""

  seq_len: int = 4096
  num_pairs: int = DEFAULTS["num_pairs"]
  num_keys: int = DEFAULTS["num_keys"]
  num_values: int = DEFAULTS["num_values"]
  num_fillers: int = DEFAULTS["num_fillers"]
  min_distance: int | None = None
  num_train: int = DEFAULTS["num_train"]
  num_eval: int = DEFAULTS["num_eval"]
  seed: int = 0
  fused: bool = False
  copies: int = 1

  @classmethod
  def make(cls, **params) -> "KvRecallConfig":
    """A config named after its parameters, e.g. ``L4096-p8-k64-v16-f256-d2048-...``."""
    own = set(DEFAULTS) | {"seq_len"}
    unknown = set(params) - own
    if unknown:
      raise ValueError(f"kv_recall: unknown parameters {sorted(unknown)}")
    p = {f.name: f.default for f in dataclasses.fields(cls) if f.name in own}
    p.update(params)
    p["min_distance"] = check_kv_recall_params(**p)
    for field in ("num_train", "num_eval"):
      if p[field] < 1:
        raise ValueError(f"kv_recall: {field} must be positive, got {p[field]}")
    if p["seed"] < 0:
      raise ValueError(f"kv_recall: seed must be >= 0, got {p['seed']}")
    name = ("L{seq_len}-p{num_pairs}-k{num_keys}-v{num_values}-f{num_fillers}-"
            "d{min_distance}-tr{num_train}-ev{num_eval}-s{seed}").format(**p)
    p["fused"] = bool(p["fused"])
    name += "-fused" if p["fused"] else ""
    name += f"-c{p['copies']}" if p["copies"] != 1 else ""
    return cls(name=name, **p)

  def generator_params(self) -> dict:
    return dict(seq_len=self.seq_len, num_pairs=self.num_pairs, num_keys=self.num_keys,
                num_values=self.num_values, num_fillers=self.num_fillers,
                min_distance=self.min_distance, seed=self.seed, fused=self.fused,
                copies=self.copies)


class KvRecall(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """tfds builder of kv_recall: splits ``train`` (num_train) and ``validation`` (num_eval)."""

  VERSION = tfds.core.Version("1.0.0")
  code_path = None  # no checksums file: tfds fetches nothing for this builder

  def _info(self) -> tfds.core.DatasetInfo:
    cfg = self.builder_config
    return tfds.core.DatasetInfo(
        builder=self,
        description=__doc__.split("\n\n")[0],
        features=tfds.features.FeaturesDict({
            "input_ids": tfds.features.Tensor(shape=(cfg.seq_len,), dtype=np.int32,
                                              encoding=tfds.features.Encoding.ZLIB),
            "label": tfds.features.Scalar(dtype=np.int32),
        }),
        disable_shuffling=True)

  def _split_generators(self, dl_manager):
    del dl_manager
    cfg = self.builder_config
    return {"train": self._generate_examples(0, cfg.num_train),
            "validation": self._generate_examples(cfg.num_train, cfg.num_eval)}

  def _generate_examples(self, first: int, count: int):
    params = self.builder_config.generator_params()
    for i in range(count):
      yield i, kv_recall_example(first + i, **params)


# ---- the pipeline's side: fields, elements, registration ----------------------------

GENERATOR_FIELDS = ("num_pairs", "num_keys", "num_values", "num_fillers", "min_distance",
                    "num_train", "num_eval", "seed", "fused", "copies")
FIELDS = ("seq_len",) + GENERATOR_FIELDS + ("global_query",)


def _kv_params(cfg: dict, seq_len: int | None) -> dict:
  """kv_recall generator parameters from the config; ``seq_len`` fills a missing one."""
  params = {k: cfg[k] for k in GENERATOR_FIELDS if cfg.get(k) is not None}
  cfg_len = cfg.get("seq_len")
  if cfg_len is not None and seq_len is not None and cfg_len != seq_len:
    raise ValueError(f"seq_len={seq_len} differs from config.data.seq_len={cfg_len}: kv_recall "
                     "examples have exactly config.data.seq_len tokens")
  length = cfg_len if cfg_len is not None else seq_len
  if length is None:
    raise ValueError("kv_recall: config.data.seq_len is not set")
  params["seq_len"] = length
  return params


class KvElement:
  """A stored kv_recall example (+ weight) -> the model inputs of one example."""

  def __init__(self, global_query: bool = True):
    self.global_query = global_query

  def __call__(self, example: dict, weight: float = 1.0) -> dict:
    ids = np.asarray(example["input_ids"], np.int32)
    glob = np.zeros_like(ids)
    glob[0] = int(self.global_query)
    return {"input_ids": ids, "attention_mask": np.ones_like(ids),
            "global_attention_mask": glob, "labels": np.int32(example["label"]),
            "weight": np.float32(weight)}

  @staticmethod
  def spec(seq_len: int) -> dict:
    """``{name: (shape, dtype)}`` of an element."""
    row = ((seq_len,), np.int32)
    return {"input_ids": row, "attention_mask": row, "global_attention_mask": row,
            "labels": ((), np.int32), "weight": ((), np.float32)}


def kv_dataset(builder, *, split: str, global_query: bool = True, **shard) -> grain.MapDataset:
  """Unbatched kv_recall elements of one shard (see ``pipeline.example_dataset``)."""
  return pipeline.example_dataset(builder.as_data_source()[split], KvElement(global_query),
                                  split=split, **shard)


def _builder(cfg: dict, data_dir: str, seq_len: int | None) -> KvRecall:
  config = KvRecallConfig.make(**_kv_params(cfg, seq_len))
  return KvRecall(config=config, data_dir=data_dir, file_format="array_record")


def _elements(builder, cfg: dict, *, split: str, seq_len: int, **shard) -> grain.MapDataset:
  del seq_len  # fixed by the builder
  return kv_dataset(builder, split=split, global_query=bool(cfg.get("global_query", True)),
                    **shard)


def _element_spec(cfg: dict, *, split: str, seq_len: int, model_cfg=None) -> dict:
  del split, model_cfg
  return KvElement.spec(_kv_params(cfg, seq_len)["seq_len"])


def _vocab_size(cfg: dict) -> int:
  return kv_recall_vocab_size(*(cfg.get(k) or DEFAULTS[k]
                                for k in ("num_keys", "num_values", "num_fillers", "fused")))


registry.register(registry.Dataset(
    name="kv_recall", splits=("train", "validation"), builder=_builder, elements=_elements,
    vocab_size=_vocab_size,
    num_labels=lambda cfg: int(cfg.get("num_values") or DEFAULTS["num_values"]),
    fields=FIELDS, doc=__doc__.split("\n")[0], element_spec=_element_spec))
