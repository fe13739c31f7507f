"""Tests for fedqjax.energy.regimes: the yang2021 constants against the cited
values, resolve, computation_share, and what the regime means for a
35.7M-parameter fp32 upload."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fedqjax import energy as E
from fedqjax.energy import regimes as R

# Yang et al., "Energy Efficient Federated Learning Over Wireless
# Communication Networks", IEEE TWC 20(3):1935-1949, 2021 (arXiv 1911.02417),
# Sec. VI: 50 users in a 500 m x 500 m square around the BS; path loss
# 128.1 + 37.6 log10 d[km]; shadowing 8 dB; N0 = -174 dBm/Hz; C_k in
# [1, 3] x 1e4 cycles/sample; kappa = 1e-28; f_max = 2 GHz; p_max = 10 dBm;
# B = 20 MHz; D_k = 500. (f_min 1 MHz is ours: the paper has f >= 0.)
YANG2021_TABLE = dict(
  num_devices=50,
  cell_shape="square",
  radius_m=250.0,
  pathloss_const_db=128.1,
  pathloss_exp_db=37.6,
  shadowing_db=8.0,
  noise_psd_dbm_hz=-174.0,
  cycles_per_sample=2e4,
  cycles_spread=0.5,
  tau_mean=1e-28,
  tau_spread=0.0,
  f_min_hz=1e6,
  f_max_hz=2e9,
  p_max_w=10.0 ** (10.0 / 10.0) / 1000.0,  # 10 dBm
  total_bandwidth_hz=20e6,
)


def test_yang2021_constants_are_the_cited_values():
  r = E.REGIMES["yang2021"]
  assert set(r.energy) == set(YANG2021_TABLE)
  for field, value in YANG2021_TABLE.items():
    if isinstance(value, str):
      assert r.energy[field] == value, field
    else:
      assert r.energy[field] == pytest.approx(value, rel=1e-12), field
    assert type(r.energy[field]) is type(value), field
  assert r.samples_per_step == 500
  assert "1911.02417" in r.source and "Sec. VI" in r.source
  for field in YANG2021_TABLE:  # the doc lists every field it sets
    assert field in r.doc, field
  cfg = E.resolve("yang2021")
  # [1, 3] x 1e4 cycles per sample
  lo = cfg.cycles_per_sample * (1 - cfg.cycles_spread)
  hi = cfg.cycles_per_sample * (1 + cfg.cycles_spread)
  assert (lo, hi) == (1e4, 3e4)
  assert set(E.REGIMES) == {"flops", "yang2021", "cycles_per_sample"}
  assert E.REGIMES["flops"].energy == {}


def test_resolve():
  base = E.EnergyConfig(eps_choices=(0.5,))
  cfg = E.resolve("yang2021", base)
  assert cfg.eps_choices == (0.5,) and cfg.num_devices == 50
  assert E.resolve("flops", base) == base
  assert E.resolve("cycles_per_sample", base, 1e6).cycles_per_sample == 1e6
  own = E.EnergyConfig(cycles_per_sample=3e5)
  assert E.resolve("cycles_per_sample", own).cycles_per_sample == 3e5
  with pytest.raises(ValueError, match="flops | yang2021 | cycles_per_sample"):
    E.resolve("yang2022")
  with pytest.raises(ValueError, match="cycles_per_sample"):
    E.resolve("cycles_per_sample", base)
  with pytest.raises(ValueError, match="cycles_per_sample"):
    E.resolve("yang2021", base, 1e6)
  with pytest.raises(ValueError, match="cycles_per_sample"):
    E.resolve("cycles_per_sample", base, -1.0)


def test_computation_share():
  s = E.computation_share(np.array([0.0, 1.0, 2.0]), np.array([0.0, 3.0, 0.0]))
  assert math.isnan(s[0]) and s[1] == 0.25 and s[2] == 1.0
  assert s.dtype == np.float64
  j = jax.jit(E.computation_share)(jnp.array([0.0, 1.0]), jnp.array([0.0, 1.0]))
  assert math.isnan(float(j[0])) and float(j[1]) == 0.5
  assert float(E.computation_share(3.0, 1.0)) == 0.75


def test_yang2021_computation_is_negligible():
  """The literature's regime: a 35.7M-parameter fp32 upload dwarfs one pass
  over D_k = 500 samples at 1e4-3e4 cycles each."""
  cfg = E.resolve("yang2021")
  flops = 35.006e9  # the paper U-Net's training FLOPs per image
  d = E.sample_devices(cfg, jax.random.key(0), flops_per_sample=flops)
  n = R.YANG2021.samples_per_step
  payload = 32.0 * 35_746_307
  t = E.deadline_for(d, 35_746_307, n, flops, "fp32_feasible", 1.2)
  al = E.allocate(d, payload, n, t, flops)
  assert bool(np.all(al.feasible))
  share = E.computation_share(
    np.asarray(al.e_comp_j).sum(), np.asarray(al.e_comm_j).sum()
  )
  assert 0 < share < 0.05, share
  # f_min = 1 MHz never binds: every optimal frequency is far above it.
  assert float(np.min(al.freq_hz)) > 10 * cfg.f_min_hz
  # The same devices in the flops regime: the computation dominates.
  d0 = E.sample_devices(E.EnergyConfig(), jax.random.key(0))
  t0 = E.deadline_for(d0, 35_746_307, n, flops, "fp32_feasible", 1.2)
  al0 = E.allocate(d0, payload, n, t0, flops)
  share0 = E.computation_share(
    np.asarray(al0.e_comp_j).sum(), np.asarray(al0.e_comm_j).sum()
  )
  assert share0 > 0.5, share0
