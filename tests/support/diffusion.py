"""Shared setup for the diffusion tests: a 16x16 two-level U-Net, a short
noise schedule, toy images and analytic denoisers.

Compiling a U-Net is slow on a small CPU, so the tests use the SMALL model,
compile it with `xla_backend_optimization_level=0` (FAST: about 3x faster to
compile, similar step time) and initialize with an 'rbg' key (XLA compiles
threefry initializers slowly); the shared training run is the session
fixture `trained` (tests/fedqjax/conftest.py).
"""

import jax
import jax.numpy as jnp
import numpy as np

from fedqjax import diffusion as dm

FAST = {"xla_backend_optimization_level": 0}
SMALL = dm.UNetConfig(
  ch=16,
  ch_mult=(1, 2),
  num_res_blocks=1,
  attn_resolutions=(8,),
  num_groups=8,
  dropout=0.0,
)
RES = 16
T_SMALL = 100
# Ho et al.'s betas scaled by 1000/T so that alpha_bar_T ~ 4e-5 as for T = 1000.
SCHED = dm.linear_schedule(T=T_SMALL, beta_start=1e-3, beta_end=0.2)


def patterns(n, res, seed=0):
  """Stripes, checkerboards and discs in {-1, 1}: [n, res, res, 1]."""
  rng = np.random.default_rng(seed)
  yy, xx = np.mgrid[:res, :res]
  out = []
  for i in range(n):
    p = rng.integers(0, 4)
    im = [
      ((xx + p) // 2) % 2,
      ((yy + p) // 2) % 2,
      (xx // 4 + yy // 4 + p) % 2,
      (xx - res / 2) ** 2 + (yy - res / 2) ** 2 < (3 + p) ** 2,
    ][i % 4]
    out.append(im * 2.0 - 1.0)
  return np.asarray(out, np.float32)[..., None]


def abstract_init(model, shape):
  return jax.eval_shape(
    lambda: model.init(
      {"params": jax.random.key(0)},
      jnp.zeros(shape),
      jnp.zeros(shape[:1], jnp.int32),
      train=False,
    )
  )


def shifted_point_denoiser(point):
  """apply_fn whose eps is exact for data = `point`, scaled by a scalar param."""
  s = SCHED

  def apply_fn(params, x, t, *, train, rngs=None):
    del train, rngs
    bc = lambda v: v.reshape((-1,) + (1,) * (x.ndim - 1))
    return (
      params
      * (x - bc(s.sqrt_alpha_bars[t]) * point)
      / bc(s.sqrt_one_minus_alpha_bars[t])
    )

  return apply_fn
