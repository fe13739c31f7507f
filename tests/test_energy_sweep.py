"""Tests of the system-level energy sweep (issue 17 "Done when").

One small sweep (experiments/configs/energy_sweep.py:small: 2 device draws,
a 1e5-parameter synthetic model, short axes, float32) runs once per module;
the properties are checked on its per-draw statistics and its results.csv.
The notebook runs the same sweep (same compiled program: the persistent
compilation cache makes its compile a hit).
"""
import csv
import json
import math
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments.configs import energy_sweep as config_mod
from fedqjax import energy as E
from fedqjax import quantization as Q
from experiments.energy_sweep import bits_sources, settings as scenarios, sweep, outputs as sweep_io
from fedqjax.testing.energy_oracles import scipy_energy

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOL = 1e-5  # float32 bisection: relative slack of the energy comparisons


@pytest.fixture(scope="module")
def small(tmp_path_factory):
  settings = scenarios.SweepSettings.from_dict(config_mod.get_config("small"))
  result = sweep.run(settings, log=lambda m: None)
  workdir = str(tmp_path_factory.mktemp("es"))
  rows = sweep_io.write_all(result, settings, workdir)
  return settings, result, rows, workdir


def _energy(result):
  st = result["stats"]
  return st["e_comp"].astype(np.float64) + st["e_comm"]  # [R, S, B, P']


def _index(result, axis):
  prep = result["prepared"]
  rows = [(v, i) for a, v, a2, _, i in prep.rows if a == axis and not a2]
  return [i for _, i in sorted(rows)]


def test_outputs_written(small):
  settings, result, rows, workdir = small
  for f in ("results.csv", "summary.md", "figures/energy_vs_axes.png",
            "figures/allocations_vs_axes.png", "figures/feasible_vs_axes.png",
            "figures/energy_split.png", "figures/energy_cdf.png", "figures/bits_histogram.png",
            "figures/heatmap.png"):
    assert os.path.getsize(os.path.join(workdir, f)) > 0, f
  with open(os.path.join(workdir, "results.csv")) as f:
    table = list(csv.DictReader(f))
  n_rows = len(result["prepared"].rows) * 3 * 5
  assert len(table) == n_rows and set(table[0]) == set(sweep_io.COLUMNS)
  assert {r["allocation"] for r in table} == {"kkt", "deadline", "split", "max", "shared"}
  assert all(float(r["feasible_frac"]) == 1.0 for r in table)  # fp32_feasible, per scenario
  assert all(int(r["budget_exceeded_draws"]) == 0 for r in table)


def test_energy_non_increasing_in_deadline(small):
  """Every (scheme, kkt) at fixed devices: a longer deadline never costs more."""
  _, result, _, _ = small
  e = _energy(result)[..., result["allocations"].index("kkt")]  # [R, S, B]
  idx = _index(result, "deadline_factor")
  assert len(idx) >= 3
  curve = e[:, idx]  # [R, T, B]
  assert np.all(np.diff(curve, axis=1) <= TOL * curve[:, 1:])
  assert np.all(curve[:, -1] < curve[:, 0])  # and strictly less over the range


def test_kkt_deadline_max_order_per_scenario(small):
  _, result, _, _ = small
  e = _energy(result)
  a = result["allocations"]
  kkt, dl, mx, sp = (e[..., a.index(p)] for p in ("kkt", "deadline", "max", "split"))
  assert np.all(kkt <= dl * (1 + TOL)) and np.all(dl <= mx * (1 + TOL))
  assert np.all(kkt <= sp * (1 + TOL))
  assert np.mean(kkt < 0.99 * dl) > 0.5  # the baselines really cost more


def test_shared_bandwidth_not_worse_than_equal_share(small):
  _, result, _, _ = small
  e, st = _energy(result), result["stats"]
  a = result["allocations"]
  k, s = a.index("kkt"), a.index("shared")
  same = st["n_feasible"][..., k] == st["n_feasible"][..., s]
  assert same.all()
  assert np.all(e[..., s] <= e[..., k] * (1 + TOL))


