"""The training sweep's energy regimes and time-varying channel: the keys,
their errors, the channel's statistics through `channels.trajectory`, and
one tiny end-to-end run with both."""

import dataclasses
import math
import os

import jax
import numpy as np
import pytest
import scipy.special

from experiments.fl_sweep import build, channels, settings, train
from fedqjax import energy
from fedqjax.energy import regimes
from tests.support import tiny_config
from tests.support.tensorboard import event_tags


def _config(**overrides):
  return tiny_config(**overrides)


def _parse(**overrides):
  return settings.parse(_config(**overrides))


@pytest.mark.parametrize("name", ["yang2021", "yang2021_code"])
def test_yang2021_devices_take_the_regime_values_but_keep_n(name):
  s = _parse(**{"energy.regime": name})
  cfg = s.energy.devices(4, 3)
  for field, value in regimes.REGIMES[name].energy.items():
    if field != "num_devices":  # N is the federation's (fed.num_clients)
      assert getattr(cfg, field) == value, field
  assert cfg.num_devices == 4 and cfg.bandwidth_shares == 3
  assert s.energy.samples_per_step == 500
  assert _parse().energy.samples_per_step is None  # flops: the batch


def test_spec_prices_the_regimes_samples_per_step():
  s = _parse(**{"energy.regime": "yang2021"})
  spec = build.round_spec(s, s.model.unet(16), object(), 1e6)
  assert spec.samples_per_round == s.fed.local_steps * 500
  d = _parse()
  spec = build.round_spec(d, d.model.unet(16), object(), 1e6)
  assert spec.samples_per_round == d.fed.local_steps * d.fed.batch_size


@pytest.mark.parametrize(
  "overrides, match",
  [
    (
      {"energy.regime": "yang2021", "energy.p_max_w": 0.5},
      r"config\.energy\.p_max_w=0\.5 .*its default 0\.2 "
      r"\(config\.energy\.regime='yang2021' sets it to 0\.01\)",
    ),
    (
      {"energy.regime": "cycles_per_sample"},
      r"config\.energy\.cycles_per_sample=0\.0 .*valid: > 0",
    ),
    (
      {"energy.cycles_per_sample": 1e4},
      r"config\.energy\.cycles_per_sample=10000\.0 .*"
      r"0 unless config\.energy\.regime='cycles_per_sample'",
    ),
    ({"energy.regime": "yang"}, r"config\.energy\.regime='yang' .*flops"),
    ({"channel.rho": 0.9}, r"config\.channel\.rho=0\.9 .*model='static'"),
    (
      {"channel.backoff_db": 3.0},
      r"config\.channel\.backoff_db=3\.0 .*model='static'",
    ),
    (
      {"channel.model": "gauss_markov", "channel.rho": 1.5},
      r"config\.channel\.rho=1\.5 .*\[0, 1\]",
    ),
  ],
)
def test_bad_regime_and_channel_values_name_the_key(overrides, match):
  with pytest.raises(ValueError, match=match):
    _parse(**overrides)


def test_cycles_per_sample_regime_draws_the_given_cycles():
  s = _parse(
    **{"energy.regime": "cycles_per_sample", "energy.cycles_per_sample": 1e5}
  )
  cfg = s.energy.devices(200, 10)
  flops = 3e8
  d = energy.sample_devices(cfg, jax.random.key(0), flops_per_sample=flops)
  c = flops / np.asarray(d.flops_per_cycle, np.float64)
  assert np.all((c >= 0.5e5 * (1 - 1e-6)) & (c <= 1.5e5 * (1 + 1e-6)))


def test_miss_target_sets_the_closed_form_backoff():
  from fedqjax.energy import channel_margin

  s = _parse(
    **{
      "channel.model": "gauss_markov",
      "channel.rho": 0.0,
      "channel.estimate_noise": 0.1,
      "channel.miss_target": 0.05,
    }
  )
  p = channels.process_of(s, deadline_s=1.0)
  assert p.backoff_db > 0
  np.testing.assert_allclose(
    channel_margin.kkt_miss_probability(p), 0.05, rtol=1e-9
  )
  with pytest.raises(ValueError, match=r"config\.channel\.backoff_db=3\.0"):
    _parse(
      **{
        "channel.model": "gauss_markov",
        "channel.miss_target": 0.05,
        "channel.backoff_db": 3.0,
      }
    )


