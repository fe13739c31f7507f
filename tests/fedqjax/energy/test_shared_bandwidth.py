"""Tests for fedqjax.energy.shared_bandwidth (optimized FDMA bandwidth split).

Float64 comparisons run inside an x64 context so that x64 does not leak into
other test modules.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import optimize

from fedqjax import energy as E
from fedqjax.energy import shared_bandwidth as SB
from tests.support.energy import FLOPS, LN2, x64

N0 = 10.0 ** (-20.4)


def np_devices(rng, n, gain_exp=(-13, -8)):
  dt = jnp.zeros(()).dtype
  f = lambda v: jnp.asarray(np.broadcast_to(v, (n,)), dt)
  gain = 10.0 ** rng.uniform(*gain_exp, n)
  return E.Devices(
    distance_m=f(100.0),
    shadowing_db=f(0.0),
    gain=f(gain),
    large_scale_gain=f(gain),
    bandwidth_hz=f(1e6),
    p_max_w=f(0.2),
    f_min_hz=f(0.1e9),
    f_max_hz=f(2e9),
    tau=f(1e-28 * rng.uniform(0.5, 1.5, n)),
    flops_per_cycle=f(rng.choice([8.0, 16.0, 32.0], n)),
    eps=f(0.01),
    bit_cap=jnp.full((n,), 32, jnp.int32),
    noise_psd_w_hz=f(N0),
  )


def problem(seed, n, w_tot=20e6, slack=(1.05, 3.0), gain_exp=(-13, -8)):
  """Population feasible at the equal share w_tot / n (deadline = slack x min round time)."""
  rng = np.random.default_rng(seed)
  d = np_devices(rng, n, gain_exp)
  bits = 10.0 ** rng.uniform(5, 8.5, n)
  samples = rng.integers(1, 100, n).astype(float)
  deq = d.replace(bandwidth_hz=jnp.full((n,), w_tot / n, d.gain.dtype))
  tmin = np.asarray(E.min_round_time(deq, bits, samples, FLOPS), np.float64)
  dt = np.asarray(d.gain).dtype
  T = tmin * rng.uniform(*slack, n)
  return d, bits.astype(dt), samples.astype(dt), T.astype(dt), w_tot


def scipy_joint(d, bits, samples, T, w_tot, start):
  """SLSQP on the joint problem in normalized (f / f_max, t / T, W / W_tot)."""
  g = lambda name: np.asarray(getattr(d, name), np.float64)
  h, tau, fmax, fmin, pmax = (
    g("gain"),
    g("tau"),
    g("f_max_hz"),
    g("f_min_hz"),
    g("p_max_w"),
  )
  A = FLOPS / g("flops_per_cycle") * samples
  b = bits * LN2
  c = pmax * h / N0
  n = len(h)

  def unpack(z):
    return z[:n] * fmax, z[n : 2 * n] * T, z[2 * n :] * w_tot

  def energy(z):
    f, t, W = unpack(z)
    y = t * W
    return np.sum(
      tau * A * f**2 + N0 / h * y * np.expm1(np.minimum(b / y, 700.0))
    )

  e0 = energy(start)
  cons = [
    {
      "type": "ineq",
      "fun": lambda z: 1.0 - (A / unpack(z)[0] + unpack(z)[1]) / T,
    },
    {
      "type": "ineq",
      "fun": lambda z: (lambda f, t, W: t * W * np.log1p(c / W) / b - 1.0)(
        *unpack(z)
      ),
    },
    {"type": "ineq", "fun": lambda z: np.array([1.0 - np.sum(z[2 * n :])])},
  ]
  bounds = (
    [(fmin[i] / fmax[i], 1.0) for i in range(n)]
    + [(1e-12, 1.0)] * n
    + [(1e-9, 1.0)] * n
  )
  res = optimize.minimize(
    lambda z: energy(z) / e0,
    start,
    method="SLSQP",
    bounds=bounds,
    constraints=cons,
    options={"ftol": 1e-14, "maxiter": 2000},
  )
  f, t, W = unpack(res.x)
  feas = (
    np.all(A / f + t <= T * (1 + 1e-7))
    and np.sum(W) <= w_tot * (1 + 1e-7)
    and np.all(t * W * np.log1p(c / W) >= b * (1 - 1e-7))
  )
  return energy(res.x), feas


def _equal_share(d, bits, samples, T, w_tot):
  n = d.gain.shape[0]
  return E.allocate(
    d.replace(bandwidth_hz=jnp.full((n,), w_tot / n, d.gain.dtype)),
    bits,
    samples,
    T,
    FLOPS,
  )


@pytest.mark.parametrize("seed,n", [(0, 4), (1, 4), (2, 4), (3, 4)])
def test_matches_scipy_float64(seed, n):
  with x64():
    d, bits, samples, T, w_tot = problem(seed, n)
    al, w, mu = SB.allocate_shared_bandwidth(d, bits, samples, T, FLOPS, w_tot)
    eq = _equal_share(d, bits, samples, T, w_tot)
    assert np.all(np.asarray(al.feasible)) and np.all(np.asarray(eq.feasible))
    start = np.concatenate(
      [
        np.asarray(eq.freq_hz) / 2e9,
        np.asarray(eq.t_comm_s) / T,
        np.full(n, 1.0 / n),
      ]
    )
    e_sp, sp_feas = scipy_joint(d, bits, samples, T, w_tot, start)
    e_fq = float(jnp.sum(al.energy_j))
    assert sp_feas
    assert e_fq <= e_sp * (1 + 1e-4), (e_fq, e_sp)
    # Constraints of the fedqjax solution.
    w = np.asarray(w, np.float64)
    assert np.sum(w) <= w_tot * (1 + 1e-6)
    assert np.all(np.asarray(al.latency_s) <= T * (1 + 1e-9))
    assert np.all(np.asarray(al.power_w) <= 0.2 * (1 + 1e-9))
    assert float(mu) > 0


def test_kkt_common_multiplier_float64():
  """Every feasible device's marginal energy saving -dE*/dW equals mu."""
  with x64():
    d, bits, samples, T, w_tot = problem(
      7, 16, slack=(1.001, 5.0), gain_exp=(-14, -7)
    )
    al, w, mu = SB.allocate_shared_bandwidth(d, bits, samples, T, FLOPS, w_tot)
    at_pmax = np.asarray(al.power_w) >= 0.2 * (1 - 1e-9)
    assert (
      0 < at_pmax.sum() < 16
    )  # both branches (p < p_max and p = p_max) are exercised
    s = jnp.asarray(bits)
    mus = SB.mu_of_allocation(d, al, s, w)
    np.testing.assert_allclose(np.asarray(mus), float(mu), rtol=1e-5)
    np.testing.assert_allclose(float(jnp.sum(w)), w_tot, rtol=1e-10)


