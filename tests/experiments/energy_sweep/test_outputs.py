"""results.csv and summary.md of the small sweep: every file written, the
columns, and one row rebuilt independently with scipy."""

import csv
import math
import os

import jax
import jax.numpy as jnp
import numpy as np

from experiments.energy_sweep import models, outputs
from fedqjax import energy as E
from fedqjax.testing.energy_oracles import scipy_energy
from tests.support.energy import SWEEP_FIGURES

FIGURES = SWEEP_FIGURES + ("saving_vs_comp_share",)


def test_outputs_written(small):
  _, result, rows, workdir = small
  files = ["results.csv", "summary.md"] + [f"figures/{f}.png" for f in FIGURES]
  for f in files:
    assert os.path.getsize(os.path.join(workdir, f)) > 0, f
  with open(os.path.join(workdir, "results.csv")) as f:
    table = list(csv.DictReader(f))
  n_rows = len(result["prepared"].rows) * 3 * 5
  assert len(table) == n_rows == len(rows)
  assert set(table[0]) == set(outputs.COLUMNS)
  assert {r["allocation"] for r in table} == {
    "kkt",
    "deadline",
    "split",
    "max",
    "shared",
  }
  # fp32_feasible, per scenario: every device can upload
  assert all(float(r["feasible_frac"]) == 1.0 for r in table)
  assert all(int(r["budget_exceeded_draws"]) == 0 for r in table)


def test_summary_is_the_base_table(small):
  settings, result, rows, workdir = small
  with open(os.path.join(workdir, "summary.md")) as f:
    text = f.read()
  assert text == outputs.summary(rows, settings, result)
  assert text.startswith("# Energy sweep: base scenario")
  assert "| ondemand | kkt |" in text
  assert "(fp32, kkt) / (ondemand, kkt)" in text
  assert text.count("\n| ") == 1 + 15  # header + schemes x allocations


def test_csv_row_recomputed_with_scipy(small):
  """The base (fixed, kkt) row, rebuilt independently: devices from the
  documented keys, T and payload in numpy, per-device energies from scipy's
  bounded Brent."""
  settings, _, _, workdir = small
  with open(os.path.join(workdir, "results.csv")) as f:
    row = next(
      r
      for r in csv.DictReader(f)
      if r["axis"] == "base"
      and r["bits_scheme"] == "fixed"
      and r["allocation"] == "kkt"
    )
  base = settings.base
  n, d_params = base.num_devices, int(base.model)
  nb = math.ceil(d_params / models.SYNTHETIC_LEAF)
  bits = (
    d_params * settings.fixed_bits + 64 * nb
  )  # docs/model.md sec. 2: S(b) = d b + 64 nb
  flops = d_params * models.PAPER_FLOPS / models.PAPER_PARAMS
  cfg = settings.devices.energy_config()
  totals, deadlines = [], []
  for r in range(settings.num_seeds):
    keys = jax.vmap(
      lambda j: jax.random.fold_in(
        jax.random.fold_in(jax.random.key(settings.seed), r), j
      )
    )(jnp.arange(n))
    dev = E.sample_devices_from_keys(cfg, keys)
    g = lambda name: np.asarray(getattr(dev, name), np.float64)
    h, tau, n0 = g("large_scale_gain"), g("tau"), g("noise_psd_w_hz")
    w = base.total_bandwidth_hz / n
    cycles = flops / g("flops_per_cycle") * settings.samples_per_round
    rate_max = w * np.log2(1 + base.p_max_w * h / (n0 * w))
    T = base.deadline_factor * np.max(
      cycles / base.f_max_hz + 32 * d_params / rate_max
    )
    e = [
      scipy_energy(
        tau[i],
        cycles[i],
        bits,
        h[i],
        w,
        n0[i],
        base.p_max_w,
        cfg.f_min_hz,
        base.f_max_hz,
        T,
      )
      for i in range(n)
    ]
    assert all(x is not None for x in e)
    totals.append(sum(e))
    deadlines.append(T)
  np.testing.assert_allclose(
    float(row["total_energy_j"]), np.mean(totals), rtol=2e-4
  )
  np.testing.assert_allclose(
    float(row["deadline_s"]), np.mean(deadlines), rtol=1e-5
  )
  np.testing.assert_allclose(float(row["payload_mb"]), bits / 8e6, rtol=1e-6)
