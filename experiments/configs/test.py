r"""Tiny config for tests and smoke runs (seconds on CPU).

  python -m experiments.cifar_sweep --config=experiments/configs/test.py \
      --workdir=/tmp/fedqjax_test
"""

import ml_collections

from experiments.configs import cifar_sweep


def get_config() -> ml_collections.ConfigDict:
  c = cifar_sweep.get_config("cpu")
  c.preset = "test"
  c.data.name = "synthetic"
  c.data.resolution = 16
  c.data.max_train = 96
  c.data.num_test = 32
  c.model.ch = 8
  c.model.ch_mult = (1,)
  c.model.num_groups = 4
  c.model.attn_resolutions = ()
  c.diffusion.T = 50
  c.fed.num_clients = 4
  c.fed.clients_per_round = 3
  c.fed.local_steps = 2
  c.fed.batch_size = 4
  c.fed.rounds = 3
  # Pinned (not "auto" = unrolled on CPU): one rolled, vmapped client
  # program compiles fastest; every layout is tested in
  # tests/fedqjax/federated/test_round.py.
  c.fed.client_loop = "vmap"
  c.eval.num_samples = 16
  c.eval.batch_size = 16
  c.eval.ddim_steps = 3
  c.eval.fid = False
  c.sweep.seeds = (0,)
  c.eval.kid_subset_size = 8
  c.eval.grid = 16
  c.eval.every = 2
  c.eval.heldout_size = 16
  c.eval.vlb_size = 8  # 10 + 50 / 10 = 15 forward passes per image
  c.eval.vlb_t_stride = 10
  c.ckpt_every = 2
  return c