def test_static_channel_gives_the_devices_unchanged():
  s = _parse()
  d = object()
  assert channels.trajectory(s, d, None, 1.0) is None
  assert channels.round_devices(d, None, 1) is d


def test_jakes_doppler_sets_rho_from_the_deadline():
  s = _parse(**{"channel.model": "gauss_markov", "channel.doppler_hz": 5.0})
  p = channels.process_of(s, deadline_s=0.01)
  # J0(2 pi 5 Hz 0.01 s) = J0(pi / 10) = 1 - x^2/4 + x^4/64 - ... = 0.97547777
  np.testing.assert_allclose(p.rho, 0.97547777, rtol=1e-7)
  assert p.clarke_process and p.normalized_doppler == 5.0 * 0.01
  q = dataclasses.replace(s.channel, doppler_hz=0.0, rho=0.3)
  p = channels.process_of(dataclasses.replace(s, channel=q), 1.0)
  assert p.rho == 0.3 and not p.clarke_process


def test_a_clarke_run_longer_than_its_factor_fails_at_parse():
  """Clarke's process is drawn from an O(n^3) factor over rounds + delay;
  a longer run is a one-line error at parse time, not in the build."""
  keys = {"channel.model": "gauss_markov", "channel.doppler_hz": 5.0}
  with pytest.raises(ValueError, match=r"config\.fed\.rounds=4096 is invalid"):
    _parse(**keys, **{"fed.rounds": 4096, "channel.estimate_delay": 1})
  _parse(**keys, **{"fed.rounds": 4095, "channel.estimate_delay": 1})
  _parse(
    **{"channel.model": "gauss_markov", "channel.rho": 0.9},
    **{"fed.rounds": 5000},
  )


Z7 = 5.33  # two-sided normal quantile for failure probability 1e-7


def _devices(n=2000):
  """The library's default device population, n devices."""
  return energy.sample_devices(
    energy.EnergyConfig(num_devices=n), jax.random.PRNGKey(30)
  )


def _device_mean(frac):
  """Mean and standard error of per-device fractions [N]: devices are
  independent, the rounds of one device are not (at rho = 0.999 a device's
  100 rounds are nearly one draw), so the device is the unit."""
  return frac.mean(), frac.std(ddof=1) / math.sqrt(frac.size)


@pytest.mark.parametrize("rho", [0.9, 0.99, 0.999])
def test_time_varying_channel_starts_stationary_and_meets_the_target(rho):
  """Default devices (2000), 100 rounds, a one-round-old estimate, 5%
  miss target: the fraction of device-rounds whose realized gain is below
  the planned one is 5% (each device-round's pair (h_r, h_{r-1}) is the
  stationary pair the margin assumes), and |h|^2 < 0.1 in Rayleigh's
  1 - exp(-0.1) = 9.52% of them. Each within z = 5.33 standard errors of
  the mean of 2000 independent per-device fractions (normal approximation:
  failure 1e-7 each, 2e-7 for the test). From h = 1 the misses were 5.0%,
  4.1%, 1.05% and the deep fades 9.3%, 6.9%, 0.3%."""
  s = _parse(
    **{
      "channel.model": "gauss_markov",
      "channel.rho": rho,
      "channel.estimate_delay": 1,
      "channel.miss_target": 0.05,
      "fed.rounds": 100,
    }
  )
  dev = _devices()
  planned, realized = channels.trajectory(s, dev, jax.random.PRNGKey(31), 1.0)
  assert planned.shape == realized.shape == (100, 2000)
  m, se = _device_mean((realized < planned).mean(0))
  assert abs(m - 0.05) <= Z7 * se, (m, se)
  fade = realized / np.asarray(dev.large_scale_gain)[None] < 0.1
  m, se = _device_mean(fade.mean(0))
  assert abs(m - (1 - math.exp(-0.1))) <= Z7 * se, (m, se)


