"""Tests for experiments.fl_sweep.sampling_report: the sampling energy table,
its CSV, TensorBoard scalars and figure."""

import csv
import logging
import types

import jax
import numpy as np
import pytest

from experiments.configs import test as test_config
from experiments.fl_sweep import evaluate
from experiments.fl_sweep import sampling_report as sr
from experiments.fl_sweep import settings as settings_tree
from fedqjax.diffusion.flops import sampling_step_flops
from fedqjax.energy.devices import EnergyConfig, sample_devices


def _config(**eval_keys):
  c = test_config.get_config()  # T = 50, DDIM-3 main sampler
  for k, v in eval_keys.items():
    setattr(c.eval, k, v)
  return settings_tree.parse(c)


def _setup(config):
  return types.SimpleNamespace(
    config=config,
    devices=sample_devices(EnergyConfig(num_devices=5), jax.random.key(1)),
    unet=config.model.unet(16),
    image_shape=(16, 16, 1),
  )


def _summary(name="fp32", **kw):
  return dict(run=name, bits_scheme=name, seed=0, eps_scale=1.0, **kw)


def test_samplers_ddpm_first_ddim_within_T_and_the_main(caplog):
  """DDPM-T, then DDIM by steps: the priced ones <= T and the main eval
  sampler; steps > T are left out with a warning naming the key."""
  with caplog.at_level(logging.WARNING, logger="fedqjax"):
    got = sr.samplers(_config())
  assert got == [("ddpm", 50)] + [("ddim", k) for k in (3, 10, 20, 50)]
  assert "eval.energy_ddim_steps: [100, 200] > diffusion.T=50" in caplog.text
  ddpm_main = _config(sampler="ddpm", energy_ddim_steps=(5,))
  assert sr.samplers(ddpm_main) == [("ddpm", 50), ("ddim", 5)]
  assert sr.is_main(ddpm_main, "ddpm", 50)
  assert not sr.is_main(ddpm_main, "ddim", 5)


def test_energy_rows_are_steps_x_step_flops_on_the_devices():
  """Each row by hand: steps x the sampler's step FLOPs / FLOPs per cycle x
  images cycles per device, tau c f^2 at f_max (named in the keys, its
  value in freq_fmax_hz_mean), mean / min / max over the devices; time
  c / f. f_min, the model's lower bound, is not reported."""
  config = _config(energy_images=7, energy_ddim_steps=(10,))
  setup = _setup(config)
  rows = sr.energy_rows(setup)
  assert [r["label"] for r in rows] == ["ddpm50", "ddim3", "ddim10"]
  d = setup.devices
  tau, fpc = np.asarray(d.tau, np.float64), np.asarray(d.flops_per_cycle)
  for r in rows:
    flops = sampling_step_flops(
      setup.unet, (16, 16, 1), r["sampler"], num_timesteps=50, compiled=False
    )
    assert r["gflops_per_step"] == pytest.approx(flops / 1e9, rel=1e-12)
    cycles = r["steps"] * flops / fpc * 7
    f = 2e9  # the devices' f_max
    e = tau * cycles * f**2
    for s in ("mean", "min", "max"):
      got = r[f"energy_fmax_j_{s}"]
      assert got == pytest.approx(getattr(np, s)(e), rel=1e-5)
    assert r["time_fmax_s_max"] == pytest.approx((cycles / f).max(), rel=1e-5)
    assert r["freq_fmax_hz_mean"] == pytest.approx(f, rel=1e-6)
    assert not any("fmin" in k for k in r)
  assert [r["main"] for r in rows] == [False, True, False]
  assert sr.energy_rows(_setup(_config(energy_images=0))) == []


def test_run_rows_carry_the_quality_of_the_same_sampler():
  """The main sampler's FID from the summary; others from sampler_curve;
  none where nothing was computed."""
  setup = _setup(_config(energy_ddim_steps=(10,)))
  curve = {"ddpm50": dict(fid=30.0, kid=0.03, kid_std=0.001)}
  rows = sr.run_rows(
    setup,
    _summary("fixed", fid=40.0, kid=0.04, kid_std=0.002, sampler_curve=curve),
  )
  q = {r["label"]: (r["fid"], r["kid"]) for r in rows}
  assert q == {
    "ddpm50": (30.0, 0.03),
    "ddim3": (40.0, 0.04),
    "ddim10": (None,) * 2,
  }
  assert {(r["run"], r["bits"], r["seed"]) for r in rows} == {
    ("fixed",) * 2 + (0,)
  }
  s = sr.scalars(rows)
  assert s["sampling/fid/ddim3"] == 40.0 and "sampling/fid/ddim10" not in s
  assert s["sampling/energy_fmax_j/ddim10"] == rows[2]["energy_fmax_j_mean"]
  assert s["sampling/energy_fmax_j/ddpm50"] == rows[0]["energy_fmax_j_mean"]
  assert s["sampling/time_fmax_s/ddim3"] == rows[1]["time_fmax_s_mean"]
  assert not any("fmin" in k or "/energy_j/" in k for k in s)