@pytest.mark.parametrize("seed", [10, 11, 12])
def test_not_worse_than_equal_share(seed):
  with x64():
    d, bits, samples, T, w_tot = problem(
      seed, 16, slack=(1.001, 10.0), gain_exp=(-15, -6)
    )
    al, w, mu = SB.allocate_shared_bandwidth(d, bits, samples, T, FLOPS, w_tot)
    eq = _equal_share(d, bits, samples, T, w_tot)
    assert np.all(np.asarray(eq.feasible)) and np.all(np.asarray(al.feasible))
    assert float(jnp.sum(al.energy_j)) <= float(jnp.sum(eq.energy_j)) * (
      1 + 1e-9
    )
    assert float(mu) > 0
    np.testing.assert_allclose(float(jnp.sum(w)), w_tot, rtol=1e-9)
    assert np.all(np.asarray(al.latency_s) <= T * (1 + 1e-9))


def test_float32_equal_share_and_budget():
  d, bits, samples, T, w_tot = problem(
    20, 16, slack=(1.001, 10.0), gain_exp=(-15, -6)
  )
  al, w, mu = SB.allocate_shared_bandwidth(d, bits, samples, T, FLOPS, w_tot)
  eq = _equal_share(d, bits, samples, T, w_tot)
  assert al.energy_j.dtype == jnp.float32
  assert float(jnp.sum(al.energy_j)) <= float(jnp.sum(eq.energy_j)) * (1 + 1e-4)
  assert float(mu) > 0
  np.testing.assert_allclose(float(jnp.sum(w)), w_tot, rtol=1e-5)
  assert np.all(np.asarray(al.feasible))


def test_infeasible_devices_get_no_bandwidth():
  d, bits, samples, T, w_tot = problem(30, 16)
  # Device 0: deadline shorter than its computation at f_max; device 1: tiny gain.
  cyc = FLOPS / np.asarray(d.flops_per_cycle) * samples
  T = np.asarray(T).copy()
  T[0] = 0.5 * cyc[0] / 2e9
  d = d.replace(
    gain=d.gain.at[1].set(1e-22),
    large_scale_gain=d.large_scale_gain.at[1].set(1e-22),
  )
  al, w, mu = SB.allocate_shared_bandwidth(d, bits, samples, T, FLOPS, w_tot)
  feas = np.asarray(al.feasible)
  assert not feas[0] and not feas[1] and np.all(feas[2:])
  reason = np.asarray(al.reason)
  assert reason[0] == E.REASON_COMPUTE and reason[1] == E.REASON_UPLOAD
  w = np.asarray(w)
  assert w[0] == 0 and w[1] == 0
  assert np.asarray(al.e_comm_j)[:2].tolist() == [0.0, 0.0]
  np.testing.assert_allclose(w.sum(), w_tot, rtol=1e-5)
  np.testing.assert_allclose(
    np.asarray(al.energy_j)[:2], np.asarray(al.e_comp_j)[:2]
  )


