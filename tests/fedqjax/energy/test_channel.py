"""Tests for fedqjax.energy.channel and channel_margin: the Gauss-Markov
process and its estimate, the delivery rule on hand-made numbers, and the
back-off that keeps misses under a target (Clarke's process and the margin
at tiny targets: test_channel_clarke.py).

Statistical checks state their failure probability; everything else is exact.
"""

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fedqjax import energy as E
from fedqjax.energy import channel as C
from fedqjax.energy import channel_margin as CM
from fedqjax.errors import InvalidSetting
from tests.support.energy import FLOPS, np_devices, x64

Z7 = 5.33  # two-sided normal quantile for failure probability 1e-7


@pytest.mark.parametrize(
  "field, value",
  [
    ("rho", -1.1),
    ("rho", 1.5),
    ("rho", float("nan")),
    ("estimate_delay", -1),
    ("estimate_delay", 1.5),
    ("estimate_delay", True),
    ("estimate_noise", 1.01),
    ("estimate_noise", -1e-3),
    ("backoff_db", -1.0),
    ("backoff_db", float("inf")),
    ("normalized_doppler", -0.1),
    ("normalized_doppler", float("nan")),
  ],
)
def test_process_rejects_bad_settings(field, value):
  with pytest.raises(InvalidSetting) as e:
    C.ChannelProcess(**{field: value})
  assert e.value.owner == "ChannelProcess" and e.value.field == field


def _j0_series(x, terms=60):
  """J0 by its power series sum_k (-1)^k (x/2)^(2k) / (k!)^2 (x <= 10)."""
  return math.fsum(
    (-1) ** k * (x / 2) ** (2 * k) / math.factorial(k) ** 2
    for k in range(terms)
  )


def test_jakes_rho_known_values():
  assert C.jakes_rho(0.0, 1.0) == 1.0
  # J0(1) = 0.7651976865579666, J0(0.5) = 0.9384698072408129 (A&S table 9.1).
  np.testing.assert_allclose(
    C.jakes_rho(1 / (2 * math.pi), 1.0), 0.7651976865579666, rtol=1e-12
  )
  np.testing.assert_allclose(
    C.jakes_rho(10.0, 0.5 / (20 * math.pi)), 0.9384698072408129, rtol=1e-12
  )
  for x in (0.1, 0.7, 1.3, 2.0, 2.4):
    np.testing.assert_allclose(
      C.jakes_rho(x / (2 * math.pi), 1.0), _j0_series(x), rtol=1e-10
    )
  # Past the first zero 2.404825557695773 J0 < 0, returned as is (not
  # clipped): J0(3) = -0.2600519549019335 (A&S table 9.1), J0(2.5) < 0.
  for x in (2.5, 3.0, 3.8):
    np.testing.assert_allclose(
      C.jakes_rho(x / (2 * math.pi), 1.0), _j0_series(x), rtol=1e-10
    )
  np.testing.assert_allclose(
    C.jakes_rho(3.0 / (2 * math.pi), 1.0), -0.2600519549019335, rtol=1e-12
  )
  with pytest.raises(InvalidSetting):
    C.jakes_rho(-1.0, 1.0)


def test_static_process_is_the_large_scale_channel_bitwise():
  g = jnp.asarray(10.0 ** np.linspace(-14, -8, 7), jnp.float32)
  planned, realized = C.trajectory(
    C.ChannelProcess(), g, jax.random.PRNGKey(0), 5, stationary_start=False
  )
  np.testing.assert_array_equal(np.asarray(planned), np.tile(g, (5, 1)))
  np.testing.assert_array_equal(np.asarray(realized), np.tile(g, (5, 1)))
  # By default the process starts stationary: rho = 1 is one Rayleigh draw
  # per device, frozen over the rounds, known exactly.
  planned, realized = C.trajectory(
    C.ChannelProcess(), g, jax.random.PRNGKey(0), 5
  )
  planned, realized = np.asarray(planned), np.asarray(realized)
  np.testing.assert_array_equal(planned, realized)
  np.testing.assert_array_equal(realized, np.tile(realized[0], (5, 1)))
  assert not np.allclose(realized[0], g, rtol=1e-3, atol=0)


