"""Subprocess: the round on 8 forced CPU devices equals the 1-device round."""
import jax
import numpy as np

from fedqjax import federated as fed
from tests import fed_helpers as H


def main():
  assert jax.device_count() == 8, jax.devices()
  params = H.init_params()
  devices = H.make_devices(8)
  data = H.make_data(8)
  mesh = fed.client_mesh()
  plain = H.make_spec(n=8, k=6, parallelism="vmap")
  sharded = H.make_spec(n=8, k=6, parallelism="vmap", mesh=mesh)
  assert sharded.padded_clients == 8  # 6 clients padded to the mesh
  deadline = H.generous_deadline(devices, plain, params)
  scheme = fed.make_scheme("ondemand", deadline_s=deadline)
  s1, m1 = fed.jit_round_step(plain)(
      fed.init_server_state(params, jax.random.PRNGKey(7)), data, devices,
      scheme)
  sdata = fed.shard_clients(data, mesh)
  state = fed.replicate(fed.init_server_state(params, jax.random.PRNGKey(7)),
                        mesh)
  s2, m2 = fed.jit_round_step(sharded)(state, sdata, fed.replicate(devices,
                                                                   mesh),
                                       fed.replicate(scheme, mesh))
  b1, b2 = np.asarray(m1["bits"]), np.asarray(m2["bits"])[:6]
  np.testing.assert_array_equal(b1, b2)
  assert not np.asarray(m2["present"])[6:].any()
  for x, y in zip(jax.tree.leaves(s1.params), jax.tree.leaves(s2.params)):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=2e-4,
                               atol=2e-6)
  print(f"SHARDED_OK devices={jax.device_count()}")


if __name__ == "__main__":
  main()
