"""Clarke's process (correlation J0(2 pi f_D T k) at every lag k), the
back-off its lag-d estimate needs, the AR(1) chain with a negative rho, and
the closed-form margin at tiny targets against a 60-digit reference.

Statistical checks state their failure probability; everything else is exact.
"""

import dataclasses
import decimal
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg
import scipy.special

from fedqjax.energy import channel as C
from fedqjax.energy import channel_margin as CM
from fedqjax.errors import InvalidSetting
from tests.fedqjax.energy.test_channel import Z7, _fisher_ok, _gauss_ok

J0_1 = 0.7651976865579666  # J0(1), A&S table 9.1


def _clarke(x, **fields):
  """Clarke's process with 2 pi f_D T = x (a 1 s round)."""
  return C.ChannelProcess.clarke(x / (2 * math.pi), 1.0, **fields)


def test_clarke_process_fields_and_correlation():
  p = _clarke(0.5, estimate_delay=2, estimate_noise=0.1)
  assert p.clarke_process and p.rho == p.correlation(1)
  for k, want in ((0, 1.0), (1, 0.938469807240813), (2, J0_1)):
    np.testing.assert_allclose(p.correlation(k), want, rtol=1e-12)
  np.testing.assert_allclose(p.estimate_kappa, 0.9 * J0_1**2, rtol=1e-12)
  ar1 = C.ChannelProcess(rho=0.5, estimate_delay=3)
  assert not ar1.clarke_process and ar1.correlation(3) == 0.125
  with pytest.raises(InvalidSetting, match=r"ChannelProcess\.rho"):
    C.ChannelProcess(rho=0.9, normalized_doppler=0.1)
  with pytest.raises(InvalidSetting, match="doppler_hz"):
    C.ChannelProcess.clarke(-1.0, 1.0)


@pytest.mark.parametrize("x", [0.2, 0.5, 3.8])
def test_clarke_factor_is_the_toeplitz_covariance(x):
  """A A^T = [J0(x |i - j|)] within 1e-10 (f_D T < 1/2: low rank; x = 3.8
  has negative lags' correlations)."""
  a = C.clarke_factor(x / (2 * math.pi), 64)
  want = scipy.linalg.toeplitz(scipy.special.j0(x * np.arange(64)))
  np.testing.assert_allclose(a @ a.T, want, rtol=0, atol=1e-10)
  with pytest.raises(InvalidSetting, match="clarke_factor.length"):
    C.clarke_factor(0.01, C.MAX_CLARKE_ROUNDS + 1)


def test_clarke_paths_have_clarkes_correlation_at_every_lag():
  """x = 0.5, d = 2, s2 = 0.1, 40000 devices x 10 rounds: Re h of round 0
  against rounds 1..9 has correlation J0(k x) (an AR(1) would give
  J0(x)^k: 0.57 instead of -0.32 at k = 9), the estimate against the
  channel sqrt(1 - s2) J0(d x); Re h of the last round is N(0, 1/2).
  Fisher-z checks of 40000 pairs at z = 5.33 (failure 1e-7 each) and the
  Gaussian check (3e-7): failure probability < 2e-6 for the test."""
  x, n = 0.5, 40_000
  p = _clarke(x, estimate_delay=2, estimate_noise=0.1)
  h, h_hat = C.fading_paths(p, jax.random.PRNGKey(20), 10, n)
  h, h_hat = np.asarray(h, np.complex128), np.asarray(h_hat, np.complex128)
  for k in range(1, 10):
    ok, info = _fisher_ok(h[k].real, h[0].real, scipy.special.j0(k * x))
    assert ok, (k, info)
  ok, info = _fisher_ok(h[3].imag, h[0].imag, scipy.special.j0(3 * x))
  assert ok, info
  ok, info = _fisher_ok(h_hat[7].real, h[7].real, math.sqrt(0.9) * J0_1)
  assert ok, info
  ok, info = _gauss_ok(h[9].real, 0.0, 0.5)
  assert ok, info
  with pytest.raises(InvalidSetting, match="stationary_start"):
    C.fading_paths(p, jax.random.PRNGKey(20), 10, 4, False)


def _device_mean(frac):
  """Mean and standard error of per-device fractions [N] (devices are
  independent; rounds of one device are not)."""
  return frac.mean(), frac.std(ddof=1) / math.sqrt(frac.size)


