"""Tests for fedqjax.energy (arXiv 2403.04430 sec. 3-4; Yang et al. TWC 2021).

Float64 comparisons run inside a `jax.enable_x64` context so that x64 does not
leak into other test modules.
"""
import contextlib
import math

import chex
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from fedqjax import energy as E
from fedqjax.testing.energy_oracles import scipy_energy as reference_energy
from fedqjax.energy import allocator as A

LN2 = math.log(2.0)
FLOPS = 35.0e9  # paper UNet, one image forward + backward
D_PARAMS = 35.7e6


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
      distance_m=f(rng.uniform(10, 500, n)), shadowing_db=f(0.0), gain=f(gain),
      large_scale_gain=f(gain), bandwidth_hz=f(10.0 ** rng.uniform(5, 7, n)), p_max_w=f(0.2),
      f_min_hz=f(0.1e9), f_max_hz=f(2e9), tau=f(1e-28 * rng.uniform(0.5, 1.5, n)),
      flops_per_cycle=f(rng.choice([8.0, 16.0, 32.0], n)), eps=f(0.01),
      bit_cap=jnp.full((n,), 32, jnp.int32), noise_psd_w_hz=f(10.0 ** (-20.4)))


def random_problem(seed, n=256, infeasible_frac=0.0):
  """Devices, payload bits, sample counts and deadlines (slack log-uniform in [1.0005, 100])."""
  rng = np.random.default_rng(seed)
  d = np_devices(rng, n)
  bits = 10.0 ** rng.uniform(3, math.log10(1.2e9), n)
  samples = rng.integers(1, 200, n).astype(float)
  tmin_round = np.asarray(E.min_round_time(d, bits, samples, FLOPS), np.float64)
  slack = 10.0 ** rng.uniform(math.log10(1.0005), 2, n)
  slack = np.where(rng.uniform(size=n) < infeasible_frac, rng.uniform(0.3, 0.999, n), slack)
  dt = np.asarray(d.gain).dtype
  return d, bits.astype(dt), samples.astype(dt), (tmin_round * slack).astype(dt)


def scipy_energy(d, i, bits, samples, T):
  """Independent solver: substitute t = T - A/f, bounded 1-D minimization over f."""
  g = lambda name: float(np.asarray(getattr(d, name))[i])
  tau, h, W, n0, pmax = g("tau"), g("gain"), g("bandwidth_hz"), g("noise_psd_w_hz"), g("p_max_w")
  fmin, fmax = g("f_min_hz"), g("f_max_hz")
  cyc = FLOPS / g("flops_per_cycle") * samples
  return reference_energy(tau, cyc, bits, h, W, n0, pmax, fmin, fmax, T)


def test_matches_scipy_float64():
  with x64():
    n = 256
    d, bits, samples, T = random_problem(0, n, infeasible_frac=0.1)
    al = jax.jit(E.allocate)(d, bits, samples, T, FLOPS)
    energy = np.asarray(al.energy_j)
    feas = np.asarray(al.feasible)
    checked = 0
    for i in range(n):
      ref = scipy_energy(d, i, bits[i], samples[i], T[i])
      assert (ref is not None) == feas[i], i
      if ref is None:
        continue
      checked += 1
      assert energy[i] <= ref * (1 + 1e-6), (i, energy[i], ref)
    assert checked >= 200
    # Constraints.
    lat = np.asarray(al.latency_s)
    assert np.all(lat[feas] <= T[feas] * (1 + 1e-10))
    f = np.asarray(al.freq_hz)
    assert np.all(f >= np.asarray(d.f_min_hz) * (1 - 1e-12))
    assert np.all(f <= np.asarray(d.f_max_hz) * (1 + 1e-12))
    assert np.all(np.asarray(al.power_w) <= np.asarray(d.p_max_w) * (1 + 1e-12))
    tmin = np.asarray(E.t_min(bits, d.gain, d.bandwidth_hz, d.p_max_w, d.noise_psd_w_hz))
    assert np.all(np.asarray(al.t_comm_s) >= tmin * (1 - 1e-10))


