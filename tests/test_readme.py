"""The README's Python quick-start runs as written (on a small local checkpoint)."""

import os
import re

import pytest

transformers = pytest.importorskip("transformers")

README = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")


def quickstart_blocks():
  text = open(README).read()
  section = text[text.index("## Loading an HF checkpoint"):text.index("Conversions from the command line")]
  return re.findall(r"```python\n(.*?)```", section, re.S)


def test_readme_quickstart_runs(tmp_path):
  cfg = transformers.LongformerConfig(vocab_size=50265, hidden_size=32, num_hidden_layers=2,
                                      num_attention_heads=4,
                                      intermediate_size=37, attention_window=[8, 8],
                                      max_position_embeddings=40)
  transformers.LongformerModel(cfg).save_pretrained(tmp_path / "base")
  blocks = quickstart_blocks()
  assert len(blocks) == 2
  namespace = {}
  for block in blocks:
    code = block.replace("path/to/longformer-base-4096", str(tmp_path / "base"))
    code = code.replace('"exported/"', repr(str(tmp_path / "exported")))
    exec(compile(code, README, "exec"), namespace)  # pylint: disable=exec-used
  assert namespace["out"].loss.shape == () and namespace["probs"].shape == (1, 2)
  assert (tmp_path / "exported" / "model.safetensors").exists()
  assert set(namespace["grads"].keys()) >= {"longformer", "classifier"}
