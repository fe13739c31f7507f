"""Time-correlated fading with stale / noisy channel estimates.

Channel process. Device k's channel in round r is g_k,r = G_k |h_k,r|^2:
G_k the large-scale gain (path loss and shadowing, `Devices.large_scale_gain`)
and h_k,r the complex small-scale gain, a stationary circular Gaussian
process with E|h|^2 = 1 (Rayleigh fading, |h|^2 ~ Exp(1), in every round),
independent across devices, of one of two kinds:

* AR(1) (first-order Gauss-Markov), `rho` given:

    h_{r+1} = rho h_r + sqrt(1 - rho^2) w_r,   w_r ~ CN(0, 1) i.i.d.,

  rho in [-1, 1] (1: static, 0: i.i.d. block fading); lag-k correlation
  rho^k.
* Clarke / Jakes, `normalized_doppler` f_D T > 0 given (maximum Doppler
  shift f_D, round duration T): the Gaussian process whose lag-k
  correlation is Clarke's J0(2 pi f_D T k) at EVERY lag (an AR(1) matches it
  at lag 1 only), drawn exactly: h = A z over the rounds, z ~ CN(0, I),
  A A^T the Toeplitz matrix of J0(2 pi f_D T |i - j|) (`clarke_factor`).

The process starts at its stationary law, h ~ CN(0, 1). For identity
checks only, the AR(1) chain can instead start at h = 1 (the large-scale
channel; `stationary_start=False`), which is not stationary: E|h_r|^2 = 1
still, but |h_r|^2 is not Exp(1) until rho^r is small.

Estimate. The allocator plans with a delayed, noisy estimate

  h_hat_r = sqrt(1 - s2) h_{r-d} + sqrt(s2) e_r,   e_r ~ CN(0, 1) i.i.d.,

d = `estimate_delay` rounds, s2 = `estimate_noise` (the relative MSE; again
E|h_hat|^2 = 1), so corr(h_hat_r, h_r) = sqrt(1 - s2) c(d), c(d) the
process's lag-d correlation (`ChannelProcess.correlation`). It is backed
off by `backoff_db`: planned gain G |h_hat|^2 10^(-backoff_db / 10),
realized gain G |h_r|^2. The process starts d rounds before round 0, so
every round (the first included) sees an estimate exactly d rounds old.
`trajectory` draws both for R rounds; `devices_at_round` puts round r's
into a `Devices` (`gain` planned, `realized_gain` realized).

Delivery (`delivery`, `judge`). A device transmits at its planned power p
(and CPU frequency) for its allocation. If the realized gain is at least the
planned one, it delivers as planned: the planned rate, time and energy (the
better channel is not exploited; this also makes realized == planned
reproduce the allocation bitwise). Otherwise its rate drops to
r = W log2(1 + p g_real / (N0 W)) and it transmits until the payload S is
through or the deadline T is reached: it misses when t_comp + S / r > T, and
spends p min(S / r, T - t_comp) on communication. A missed upload is lost:
its computation and its communication energy are wasted. `delivered` is about
the channel only: the plan's own feasibility is `Allocation.feasible`.

Robustness margin: `fedqjax.energy.channel_margin` (the back-off that keeps
the miss rate under a target).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Tuple

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from fedqjax.energy import model
from fedqjax.energy.allocator import Allocation
from fedqjax.energy.devices import Devices
from fedqjax.errors import InvalidSetting
from fedqjax.typing import Array, ArrayLike, PRNGKey


def finite_number(v) -> bool:
  return (
    isinstance(v, (int, float, np.integer, np.floating))
    and not isinstance(v, bool)
    and math.isfinite(v)
  )


def _j0(x: float) -> float:
  import scipy.special  # host helper (scipy comes with jax)

  return float(scipy.special.j0(x))


@dataclasses.dataclass(frozen=True)
class ChannelProcess:
  """Static description of the channel process and its estimate (hashable).

  Attributes:
    rho: lag-1 correlation of the small-scale fading, [-1, 1] (1: static).
      With normalized_doppler > 0 it must be J0(2 pi normalized_doppler)
      (`ChannelProcess.clarke` sets it).
    estimate_delay: rounds d by which the estimate lags, integer >= 0.
    estimate_noise: relative MSE s2 of the estimate, [0, 1].
    backoff_db: the allocator plans at the estimate x 10^(-backoff_db / 10),
      >= 0.
    normalized_doppler: f_D T, the maximum Doppler shift times the round
      duration, >= 0. 0: the AR(1) chain of rho; > 0: Clarke's process
      (module docstring).
  """

  rho: float = 1.0
  estimate_delay: int = 0
  estimate_noise: float = 0.0
  backoff_db: float = 0.0
  normalized_doppler: float = 0.0

  def __post_init__(self):
    def bad(name, valid):
      raise InvalidSetting("ChannelProcess", name, getattr(self, name), valid)

    if not finite_number(self.rho) or not -1 <= self.rho <= 1:
      bad("rho", "[-1, 1]")
    d = self.estimate_delay
    if not isinstance(d, (int, np.integer)) or isinstance(d, bool) or d < 0:
      bad("estimate_delay", "integer >= 0")
    s2 = self.estimate_noise
    if not finite_number(s2) or not 0 <= s2 <= 1:
      bad("estimate_noise", "[0, 1]")
    if not finite_number(self.backoff_db) or self.backoff_db < 0:
      bad("backoff_db", "finite and >= 0")
    fd = self.normalized_doppler
    if not finite_number(fd) or fd < 0:
      bad("normalized_doppler", "finite and >= 0")
    if fd > 0 and abs(self.rho - _j0(2 * math.pi * fd)) > 1e-12:
      bad("rho", "J0(2 pi normalized_doppler) (use ChannelProcess.clarke)")

  @classmethod
  def clarke(cls, doppler_hz: float, round_s: float, **fields):
    """Clarke's process for a maximum Doppler shift and a round duration
    (rho = `jakes_rho`); `fields`: the other attributes."""
    jakes_rho(doppler_hz, round_s)  # checks both
    fd = doppler_hz * round_s
    return cls(rho=_j0(2 * math.pi * fd), normalized_doppler=fd, **fields)

  @property
  def clarke_process(self) -> bool:
    return self.normalized_doppler > 0

  def correlation(self, lag: int) -> float:
    """Correlation E[h_r conj(h_{r-lag})] of the process at a lag (rounds):
    J0(2 pi f_D T lag) for Clarke's process, rho^lag for the AR(1)."""
    if self.clarke_process:
      return _j0(2 * math.pi * self.normalized_doppler * lag)
    return self.rho**lag

  @property
  def estimate_kappa(self) -> float:
    """|corr(h_hat_r, h_r)|^2 = (1 - s2) c(d)^2, c = `correlation`."""
    c = self.correlation(self.estimate_delay)
    return (1.0 - self.estimate_noise) * c * c

  @property
  def backoff(self) -> float:
    """The linear planning factor 10^(-backoff_db / 10) (1.0 at 0 dB)."""
    return 10.0 ** (-self.backoff_db / 10.0)