def test_ondemand_bits_non_increasing_in_error_scale(small):
  settings, result, _, _ = small
  b = settings.bits_schemes.index("ondemand")
  bits = result["stats"]["bits_sum"][:, _index(result, "eps_scale"), b]  # [R, E]
  assert np.all(np.diff(bits, axis=1) <= 0) and np.all(bits[:, -1] < bits[:, 0])


def test_csv_row_recomputed_with_scipy(small):
  """The base (fixed, kkt) row, rebuilt independently: devices from the documented
  keys, T and payload in numpy, per-device energies from scipy's bounded Brent."""
  settings, _, _, workdir = small
  with open(os.path.join(workdir, "results.csv")) as f:
    row = next(r for r in csv.DictReader(f) if r["axis"] == "base"
               and r["bits_scheme"] == "fixed" and r["allocation"] == "kkt")
  base = settings.base
  n, d_params = base.num_devices, int(base.model)
  nb = math.ceil(d_params / scenarios.SYNTHETIC_LEAF)
  bits = d_params * settings.fixed_bits + 64 * nb  # MODEL.md S(b) = d b + 64 nb
  flops = d_params * scenarios.PAPER_FLOPS / scenarios.PAPER_PARAMS
  cfg = settings.devices
  totals, deadlines = [], []
  for r in range(settings.num_seeds):
    keys = jax.vmap(lambda j: jax.random.fold_in(
        jax.random.fold_in(jax.random.key(settings.seed), r), j))(jnp.arange(n))
    dev = E.sample_devices_from_keys(cfg, keys)
    g = lambda name: np.asarray(getattr(dev, name), np.float64)
    h, tau, n0 = g("large_scale_gain"), g("tau"), g("noise_psd_w_hz")
    w = base.total_bandwidth_hz / n
    cycles = flops / g("flops_per_cycle") * settings.samples_per_round
    rate_max = w * np.log2(1 + base.p_max_w * h / (n0 * w))
    T = base.deadline_factor * np.max(cycles / base.f_max_hz + 32 * d_params / rate_max)
    e = [scipy_energy(tau[i], cycles[i], bits, h[i], w, n0[i], base.p_max_w, cfg.f_min_hz,
                      base.f_max_hz, T) for i in range(n)]
    assert all(x is not None for x in e)
    totals.append(sum(e))
    deadlines.append(T)
  np.testing.assert_allclose(float(row["total_energy_j"]), np.mean(totals), rtol=2e-4)
  np.testing.assert_allclose(float(row["deadline_s"]), np.mean(deadlines), rtol=1e-5)
  np.testing.assert_allclose(float(row["payload_mb"]), bits / 8e6, rtol=1e-6)


def test_gaussian_model_matches_a_gaussian_update():
  """rho of the analytic model vs the quantizer on one Gaussian draw (tensors of
  1 to 20000 entries). The sample rho concentrates (relative sd ~1% here), so a
  10% band fails with negligible probability; bits then agree within one."""
  sizes = (1, 7, 64, 1000, 20000)
  template = [jax.ShapeDtypeStruct((s,), jnp.float32) for s in sizes]
  flat = jax.random.normal(jax.random.key(0), (sum(sizes),))
  for method in ("minmax", "qsgd"):
    q = Q.make_quantizer(template, method)
    model, sample = bits_sources.gaussian_ratio(q), bits_sources.update_ratio(q, flat)
    assert abs(model / sample - 1) < 0.1, (method, model, sample)
    eps = jnp.asarray([1e-4, 1e-3, 1e-2, 1e-1])
    b_model = bits_sources.ondemand_bits(model, eps, 1, 32)
    b_q = jnp.stack([q.bits_for(flat, e) for e in eps])
    assert np.all(np.abs(np.asarray(b_model) - np.asarray(b_q)) <= 1)


