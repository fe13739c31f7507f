"""Per-device computation and communication energy (arXiv 2403.04430, sec. 3).

Formulas follow Yang et al., "Energy Efficient Federated Learning Over Wireless
Communication Networks", IEEE TWC 2021 (eqs. for t^cmp, E^cmp, the Shannon
rate, t^com and E^com). All functions are pure, elementwise and broadcast over
device arrays; logs and `expm1`/`log1p` keep them finite in float32 for channel
gains from 1e-20 to 1 and payloads from 1 bit to ~1e9 bits.
"""

from __future__ import annotations

import math

import jax.numpy as jnp

from fedqjax.typing import Array, ArrayLike

LN2 = math.log(2.0)


def cycles_per_sample(
  flops_per_sample: ArrayLike, flops_per_cycle: ArrayLike
) -> Array:
  """c_k: CPU cycles per training sample = FLOPs per sample / FLOPs per cycle."""
  return jnp.asarray(flops_per_sample) / jnp.asarray(flops_per_cycle)


def comp_energy(
  tau: ArrayLike, cycles: ArrayLike, num_samples: ArrayLike, freq_hz: ArrayLike
) -> Array:
  """E^cmp = tau c n f^2 (Yang et al. 2021, eq. 1; tau is the switched capacitance)."""
  return jnp.asarray(tau) * cycles * num_samples * jnp.square(freq_hz)


def snr(
  power_w: ArrayLike,
  gain: ArrayLike,
  bandwidth_hz: ArrayLike,
  noise_psd_w_hz: ArrayLike,
) -> Array:
  """Received SNR p h / (N0 W)."""
  return (
    jnp.asarray(power_w) * gain / (jnp.asarray(noise_psd_w_hz) * bandwidth_hz)
  )


def rate(
  power_w: ArrayLike,
  gain: ArrayLike,
  bandwidth_hz: ArrayLike,
  noise_psd_w_hz: ArrayLike,
) -> Array:
  """Shannon rate W log2(1 + p h / (N0 W)) in bit/s (Yang et al. 2021, eq. 3).

  `log1p` keeps the low-SNR regime (h ~ 1e-20) exact instead of rounding to 0.
  """
  return (
    jnp.asarray(bandwidth_hz)
    * jnp.log1p(snr(power_w, gain, bandwidth_hz, noise_psd_w_hz))
    / LN2
  )


def upload_time(
  payload_bits: ArrayLike,
  power_w: ArrayLike,
  gain: ArrayLike,
  bandwidth_hz: ArrayLike,
  noise_psd_w_hz: ArrayLike,
) -> Array:
  """t^com = S / r(p)."""
  return jnp.asarray(payload_bits) / rate(
    power_w, gain, bandwidth_hz, noise_psd_w_hz
  )


def power_of_time(
  t_s: ArrayLike,
  payload_bits: ArrayLike,
  gain: ArrayLike,
  bandwidth_hz: ArrayLike,
  noise_psd_w_hz: ArrayLike,
) -> Array:
  """Power that uploads S bits in exactly t seconds: (N0 W / h)(2^{S/(tW)} - 1)."""
  x = jnp.asarray(payload_bits) * LN2 / (jnp.asarray(t_s) * bandwidth_hz)
  return jnp.asarray(noise_psd_w_hz) * bandwidth_hz / gain * jnp.expm1(x)


def t_min(
  payload_bits: ArrayLike,
  gain: ArrayLike,
  bandwidth_hz: ArrayLike,
  p_max_w: ArrayLike,
  noise_psd_w_hz: ArrayLike,
) -> Array:
  """Shortest upload time S / r(p_max)."""
  return upload_time(payload_bits, p_max_w, gain, bandwidth_hz, noise_psd_w_hz)
