"""Tests for fedqjax.energy.devices: EnergyConfig, sampled populations and
fading, validation of populations; property-based fuzzing (hypothesis,
derandomized; `pytest -s` prints the counts) of invalid populations and
configs at the end."""

import dataclasses
import functools
import hashlib
import math

import chex
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedqjax import energy as E
from tests.support import DEFAULT_XLA
from tests.support.energy import N_DEV
from tests.support.fuzz import SETTINGS, Counts


def test_sample_devices_and_fading():
  cfg = E.EnergyConfig(
    num_devices=20000, rayleigh_fading=True, bit_caps=(4, 8, 32)
  )
  d = E.sample_devices(cfg, jax.random.key(9))
  chex.assert_shape(jax.tree.leaves(d), (20000,))
  E.validate_devices(d)
  dist = np.asarray(d.distance_m)
  assert dist.min() >= cfg.min_distance_m and dist.max() <= cfg.radius_m
  np.testing.assert_allclose(np.asarray(d.bandwidth_hz), 20e6 / 20000)
  assert set(np.unique(np.asarray(d.bit_cap))) == {4, 8, 32}
  tau = np.asarray(d.tau)
  assert tau.min() >= 0.5e-28 and tau.max() <= 1.5e-28
  d2 = E.redraw_fading(d, jax.random.key(10))
  fading = np.asarray(d2.gain, np.float64) / np.asarray(
    d2.large_scale_gain, np.float64
  )
  # Exp(1): mean 1, std 1; |mean - 1| > 6 / sqrt(n) has probability < 2e-9 (CLT).
  assert abs(fading.mean() - 1.0) < 6.0 / math.sqrt(fading.size)
  assert not np.allclose(np.asarray(d2.gain), np.asarray(d.gain))
  assert E.redraw_fading(d, jax.random.key(10), enabled=False) is d
  # Without fading the gain is the large-scale gain, which follows the path loss.
  d0 = E.sample_devices(
    E.EnergyConfig(num_devices=100, shadowing_db=0.0), jax.random.key(1)
  )
  np.testing.assert_allclose(
    np.asarray(d0.gain), np.asarray(d0.large_scale_gain)
  )
  np.testing.assert_allclose(
    -10 * np.log10(np.asarray(d0.gain, np.float64)),
    128.1 + 37.6 * np.log10(np.asarray(d0.distance_m, np.float64) / 1000),
    rtol=1e-5,
  )


def test_config_from_dict():
  cd = ml_collections.ConfigDict(
    dict(num_devices=7, eps_choices=[0.01, 0.1], rayleigh_fading=True)
  )
  cfg = E.EnergyConfig.from_dict(cd)
  assert (
    cfg.num_devices == 7
    and cfg.eps_choices == (0.01, 0.1)
    and cfg.rayleigh_fading
  )
  hash(cfg)
  assert E.EnergyConfig.from_dict({"num_devices": 3}).num_devices == 3
  with pytest.raises(ValueError, match="unknown"):
    E.EnergyConfig.from_dict({"num_device": 3})


@pytest.mark.parametrize(
  "field,value",
  [
    ("total_bandwidth_hz", 0.0),
    ("total_bandwidth_hz", -1.0),
    ("p_max_w", 0.0),
    ("p_max_w", -0.2),
    ("f_min_hz", 3e9),
    ("f_min_hz", -1.0),
    ("f_max_hz", 0.0),
    ("radius_m", 0.0),
    ("tau_mean", float("nan")),
    ("shadowing_db", -1.0),
    ("num_devices", 0),
    ("eps_choices", ()),
    ("bit_caps", (0,)),
    ("tau_spread", 1.5),
    ("noise_psd_dbm_hz", float("inf")),
    ("cycles_per_sample", 0.0),
    ("cycles_per_sample", float("nan")),
    ("cycles_spread", 1.0),
    ("cycles_spread", -0.1),
    ("cell_shape", "hexagon"),
  ],
)
def test_config_rejects_bad_values(field, value):
  with pytest.raises(ValueError, match=field):
    E.EnergyConfig(**{field: value})


# ----------------------------------------------------------------------------
# Regimes of the draw: the default is bitwise what it was; cycles per sample;
# the square cell.

_FIELDS = (
  "distance_m",
  "shadowing_db",
  "gain",
  "large_scale_gain",
  "bandwidth_hz",
  "p_max_w",
  "f_min_hz",
  "f_max_hz",
  "tau",
  "flops_per_cycle",
  "eps",
  "bit_cap",
  "noise_psd_w_hz",
)


def _sha(d) -> str:
  m = hashlib.sha256()
  for name in _FIELDS:
    m.update(name.encode())
    m.update(np.asarray(getattr(d, name)).tobytes())
  return m.hexdigest()


