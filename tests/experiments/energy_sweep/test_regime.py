"""The energy sweep's regimes: the `regime` key and its errors,
the cycles_per_sample axis, the comp_share column and the
saving_vs_comp_share figure."""

import dataclasses
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments.configs import energy_sweep as config_mod
from experiments.energy_sweep import evaluate, figure_regimes, figures, outputs
from experiments.energy_sweep import settings as settings_lib
from fedqjax import energy as E


def _parse(preset="default", **overrides):
  c = config_mod.get_config(preset)
  for path, v in overrides.items():
    *head, last = path.split("__")
    node = c
    for h in head:
      node = node[h]
    node[last] = v
  return settings_lib.parse(c)


@pytest.mark.parametrize("name", ["yang2021", "yang2021_code"])
def test_yang2021_takes_the_library_values(name):
  s = _parse(name)
  r = E.REGIMES[name]
  cfg = s.devices.energy_config()
  for field, value in r.energy.items():
    if field == "cycles_per_sample":
      assert s.cycles_per_sample == value
    elif field in ("num_devices", "p_max_w", "f_max_hz", "total_bandwidth_hz"):
      assert getattr(s.base, field) == value, field
    else:
      assert getattr(cfg, field) == value, field
  assert s.samples_per_round == r.samples_per_step == 500
  n = dict(yang2021=50, yang2021_code=20)[name]
  assert (s.base.num_devices, s.base.p_max_w) == (n, 0.01)
  # Applying it again changes nothing; a key set to the regime's value is ok.
  assert settings_lib.parse(s) is s
  assert _parse(name, base__p_max_w=0.01) == s
  assert _parse(regime=name) == s


@pytest.mark.parametrize(
  "overrides,message",
  [
    (
      dict(regime="yang2021", base__p_max_w=0.5),
      "config.base.p_max_w=0.5 conflicts with config.regime=yang2021, "
      "which sets it to 0.01",
    ),
    (
      dict(regime="yang2021", samples_per_round=32),
      "config.samples_per_round=32 conflicts with config.regime=yang2021, "
      "which sets it to 500",
    ),
    (
      dict(regime="yang2021", devices__cell_shape="disc", base__num_devices=9),
      "config.base.num_devices=9 conflicts with config.regime=yang2021",
    ),
    (
      dict(regime="yang2021", cycles_per_sample=1e6),
      "config.cycles_per_sample=1000000.0 conflicts with config.regime="
      "yang2021, which sets it to 20000.0",
    ),
    (
      dict(regime="cycles_per_sample"),
      "config.cycles_per_sample=0.0 is invalid; valid: > 0 with "
      "config.regime=cycles_per_sample",
    ),
    (dict(cycles_per_sample=1e6), "config.cycles_per_sample=1000000.0"),
    (dict(regime="yang2020"), "config.regime='yang2020' is invalid"),
    (dict(base__cycles_per_sample=-1.0), "config.base.cycles_per_sample=-1.0"),
    (
      dict(axes__cycles_per_sample=(1e4, -2.0)),
      "config.axes.cycles_per_sample",
    ),
    (dict(devices__cycles_spread=1.0), "config.devices.cycles_spread=1.0"),
    (dict(devices__cell_shape="hex"), "config.devices.cell_shape='hex'"),
  ],
)
def test_regime_errors(overrides, message):
  with pytest.raises(ValueError) as e:
    _parse(**overrides)
  assert message in str(e.value) and "\n" not in str(e.value), str(e.value)


def test_cycles_regime():
  s = _parse(regime="cycles_per_sample", cycles_per_sample=3e5)
  assert s.cycles_per_sample == 3e5 and s.base.num_devices == 10


def test_with_cycles_is_the_library_draw():
  """The sweep's traced c per scenario gives the devices that
  sample_devices_from_keys draws with EnergyConfig.cycles_per_sample set."""
  cfg = E.EnergyConfig(rayleigh_fading=True)
  keys = jax.random.split(jax.random.key(2), 6)
  flops = jnp.full((6,), 1.0532e9)
  c = jnp.asarray([2e4, 2e4, 2e4, 0.0, 0.0, 0.0])
  d = E.sample_devices_from_keys(cfg, keys)
  got = evaluate.with_cycles(d, keys, c, flops, 0.5)
  want = E.sample_devices_from_keys(
    dataclasses.replace(cfg, cycles_per_sample=2e4),
    keys,
    flops_per_sample=flops,
  )
  np.testing.assert_array_equal(
    got.flops_per_cycle[:3], want.flops_per_cycle[:3]
  )
  np.testing.assert_array_equal(got.flops_per_cycle[3:], d.flops_per_cycle[3:])