def jakes_rho(doppler_hz: float, round_s: float) -> float:
  """Per-round fading correlation J0(2 pi f_d dt) of the Jakes / Clarke model.

  Clarke's isotropic scattering gives the autocorrelation J0(2 pi f_d tau) of
  the complex gain at lag tau (f_d = v / wavelength). J0 turns negative past
  its first zero (2 pi f_d dt > 2.405): the value is returned as is (an
  AR(1) with a negative rho is valid; it alternates in sign).
  """
  for name, v in (("doppler_hz", doppler_hz), ("round_s", round_s)):
    if not finite_number(v) or v < 0:
      raise InvalidSetting("jakes_rho", name, v, "finite and >= 0")
  return _j0(2 * math.pi * doppler_hz * round_s)


def _cn(key: PRNGKey, shape, dtype) -> Array:
  """CN(0, 1): real and imaginary parts N(0, 1/2)."""
  kr, ki = jax.random.split(key)
  s = math.sqrt(0.5)
  re = s * jax.random.normal(kr, shape, dtype)
  return jax.lax.complex(re, s * jax.random.normal(ki, shape, dtype))


MAX_CLARKE_ROUNDS = 4096  # rounds + estimate_delay: O(n^3) host time


@functools.lru_cache(maxsize=2)  # up to 134 MB each
def clarke_factor(normalized_doppler: float, length: int) -> np.ndarray:
  """A [length, m] (float64, host) with A A^T = the Toeplitz matrix of
  J0(2 pi f_D T |i - j|), i, j < length: h = A z, z ~ CN(0, I_m), is the
  Clarke process over `length` rounds.

  J0(2 pi f_D T k) is positive semi-definite (the mean of cos(omega k) over
  omega = 2 pi f_D T cos(theta), theta uniform) but numerically of low rank
  when f_D T < 1/2: eigenvalues below 1e-12 x the largest (rounding, down
  to -1e-13 here) are dropped, an error under 1e-12 x length in any
  covariance. Costs O(length^3) once: ~1.5 s at 1000 rounds, ~10 s at 2000,
  ~90 s at 4000 (a shared, loaded 2-core x86 CPU); lengths over
  `MAX_CLARKE_ROUNDS` are refused.
  """
  if length > MAX_CLARKE_ROUNDS:
    raise InvalidSetting(
      "clarke_factor",
      "length",
      length,
      f"rounds + estimate_delay <= {MAX_CLARKE_ROUNDS} for Clarke's process "
      "(longer: the AR(1) chain, rho without a Doppler)",
    )
  x = 2 * math.pi * normalized_doppler
  import scipy.linalg
  import scipy.special

  cov = scipy.linalg.toeplitz(scipy.special.j0(x * np.arange(length)))
  lam, v = np.linalg.eigh(cov)
  keep = lam > 1e-12 * lam[-1]
  return v[:, keep] * np.sqrt(lam[keep])


