"""The round on a time-varying channel with stale / noisy estimates: devices
carry a realized_gain, every policy's plan is judged on it, the training
follows the first policy's deliveries.

One channel-path compile of the shared vmap spec (through `_step`) (tests.support.federated
LAYOUTS["vmap_k3"], policies kkt, deadline, max); rounds then cost ~20 ms.
"""

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fedqjax import energy
from fedqjax import federated as fed
from fedqjax.energy import channel as C
from fedqjax.errors import InvalidSetting
from fedqjax.federated import phases
from fedqjax.testing.reference_round import round_step_reference
from tests.fedqjax.federated.test_round import assert_quantized_close
from tests.support import FUSION_EMITTER
from tests.support import federated as H

SPEC = dict(H.LAYOUTS["vmap_k3"])
BITS = 6


def _spec():
  return H.make_spec(**SPEC)


@functools.lru_cache(maxsize=None)
def _step(spec, bitwise=False):
  """The jitted round, a wrapper of this module's own: the channel path's
  compile must not show in the cache that test_round.py counts for the
  shared spec (today's path comes from the persistent compilation cache).
  `bitwise`: compiled with XLA's default fusion emitter, to compare the
  two paths bit for bit (tests/support FUSION_EMITTER)."""
  return jax.jit(
    functools.partial(fed.round_step, spec=spec),
    donate_argnums=0,
    compiler_options=FUSION_EMITTER if bitwise else None,
  )


def _tight_deadline(devices, spec):
  """1.5 x the median device's minimal round time of a 6-bit upload."""
  pay = float(spec.quantizer.payload_bits(BITS))
  t = energy.min_round_time(
    devices, pay, spec.samples_per_round, spec.flops_per_sample
  )
  return 1.5 * float(np.median(np.asarray(t)))


def test_static_channel_process_is_todays_round_bitwise(params, devices, data8):
  """rho = 1, no delay, no noise, no back-off, h_0 = 1: per-round devices
  from `trajectory` give today's round bit for bit (state and every metric
  of today's round), misses 0; one extra compile for the channel path."""
  spec = _spec()
  step = _step(spec, bitwise=True)
  T = H.generous_deadline(devices, spec, params)
  planned, realized = C.trajectory(
    C.ChannelProcess(),
    devices.large_scale_gain,
    jax.random.PRNGKey(0),
    3,
    stationary_start=False,
  )
  schemes = [
    fed.make_scheme("ondemand", deadline_s=T),
    fed.make_scheme("ondemand", deadline_s=T / 400),  # skips and drops
    fed.make_scheme("fixed", deadline_s=T / 100, fixed_bits=BITS),
  ]
  runs = {}
  for path in ("static", "channel"):
    for i, sch in enumerate(schemes):
      s, ms = H.state(params, spec), []
      for r in range(3):
        dev = devices
        if path == "channel":
          dev = C.devices_at_round(devices, planned, realized, r)
        s, m = step(s, data8, dev, sch)
        ms.append(jax.device_get(m))
      runs[path, i] = (jax.device_get(s), ms)
    if path == "static":
      before = step._cache_size()
  assert step._cache_size() == before + 1
  dropped = 0
  for i in range(len(schemes)):
    (s1, m1), (s2, m2) = runs["static", i], runs["channel", i]
    for a, b in zip(jax.tree.leaves(s1), jax.tree.leaves(s2)):
      np.testing.assert_array_equal(a, b)
    for r in range(3):
      assert sorted(m1[r]) == sorted(m2[r])
      for k in m1[r]:
        np.testing.assert_array_equal(m1[r][k], m2[r][k], err_msg=k)
      assert not np.any(m2[r]["deadline_misses"])
      dropped += int(m1[r]["dropped_client_rounds"])
  assert dropped > 0  # the tight deadline exercised the drops


def _miss_rule(m, dev, planned, realized, payload, T, spec):
  """Independent float64 miss rule per policy and slot: trained, realized
  gain below the planned one, and t_comp + S / r(p, g_real) > T. Also
  returns |finish - T| / T (float32 rounding decides within ~1e-6)."""
  ids = np.asarray(m["client_ids"])
  g_p = np.asarray(planned, np.float64)[ids]
  g_r = np.asarray(realized, np.float64)[ids]
  cyc = (
    spec.flops_per_sample
    / np.asarray(dev.flops_per_cycle, np.float64)[ids]
    * spec.samples_per_round
  )
  w = np.asarray(dev.bandwidth_hz, np.float64)[ids]
  n0 = np.asarray(dev.noise_psd_w_hz, np.float64)[ids]
  f = np.asarray(m["client_freq_hz"], np.float64)
  p = np.asarray(m["client_power_w"], np.float64)
  rate = w * np.log2(1 + p * g_r / (n0 * w))
  finish = cyc / f + payload / rate
  trained = np.asarray(m["client_trained"])
  miss = trained & (g_r < g_p) & (finish > T)
  return miss, np.abs(finish - T) / T, cyc / f