def test_delay_without_noise_is_the_channel_d_rounds_ago_bitwise():
  p = C.ChannelProcess(rho=0.8, estimate_delay=3)
  h, h_hat = C.fading_paths(p, jax.random.PRNGKey(1), 12, 5, True)
  np.testing.assert_array_equal(np.asarray(h_hat[3:]), np.asarray(h[:-3]))
  assert not np.array_equal(np.asarray(h_hat), np.asarray(h))
  # The back-off only scales the plan: planned(b) = planned(0) 10^(-b/10).
  g = jnp.full((5,), 1e-10)
  k = jax.random.PRNGKey(2)
  p0, r0 = C.trajectory(p, g, k, 12)
  p3, r3 = C.trajectory(dataclasses.replace(p, backoff_db=3.0), g, k, 12)
  np.testing.assert_array_equal(np.asarray(r0), np.asarray(r3))
  np.testing.assert_allclose(p3, p0 * 10**-0.3, rtol=1e-6)


def _fisher_ok(x, y, rho, z=Z7):
  """Sample correlation of n Gaussian pairs within z / sqrt(n - 3) of rho
  on Fisher's atanh scale (failure probability 2 (1 - Phi(z)))."""
  r = np.corrcoef(x, y)[0, 1]
  half = z / math.sqrt(x.size - 3)
  return abs(math.atanh(r) - math.atanh(rho)) <= half, (r, rho)


def _gauss_ok(x, mean, var, delta=1e-7):
  """n i.i.d. N(mean, var): the sample mean within z sqrt(var / n) and
  sum((x - mean)^2) / var within the Laurent-Massart chi-square bounds
  (failure probability <= 3 delta in all)."""
  n, t = x.size, math.log(1 / delta)
  ok_mean = abs(x.mean() - mean) <= Z7 * math.sqrt(var / n)
  q = np.sum((x - mean) ** 2) / var
  ok_var = n - 2 * math.sqrt(n * t) <= q <= n + 2 * math.sqrt(n * t) + 2 * t
  return ok_mean and ok_var, (x.mean(), mean, q / n)


@pytest.mark.parametrize("stationary", [True, False])
def test_gauss_markov_statistics(stationary):
  """Re and Im of h_r are N(rho^r, (1 - rho^(2r)) / 2) and N(0, same) from
  h_0 = 1, N(0, 1/2) when stationary: E|h_r|^2 = 1 either way; the lag-1
  correlation of the real parts is rho (stationary), that of the estimate
  with the channel sqrt(1 - s2) rho^d. 40000 devices; failure probability
  < 1e-5 for the whole test."""
  rho, s2, d, n = 0.9, 0.2, 2, 40000
  p = C.ChannelProcess(rho=rho, estimate_delay=d, estimate_noise=s2)
  h, h_hat = C.fading_paths(p, jax.random.PRNGKey(3), 6, n, stationary)
  h, h_hat = np.asarray(h, np.complex128), np.asarray(h_hat, np.complex128)
  for r in (0, 3, 5):
    a = 0.0 if stationary else rho ** (r + d)  # the chain starts at -d
    var = 0.5 * (1.0 - a * a)
    for part, mean in ((h[r].real, a), (h[r].imag, 0.0)):
      ok, info = _gauss_ok(part, mean, var)
      assert ok, (r, info)
  if stationary:
    ok, info = _fisher_ok(h[4].real, h[3].real, rho)
    assert ok, info
    ok, info = _fisher_ok(h[4].imag, h[3].imag, rho)
    assert ok, info
    c = math.sqrt(1 - s2) * rho**d
    ok, info = _fisher_ok(h_hat[5].real, h[5].real, c)
    assert ok, info
    ok, info = _gauss_ok(h_hat[5].real, 0.0, 0.5)
    assert ok, info