def test_kkt_and_active_deadline_float64():
  with x64():
    d, bits, samples, T = random_problem(1)
    al = E.allocate(d, bits, samples, T, FLOPS)
    feas = np.asarray(al.feasible)
    assert feas.all()
    f, t, nu = (np.asarray(v, np.float64) for v in (al.freq_hz, al.t_comm_s, al.nu))
    lat = np.asarray(al.latency_s)
    # Deadline active for every feasible device (E^com strictly decreases in t).
    np.testing.assert_allclose(lat, T, rtol=1e-9)
    tau = np.asarray(d.tau)
    fmin, fmax = np.asarray(d.f_min_hz), np.asarray(d.f_max_hz)
    k = np.asarray(d.noise_psd_w_hz) * np.asarray(d.bandwidth_hz) / np.asarray(d.gain)
    x = bits * LN2 / (t * np.asarray(d.bandwidth_hz))
    tmin = np.asarray(E.t_min(bits, d.gain, d.bandwidth_hz, d.p_max_w, d.noise_psd_w_hz))
    f_int = (f > fmin * (1 + 1e-9)) & (f < fmax * (1 - 1e-9))
    t_int = t > tmin * (1 + 1e-9)
    # d/df: 2 tau A f - nu A / f^2 = 0 when f is interior.
    np.testing.assert_allclose(2 * tau[f_int] * f[f_int] ** 3, nu[f_int], rtol=1e-8)
    # d/dt: dE^com/dt + nu = 0, dE^com/dt = -K (e^x (x - 1) + 1), when t is interior.
    phi = x * np.exp(x) - np.expm1(x)
    ok = t_int & (x > 1e-3)  # the direct phi formula cancels for tiny x
    np.testing.assert_allclose(k[ok] * phi[ok], nu[ok], rtol=1e-6)
    # At f = f_min the f-multiplier is nu - 2 tau f^3 <= 0 (lower bound active).
    at_min = f <= fmin * (1 + 1e-9)
    assert np.all(nu[at_min] <= 2 * tau[at_min] * fmin[at_min] ** 3 * (1 + 1e-8))
    assert np.all(nu >= 0)
    assert f_int.sum() > 50 and t_int.sum() > 50


def test_monotone_in_bits_and_deadline():
  d, bits, samples, T = random_problem(2)
  T = T * 2.0  # keep the larger payload feasible
  e = lambda s, t: np.asarray(E.allocate(d, s, samples, t, FLOPS).energy_j, np.float64)
  e0 = e(bits, T)
  assert np.all(e(bits * 1.5, T) >= e0 * (1 - 1e-5))
  assert np.all(e(bits, T * 1.5) <= e0 * (1 + 1e-5))
  assert np.mean(e(bits * 1.5, T) > e0) > 0.9  # strictly more for most devices
  # The optimizer never loses to f_max / p_max.
  naive = np.asarray(E.naive_allocation(d, bits, samples, T, FLOPS).energy_j)
  assert np.all(e0 <= naive * (1 + 1e-5))


def test_feasible_flag_exact_and_reason_codes():
  d, bits, samples, _ = random_problem(3)
  cyc = E.cycles_per_sample(FLOPS, d.flops_per_cycle) * samples
  tcmp = cyc / d.f_max_hz
  tmin = E.t_min(jnp.asarray(bits, jnp.float32), d.gain, d.bandwidth_hz, d.p_max_w,
                 d.noise_psd_w_hz)
  rng = np.random.default_rng(3)
  # Deadlines on both sides of c n / f_max, and exactly on the boundary.
  T = np.asarray(tcmp + tmin) * rng.choice([0.5, 0.999, 1.0, 1.001, 2.0], 256)
  T = np.where(rng.uniform(size=256) < 0.1, np.asarray(tcmp) * 0.9, T).astype(np.float32)
  expected = np.asarray(tcmp + tmin <= T)
  al = E.allocate(d, bits, samples, T, FLOPS)
  np.testing.assert_array_equal(np.asarray(al.feasible), expected)
  np.testing.assert_array_equal(np.asarray(E.feasible_mask(d, bits, samples, T, FLOPS)), expected)
  np.testing.assert_array_equal(np.asarray(E.naive_allocation(d, bits, samples, T, FLOPS).feasible),
                                expected)
  reason = np.where(expected, 0, np.where(np.asarray(tcmp) >= T, 1, 2))
  np.testing.assert_array_equal(np.asarray(al.reason), reason)
  assert set(reason) == {0, 1, 2}
  # Infeasible devices: finite f_max / p_max numbers.
  bad = ~expected
  np.testing.assert_array_equal(np.asarray(al.freq_hz)[bad], np.asarray(d.f_max_hz)[bad])
  np.testing.assert_array_equal(np.asarray(al.power_w)[bad], np.asarray(d.p_max_w)[bad])
  assert all(np.isfinite(np.asarray(v)).all() for v in jax.tree.leaves(al))