def _mc_miss_probability(dev, payload, T, spec, proc, m, rng):
  """Per device, numpy draws of the stationary channel and the estimate:
  P(miss) under kkt (deadline-active: feasible at the plan and realized <
  planned) and max (f_max, p_max: the plan's feasibility threshold)."""
  g = np.asarray(dev.large_scale_gain, np.float64)
  w = np.asarray(dev.bandwidth_hz, np.float64)
  nw = np.asarray(dev.noise_psd_w_hz, np.float64) * w
  cyc = spec.flops_per_sample / np.asarray(dev.flops_per_cycle, np.float64)
  t_up = T - cyc * spec.samples_per_round / np.asarray(dev.f_max_hz)
  thr = (
    np.where(t_up > 0, np.expm1(payload * math.log(2) / (w * t_up)), np.inf)
    * nw
    / np.asarray(dev.p_max_w, np.float64)
  )
  cn = lambda: (
    (rng.standard_normal((m, g.size)) + 1j * rng.standard_normal((m, g.size)))
    / math.sqrt(2)
  )
  h = cn()
  s2 = proc.estimate_noise
  est = math.sqrt(1 - s2) * h + math.sqrt(s2) * cn()
  real, plan = g * np.abs(h) ** 2, g * np.abs(est) ** 2 * proc.backoff
  ok = plan >= thr
  return np.stack(
    [np.mean(ok & (real < plan), 0), np.mean(ok & (real < thr), 0)]
  )


def _bernstein(q, delta):
  """Half-width t with P(|X - E X| >= t) <= delta for a sum of independent
  Bernoullis of probabilities q (Bernstein's inequality)."""
  var, lg = float(np.sum(q * (1 - q))), math.log(2 / delta)
  return lg / 3 + math.sqrt(lg * lg / 9 + 2 * var * lg)


def test_misses_follow_the_delivery_rule_and_monte_carlo(
  params, devices, data8
):
  """s2 = 0.1, 3 dB back-off, i.i.d. rounds (rho = 0, stationary start),
  a tight deadline, 400 rounds of 3 of 8 devices.

  Exact: every slot's miss flag is the independent float64 rule on the
  round's own (f, p) and gains, except within 1e-5 of the deadline; counts,
  waste and the missed uploads' energy p (T - t_comp) agree.
  Statistical: the total misses of kkt and max are within Bernstein's
  bound (failure 1e-7 each) plus the Monte Carlo's Hoeffding error (4e5
  draws per device, failure 1e-7 over all) of a numpy Monte Carlo of the
  same rule; overall failure probability < 1e-6.
  """
  spec = _spec()
  step = _step(spec)
  T = _tight_deadline(devices, spec)
  sch = fed.make_scheme("fixed", deadline_s=T, fixed_bits=BITS)
  proc = C.ChannelProcess(rho=0.0, estimate_noise=0.1, backoff_db=3.0)
  R = 400
  planned, realized = C.trajectory(
    proc, devices.large_scale_gain, jax.random.PRNGKey(11), R, True
  )
  payload = float(spec.quantizer.payload_bits(BITS))
  state, ids, totals, wrong = H.state(params, spec), [], np.zeros(3), 0
  for r in range(R):
    dev = C.devices_at_round(devices, planned, realized, r)
    state, m = step(state, data8, dev, sch)
    m = jax.device_get(m)
    miss, gap, t_comp = _miss_rule(
      m, devices, planned[r], realized[r], payload, T, spec
    )
    got = m["client_missed"]
    wrong += int(np.sum((got != miss) & (gap > 1e-5)))
    np.testing.assert_array_equal(m["deadline_misses"], got.sum(-1))
    np.testing.assert_array_equal(
      m["client_uploaded"], ~got[0] & m["client_trained"]
    )
    e = m["client_energy_comp_j"] + m["client_energy_comm_j"]
    np.testing.assert_allclose(
      m["energy_wasted_j"], np.where(got, e, 0).sum(-1), rtol=1e-6
    )
    spent = m["client_power_w"] * (T - t_comp)
    np.testing.assert_allclose(
      m["client_energy_comm_j"][got], spent[got], rtol=1e-4
    )
    totals += m["deadline_misses"]
    ids.append(m["client_ids"][: spec.clients_per_round])
  assert wrong == 0
  assert step._cache_size() <= 2  # today's path and the channel path
  mm = 400_000
  q = _mc_miss_probability(
    devices, payload, T, spec, proc, mm, np.random.default_rng(12)
  )
  slots = np.concatenate(ids)
  err = math.sqrt(math.log(2 * q.size / 1e-7) / (2 * mm)) * slots.size
  for i, pol in ((0, "kkt"), (1, "max")):
    mu = q[i][slots].sum()
    tol = _bernstein(q[i][slots], 1e-7) + err
    got = totals[spec.allocations.index(pol)]
    assert abs(got - mu) <= tol, (pol, got, mu, tol)
  assert totals[0] > 3 * totals[2] > 0  # the deadline is active for kkt


