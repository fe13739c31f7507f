"""The sweep's statistics on the small preset:
energy non-increasing in the deadline, the policies' order, the shared
bandwidth split, on-demand bits vs the error scale."""

import numpy as np

TOL = 1e-5  # float32 bisection: relative slack of the energy comparisons


def _energy(result):
  st = result["stats"]
  return st["e_comp"].astype(np.float64) + st["e_comm"]  # [R, S, B, P']


def _index(result, axis):
  prep = result["prepared"]
  rows = [(v, i) for a, v, a2, _, i in prep.rows if a == axis and not a2]
  return [i for _, i in sorted(rows)]


def test_energy_non_increasing_in_deadline(small):
  """Every (scheme, kkt) at fixed devices: a longer deadline never costs
  more."""
  _, result, _, _ = small
  e = _energy(result)[..., result["allocations"].index("kkt")]  # [R, S, B]
  idx = _index(result, "deadline_factor")
  assert len(idx) >= 3
  curve = e[:, idx]  # [R, T, B]
  assert np.all(np.diff(curve, axis=1) <= TOL * curve[:, 1:])
  assert np.all(curve[:, -1] < curve[:, 0])  # and strictly less over the range


def test_kkt_deadline_max_order_per_scenario(small):
  _, result, _, _ = small
  e = _energy(result)
  a = result["allocations"]
  kkt, dl, mx, sp = (
    e[..., a.index(p)] for p in ("kkt", "deadline", "max", "split")
  )
  assert np.all(kkt <= dl * (1 + TOL)) and np.all(dl <= mx * (1 + TOL))
  assert np.all(kkt <= sp * (1 + TOL))
  assert np.mean(kkt < 0.99 * dl) > 0.5  # the baselines really cost more


def test_shared_bandwidth_not_worse_than_equal_share(small):
  _, result, _, _ = small
  e, st = _energy(result), result["stats"]
  a = result["allocations"]
  k, s = a.index("kkt"), a.index("shared")
  same = st["n_feasible"][..., k] == st["n_feasible"][..., s]
  assert same.all()
  assert np.all(e[..., s] <= e[..., k] * (1 + TOL))


def test_ondemand_bits_non_increasing_in_error_scale(small):
  settings, result, _, _ = small
  b = settings.bits_schemes.index("ondemand")
  bits = result["stats"]["bits_sum"][:, _index(result, "eps_scale"), b]
  assert np.all(np.diff(bits, axis=1) <= 0) and np.all(bits[:, -1] < bits[:, 0])


def test_shapes_and_allocation_order(small):
  settings, result, _, _ = small
  prep, st = result["prepared"], result["stats"]
  r, s, b = settings.num_seeds, len(prep.scenarios), 3
  assert result["allocations"] == ("kkt", "deadline", "split", "max", "shared")
  assert st["e_comp"].shape == (r, s, b, 5)
  assert st["bits_sum"].shape == st["budget_over"].shape == (r, s, b)
  assert st["deadline_s"].shape == (r, s)
  n0 = prep.scenarios[0].num_devices
  assert result["base"]["dev_energy"].shape == (r, b, 5, n0)
