"""Tests for fedqjax.energy.policies; the deadline
rules are tested in test_allocator.py.

Energy is checked from both sides: the (f, p, t) each policy returns must
deliver the payload by the deadline inside the box constraints (so the
reported energy is that of a feasible point: it cannot be below the optimum),
the energies must be exactly the model's E^cmp = tau c n f^2 and E^com = p t
(so they are not under-reported), and kkt <= deadline <= max, kkt <= split
per device (test_allocator.py checks kkt against scipy from above).
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fedqjax import energy as E
from tests.support.energy import FLOPS, LN2, np_devices, x64

POLICIES = E.ALLOCATIONS  # ("kkt", "deadline", "max", "split")


def edge_problem(seed, n=400):
  """Random devices with deadlines covering the edges.

  Slack T / (c n / f_max + t^min) per device, in six groups: log-uniform
  [1.001, 100] (interior), 1e4 (f at f_min for kkt/deadline/split),
  1 + 1e-9 (nearly infeasible: t at t^min, f near f_max), 1 + 1e-4,
  0.5 and 0.999 (infeasible). Gains 1e-16..1e-7, payloads 1e3..1.2e9 bits.
  """
  rng = np.random.default_rng(seed)
  d = np_devices(rng, n)
  bits = 10.0 ** rng.uniform(3, math.log10(1.2e9), n)
  samples = rng.integers(1, 200, n).astype(float)
  t_fast = np.asarray(E.min_round_time(d, bits, samples, FLOPS), np.float64)
  group = rng.integers(0, 6, n)
  slack = np.select(
    [group == 0, group == 1, group == 2, group == 3, group == 4],
    [
      10.0 ** rng.uniform(math.log10(1.001), 2, n),
      np.full(n, 1e4),
      np.full(n, 1 + 1e-9),
      np.full(n, 1 + 1e-4),
      np.full(n, 0.5),
    ],
    np.full(n, 0.999),
  )
  dt = np.asarray(d.gain).dtype
  return d, bits.astype(dt), samples.astype(dt), (t_fast * slack).astype(dt)


def check_policy(al, d, bits, samples, T, rtol):
  """Deliver-by-deadline, box, energy identities; returns the feasible mask."""
  g = lambda v: np.asarray(v, np.float64)
  f, p, t = g(al.freq_hz), g(al.power_w), g(al.t_comm_s)
  h, W, n0 = g(d.gain), g(d.bandwidth_hz), g(d.noise_psd_w_hz)
  tau, pmax, fmin, fmax = g(d.tau), g(d.p_max_w), g(d.f_min_hz), g(d.f_max_hz)
  cycles = FLOPS / g(d.flops_per_cycle) * g(samples)
  S, T = g(bits), g(T)
  feas = np.asarray(al.feasible)
  np.testing.assert_array_equal(
    feas, np.asarray(E.feasible_mask(d, bits, samples, T, FLOPS))
  )
  delivered = t * W * np.log1p(p * h / (n0 * W)) / LN2
  assert np.all(delivered[feas] >= S[feas] * (1 - rtol)), np.min(
    delivered[feas] / S[feas]
  )
  latency = cycles / f + t
  assert np.all(latency[feas] <= T[feas] * (1 + rtol)), np.max(
    latency[feas] / T[feas]
  )
  assert np.all((f >= fmin) & (f <= fmax))
  assert np.all((p > 0) & (p <= pmax))
  exact = 1e-12 if al.freq_hz.dtype == jnp.float64 else 1e-6
  np.testing.assert_allclose(g(al.e_comp_j), tau * cycles * f**2, rtol=exact)
  np.testing.assert_allclose(g(al.e_comm_j), p * t, rtol=exact)
  np.testing.assert_allclose(
    g(al.energy_j), g(al.e_comp_j) + g(al.e_comm_j), rtol=exact
  )
  np.testing.assert_allclose(g(al.latency_s), latency, rtol=exact)
  # Infeasible devices: exactly the f_max / p_max / t^min numbers.
  tmin = g(E.t_min(bits, d.gain, d.bandwidth_hz, d.p_max_w, d.noise_psd_w_hz))
  np.testing.assert_array_equal(f[~feas], fmax[~feas])
  np.testing.assert_array_equal(p[~feas], pmax[~feas])
  np.testing.assert_allclose(t[~feas], tmin[~feas], rtol=exact)
  return feas


def ordering(al, tol):
  e = {
    name: np.asarray(al.e_comp_j[i] + al.e_comm_j[i], np.float64)
    for i, name in enumerate(POLICIES)
  }
  assert np.all(e["kkt"] <= e["deadline"] * (1 + tol))
  assert np.all(e["deadline"] <= e["max"] * (1 + tol))
  assert np.all(e["kkt"] <= e["split"] * (1 + tol))
  return e


@pytest.mark.parametrize("seed", [0, 1])
def test_policies_deliver_by_deadline_float64(seed):
  """Every policy: payload delivered, deadline met (rel. 1e-6), box, E = model's."""
  with x64():
    d, bits, samples, T = edge_problem(seed)
    al = E.allocate_policies(d, bits, samples, T, FLOPS, POLICIES)
    assert al.freq_hz.shape == (4, 400) and al.freq_hz.dtype == jnp.float64
    masks = [
      check_policy(jax.tree.map(lambda v: v[i], al), d, bits, samples, T, 1e-6)
      for i in range(4)
    ]
    for m in masks[1:]:  # one feasibility for all policies
      np.testing.assert_array_equal(m, masks[0])
    e = ordering(al, 1e-9)
    feas = masks[0]
    assert 0.2 < feas.mean() < 0.9
    # The edges are really exercised.
    f, fmin = np.asarray(al.freq_hz), np.asarray(d.f_min_hz)
    tmin = np.asarray(
      E.t_min(bits, d.gain, d.bandwidth_hz, d.p_max_w, d.noise_psd_w_hz)
    )
    kkt_t = np.asarray(al.t_comm_s[0])
    assert np.sum(feas & (f[0] <= fmin * (1 + 1e-9))) > 20  # kkt at f_min
    assert np.sum(feas & (kkt_t <= tmin * (1 + 1e-6))) > 20  # kkt at t^min
    assert np.sum(feas & (f[3] <= fmin * (1 + 1e-9))) > 20  # split at f_min
    # Strict gaps where the slack is large: the baselines waste energy.
    assert np.mean(e["kkt"][feas] < e["deadline"][feas] * 0.999) > 0.2
    assert np.mean(e["deadline"][feas] < e["max"][feas] * 0.999) > 0.3