def _one_device(planned, realized):
  """W = 1 MHz, N0 W = 1e-14 W, p = 0.1 W: SNR 1e13 g."""
  f = lambda v: jnp.asarray([v], jnp.float64)
  d = np_devices(np.random.default_rng(0), 1)
  return d.replace(
    gain=f(planned),
    realized_gain=f(realized),
    bandwidth_hz=f(1e6),
    noise_psd_w_hz=f(1e-20),
  )


def _alloc(power, t_comp, t_comm, e_comm):
  f = lambda v: jnp.asarray([v], jnp.float64)
  return E.Allocation(
    freq_hz=f(1e9),
    power_w=f(power),
    t_comp_s=f(t_comp),
    t_comm_s=f(t_comm),
    e_comp_j=f(0.5),
    e_comm_j=f(e_comm),
    energy_j=f(0.5 + e_comm),
    nu=f(0.0),
    feasible=jnp.asarray([True]),
    reason=jnp.asarray([0], jnp.int32),
    latency_s=f(t_comp + t_comm),
  )


def test_judge_by_hand():
  """Realized g = 3e-13 at p = 0.1 W: SNR 3, r = 1e6 log2(4) = 2 Mbit/s, so
  S = 1 Mbit takes 0.5 s after t_comp = 0.3 s. T = 1: delivered at 0.8 s,
  E = 0.1 x 0.5 = 0.05 J. T = 0.6: missed, E = 0.1 x (0.6 - 0.3) = 0.03 J.
  Realized >= planned (1e-11 vs 1e-12): the plan's numbers, whatever T."""
  with x64():
    a = _alloc(0.1, 0.3, 0.1, 0.0123)
    for T, ok, e in ((1.0, True, 0.05), (0.6, False, 0.03)):
      dv, ec = C.judge(a, _one_device(1e-12, 3e-13), 1e6, T)
      assert bool(dv[0]) is ok
      np.testing.assert_allclose(float(ec[0]), e, rtol=1e-12)
      out = C.delivery(a, _one_device(1e-12, 3e-13), 1e6, T)
      np.testing.assert_allclose(float(out.latency_s[0]), 0.8, rtol=1e-12)
    dv, ec = C.judge(a, _one_device(1e-12, 1e-11), 1e6, 0.2)
    assert bool(dv[0]) and float(ec[0]) == 0.0123


def test_judge_on_the_planned_channel_is_the_allocation_bitwise():
  rng = np.random.default_rng(4)
  d = np_devices(rng, 64)
  bits = 10.0 ** rng.uniform(4, 8, 64)
  T = 2.0 * np.asarray(E.min_round_time(d, bits, 8.0, FLOPS))
  a = E.allocate_policies(d, bits, 8.0, T, FLOPS)  # [4, 64]
  dv, ec = C.judge(a, d.replace(realized_gain=d.gain), bits, T)
  assert np.all(np.asarray(dv))
  np.testing.assert_array_equal(np.asarray(ec), np.asarray(a.e_comm_j))
  dv, ec = C.judge(a, d, bits, T)  # realized_gain None: the same
  assert np.all(np.asarray(dv))
  np.testing.assert_array_equal(np.asarray(ec), np.asarray(a.e_comm_j))
  # Half the gain: kkt, deadline and split use the whole deadline and miss.
  dv, _ = C.judge(a, d.replace(realized_gain=0.5 * d.gain), bits, T)
  assert not np.any(np.asarray(dv)[[0, 1, 3]])


def _mc_kkt_miss(p, m, rng):
  """P(|h|^2 < beta |h_hat|^2) by numpy draws (stationary chain)."""
  cn = lambda: (rng.standard_normal(m) + 1j * rng.standard_normal(m)) / 2**0.5
  c = p.rho**p.estimate_delay
  h = cn()
  old = c * h + math.sqrt(1 - c * c) * cn()
  s2 = p.estimate_noise
  est = math.sqrt(1 - s2) * old + math.sqrt(s2) * cn()
  return np.mean(np.abs(h) ** 2 < p.backoff * np.abs(est) ** 2)