def test_write_csv_figure_and_results(tmp_path):
  """One CSV for the sweep (runs x samplers, COLUMNS), PNG + PDF figure;
  stored rows are reused; nothing is written when the report is off."""
  config = _config(energy_ddim_steps=(10,))
  setups = {0: _setup(config)}
  stored = sr.run_rows(setups[0], _summary("fp32", fid=50.0))
  stored[0]["energy_fmax_j_mean"] = -1.0  # marks the reused rows
  summaries = [_summary("fp32", sampling_energy=stored), _summary("fixed")]
  out = sr.write(str(tmp_path), setups, summaries)
  with open(tmp_path / sr.FILE) as f:
    table = list(csv.DictReader(f))
  assert tuple(table[0]) == sr.COLUMNS and len(table) == 6
  assert table[0]["energy_fmax_j_mean"] == "-1.0"
  assert not any("fmin" in c for c in sr.COLUMNS)
  assert [r["run"] for r in table] == ["fp32"] * 3 + ["fixed"] * 3
  assert table[1]["fid"] == "50.0" and table[4]["fid"] == ""
  assert set(out["scalars"]) == {"fp32", "fixed"} and len(out["rows"]) == 6
  for ext in ("png", "pdf"):
    assert (tmp_path / "figures" / f"{sr.FIGURE}.{ext}").stat().st_size > 0
  off = tmp_path / "off"
  off.mkdir()
  setups_off = {0: _setup(_config(energy_images=0))}
  got = sr.write(str(off), setups_off, [_summary()])
  assert got["rows"] == [] and not (off / sr.FILE).exists()


def test_figure_fonts_and_outside_legends():
  """Log-log energy panel, FID panel only with FIDs; text >= 8 pt and the
  legends right of the axes."""
  setup = _setup(_config(energy_ddim_steps=(10,)))
  rows = sr.run_rows(setup, _summary())
  assert len(sr.sampling_energy_vs_quality(rows).axes) == 1
  rows = sr.run_rows(setup, _summary(fid=12.0))
  fig = sr.sampling_energy_vs_quality(rows)
  assert len(fig.axes) == 2
  assert fig.axes[0].get_xscale() == fig.axes[0].get_yscale() == "log"
  # the energy axes name the frequency priced, with its value
  assert fig.axes[0].get_ylabel() == (
    "device energy per image at f_max = 2 GHz (J)"
  )
  assert fig.axes[1].get_xlabel() == fig.axes[0].get_ylabel()
  assert "f_min" not in " ".join(
    t.get_text() for ax in fig.axes for t in ax.get_legend().get_texts()
  )
  fig.canvas.draw()
  for ax in fig.axes:
    texts = [ax.xaxis.label, ax.yaxis.label] + ax.get_xticklabels()
    texts += ax.get_legend().get_texts()
    assert min(t.get_fontsize() for t in texts) >= 8
    box = ax.get_legend().get_window_extent()
    assert box.x0 >= ax.get_window_extent().x1


def test_evaluator_sampler_curve_scores_each_priced_sampler():
  """Every priced sampler is sampled and scored once, with the same key;
  the main sampler's scores are reused, not recomputed."""
  config = _config(energy_ddim_steps=(10,), num_samples=4)
  ev = object.__new__(evaluate.Evaluator)
  ev.setup, ev.config = types.SimpleNamespace(config=config), config.eval
  calls = []
  ev.sample = lambda p, k, n, s, t: calls.append((n, s, t)) or s + str(t)
  ev.quality = lambda x: dict(fid=float(len(x)), kid=0.0, kid_std=0.0)
  main = dict(fid=99.0, kid=1.0, kid_std=0.1)
  out = ev.sampler_curve(None, jax.random.key(0), main)
  assert calls == [(4, "ddpm", 50), (4, "ddim", 10)]
  assert out["ddim3"]["fid"] == 99.0 and out["ddpm50"]["fid"] == 6.0
  assert out["ddim10"] == dict(
    sampler="ddim", steps=10, fid=6.0, kid=0.0, kid_std=0.0
  )
