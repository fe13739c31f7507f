"""Tests for experiments.energy_sweep.sampling: sampling energy per model on
the base scenario's device draws."""

import csv
import types

import numpy as np
import pytest

from experiments.configs import energy_sweep as config_mod
from experiments.energy_sweep import evaluate, models, sampling
from experiments.energy_sweep import settings as settings_lib
from fedqjax.diffusion.flops import sampling_step_flops


def _settings(**base):
  c = config_mod.get_config("small")
  for k, v in base.items():
    setattr(c.base, k, v)
  return settings_lib.parse(c)


def _prepared(*names):
  return types.SimpleNamespace(models={n: models.model_spec(n) for n in names})


def test_rows_by_hand_on_the_base_draws():
  """Energy of every row = images x steps x step FLOPs / FLOPs per cycle x
  tau f^2 on each device of the base scenario's draws (population, with the
  base's f_max), mean / min / max over draws x devices; vs_train_round is
  the sampling's FLOPs over one round's training FLOPs."""
  s = _settings(f_max_hz=1e9, num_devices=7)
  rows = sampling.sampling_rows(
    s, _prepared("100000"), ddim_steps=(50, 10), num_images=3
  )
  assert [r["label"] for r in rows] == ["ddpm1000", "ddim10", "ddim50"]
  r_, n = s.num_seeds, 7
  d, _ = evaluate.population(
    s.devices.energy_config(),
    s.seed,
    np.repeat(np.arange(r_), n),
    np.tile(np.arange(n), r_),
  )
  tau = np.asarray(d.tau, np.float64)
  fpc = np.asarray(d.flops_per_cycle, np.float64)
  flops = 1e5 * sampling.PAPER_STEP_FLOPS / models.PAPER_PARAMS
  train = models.model_spec("100000").flops_per_sample
  for row in rows:
    assert row["devices"] == r_ * n
    assert row["gflops_per_step"] == pytest.approx(flops / 1e9, rel=1e-12)
    cycles = 3 * row["steps"] * flops / fpc
    f = 1e9  # the base's f_max: the reported frequency, named in the row
    e = tau * cycles * f**2
    for st in ("mean", "min", "max"):
      assert row[f"energy_fmax_j_{st}"] == pytest.approx(
        getattr(np, st)(e), rel=1e-5
      )
    assert row["energy_per_image_fmax_j_mean"] == pytest.approx(
      e.mean() / 3, rel=1e-5
    )
    assert row["time_fmax_s_max"] == pytest.approx((cycles / f).max(), rel=1e-5)
    assert row["freq_fmax_hz_mean"] == pytest.approx(f, rel=1e-6)
    # f_min, the model's arbitrary lower bound, is not reported
    assert not any("fmin" in k for k in row)
    ratio = 3 * row["steps"] * flops / (s.samples_per_round * train)
    assert row["vs_train_round"] == pytest.approx(ratio, rel=1e-12)
  # DDPM-1000 is exactly 100x DDIM-10 (the same step FLOPs).
  assert rows[0]["energy_fmax_j_mean"] == pytest.approx(
    100 * rows[1]["energy_fmax_j_mean"], rel=1e-6
  )


def test_preset_models_count_their_unet_and_the_paper_constant():
  """tiny: the U-Net's own step (DDPM and DDIM bodies); paper: the stored
  constant is the lowered count (1e-6); a synthetic model scales it."""
  tiny = sampling.step_flops("tiny", "ddpm")
  assert tiny == sampling_step_flops(
    models.unet_config("tiny"), (28, 28, 1), "ddpm", compiled=False
  )
  assert abs(sampling.step_flops("tiny", "ddim") / tiny - 1) < 1e-5
  assert 3.4e8 < tiny < 3.6e8
  paper = sampling.step_flops("paper", "ddim")
  assert paper == pytest.approx(sampling.PAPER_STEP_FLOPS, rel=1e-6)


def test_write_and_sweep_models(tmp_path):
  """Rows of every model of a prepared sweep, written with COLUMNS."""
  from experiments.energy_sweep import sweep

  s = _settings()
  prep = sweep.prepare(s, log=lambda m: None)
  rows = sampling.sampling_rows(s, prep)
  assert {r["model"] for r in rows} == set(prep.models)
  assert len(rows) == len(prep.models) * (1 + len(sampling.DDIM_STEPS))
  path = sampling.write(rows, str(tmp_path / "w"))
  with open(path) as f:
    table = list(csv.DictReader(f))
  assert tuple(table[0]) == sampling.COLUMNS and len(table) == len(rows)
  assert float(table[0]["energy_fmax_j_mean"]) == pytest.approx(
    rows[0]["energy_fmax_j_mean"]
  )
  assert not any("fmin" in c for c in sampling.COLUMNS)


@pytest.mark.parametrize("steps", [(0,), (1001,)])
def test_bad_ddim_steps_name_the_range(steps):
  with pytest.raises(ValueError, match=r"ddim_steps=.*valid: 1\.\.1000"):
    sampling.sampling_rows(_settings(), _prepared("1000"), ddim_steps=steps)


def test_cycles_regime_prices_c_k_times_the_flops_ratio():
  """With c cycles per training sample (spread 0: c_k = c), a device spends
  c x step FLOPs / training FLOPs cycles per image-step."""
  c = config_mod.get_config("small")
  c.base.cycles_per_sample = 1e6
  c.devices.cycles_spread = 0.0
  s = settings_lib.parse(c)
  row = sampling.sampling_rows(
    s, _prepared("100000"), ddim_steps=(10,), num_images=2
  )[1]
  n = s.base.num_devices
  d, _ = evaluate.population(
    s.devices.energy_config(),
    s.seed,
    np.repeat(np.arange(s.num_seeds), n),
    np.tile(np.arange(n), s.num_seeds),
  )
  flops = 1e5 * sampling.PAPER_STEP_FLOPS / models.PAPER_PARAMS
  train = models.model_spec("100000").flops_per_sample
  f = s.base.f_max_hz
  e = np.asarray(d.tau, np.float64) * 2 * 10 * flops / train * 1e6 * f**2
  assert row["energy_fmax_j_mean"] == pytest.approx(e.mean(), rel=1e-5)
  assert row["energy_fmax_j_max"] == pytest.approx(e.max(), rel=1e-5)