def test_default_draws_bitwise_unchanged():
  # sha256 of the arrays as the code drew them before cycles_per_sample and
  # cell_shape existed (float32, jax_enable_x64 off), compiled at XLA's
  # default level as users compile them.
  assert not jax.config.jax_enable_x64
  jit = functools.partial(
    jax.jit, compiler_options=DEFAULT_XLA, static_argnums=0
  )
  d = jit(E.sample_devices)(E.EnergyConfig(), jax.random.key(0))
  assert _sha(d) == (
    "31502ebe497f6b7b7d46bb58d3eb0b6409dc060e9c42ba90fedd69b76e3fc05b"
  )
  keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.key(1), i))(
    np.arange(5)
  )
  d = jit(E.sample_devices_from_keys)(
    E.EnergyConfig(rayleigh_fading=True), keys
  )
  assert _sha(d) == (
    "58e875892808ac0c4246bb04bd94d1321ac5e2ce92c7ac50e00d41b701b21d4f"
  )


def test_cycles_per_sample_draw():
  n, c, s, flops = 20000, 2e4, 0.5, 35.0e9
  cfg = E.EnergyConfig(num_devices=n, cycles_per_sample=c, cycles_spread=s)
  key = jax.random.key(3)
  d = E.sample_devices(cfg, key, flops_per_sample=flops)
  c_k = flops / np.asarray(d.flops_per_cycle, np.float64)
  assert c_k.min() >= c * (1 - s) * (1 - 1e-6)
  assert c_k.max() <= c * (1 + s) * (1 + 1e-6)
  # U[c/2, 3c/2]: std c / sqrt(12); |mean - c| > 6 std / sqrt(n) has
  # probability < 2e-9 (CLT).
  assert abs(c_k.mean() - c) < 6 * c / math.sqrt(12 * n)
  assert c_k.std() == pytest.approx(c / math.sqrt(12), rel=0.03)
  # The factor is fold_in(key, 7)'s uniform; every other field is unchanged.
  u = np.asarray(
    jax.random.uniform(jax.random.fold_in(key, 7), (n,), minval=0.5, maxval=1.5)
  )
  np.testing.assert_array_equal(E.cycles_factor(key, s, (n,)), u)
  np.testing.assert_allclose(c_k, c * u, rtol=2e-7)
  d0 = E.sample_devices(dataclasses.replace(cfg, cycles_per_sample=None), key)
  for name in set(_FIELDS) - {"flops_per_cycle"}:
    np.testing.assert_array_equal(getattr(d, name), getattr(d0, name))
  # What the allocator prices: cycles = flops / flops_per_cycle = c_k.
  cyc = np.asarray(E.cycles_per_sample(flops, d.flops_per_cycle), np.float64)
  np.testing.assert_allclose(cyc, c * u, rtol=2e-7)
  # Per device keys: the same factor, per-device FLOPs.
  keys = jax.random.split(jax.random.key(4), 8)
  f = np.linspace(1e9, 8e9, 8)
  dk = E.sample_devices_from_keys(cfg, keys, flops_per_sample=f)
  u = np.asarray(jax.vmap(lambda k: E.cycles_factor(k, s))(keys))
  np.testing.assert_allclose(
    f / np.asarray(dk.flops_per_cycle), c * u, rtol=2e-7
  )
  one = E.EnergyConfig(cycles_per_sample=c, cycles_spread=0.0)
  d1 = E.sample_devices(one, key, flops_per_sample=flops)
  np.testing.assert_allclose(flops / np.asarray(d1.flops_per_cycle), c)


def test_cycles_per_sample_needs_flops():
  cfg = E.EnergyConfig(cycles_per_sample=2e4)
  with pytest.raises(ValueError, match="flops_per_sample"):
    E.sample_devices(cfg, jax.random.key(0))
  with pytest.raises(ValueError, match="flops_per_sample"):
    E.sample_devices_from_keys(cfg, jax.random.split(jax.random.key(0), 2))


def test_square_cell():
  n, r, r0 = 40000, 250.0, 10.0
  cfg = E.EnergyConfig(
    num_devices=n, cell_shape="square", radius_m=r, min_distance_m=r0
  )
  key = jax.random.key(5)
  d = np.asarray(E.sample_devices(cfg, key).distance_m, np.float64)
  assert d.min() >= r0 and d.max() <= r * math.sqrt(2) * (1 + 1e-6)
  assert d.max() > r * 1.3  # corners are reached (a disc would stop at r)
  # The coordinates: uniform in [-r, r]^2 from the distance key. Two
  # programs may round a coordinate differently by an ulp at r (a fused
  # multiply-add or not: 1.5e-5 m), which moves a distance by as much.
  k_d = jax.random.split(key, 7)[0]
  xy = np.asarray(jax.random.uniform(k_d, (n, 2), minval=-r, maxval=r))
  np.testing.assert_allclose(
    d,
    np.maximum(np.hypot(xy[:, 0], xy[:, 1]), r0),
    rtol=1e-6,
    atol=2 * np.spacing(np.float32(r)),
  )
  # Uniform area: P(d <= r) = pi / 4; binomial std sqrt(p (1 - p) / n),
  # a 6-sigma band fails with probability < 2e-9.
  p = math.pi / 4
  assert abs(np.mean(d <= r) - p) < 6 * math.sqrt(p * (1 - p) / n)
  # P(d <= r / 2) = pi / 16.
  p = math.pi / 16
  assert abs(np.mean(d <= r / 2) - p) < 6 * math.sqrt(p * (1 - p) / n)