@pytest.mark.parametrize("x, d", [(0.2, 5), (0.5, 2)])
def test_doppler_margin_holds_on_a_clarke_channel(x, d):
  """doppler_hz with a 1 s deadline, 2 pi f_D T = x, estimate d rounds
  old, 5% target: the margin is Clarke's (kappa = J0(d x)^2 = J0(1)^2,
  9.52 dB; J0(x)^(2d) gave 5.2 and 7.5 dB). Checked by numpy: 4e5
  independent stationary pairs (h, h_{-d}) of correlation J0(d x) miss at
  5% within Hoeffding's 0.0052 (failure 1e-9; the old margins missed
  14.8% and 8.2%). Through `channels.trajectory` (2000 devices x 100
  rounds): 5% within z = 5.33 standard errors of the mean of the
  per-device fractions (normal approximation, failure 1e-7)."""
  s = _parse(
    **{
      "channel.model": "gauss_markov",
      "channel.doppler_hz": x / (2 * math.pi),
      "channel.estimate_delay": d,
      "channel.miss_target": 0.05,
      "fed.rounds": 100,
    }
  )
  p = channels.process_of(s, deadline_s=1.0)
  np.testing.assert_allclose(p.backoff_db, 9.5212, atol=1e-4)
  rng = np.random.default_rng(32)
  m = 400_000
  cn = lambda: (rng.standard_normal(m) + 1j * rng.standard_normal(m)) / 2**0.5
  c = scipy.special.j0(d * x)  # Clarke's lag-d correlation
  h = cn()
  old = c * h + math.sqrt(1 - c * c) * cn()
  rate = np.mean(np.abs(h) ** 2 < p.backoff * np.abs(old) ** 2)
  assert abs(rate - 0.05) <= math.sqrt(math.log(2 / 1e-9) / (2 * m)), rate
  dev = _devices()
  planned, realized = channels.trajectory(s, dev, jax.random.PRNGKey(33), 1.0)
  mean, se = _device_mean((realized < planned).mean(0))
  assert abs(mean - 0.05) <= Z7 * se, (mean, se)


@pytest.fixture(scope="module")
def channel_run(tmp_path_factory):
  """yang2021 devices, a fast-changing channel known one round late."""
  workdir = str(tmp_path_factory.mktemp("channel"))
  c = _config(
    **{
      "sweep.schemes": ("ondemand",),
      "energy.regime": "yang2021",
      "channel.model": "gauss_markov",
      "channel.rho": 0.5,
      "channel.estimate_delay": 1,
      "fed.rounds": 4,
      "eval.num_samples": 2,
      "eval.grid": 2,
      "figures": False,
    }
  )
  return workdir, train.train_and_evaluate(c, workdir)


def test_channel_run_reports_misses_waste_and_comp_share(channel_run):
  workdir, results = channel_run
  rows = {r["allocation"]: r for r in results["rows"]}
  kkt = rows["kkt"]
  # 3 clients x 4 rounds, a one-round-old estimate at rho = 0.5: a miss
  # needs the channel to fall below its estimate (probability ~ 1/2 per
  # client-round for kkt, whose plan uses the whole deadline), so 0 misses
  # in 12 client-rounds has probability ~ 2^-12.
  assert 0 < kkt["deadline_misses"] <= 12
  assert kkt["energy_wasted_j"] > 0
  assert kkt["energy_wasted_j"] <= kkt["total_energy_j"]
  # comp_share is the row's own split (this tiny U-Net uploads ~10^4
  # parameters, so even the literature regime is computation-bound here:
  # tests/fedqjax/energy/test_regimes.py checks the 35.7M-parameter case).
  for r in rows.values():
    share = r["comp_energy_j"] / (r["comp_energy_j"] + r["comm_energy_j"])
    np.testing.assert_allclose(r["comp_share"], share, rtol=1e-6)
  assert results["meta"]["energy_regime"] == "yang2021"
  assert results["meta"]["channel"] == "gauss_markov"
  assert results["meta"]["channel_rho"] == 0.5
  assert results["meta"]["channel_backoff_db"] == 0.0
  with open(os.path.join(workdir, "results.csv")) as f:
    head, cols = f.readline(), f.readline().strip().split(",")
  assert "regime=yang2021 channel=gauss_markov" in head
  for col in ("comp_share", "deadline_misses", "energy_wasted_j"):
    assert col in cols
  assert not os.path.exists(os.path.join(workdir, "figures"))  # figures=False


def test_channel_run_writes_misses_to_tensorboard(channel_run):
  workdir, _ = channel_run
  tags = event_tags(os.path.join(workdir, "ondemand"))
  for tag in ("comp_share/kkt", "cum_deadline_misses/kkt", "cum_wasted_j/kkt"):
    assert tag in tags, sorted(tags)
