"""Initialises the ``configs/mlm.py:cpu`` run from an HF directory on a mesh that
splits parameters over every device (fsdp); prints a JSON line: whether each loaded
array equals the checkpoint's and how many of them are split over the devices.

    python tests/programs/init_from_hf_sharded.py HF_DIR CORPUS DATA_DIR WORKDIR
"""

import json
import sys

import jax
import numpy as np
from flax import nnx

from configs import mlm
from longformer_jax import convert, train
from longformer_jax import model as model_lib


def main(hf_dir, corpus, data_dir, workdir):
  c = mlm.get_config("cpu")
  c.init_from_hf, c.data.path, c.data.data_dir = hf_dir, corpus, data_dir
  c.seq_len, c.batch_size, c.async_checkpoints = 64, jax.device_count(), False
  c.mesh = dict(data=1, fsdp=jax.device_count(), tensor=1, sequence=1)
  runner = train.Runner(c, workdir)
  state, _, _ = runner.init_or_restore()
  abstract = nnx.eval_shape(lambda: model_lib.create_model(
      runner.model_configs[0], runner.head, 0))
  want = convert.hf_param_values(abstract, convert.load_state_dict(hf_dir))
  flat = dict(nnx.to_flat_state(state["params"]))
  equal = all(np.array_equal(np.asarray(jax.device_get(flat[p][...])), v)
              for p, v in want.items())
  split = sum(flat[p][...].addressable_shards[0].data.shape != flat[p][...].shape
              for p in want)
  matrices = sum(v.ndim >= 2 for v in want.values())
  print(json.dumps(dict(equal=equal, loaded=len(want), matrices=matrices, split=split)))


if __name__ == "__main__":
  main(*sys.argv[1:])
