"""Subprocess: 2 processes with jax.distributed (CPU collectives) or 1.

Usage: fed_distributed_check.py PORT PROCESS_ID(-1 = single process) OUTDIR
"""
import os
import sys

import jax


def main():
  port, pid, outdir = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
  if pid >= 0:
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=f"127.0.0.1:{port}",
                               num_processes=2, process_id=pid,
                               local_device_ids=[0])
  import numpy as np  # pylint: disable=g-import-not-at-top
  from fedqjax import federated as fed  # pylint: disable=g-import-not-at-top
  from tests import fed_helpers as H  # pylint: disable=g-import-not-at-top

  params = H.init_params()
  devices = H.make_devices(4)
  data = H.make_data(4)
  mesh = fed.client_mesh() if pid >= 0 else None
  spec = H.make_spec(n=4, k=4, loop="vmap", mesh=mesh)
  deadline = H.generous_deadline(devices, spec, params)
  scheme = fed.make_scheme("ondemand", deadline_s=deadline)
  state = H.state(params, spec)
  if mesh is not None:
    assert jax.device_count() == 2 and jax.process_count() == 2
    data = fed.shard_clients(data, mesh)
    state, devices, scheme = (fed.replicate(x, mesh)
                              for x in (state, devices, scheme))
  state, m = fed.jit_round_step(spec)(state, data, devices, scheme)
  host = fed.to_host(dict(params=state.params, bits=m["client_bits"],
                          loss=m["loss"]))
  flat = {f"p{i}": x for i, x in enumerate(jax.tree.leaves(host["params"]))}
  flat.update(bits=host["bits"], loss=host["loss"])
  name = "single" if pid < 0 else f"dist_{pid}"
  np.savez(os.path.join(outdir, name + ".npz"), **flat)
  print("SINGLE_OK" if pid < 0 else f"DIST_OK {pid}")
  if pid >= 0:
    jax.distributed.shutdown()


if __name__ == "__main__":
  main()