def _estimate(process: ChannelProcess, chain: Array, key, num_rounds):
  """(h, h_hat) of rounds 0..R-1 from the process at rounds -d..R-1."""
  d, s2 = process.estimate_delay, process.estimate_noise
  e = _cn(key, (num_rounds, chain.shape[1]), chain.real.dtype)
  seen = chain[:num_rounds]
  h_hat = math.sqrt(1.0 - s2) * seen + math.sqrt(s2) * e
  return chain[d:], h_hat


@functools.partial(jax.jit, static_argnums=(0, 2, 3, 4))
def _ar1_paths(process, key, num_rounds, num_devices, stationary_start):
  dtype = jnp.zeros(()).dtype
  n, d = num_devices, process.estimate_delay
  k0, kw, ke = jax.random.split(key, 3)
  if stationary_start:
    h0 = _cn(k0, (n,), dtype)
  else:
    h0 = jax.lax.complex(jnp.ones((n,), dtype), jnp.zeros((n,), dtype))
  rho = jnp.asarray(process.rho, dtype)
  innov = jnp.asarray(math.sqrt(1.0 - process.rho**2), dtype)

  def step(h, w):
    nxt = rho * h + innov * w
    return nxt, nxt

  w = _cn(kw, (num_rounds + d - 1, n), dtype)
  _, rest = jax.lax.scan(step, h0, w)
  chain = jnp.concatenate([h0[None], rest])  # rounds -d .. R-1
  return _estimate(process, chain, ke, num_rounds)


@functools.partial(jax.jit, static_argnums=(0, 3, 4))
def _clarke_paths(process, key, factor, num_rounds, num_devices):
  dtype = jnp.zeros(()).dtype
  kz, ke = jax.random.split(key)
  a = factor.astype(dtype)
  z = _cn(kz, (a.shape[1], num_devices), dtype)
  dot = functools.partial(jnp.matmul, precision=jax.lax.Precision.HIGHEST)
  chain = jax.lax.complex(dot(a, z.real), dot(a, z.imag))  # rounds -d..R-1
  return _estimate(process, chain, ke, num_rounds)