# ----------------------------------------------------------------------------
# Property-based fuzzing (hypothesis): invalid populations and configs.


COUNTS = Counts()
_count = COUNTS.add


def _valid_population():
  rng = np.random.default_rng(0)
  a = lambda v: jnp.asarray(np.broadcast_to(v, (N_DEV,)), jnp.float32)
  g = 10.0 ** rng.uniform(-12, -7, N_DEV)
  return E.Devices(
    distance_m=a(100.0),
    shadowing_db=a(0.0),
    gain=a(g),
    large_scale_gain=a(g),
    bandwidth_hz=a(1e6),
    p_max_w=a(0.2),
    f_min_hz=a(1e8),
    f_max_hz=a(2e9),
    tau=a(1e-28),
    flops_per_cycle=a(8.0),
    eps=a(0.01),
    bit_cap=jnp.full((N_DEV,), 32, jnp.int32),
    noise_psd_w_hz=a(4e-21),
  )


_POSITIVE_FIELDS = (
  "gain",
  "large_scale_gain",
  "bandwidth_hz",
  "p_max_w",
  "f_min_hz",
  "f_max_hz",
  "tau",
  "flops_per_cycle",
  "eps",
  "noise_psd_w_hz",
  "distance_m",
)


@settings(max_examples=60, **SETTINGS)
@given(
  st.sampled_from(_POSITIVE_FIELDS + ("shadowing_db", "f_order", "bit_cap")),
  st.integers(0, N_DEV - 1),
  st.sampled_from(
    [float("nan"), float("inf"), -float("inf"), -1.0, 0.0, -1e-30]
  ),
)
def test_invalid_populations_raise_naming_field(field, index, bad):
  d = _valid_population()
  if field == "f_order":  # f_min > f_max at one device
    fmin = np.asarray(d.f_min_hz).copy()
    fmin[index] = 3e9
    d = d.replace(f_min_hz=jnp.asarray(fmin))
    expect = "f_min_hz"
  elif field == "bit_cap":
    cap = np.asarray(d.bit_cap).copy()
    cap[index] = 0 if bad <= 0 or not math.isfinite(bad) else 33
    d = d.replace(bit_cap=jnp.asarray(cap))
    expect = "bit_cap"
  else:
    if field == "shadowing_db" and math.isfinite(bad):
      bad = float("nan")  # any finite shadowing is valid
    v = np.asarray(getattr(d, field)).copy()
    v[index] = bad
    d = d.replace(**{field: jnp.asarray(v)})
    expect = field
  _count("populations_invalid")
  with pytest.raises(ValueError, match=expect):
    E.validate_devices(d)
  with pytest.raises(ValueError, match=expect):
    E.allocate(d, 1e6, 16.0, 1.0, 1e9)
  with pytest.raises(ValueError, match=expect):
    E.naive_allocation(d, 1e6, 16.0, 1.0, 1e9)


_ECFG_BAD = {
  "num_devices": [0, -1, 1.5, None],
  "radius_m": [0.0, -1.0, float("nan"), float("inf"), 5.0],
  "total_bandwidth_hz": [0.0, -20e6, float("nan"), float("inf")],
  "p_max_w": [0.0, -0.2, float("nan")],
  "f_min_hz": [0.0, -1.0, float("nan"), 3e9],  # 3e9 > f_max_hz
  "f_max_hz": [0.0, float("inf"), 1e7],  # 1e7 < f_min_hz
  "tau_mean": [0.0, -1e-28, float("nan")],
  "tau_spread": [1.0, -0.1, float("nan")],
  "shadowing_db": [-1.0, float("nan")],
  "noise_psd_dbm_hz": [float("nan"), float("inf")],
  "bandwidth_shares": [0, -3, 2.5],
  "flops_per_cycle_choices": [(), (0.0,), (8.0, float("nan")), (-1.0,)],
  "eps_choices": [(), (0.0,), (float("inf"),)],
  "bit_caps": [(), (0,), (33,), (4.5,)],
  "cycles_per_sample": [0.0, -1.0, float("inf"), "2e4"],
  "cycles_spread": [1.0, -0.1, float("nan")],
  "cell_shape": ["", "Square", None],
}


@settings(max_examples=60, **SETTINGS)
@given(
  st.sampled_from(sorted(_ECFG_BAD)).flatmap(
    lambda k: st.tuples(st.just(k), st.sampled_from(_ECFG_BAD[k]))
  )
)
def test_energy_config_rejects_invalid(kv):
  field, value = kv
  _count("energy_configs_invalid")
  with pytest.raises(ValueError) as ei:
    E.EnergyConfig(**{field: value})
  # radius_m below min_distance_m is reported on min_distance_m (with radius_m).
  assert field in str(ei.value), str(ei.value)


def test_print_counts():
  """Runs last in this module: prints and checks how much was fuzzed."""
  print("\nfuzz counts:", dict(sorted(COUNTS.items())))
