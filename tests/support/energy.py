"""Shared setup for the energy tests: constants, an x64 context and a
heterogeneous device population built in numpy.

Float64 comparisons run inside `with x64():` so that x64 does not leak into
other test modules.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np

from fedqjax import energy as E

LN2 = math.log(2.0)
FLOPS = 35.0e9  # paper UNet, one image forward + backward
N_DEV = 16  # fuzzed populations: one shape, allocate / naive compile once


def x64():
  if hasattr(jax, "enable_x64"):
    return jax.enable_x64(True)
  from jax.experimental import enable_x64  # older jax

  return enable_x64()


def np_devices(rng, n):
  """Heterogeneous devices built in numpy (no compile): log-uniform gains and bandwidths."""
  dt = jnp.zeros(()).dtype  # float64 inside x64()
  f = lambda v: jnp.asarray(np.broadcast_to(v, (n,)), dt)
  gain = 10.0 ** rng.uniform(-16, -7, n)
  return E.Devices(
    distance_m=f(rng.uniform(10, 500, n)),
    shadowing_db=f(0.0),
    gain=f(gain),
    large_scale_gain=f(gain),
    bandwidth_hz=f(10.0 ** rng.uniform(5, 7, n)),
    p_max_w=f(0.2),
    f_min_hz=f(0.1e9),
    f_max_hz=f(2e9),
    tau=f(1e-28 * rng.uniform(0.5, 1.5, n)),
    flops_per_cycle=f(rng.choice([8.0, 16.0, 32.0], n)),
    eps=f(0.01),
    bit_cap=jnp.full((n,), 32, jnp.int32),
    noise_psd_w_hz=f(10.0 ** (-20.4)),
  )


# The energy sweep's figures at its small preset (heat map included).
SWEEP_FIGURES = (
  "energy_vs_axes",
  "allocations_vs_axes",
  "feasible_vs_axes",
  "energy_split",
  "energy_cdf",
  "bits_histogram",
  "heatmap",
)
