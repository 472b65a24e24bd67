"""The HF parity check can tell a right model from a slightly wrong one.

Each fault below is planted in our model (a tanh GELU, the classifier head without its
tanh, no default global attention in multiple choice, the default global mask one token
off); ``run_both`` must then fail for every head whose output the fault reaches. At the
references' init (``conftest.HF_INIT``) the faults move outputs by 3.5e-4 to 3.5, the
fp32 difference of the right model is at most 7.6e-6 and the tolerance is 2e-5.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

pytest.importorskip("transformers")

import longformer_jax as lj  # noqa: E402
from longformer_jax import layers  # noqa: E402
from longformer_jax import model as model_lib  # noqa: E402
from conftest import HEAD_NAMES, run_both, save_hf, task_inputs  # noqa: E402

DEFAULT_GLOBAL_HEADS = ("multiple_choice", "question_answering", "sequence_classification")


class _JnpWithoutTanh:
  """``jax.numpy`` with ``tanh`` the identity."""

  def __getattr__(self, name):
    return (lambda x: x) if name == "tanh" else getattr(jnp, name)


def _tanh_gelu(monkeypatch):
  exact = layers.activation
  monkeypatch.setattr(layers, "activation", lambda name: (
      functools.partial(jax.nn.gelu, approximate=True) if name == "gelu" else exact(name)))


def _classifier_without_tanh(monkeypatch):
  monkeypatch.setattr(model_lib, "jnp", _JnpWithoutTanh())


def _multiple_choice_without_default_global(monkeypatch):
  monkeypatch.setattr(model_lib.LongformerForMultipleChoice, "_default_global",
                      lambda self, arrays: None)


def _default_global_one_token_late(monkeypatch):
  for task in DEFAULT_GLOBAL_HEADS:
    cls = lj.TASKS[task][0]
    right = cls._default_global
    monkeypatch.setattr(cls, "_default_global",
                        lambda self, arrays, right=right: jnp.roll(right(self, arrays), 1, -1))


FAULTS = {  # fault -> the heads it reaches
    _tanh_gelu: HEAD_NAMES,
    _classifier_without_tanh: ("sequence_classification",),
    _multiple_choice_without_default_global: ("multiple_choice",),
    _default_global_one_token_late: DEFAULT_GLOBAL_HEADS,
}
CASES = [pytest.param(fault, task, id=f"{fault.__name__[1:]}-{task}")
         for fault, tasks in FAULTS.items() for task in tasks]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  """The HF model of a head, saved once per module: (model, directory)."""
  saved = {}

  def get(task):
    if task not in saved:
      saved[task] = save_hf(task, tmp_path_factory.mktemp(task))
    return saved[task]
  return get


@pytest.mark.parametrize("fault,task", CASES)
def test_parity_check_fails_on_a_planted_fault(fault, task, monkeypatch, reference):
  hf, path = reference(task)
  inputs = task_inputs(task, np.random.default_rng(1), with_global=False)
  fault(monkeypatch)
  jax.clear_caches()  # the eager call's traced forward would otherwise be reused
  with pytest.raises(AssertionError, match=f"'{task}', '[a-z_]+', "):
    run_both(task, hf, lj.from_hf(path), inputs)
