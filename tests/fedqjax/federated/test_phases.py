"""Tests for fedqjax.federated.phases: the skip rule and policy "degrade"."""

import jax
import jax.numpy as jnp
import numpy as np

from fedqjax import federated as fed
from fedqjax.federated import phases
from tests.support import federated as H


def test_screen_uses_the_scheme_smallest_payload(params, devices):
  """The skip rule by hand on a feasibility table."""
  spec = H.make_spec(**H.LAYOUTS["vmap_k3"])
  ok = jnp.asarray(np.arange(1, 33)[None, :] <= np.array([[32], [8], [0]]))
  for name, want in (
    ("fp32", [False, True, True]),
    ("fixed", [False, False, True]),
    ("ondemand", [False, False, True]),
  ):
    got = phases.screen(ok, fed.make_scheme(name, deadline_s=1.0), spec)
    np.testing.assert_array_equal(np.asarray(got), want, name)
  np.testing.assert_array_equal(
    np.asarray(phases.degrade(jnp.int32(20), ok[1], 1)), 8
  )


def test_degrade_is_the_largest_deliverable_bits():
  """Policy "degrade" against a brute force on random feasibility rows: the
  largest deliverable b in [b_min, requested], else min(b_min, requested)."""
  rng = np.random.default_rng(8)
  ok = rng.random((500, 32)) < rng.uniform(0.05, 0.9, (500, 1))
  requested = rng.integers(1, 33, 500)
  got = np.asarray(
    jax.vmap(lambda r, o: phases.degrade(r, o, 3))(
      jnp.asarray(requested, jnp.int32), jnp.asarray(ok)
    )
  )
  for i in range(500):
    allowed = [b for b in range(3, requested[i] + 1) if ok[i, b - 1]]
    assert got[i] == (max(allowed) if allowed else min(3, requested[i])), i
  assert (got < requested).any() and (got == requested).any()