def fading_paths(
  process: ChannelProcess,
  key: PRNGKey,
  num_rounds: int,
  num_devices: int,
  stationary_start: bool = True,
) -> Tuple[Array, Array]:
  """(h, h_hat), complex [R, N]: the realized small-scale gains and the
  allocator's estimates of them (module docstring), deterministic in key.

  stationary_start=False (the AR(1) chain from h = 1) is refused for
  Clarke's process, which is drawn stationary.
  """
  if not process.clarke_process:
    return _ar1_paths(
      process, key, num_rounds, num_devices, bool(stationary_start)
    )
  if not stationary_start:
    raise InvalidSetting(
      "fading_paths", "stationary_start", False, "True for Clarke's process"
    )
  length = num_rounds + process.estimate_delay
  factor = clarke_factor(float(process.normalized_doppler), length)
  return _clarke_paths(process, key, factor, num_rounds, num_devices)


def _power(h: Array) -> Array:
  return jnp.square(h.real) + jnp.square(h.imag)


def trajectory(
  process: ChannelProcess,
  large_scale_gain: ArrayLike,
  key: PRNGKey,
  num_rounds: int,
  stationary_start: bool = True,
) -> Tuple[Array, Array]:
  """(planned_gain, realized_gain), each [R, N], for R rounds of N devices.

  planned = G |h_hat|^2 10^(-backoff_db / 10), realized = G |h|^2 (module
  docstring); G = `large_scale_gain` [N]. Deterministic in key; jitted.
  """
  g = jnp.asarray(large_scale_gain)
  if g.ndim != 1:
    raise ValueError(f"large_scale_gain must be [N]; got shape {g.shape}")
  if not isinstance(num_rounds, (int, np.integer)) or num_rounds < 1:
    raise InvalidSetting("trajectory", "num_rounds", num_rounds, ">= 1")
  # The back-off only scales: one compile of the paths serves every one.
  paths = dataclasses.replace(process, backoff_db=0.0)
  h, h_hat = fading_paths(
    paths, key, int(num_rounds), g.shape[0], stationary_start
  )
  planned = g * _power(h_hat) * jnp.asarray(process.backoff, g.dtype)
  return planned, g * _power(h)


def devices_at_round(
  devices: Devices, planned: Array, realized: Array, r
) -> Devices:
  """`devices` in round r: gain = planned[r], realized_gain = realized[r]."""
  return devices.replace(gain=planned[r], realized_gain=realized[r])


@flax.struct.dataclass
class Delivery:
  """How each planned upload fares on the realized channel (Allocation shape)."""

  delivered: Array  # bool: through by the deadline (or the plan holds)
  e_comm_j: Array  # communication energy actually spent
  latency_s: Array  # t_comp + realized upload time (> T when missed)


def delivery(
  alloc: Allocation,
  devices: Devices,
  payload_bits: ArrayLike,
  deadline_s: ArrayLike,
) -> Delivery:
  """Judges allocations ([P, N] or [N] fields) on `devices.realized_gain`
  (module docstring); realized_gain None means the planned gain."""
  g_plan = devices.gain
  g_real = g_plan if devices.realized_gain is None else devices.realized_gain
  holds = g_real >= g_plan
  p = alloc.power_w
  r = model.rate(p, g_real, devices.bandwidth_hz, devices.noise_psd_w_hz)
  t_up = jnp.asarray(payload_bits, r.dtype) / r
  finish = alloc.t_comp_s + t_up
  T = jnp.asarray(deadline_s, r.dtype)
  spent = p * jnp.minimum(t_up, jnp.maximum(T - alloc.t_comp_s, 0.0))
  return Delivery(
    delivered=holds | (finish <= T),
    e_comm_j=jnp.where(holds, alloc.e_comm_j, spent),
    latency_s=jnp.where(holds, alloc.latency_s, finish),
  )


def judge(
  alloc: Allocation,
  devices: Devices,
  payload_bits: ArrayLike,
  deadline_s: ArrayLike,
) -> Tuple[Array, Array]:
  """(delivered bool, communication energy spent), shaped like `alloc`.

  With realized_gain == gain: all True and exactly `alloc.e_comm_j`.
  """
  out = delivery(alloc, devices, payload_bits, deadline_s)
  return out.delivered, out.e_comm_j