@pytest.mark.parametrize(
  "rho, d, s2, b",
  [
    (1.0, 0, 0.1, 0.0),
    (1.0, 0, 0.1, 3.0),
    (0.9, 2, 0.05, 2.0),
    (0.5, 1, 0.3, 6),
  ],
)
def test_kkt_miss_probability_matches_monte_carlo(rho, d, s2, b):
  """Hoeffding: 4e5 Bernoulli draws within 0.0054 of the mean with failure
  probability 2e-10; the inverse returns the back-off of a given rate."""
  p = C.ChannelProcess(rho=rho, estimate_delay=d, estimate_noise=s2)
  p = dataclasses.replace(p, backoff_db=b)
  m = 400_000
  tol = math.sqrt(math.log(2 / 2e-10) / (2 * m))
  mc = _mc_kkt_miss(p, m, np.random.default_rng(5))
  assert abs(CM.kkt_miss_probability(p) - mc) <= tol
  for target in (0.01, 0.05, 0.2):
    bt = CM.kkt_backoff_db(p, target)
    back = CM.kkt_miss_probability(dataclasses.replace(p, backoff_db=bt))
    np.testing.assert_allclose(back, target, rtol=1e-9)
  assert CM.kkt_backoff_db(C.ChannelProcess(), 0.01) == 0.0  # perfect


def _population():
  rng = np.random.default_rng(6)
  d = np_devices(rng, 32)
  bits = 1e6
  T = 5.0 * float(np.max(np.asarray(E.min_round_time(d, bits, 8.0, FLOPS))))
  return d, bits, T


def test_miss_rates_fall_and_energy_rises_with_backoff():
  """kkt plans on a 5x slack deadline with s2 = 0.1 (i.i.d. rounds): the
  miss rate falls with the back-off toward the analytic one, the energy per
  upload rises. 32 devices x 300 rounds; the analytic comparison allows
  the skips near threshold and a Hoeffding radius (failure 1e-8)."""
  d, bits, T = _population()
  p = C.ChannelProcess(rho=0.0, estimate_noise=0.1)
  grid = [0.0, 2.0, 4.0, 8.0]
  r = CM.miss_rates(p, d, bits, 8.0, T, FLOPS, jax.random.PRNGKey(7), 300, grid)
  assert np.all(np.diff(r["miss_rate"]) < 0), r["miss_rate"]
  assert np.all(np.diff(r["energy_per_upload_j"]) > 0), r
  assert np.all(np.diff(r["wasted_j"]) < 0), r
  n = 32 * 300 * (1 - r["skip_rate"])
  tol = np.sqrt(math.log(2 / 1e-8) / (2 * n)) + r["skip_rate"]
  for b, got, t in zip(grid, r["miss_rate"], tol):
    want = CM.kkt_miss_probability(dataclasses.replace(p, backoff_db=b))
    assert abs(got - want) <= t, (b, got, want, t)


def test_backoff_for_target_is_the_first_grid_point_under_it():
  d, bits, T = _population()
  p = C.ChannelProcess(rho=0.5, estimate_delay=1, estimate_noise=0.05)
  key = jax.random.PRNGKey(8)
  grid = tuple(0.5 * i for i in range(25))
  b = CM.backoff_for_target(
    p, d, bits, 8.0, T, FLOPS, key, 0.05, num_rounds=100, grid_db=grid
  )
  r = CM.miss_rates(p, d, bits, 8.0, T, FLOPS, key, 100, [b - 0.5, b])
  assert r["miss_rate"][1] <= 0.05 < r["miss_rate"][0], (b, r)
  assert abs(b - CM.kkt_backoff_db(p, 0.05)) <= 1.0  # analytic: 11.7 dB
  assert (
    CM.backoff_for_target(
      p, d, bits, 8.0, T, FLOPS, key, 1e-6, num_rounds=20, grid_db=(0, 1)
    )
    == math.inf
  )