@pytest.mark.parametrize("x, d", [(0.2, 5), (0.5, 2)])
def test_clarke_misses_sit_at_the_target(x, d):
  """The closed-form margin for 5% with Clarke's lag-d correlation
  (kappa = J0(d x)^2 = J0(1)^2 in both cases: 9.52 dB) on Clarke paths,
  2000 devices x 100 rounds: the fraction of device-rounds whose realized
  gain is below the planned one is 5% within z = 5.33 standard errors of
  the mean of the 2000 independent per-device fractions (normal
  approximation: failure 1e-7). The AR(1) margin (J0(x)^(2d): 5.2 and
  7.5 dB) misses far more on the same paths (14.8% and 8.2%)."""
  p = _clarke(x, estimate_delay=d)
  margin = CM.kkt_backoff_db(p, 0.05)
  want = CM.kkt_backoff_db(C.ChannelProcess(rho=J0_1, estimate_delay=1), 0.05)
  np.testing.assert_allclose(margin, want, rtol=1e-12)
  np.testing.assert_allclose(margin, 9.5212, atol=1e-4)
  g = jnp.ones((2000,), jnp.float32)
  key = jax.random.PRNGKey(21)
  rates = []
  ar1 = C.ChannelProcess(rho=p.rho, estimate_delay=d)
  for b in (margin, CM.kkt_backoff_db(ar1, 0.05)):
    q = C.ChannelProcess.clarke(
      x / (2 * math.pi), 1.0, estimate_delay=d, backoff_db=b
    )
    planned, realized = C.trajectory(q, g, key, 100)
    miss = np.asarray(realized < planned).mean(0)
    rates.append(_device_mean(miss))
  (m, se), (m_ar1, _) = rates
  assert abs(m - 0.05) <= Z7 * se, (m, se)
  assert m_ar1 > 0.05 + Z7 * se, (m_ar1, se)


def test_negative_rho_is_a_valid_ar1():
  """rho = -0.6: lag-1 correlation -0.6, lag 2 +0.36, the estimate one
  round old sqrt(1 - s2) (-0.6); the margin depends on rho^2 only. 40000
  devices, Fisher-z at z = 5.33: failure probability < 4e-7."""
  p = C.ChannelProcess(rho=-0.6, estimate_delay=1, estimate_noise=0.1)
  h, h_hat = C.fading_paths(p, jax.random.PRNGKey(22), 4, 40_000)
  h, h_hat = np.asarray(h, np.complex128), np.asarray(h_hat, np.complex128)
  for k, c in ((1, -0.6), (2, 0.36)):
    ok, info = _fisher_ok(h[k].real, h[0].real, c)
    assert ok, (k, info)
  ok, info = _fisher_ok(h_hat[2].real, h[2].real, -0.6 * math.sqrt(0.9))
  assert ok, info
  q = C.ChannelProcess(rho=0.6, estimate_delay=1, estimate_noise=0.1)
  assert CM.kkt_backoff_db(p, 0.05) == CM.kkt_backoff_db(q, 0.05)


def _reference_db(kappa: float, target: float) -> float:
  """The textbook root beta = b - sqrt(b^2 - 1), b = (1 + a^2 - 2 a^2
  kappa) / (1 - a^2), a = 1 - 2 target, in 60-digit decimal arithmetic."""
  with decimal.localcontext() as ctx:
    ctx.prec = 60
    t, k = decimal.Decimal(target), decimal.Decimal(kappa)
    a2 = (1 - 2 * t) ** 2
    b = (1 + a2 - 2 * a2 * k) / (1 - a2)
    beta = b - (b * b - 1).sqrt()
    return float(-10 * beta.log10())


def _reference_miss(kappa: float, backoff_db: float) -> float:
  with decimal.localcontext() as ctx:
    ctx.prec = 60
    k = decimal.Decimal(kappa)
    beta = decimal.Decimal(10) ** (-decimal.Decimal(backoff_db) / 10)
    root = ((1 + beta) ** 2 - 4 * k * beta).sqrt()
    return float((1 + (beta - 1) / root) / 2)


@pytest.mark.parametrize(
  "process",
  [
    C.ChannelProcess(rho=0.0, estimate_delay=1),
    C.ChannelProcess(rho=0.9, estimate_delay=2, estimate_noise=0.05),
    C.ChannelProcess(rho=0.999, estimate_delay=1),
  ],
)
def test_kkt_backoff_at_tiny_targets_is_exact(process):
  """Targets down to 1e-15: the back-off equals the 60-digit reference
  within 1e-10 relative (at kappa = 0 also -10 log10(t / (1 - t)): 80.00 dB
  at 1e-8), and the miss probability at it is the target within 1e-9
  relative (and the reference's)."""
  d, s2 = process.estimate_delay, process.estimate_noise
  kappa = (1 - s2) * process.rho ** (2 * d)
  for t in (1e-15, 3e-9, 1e-8, 1e-6, 1e-3, 0.05, 0.3):
    got = CM.kkt_backoff_db(process, t)
    np.testing.assert_allclose(got, _reference_db(kappa, t), rtol=1e-10)
    if kappa == 0.0:
      np.testing.assert_allclose(got, -10 * math.log10(t / (1 - t)), 1e-12)
    back = CM.kkt_miss_probability(dataclasses.replace(process, backoff_db=got))
    np.testing.assert_allclose(back, t, rtol=1e-9)
    np.testing.assert_allclose(back, _reference_miss(kappa, got), rtol=1e-9)
  np.testing.assert_allclose(process.estimate_kappa, kappa, rtol=1e-15)
