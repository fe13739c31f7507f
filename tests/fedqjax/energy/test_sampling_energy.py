"""Tests for fedqjax.energy.sampling_energy: device energy of sampling."""

import jax
import numpy as np
import pytest

from fedqjax.energy.devices import EnergyConfig, sample_devices
from fedqjax.energy.sampling_energy import (
  cost_stats,
  sampling_cycles,
  sampling_energy,
)
from fedqjax.errors import InvalidSetting

FLOPS = 3.19e7  # about the small test U-Net's step


@pytest.fixture(scope="module")
def devices():
  return sample_devices(EnergyConfig(num_devices=6), jax.random.key(3))


def _by_hand(d, k, flops, steps, images, f):
  """tau c n f^2 and c n / f for device k, in float64 on the host."""
  tau = float(d.tau[k])
  cycles = steps * flops / float(d.flops_per_cycle[k]) * images
  return tau * cycles * f**2, cycles / f


@pytest.mark.parametrize("freq", ["f_min", "f_max"])
def test_energy_and_time_by_hand(devices, freq):
  """Every device: steps x per-step FLOPs / FLOPs-per-cycle cycles, at f_max
  (the default) or f_min; float32 round-off only."""
  out = sampling_energy(devices, FLOPS, 50, 100, freq=freq)
  for k in range(devices.num_devices):
    f = float(getattr(devices, f"{freq}_hz")[k])
    e, t = _by_hand(devices, k, FLOPS, 50, 100, f)
    np.testing.assert_allclose(float(out.energy_j[k]), e, rtol=1e-5)
    np.testing.assert_allclose(float(out.time_s[k]), t, rtol=1e-5)
    assert float(out.freq_hz[k]) == pytest.approx(f, rel=1e-6)
  assert bool(np.all(out.feasible))
  default = sampling_energy(devices, FLOPS, 50, 100)
  if freq == "f_max":
    np.testing.assert_array_equal(default.energy_j, out.energy_j)
    np.testing.assert_array_equal(default.freq_hz, devices.f_max_hz)


def test_default_frequency_is_f_max_not_the_f_min_bound(devices):
  """f_min is an arbitrary bound of the device model: neither
  `sampling_energy` nor the reports' `cost_stats` default to it, and the
  reports' keys name the frequency they priced."""
  out = sampling_energy(devices, FLOPS, 10, 2)
  np.testing.assert_array_equal(out.freq_hz, devices.f_max_hz)
  stats = cost_stats(devices, FLOPS, 10, 2)
  assert not any("fmin" in k for k in stats)
  assert stats["freq_fmax_hz_mean"] == pytest.approx(2e9)
  assert stats["energy_fmax_j_mean"] == pytest.approx(
    float(np.mean(np.asarray(out.energy_j, np.float64))), rel=1e-6
  )
  both = cost_stats(devices, FLOPS, 10, 2, freqs=("f_max", "f_min", 0.5))
  assert both["freq_fmin_hz_mean"] == pytest.approx(0.1e9)
  assert "energy_t0.5s_j_mean" in both and "freq_t0.5s_hz_mean" in both


def test_f_min_is_cheaper_and_slower(devices):
  """(f_max / f_min)^2 = 400x the energy, 1/20 the time with the default
  devices."""
  lo = sampling_energy(devices, FLOPS, 20, 10, freq="f_min")
  hi = sampling_energy(devices, FLOPS, 20, 10, freq="f_max")
  np.testing.assert_allclose(hi.energy_j / lo.energy_j, 400.0, rtol=1e-5)
  np.testing.assert_allclose(lo.time_s / hi.time_s, 20.0, rtol=1e-5)


def test_exact_scaling_in_steps_and_images(devices):
  """Linear in steps and in images: 1000 steps = 20 x 50 steps; 100
  images = 100 x 1 image (no fixed cost)."""
  base = sampling_energy(devices, FLOPS, 50, 1, freq="f_max")
  more_steps = sampling_energy(devices, FLOPS, 1000, 1, freq="f_max")
  more_images = sampling_energy(devices, FLOPS, 50, 100, freq="f_max")
  np.testing.assert_allclose(more_steps.energy_j, 20 * base.energy_j, 1e-6)
  np.testing.assert_allclose(more_steps.time_s, 20 * base.time_s, 1e-6)
  np.testing.assert_allclose(more_images.energy_j, 100 * base.energy_j, 1e-6)
  np.testing.assert_allclose(
    sampling_cycles(devices, FLOPS, 50, 100),
    more_images.time_s * devices.f_max_hz,
    rtol=1e-6,
  )


def test_deadline_picks_the_slowest_frequency_that_meets_it(devices):
  """f = clip(c / T_s, f_min, f_max): between the two it finishes exactly at
  T_s; a loose budget runs at f_min; a budget under c / f_max is infeasible
  and priced at f_max."""
  cycles = np.asarray(sampling_cycles(devices, FLOPS, 50, 100), np.float64)
  t_mid = float(np.median(cycles / 1e9))  # f = 1 GHz for the median device
  out = sampling_energy(devices, FLOPS, 50, 100, freq=t_mid)
  f = np.clip(cycles / t_mid, 0.1e9, 2e9)
  np.testing.assert_allclose(out.freq_hz, f, rtol=1e-5)
  for k in range(devices.num_devices):
    e, t = _by_hand(devices, k, FLOPS, 50, 100, f[k])
    np.testing.assert_allclose(float(out.energy_j[k]), e, rtol=1e-5)
    np.testing.assert_allclose(float(out.time_s[k]), t, rtol=1e-5)
  inside = (f > 0.1e9) & (f < 2e9)
  assert inside.any()
  np.testing.assert_allclose(np.asarray(out.time_s)[inside], t_mid, rtol=1e-5)
  np.testing.assert_array_equal(out.feasible, cycles / 2e9 <= t_mid)
  assert not out.feasible.all() and out.feasible.any()
  loose = sampling_energy(devices, FLOPS, 50, 100, freq=1e9)
  lo = sampling_energy(devices, FLOPS, 50, 100, freq="f_min")
  np.testing.assert_array_equal(loose.energy_j, lo.energy_j)
  tight = sampling_energy(devices, FLOPS, 50, 100, freq=1e-9)
  hi = sampling_energy(devices, FLOPS, 50, 100, freq="f_max")
  assert not tight.feasible.any()
  np.testing.assert_allclose(tight.energy_j, hi.energy_j, rtol=1e-6)


@pytest.mark.parametrize(
  "kw, name",
  [
    (dict(flops_per_step=0.0), "flops_per_step"),
    (dict(flops_per_step=float("nan")), "flops_per_step"),
    (dict(flops_per_step="1e9"), "flops_per_step"),
    (dict(steps=0), "steps"),
    (dict(steps=2.5), "steps"),
    (dict(steps=True), "steps"),
    (dict(num_images=0), "num_images"),
    (dict(freq="fast"), "freq"),
    (dict(freq=0.0), "freq"),
    (dict(freq=float("inf")), "freq"),
  ],
)
def test_bad_arguments_name_themselves(devices, kw, name):
  args = dict(flops_per_step=FLOPS, steps=10, num_images=5)
  freq = kw.pop("freq", "f_max")
  args.update(kw)
  with pytest.raises(InvalidSetting, match=rf"sampling_energy\.{name}=") as e:
    sampling_energy(devices, **args, freq=freq)
  assert e.value.field == name and "valid" in str(e.value)