def _row(rows, axis, value, scheme="fp32", alloc="kkt"):
  return next(
    r
    for r in rows
    if r["axis"] == axis
    and r["axis_value"] == value
    and not r["axis2"]
    and r["bits_scheme"] == scheme
    and r["allocation"] == alloc
  )


def test_cycles_axis_and_comp_share(small):
  settings, result, rows, _ = small
  assert dict(settings.axes)["cycles_per_sample"] == (1e4, 1e6, 1e8)
  assert list(result["timings"]) == ["call 0"]  # the grid is ONE call
  prep, st = result["prepared"], result["stats"]
  # comp_share of one row by hand: each draw's E_comp / (E_comp + E_comm),
  # then the mean over the draws.
  grid = next(g for g in prep.rows if g[0] == "cycles_per_sample")
  row = _row(rows, "cycles_per_sample", grid[1], "ondemand", "split")
  b = settings.bits_schemes.index("ondemand")
  p = result["allocations"].index("split")
  ec = st["e_comp"][:, grid[-1], b, p].astype(np.float64)
  em = st["e_comm"][:, grid[-1], b, p].astype(np.float64)
  assert row["comp_share"] == pytest.approx(np.mean(ec / (ec + em)), rel=1e-12)
  assert row["cycles_per_sample"] == grid[1]
  assert row["regime"] == "flops"
  base = _row(rows, "base", "")
  assert base["cycles_per_sample"] == 0.0  # the model's FLOPs
  # fp32's share grows with c; at the literature's c it is negligible.
  shares = [
    _row(rows, "cycles_per_sample", c)["comp_share"] for c in (1e4, 1e6, 1e8)
  ]
  assert shares[0] < 0.01 < shares[1] < shares[2] < 1
  # E_comp grows with c (the same devices and deadline rule)
  e = [_row(rows, "cycles_per_sample", c)["comp_energy_j"] for c in (1e4, 1e6)]
  assert e[0] < e[1]
  assert all(0 <= r["comp_share"] <= 1 for r in rows)


def test_summary_names_the_regime(small):
  settings, result, rows, _ = small
  text = outputs.summary(rows, settings, result)
  assert "Regime flops: ratios of energy per uploading device" in text
  assert "regime flops (cycles per sample: the model's FLOPs" in text
  assert "| comp share |" in text


def test_saving_figure(small):
  settings, result, rows, workdir = small
  for ext in ("png", "pdf"):
    path = os.path.join(workdir, "figures", f"saving_vs_comp_share.{ext}")
    assert os.path.getsize(path) > 0, path
  cv = figure_regimes.curve(result, settings)
  np.testing.assert_array_equal(cv["c"], [1e4, 1e6, 1e8])
  # y of c = 1e8 by hand: the geometric mean of the per-draw ratios of
  # energy per uploading device, fp32 / ondemand (kkt).
  i = next(
    g[-1]
    for g in result["prepared"].rows
    if g[:2] == ("cycles_per_sample", 1e8)
  )
  st = result["stats"]
  per_dev = lambda b: (
    (st["e_comp"][:, i, b, 0] + st["e_comm"][:, i, b, 0])
    / st["n_feasible"][:, i, b, 0]
  )
  ratio = per_dev(0).astype(np.float64) / per_dev(2)
  assert cv["y"][2] == pytest.approx(math.exp(np.mean(np.log(ratio))), rel=1e-6)
  assert cv["lo"][2] == pytest.approx(ratio.min(), rel=1e-6)
  assert cv["x"][2] == pytest.approx(
    _row(rows, "cycles_per_sample", 1e8)["comp_share"]
  )
  # the saving shrinks as the computation grows
  assert cv["y"][0] > cv["y"][1] > cv["y"][2] > 1
  fig = figures.make_figures(rows, result, settings)["saving_vs_comp_share"]
  labels = fig.axes[0].get_legend_handles_labels()[1]
  assert any(lb.startswith("yang2021") for lb in labels)
  assert any(lb.startswith("tiny U-Net FLOPs") for lb in labels)
  assert not any(lb.startswith("paper U-Net") for lb in labels)  # > 1e8
  fonts = [
    t.get_fontsize() for t in fig.findobj(lambda o: hasattr(o, "get_fontsize"))
  ]
  assert min(fonts) >= 8