def test_vectorized_equals_per_device_and_vmap():
  d, bits, samples, T = random_problem(4)
  full = E.allocate(d, bits, samples, T, FLOPS)
  for i in range(8):
    one = E.allocate(jax.tree.map(lambda v: v[i:i + 1], d), bits[i:i + 1], samples[i],
                     T[i], FLOPS)
    chex.assert_trees_all_close(one, jax.tree.map(lambda v: v[i:i + 1], full), rtol=1e-5)
  # vmap over a leading batch of populations (e.g. rounds or sweeps).
  batched = jax.vmap(E.allocate, in_axes=(0, 0, None, None, None))(
      jax.tree.map(lambda v: jnp.stack([v, v]), d), jnp.stack([bits, bits]), samples, T, FLOPS)
  chex.assert_trees_all_close(jax.tree.map(lambda v: v[1], batched), full, rtol=1e-6)


class AllocateJitTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_jit_matches_eager(self):
    d, bits, samples, T = random_problem(5)
    ref = E.allocate(d, bits, samples, T, FLOPS)
    got = self.variant(lambda *a: E.allocate(*a, FLOPS))(d, bits, samples, T)
    chex.assert_trees_all_close(got, ref, rtol=1e-5)

  def test_no_retrace_when_values_change(self):
    @jax.jit
    @chex.assert_max_traces(n=1)
    def step(d, bits, samples, T):
      return E.allocate(d, bits, samples, T, FLOPS).energy_j

    chex.clear_trace_counter()
    for seed in range(3):
      d, bits, samples, T = random_problem(10 + seed)
      step(d, jnp.asarray(bits, jnp.float32), jnp.asarray(samples, jnp.float32),
           jnp.asarray(T, jnp.float32)).block_until_ready()


def test_float32_stability_sweep():
  gains = np.logspace(-20, 0, 21)
  payloads = np.concatenate([[1.0, 100.0], 32 * D_PARAMS * np.arange(1, 33) / 32.0 + 64.0])
  g, s = (v.ravel() for v in np.meshgrid(gains, payloads))
  n = g.size
  d = np_devices(np.random.default_rng(6), n).replace(gain=jnp.asarray(g, jnp.float32))
  samples = 16.0
  t_fast = np.asarray(E.min_round_time(d, s, samples, FLOPS), np.float64)
  for T in [t_fast * (1 + 1e-4), t_fast * 1.2, t_fast * 10, np.full(n, 1e6)]:
    T = np.maximum(T, t_fast * (1 + 1e-4)).astype(np.float32)  # all feasible
    al = jax.jit(E.allocate)(d, s, samples, T, FLOPS)
    for name, v in al.__dict__.items():
      assert np.all(np.isfinite(np.asarray(v, np.float64))), name
    assert np.asarray(al.feasible).all()
    assert np.all(np.asarray(al.latency_s) <= T * (1 + 1e-5))
    assert np.all(np.asarray(al.energy_j) > 0)
    naive = np.asarray(E.naive_allocation(d, s, samples, T, FLOPS).energy_j)
    assert np.all(np.asarray(al.energy_j) <= naive * (1 + 1e-4))


def test_float32_agrees_with_float64():
  d, bits, samples, T = random_problem(7)
  e32 = np.asarray(E.allocate(d, bits, samples, T, FLOPS).energy_j, np.float64)
  with x64():
    d64 = jax.tree.map(lambda v: jnp.asarray(np.asarray(v), jnp.float64)
                       if np.asarray(v).dtype == np.float32 else jnp.asarray(np.asarray(v)), d)
    e64 = np.asarray(E.allocate(d64, bits, samples, np.asarray(T, np.float32).astype(np.float64),
                                FLOPS).energy_j)
  np.testing.assert_allclose(e32, e64, rtol=1e-3)