def test_policies_float32():
  """float32 (the simulator's default): same checks, payload / deadline within 1e-5."""
  d, bits, samples, T = edge_problem(2)
  al = E.allocate_policies(d, bits, samples, T, FLOPS, POLICIES)
  assert al.freq_hz.dtype == jnp.float32
  for i in range(4):
    check_policy(jax.tree.map(lambda v: v[i], al), d, bits, samples, T, 1e-5)
  ordering(al, 1e-5)


def test_kkt_row_is_allocate_and_max_row_is_naive():
  d, bits, samples, T = edge_problem(3, 64)
  al = E.allocate_policies(d, bits, samples, T, FLOPS, ("max", "kkt"))
  ref = {
    "kkt": E.allocate(d, bits, samples, T, FLOPS),
    "max": E.naive_allocation(d, bits, samples, T, FLOPS),
  }
  for i, name in enumerate(("max", "kkt")):
    for field in (
      "freq_hz",
      "power_w",
      "t_comm_s",
      "e_comp_j",
      "e_comm_j",
      "nu",
      "feasible",
      "reason",
    ):
      np.testing.assert_array_equal(
        np.asarray(getattr(al, field)[i]),
        np.asarray(getattr(ref[name], field)),
        err_msg=field,
      )


def test_traced_in_jit_and_vmap():
  d, bits, samples, T = edge_problem(4, 64)
  fn = jax.jit(
    lambda d, b, s, t: E.allocate_policies(d, b, s, t, FLOPS, ("kkt", "split"))
  )
  got = fn(d, jnp.asarray(bits), jnp.asarray(samples), jnp.asarray(T))
  ref = E.allocate_policies(d, bits, samples, T, FLOPS, ("kkt", "split"))
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(ref)):
    np.testing.assert_allclose(
      np.asarray(a, np.float64), np.asarray(b, np.float64), rtol=1e-6
    )
  batched = jax.vmap(fn, in_axes=(None, 0, None, 0))(
    d, jnp.stack([bits, bits * 0.5]), samples, jnp.stack([T, T])
  )
  assert batched.energy_j.shape == (2, 2, 64)
  np.testing.assert_allclose(
    np.asarray(batched.energy_j[0]), np.asarray(ref.energy_j), rtol=1e-6
  )


def test_invalid_policy_names():
  d, bits, samples, T = edge_problem(5, 8)
  for bad in (("kkt", "optimal"), (), "naive"):
    with pytest.raises(ValueError, match="kkt, deadline, max, split"):
      E.allocate_policies(d, bits, samples, T, FLOPS, bad)
  al = E.allocate_policies(d, bits, samples, T, FLOPS, "deadline, max")
  assert al.freq_hz.shape == (2, 8)