def test_all_infeasible():
  d, bits, samples, T, w_tot = problem(31, 16)
  al, w, mu = SB.allocate_shared_bandwidth(
    d, bits, samples, np.asarray(T) * 1e-6, FLOPS, w_tot
  )
  assert not np.any(np.asarray(al.feasible))
  assert float(mu) == 0 and np.all(np.asarray(w) == 0)
  assert np.all(np.isfinite(np.asarray(al.energy_j)))


def test_jit_and_extreme_gains_finite():
  n = 16
  rng = np.random.default_rng(40)
  d = np_devices(rng, n)
  gains = jnp.asarray(10.0 ** np.linspace(-15, 0, n), d.gain.dtype)
  d = d.replace(gain=gains, large_scale_gain=gains)
  bits = jnp.asarray(10.0 ** rng.uniform(4, 8, n), jnp.float32)
  samples = jnp.asarray(rng.integers(1, 100, n), jnp.float32)
  w_tot = 20e6
  deq = d.replace(bandwidth_hz=jnp.full((n,), w_tot / n, d.gain.dtype))
  T = 3.0 * E.min_round_time(deq, bits, samples, FLOPS)
  fn = jax.jit(
    lambda d, b, s, T, W: SB.allocate_shared_bandwidth(d, b, s, T, FLOPS, W)
  )
  al, w, mu = fn(d, bits, samples, T, w_tot)
  al2, w2, mu2 = SB.allocate_shared_bandwidth(d, bits, samples, T, FLOPS, w_tot)
  for leaf in jax.tree.leaves((al, w, mu)):
    assert np.all(np.isfinite(np.asarray(leaf, np.float64)))
  assert np.all(np.asarray(al.feasible))
  np.testing.assert_allclose(np.asarray(w), np.asarray(w2), rtol=1e-4)
  np.testing.assert_allclose(float(jnp.sum(w)), w_tot, rtol=1e-5)
  assert np.all(np.asarray(al.latency_s) <= np.asarray(T) * (1 + 1e-5))


def test_rejects_bad_total_bandwidth():
  d, bits, samples, T, _ = problem(50, 16)
  with pytest.raises(ValueError, match="total_bandwidth_hz"):
    SB.allocate_shared_bandwidth(d, bits, samples, T, FLOPS, -1.0)


def test_present_mask_equals_subset():
  """Padded (absent) devices take no bandwidth: the result equals the unpadded call."""
  d, bits, samples, T, w_tot = problem(60, 16, slack=(1.001, 10.0))
  present = np.arange(16) < 11
  al, w, mu = SB.allocate_shared_bandwidth(
    d, bits, samples, T, FLOPS, w_tot, present=present
  )
  sub = lambda v: v[:11]
  al_s, w_s, mu_s = SB.allocate_shared_bandwidth(
    jax.tree.map(sub, d), bits[:11], samples[:11], T[:11], FLOPS, w_tot
  )
  assert np.all(np.asarray(w)[11:] == 0) and not np.any(
    np.asarray(al.feasible)[11:]
  )
  np.testing.assert_allclose(np.asarray(w)[:11], np.asarray(w_s), rtol=1e-5)
  np.testing.assert_allclose(
    np.asarray(al.energy_j)[:11], np.asarray(al_s.energy_j), rtol=1e-5
  )
  np.testing.assert_allclose(float(mu), float(mu_s), rtol=1e-5)


def test_segments_equal_separate_cells():
  """Three independent cells in one call (segments) equal three separate calls."""
  parts = [
    problem(70 + i, 6, w_tot=w, slack=(1.001, 5.0))  # equal sizes: one compile
    for i, w in enumerate((5e6, 20e6, 1e6))
  ]
  cat = lambda *v: jnp.concatenate([jnp.asarray(x) for x in v])
  d = jax.tree.map(cat, *[p[0] for p in parts])
  bits, samples, T = (cat(*[p[i] for p in parts]) for i in (1, 2, 3))
  seg = np.repeat(np.arange(3), 6)
  w_tot = jnp.asarray([p[4] for p in parts], d.gain.dtype)
  al, w, mu = SB.allocate_shared_bandwidth(
    d, bits, samples, T, FLOPS, w_tot, segments=seg, num_segments=3
  )
  assert mu.shape == (3,)
  for g, p in enumerate(parts):
    al_g, w_g, mu_g = SB.allocate_shared_bandwidth(*p[:4], FLOPS, p[4])
    np.testing.assert_allclose(
      np.asarray(w)[seg == g], np.asarray(w_g), rtol=1e-5
    )
    np.testing.assert_allclose(
      np.asarray(al.energy_j)[seg == g], np.asarray(al_g.energy_j), rtol=1e-5
    )
    np.testing.assert_allclose(float(mu[g]), float(mu_g), rtol=1e-5)
    np.testing.assert_allclose(float(jnp.sum(w[seg == g])), p[4], rtol=1e-5)
