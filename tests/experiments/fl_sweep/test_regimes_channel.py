"""The training sweep's energy regimes and time-varying channel:
the keys, their errors, and one tiny end-to-end run with both."""

import dataclasses
import os

import jax
import numpy as np
import pytest

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
  q = dataclasses.replace(s.channel, doppler_hz=0.0, rho=0.3)
  assert channels.process_of(dataclasses.replace(s, channel=q), 1.0).rho == 0.3


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


def test_channel_run_writes_misses_to_tensorboard(channel_run):
  workdir, _ = channel_run
  tags = event_tags(os.path.join(workdir, "ondemand"))
  for tag in ("comp_share/kkt", "cum_deadline_misses/kkt", "cum_wasted_j/kkt"):
    assert tag in tags, sorted(tags)