def test_update_ratio_reproduces_bits_for():
  """Bits from rho (the sweep's path) equal the quantizer's own bits_for."""
  template = {"a": jax.ShapeDtypeStruct((3, 50), jnp.float32),
              "b": jax.ShapeDtypeStruct((700,), jnp.float32)}
  q = Q.make_quantizer(template, "minmax", bucket_size=64)
  flat = jax.random.laplace(jax.random.key(1), (q.num_entries,)) * 1e-3
  rho = bits_sources.update_ratio(q, flat)
  eps = np.logspace(-6, 0, 25)
  got = np.asarray(bits_sources.ondemand_bits(rho, eps, 2, 32))
  want = np.asarray([q.bits_for(flat, float(e), 2) for e in eps])
  np.testing.assert_array_equal(got, want)
  assert len(set(want.tolist())) > 5


def test_history_source(tmp_path):
  for run, bits in (("ondemand", [[3, 4], [5]]), ("ondemand_seed1", [[6]]),
                    ("ondemand_eps0.5", [[30]]), ("fp32", [[32]])):
    os.makedirs(tmp_path / run)
    rows = [{"round": i + 1, "bits": b} for i, b in enumerate(bits)]
    (tmp_path / run / "history.json").write_text(json.dumps([{"round": 0}] + rows))
  assert sorted(bits_sources.history_bits(str(tmp_path)).tolist()) == [3, 4, 5, 6]
  with pytest.raises(ValueError, match="bits_source"):
    bits_sources.history_bits(str(tmp_path / "missing"))


@pytest.mark.parametrize("key,value,match", [
    (("base", "deadline_factor"), -1.0, "base.deadline_factor"),
    (("base", "num_devices"), 0, "base.num_devices"),
    (("base", "model"), "huge", "base.model"),
    (("axes", "p_max_w"), (0.1, -2.0), r"axes.p_max_w\[1\]"),
    (("deadline", "rule"), "mean", "deadline.rule"),
    (("quant", "b_min"), 40, "quant.b_min"),
    (("devices", "f_min_hz"), -1.0, "devices.f_min_hz"),
    (("allocations",), ("kkt", "opt"), "allocations"),
    (("heatmap",), "deadline_factor,nope", "heatmap"),
    (("num_seeds",), 0, "num_seeds"),
])
def test_settings_reject_naming_the_key(key, value, match):
  c = config_mod.get_config("small").to_dict()
  node = c
  for k in key[:-1]:
    node = node[k]
  node[key[-1]] = value
  with pytest.raises(ValueError, match=match):
    scenarios.SweepSettings.from_dict(c)


def test_settings_unknown_key_did_you_mean():
  c = config_mod.get_config("small").to_dict()
  c["base"]["num_device"] = 5
  with pytest.raises(ValueError, match="did you mean 'base.num_devices'"):
    scenarios.SweepSettings.from_dict(c)


def test_cli_bad_value_exits_2(tmp_path):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  out = subprocess.run(
      [sys.executable, "-m", "experiments.energy_sweep", f"--workdir={tmp_path}",
       "--config.base.deadline_factor=-1"], cwd=ROOT, env=env, capture_output=True, text=True,
      timeout=300)
  assert out.returncode == 2, out.stderr[-2000:]
  last = out.stderr.strip().splitlines()[-1]
  assert last.startswith("error: config.base.deadline_factor=-1") and "valid range" in last
  assert not os.path.exists(tmp_path / "results.csv")


def test_notebook_runs_headless(tmp_path, monkeypatch):
  nbformat = pytest.importorskip("nbformat")
  nbclient = pytest.importorskip("nbclient")
  monkeypatch.setenv("FEDQJAX_WORKDIR", str(tmp_path / "nb"))
  monkeypatch.setenv("FEDQJAX_ROOT", ROOT)
  monkeypatch.setenv("FEDQJAX_ENERGY_PRESET", "small")
  monkeypatch.setenv("JAX_PLATFORMS", "cpu")
  nb = nbformat.read(os.path.join(ROOT, "notebooks", "energy_explorer.ipynb"), as_version=4)
  client = nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                                   resources={"metadata": {"path": ROOT}})
  client.execute()
  text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code"
                 for o in c.get("outputs", []))
  images = sum("image/png" in o.get("data", {}) for c in nb.cells if c.cell_type == "code"
               for o in c.get("outputs", []))
  assert "| ondemand | kkt |" in text and images >= 4
  assert os.path.exists(tmp_path / "nb" / "results.csv")
