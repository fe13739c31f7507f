"""The DrJAX peer runner (benchmarks/peers/drjax_run.py) computes fedqjax's
FedAvg: its round, written with drjax.broadcast / map_fn /
reduce_weighted_mean around fedqjax's client update and quantizer, against
fedqjax's compiled round on the same inputs (tiny U-Net, the vmap spec the
round tests share, so the persistent compilation cache serves both).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fedqjax import federated as fed
from fedqjax.federated import phases
from tests.support import federated as H

drjax = pytest.importorskip(
  "drjax", reason="drjax is not installed (pip install drjax==0.2.1)"
)
from benchmarks.peers import drjax_run  # noqa: E402  pylint: disable=g-import-not-at-top,wrong-import-position


def assert_fedavg_close(a, b, p0):
  """a == b up to float32 rounding of two FedAvg steps from p0.

  Entrywise |a - b| <= 2 ulp(|b|) + 1e-5 * max|b - p0|: the final add
  p0 + avg rounds at the parameters' scale, the weighted mean of K updates
  at the updates' scale (K terms, a few ulp each, ~1e-6 of it). Averaging
  without the n_k weights moves entries by ~0.1 of the update scale, one
  flipped stochastic-rounding level by c_k * range_k / 255 >= ~1e-3 of it:
  both fail.
  """
  a, b, p0 = (np.asarray(x, np.float64) for x in (a, b, p0))
  scale = np.max(np.abs(b - p0))
  tol = 2 * np.spacing(np.abs(b).astype(np.float32)) + 1e-5 * scale
  bad = np.abs(a - b) > tol
  assert not bad.any(), (
    f"{bad.sum()} of {bad.size} entries differ beyond float32 rounding; "
    f"max abs diff {np.max(np.abs(a - b)):.3g}, update scale {scale:.3g}"
  )


@pytest.fixture(scope="module")
def rounds():
  """One round of fedqjax and of the DrJAX runner from the same state:
  (spec, params, fedqjax state and metrics, DrJAX state and metrics)."""
  params, devices, data = H.init_params(), H.make_devices(8), H.make_data(8)
  spec = H.make_spec(**H.LAYOUTS["vmap_k3"])
  scheme = fed.make_scheme(
    "fixed",
    deadline_s=H.generous_deadline(devices, spec, params),
    fixed_bits=8,
  )
  fq = fed.jit_round_step(spec)(H.state(params, spec), data, devices, scheme)
  dr = drjax_run.jit_round_step(spec)(
    H.state(params, spec), data, devices, scheme
  )
  return spec, params, fq, dr


def test_drjax_round_equals_fedqjax_round(rounds):
  """Same parameters, EMA and loss to float32 rounding: the averages are
  sum_k c_k Q(u_k) (fedqjax) and (sum_k n_k Q(u_k)) / sum_k n_k (DrJAX),
  which round differently; the local training and quantization are the
  same computation (measured: max abs diff 1.5e-8, update scale 1e-3)."""
  spec, params, (s1, m1), (s2, m2) = rounds
  assert int(m1["num_uploaded"]) == spec.clients_per_round
  np.testing.assert_array_equal(np.asarray(m1["client_bits"]), 8)
  q = spec.quantizer
  p0 = np.asarray(q.pack(params))
  a, b = np.asarray(q.pack(s2.params)), np.asarray(q.pack(s1.params))
  assert np.max(np.abs(b - p0)) > 1e-4  # the round moved the parameters
  assert_fedavg_close(a, b, p0)
  assert_fedavg_close(q.pack(s2.ema_params), q.pack(s1.ema_params), p0)
  np.testing.assert_allclose(float(m2["loss"]), float(m1["loss"]), rtol=1e-6)
  assert int(s2.round) == int(s1.round) == 1


def test_drjax_weighted_mean_equals_fedqjax_aggregate():
  """The aggregation alone on random updates: DrJAX's reduce_weighted_mean
  (weights n_k) vs fedqjax's phases.aggregate, and a mutation (unweighted
  reduce_mean) that the tolerance catches."""
  spec = H.make_spec(**H.LAYOUTS["vmap_k3"])
  q, k = spec.quantizer, spec.clients_per_round
  params = H.init_params()
  key = jax.random.PRNGKey(3)
  deq = 1e-3 * jax.random.normal(key, (k, q.num_entries))
  counts = jnp.asarray([3, 7, 12], jnp.float32)

  def via_drjax(reduce):
    @drjax.program(placements={"clients": k})
    def avg(p, u, n):
      step = reduce(u, n)
      return jax.tree.map(jnp.add, p, q.unpack(step))

    return q.pack(avg(params, deq, counts))

  p0 = q.pack(params)
  expected = q.pack(phases.aggregate(params, deq, counts, spec))
  got = via_drjax(lambda u, n: drjax.reduce_weighted_mean(u, n))
  assert_fedavg_close(got, expected, p0)
  unweighted = via_drjax(lambda u, n: drjax.reduce_mean(u))
  with pytest.raises(AssertionError):
    assert_fedavg_close(unweighted, expected, p0)