def test_backoff_lowers_misses_and_raises_energy(params, devices, data8):
  """Same channel draws (one key) at 0, 3 and 6 dB, rho = 0.9, delay 1,
  s2 = 0.05, a generous deadline (nobody skips): kkt's misses and waste
  fall, its energy rises, the same devices train."""
  spec = _spec()
  step = _step(spec)
  T = H.generous_deadline(devices, spec, params)
  sch = fed.make_scheme("fixed", deadline_s=T, fixed_bits=BITS)
  base = C.ChannelProcess(rho=0.9, estimate_delay=1, estimate_noise=0.05)
  rows = []
  for b in (0.0, 3.0, 6.0):
    proc = dataclasses.replace(base, backoff_db=b)
    planned, realized = C.trajectory(
      proc, devices.large_scale_gain, jax.random.PRNGKey(13), 60, True
    )
    state, acc = H.state(params, spec), np.zeros(4)
    for r in range(60):
      dev = C.devices_at_round(devices, planned, realized, r)
      state, m = step(state, data8, dev, sch)
      acc += [
        int(m["deadline_misses"][0]),
        float(m["energy_wasted_j"][0]),
        float(m["energy_j"][0]),
        int(m["num_trained"]),
      ]
    rows.append(acc)
  rows = np.asarray(rows)
  assert np.all(np.diff(rows[:, 0]) < 0), rows
  assert np.all(np.diff(rows[:, 1]) < 0), rows
  assert np.all(np.diff(rows[:, 2]) > 0), rows
  assert np.all(rows[:, 3] == 3 * 60), rows


def test_reference_round_equals_the_round_with_the_channel_on(
  params, devices, data8
):
  spec = _spec()
  step = _step(spec)
  T = _tight_deadline(devices, spec)
  proc = C.ChannelProcess(rho=0.7, estimate_delay=1, estimate_noise=0.2)
  planned, realized = C.trajectory(
    proc, devices.large_scale_gain, jax.random.PRNGKey(14), 4, True
  )
  missed = 0
  for name in ("fixed", "ondemand"):
    sch = fed.make_scheme(name, deadline_s=T, fixed_bits=BITS)
    s = H.state(params, spec)  # both start every round from the reference
    for r in range(4):
      dev = C.devices_at_round(devices, planned, realized, r)
      s1, m1 = step(jax.tree.map(jnp.copy, s), data8, dev, sch)
      s, m2 = round_step_reference(s, data8, dev, sch, spec=spec)
      for k in (
        "client_ids",
        "client_bits",
        "client_trained",
        "client_uploaded",
        "client_missed",
        "deadline_misses",
      ):
        np.testing.assert_array_equal(m1[k], m2[k], err_msg=k)
      for k in (
        "client_energy_comp_j",
        "client_energy_comm_j",
        "energy_wasted_j",
        "latency_s",
      ):
        np.testing.assert_allclose(m1[k], m2[k], rtol=1e-6, err_msg=k)
      assert_quantized_close(s1.params, s.params, m2)
      missed += int(np.sum(m1["deadline_misses"]))
  assert missed > 0


def test_rayleigh_redraw_with_a_realized_gain_is_refused(devices, data8):
  spec = H.make_spec(n=8, k=3, loop="vmap", rayleigh_fading=True)
  keys = fed.round_keys(jax.random.key_data(jax.random.PRNGKey(0)), 0)
  dev = devices.replace(realized_gain=devices.gain)
  with pytest.raises(InvalidSetting, match="rayleigh_fading"):
    phases.select(keys, data8, dev, spec)
  phases.select(keys, data8, devices, spec)  # without one: fine