def test_sample_devices_and_fading():
  cfg = E.EnergyConfig(num_devices=20000, rayleigh_fading=True, bit_caps=(4, 8, 32))
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
  fading = np.asarray(d2.gain, np.float64) / np.asarray(d2.large_scale_gain, np.float64)
  # Exp(1): mean 1, std 1; |mean - 1| > 6 / sqrt(n) has probability < 2e-9 (CLT).
  assert abs(fading.mean() - 1.0) < 6.0 / math.sqrt(fading.size)
  assert not np.allclose(np.asarray(d2.gain), np.asarray(d.gain))
  assert E.redraw_fading(d, jax.random.key(10), enabled=False) is d
  # Without fading the gain is the large-scale gain, which follows the path loss.
  d0 = E.sample_devices(E.EnergyConfig(num_devices=100, shadowing_db=0.0), jax.random.key(1))
  np.testing.assert_allclose(np.asarray(d0.gain), np.asarray(d0.large_scale_gain))
  np.testing.assert_allclose(
      -10 * np.log10(np.asarray(d0.gain, np.float64)),
      128.1 + 37.6 * np.log10(np.asarray(d0.distance_m, np.float64) / 1000), rtol=1e-5)


def test_config_from_dict():
  cd = ml_collections.ConfigDict(dict(num_devices=7, eps_choices=[0.01, 0.1],
                                      rayleigh_fading=True))
  cfg = E.EnergyConfig.from_dict(cd)
  assert cfg.num_devices == 7 and cfg.eps_choices == (0.01, 0.1) and cfg.rayleigh_fading
  hash(cfg)
  assert E.EnergyConfig.from_dict({"num_devices": 3}).num_devices == 3
  with pytest.raises(ValueError, match="unknown"):
    E.EnergyConfig.from_dict({"num_device": 3})


@pytest.mark.parametrize("field,value", [
    ("total_bandwidth_hz", 0.0), ("total_bandwidth_hz", -1.0), ("p_max_w", 0.0),
    ("p_max_w", -0.2), ("f_min_hz", 3e9), ("f_min_hz", -1.0), ("f_max_hz", 0.0),
    ("radius_m", 0.0), ("tau_mean", float("nan")), ("shadowing_db", -1.0),
    ("num_devices", 0), ("eps_choices", ()), ("bit_caps", (0,)), ("tau_spread", 1.5),
    ("noise_psd_dbm_hz", float("inf")),
])
def test_config_rejects_bad_values(field, value):
  with pytest.raises(ValueError, match=field):
    E.EnergyConfig(**{field: value})


@pytest.mark.parametrize("field,value", [
    ("gain", float("nan")), ("gain", 0.0), ("bandwidth_hz", 0.0), ("bandwidth_hz", -1.0),
    ("p_max_w", 0.0), ("f_min_hz", 5e9), ("tau", -1.0),
])
def test_allocate_rejects_bad_devices(field, value):
  d = E.sample_devices(E.EnergyConfig(num_devices=4), jax.random.key(0))
  d = d.replace(**{field: getattr(d, field).at[1].set(value)})
  with pytest.raises(ValueError, match=field):
    E.allocate(d, 1e6, 16, 100.0, FLOPS)
  with pytest.raises(ValueError, match=field):
    E.naive_allocation(d, 1e6, 16, 100.0, FLOPS)


@pytest.mark.parametrize("kw", [dict(deadline_s=0.0), dict(deadline_s=-1.0),
                                dict(payload_bits=float("nan")), dict(num_samples=0)])
def test_allocate_rejects_bad_scalars(kw):
  d = E.sample_devices(E.EnergyConfig(num_devices=4), jax.random.key(0))
  args = dict(payload_bits=1e6, num_samples=16, deadline_s=100.0, flops_per_sample=FLOPS)
  args.update(kw)
  with pytest.raises(ValueError, match=next(iter(kw))):
    E.allocate(d, **args)
