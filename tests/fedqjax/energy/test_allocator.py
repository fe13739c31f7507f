"""Tests for fedqjax.energy.allocator: the KKT allocation (arXiv 2403.04430
sec. 3-4; Yang et al. TWC 2021) against scipy, its constraints, feasibility,
tracing and float32 stability, and the deadline rules; property-based
fuzzing (hypothesis) of extreme device populations at the end.

Float64 comparisons run inside a `jax.enable_x64` context (tests.support.
energy.x64) so that x64 does not leak into other test modules. The fuzzing
examples are derandomized and bounded; `pytest -s` prints their counts.
"""

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedqjax import energy as E
from fedqjax.testing.energy_oracles import scipy_energy as reference_energy
from tests.support.energy import FLOPS, LN2, N_DEV, np_devices, x64
from tests.support.fuzz import SETTINGS, Counts

D_PARAMS = 35.7e6


def random_problem(seed, n=256, infeasible_frac=0.0):
  """Devices, payload bits, sample counts and deadlines (slack log-uniform in [1.0005, 100])."""
  rng = np.random.default_rng(seed)
  d = np_devices(rng, n)
  bits = 10.0 ** rng.uniform(3, math.log10(1.2e9), n)
  samples = rng.integers(1, 200, n).astype(float)
  tmin_round = np.asarray(E.min_round_time(d, bits, samples, FLOPS), np.float64)
  slack = 10.0 ** rng.uniform(math.log10(1.0005), 2, n)
  slack = np.where(
    rng.uniform(size=n) < infeasible_frac, rng.uniform(0.3, 0.999, n), slack
  )
  dt = np.asarray(d.gain).dtype
  return d, bits.astype(dt), samples.astype(dt), (tmin_round * slack).astype(dt)


def scipy_energy(d, i, bits, samples, T):
  """Independent solver: substitute t = T - A/f, bounded 1-D minimization over f."""
  g = lambda name: float(np.asarray(getattr(d, name))[i])
  tau, h, W, n0, pmax = (
    g("tau"),
    g("gain"),
    g("bandwidth_hz"),
    g("noise_psd_w_hz"),
    g("p_max_w"),
  )
  fmin, fmax = g("f_min_hz"), g("f_max_hz")
  cyc = FLOPS / g("flops_per_cycle") * samples
  return reference_energy(tau, cyc, bits, h, W, n0, pmax, fmin, fmax, T)


def test_matches_scipy_float64():
  with x64():
    n = 256
    d, bits, samples, T = random_problem(0, n, infeasible_frac=0.1)
    al = jax.jit(E.allocate)(d, bits, samples, T, FLOPS)
    energy = np.asarray(al.energy_j)
    feas = np.asarray(al.feasible)
    checked = 0
    for i in range(n):
      ref = scipy_energy(d, i, bits[i], samples[i], T[i])
      assert (ref is not None) == feas[i], i
      if ref is None:
        continue
      checked += 1
      assert energy[i] <= ref * (1 + 1e-6), (i, energy[i], ref)
    assert checked >= 200
    # Constraints.
    lat = np.asarray(al.latency_s)
    assert np.all(lat[feas] <= T[feas] * (1 + 1e-10))
    f = np.asarray(al.freq_hz)
    assert np.all(f >= np.asarray(d.f_min_hz) * (1 - 1e-12))
    assert np.all(f <= np.asarray(d.f_max_hz) * (1 + 1e-12))
    assert np.all(np.asarray(al.power_w) <= np.asarray(d.p_max_w) * (1 + 1e-12))
    tmin = np.asarray(
      E.t_min(bits, d.gain, d.bandwidth_hz, d.p_max_w, d.noise_psd_w_hz)
    )
    assert np.all(np.asarray(al.t_comm_s) >= tmin * (1 - 1e-10))


def test_kkt_and_active_deadline_float64():
  with x64():
    d, bits, samples, T = random_problem(1)
    al = E.allocate(d, bits, samples, T, FLOPS)
    feas = np.asarray(al.feasible)
    assert feas.all()
    f, t, nu = (
      np.asarray(v, np.float64) for v in (al.freq_hz, al.t_comm_s, al.nu)
    )
    lat = np.asarray(al.latency_s)
    # Deadline active for every feasible device (E^com strictly decreases in t).
    np.testing.assert_allclose(lat, T, rtol=1e-9)
    tau = np.asarray(d.tau)
    fmin, fmax = np.asarray(d.f_min_hz), np.asarray(d.f_max_hz)
    k = (
      np.asarray(d.noise_psd_w_hz)
      * np.asarray(d.bandwidth_hz)
      / np.asarray(d.gain)
    )
    x = bits * LN2 / (t * np.asarray(d.bandwidth_hz))
    tmin = np.asarray(
      E.t_min(bits, d.gain, d.bandwidth_hz, d.p_max_w, d.noise_psd_w_hz)
    )
    f_int = (f > fmin * (1 + 1e-9)) & (f < fmax * (1 - 1e-9))
    t_int = t > tmin * (1 + 1e-9)
    # d/df: 2 tau A f - nu A / f^2 = 0 when f is interior.
    np.testing.assert_allclose(
      2 * tau[f_int] * f[f_int] ** 3, nu[f_int], rtol=1e-8
    )
    # d/dt: dE^com/dt + nu = 0, dE^com/dt = -K (e^x (x - 1) + 1), when t is interior.
    phi = x * np.exp(x) - np.expm1(x)
    ok = t_int & (x > 1e-3)  # the direct phi formula cancels for tiny x
    np.testing.assert_allclose(k[ok] * phi[ok], nu[ok], rtol=1e-6)
    # At f = f_min the f-multiplier is nu - 2 tau f^3 <= 0 (lower bound active).
    at_min = f <= fmin * (1 + 1e-9)
    assert np.all(
      nu[at_min] <= 2 * tau[at_min] * fmin[at_min] ** 3 * (1 + 1e-8)
    )
    assert np.all(nu >= 0)
    assert f_int.sum() > 50 and t_int.sum() > 50


def test_monotone_in_bits_and_deadline():
  d, bits, samples, T = random_problem(2)
  T = T * 2.0  # keep the larger payload feasible
  e = lambda s, t: np.asarray(
    E.allocate(d, s, samples, t, FLOPS).energy_j, np.float64
  )
  e0 = e(bits, T)
  assert np.all(e(bits * 1.5, T) >= e0 * (1 - 1e-5))
  assert np.all(e(bits, T * 1.5) <= e0 * (1 + 1e-5))
  assert np.mean(e(bits * 1.5, T) > e0) > 0.9  # strictly more for most devices
  # The optimizer never loses to f_max / p_max.
  naive = np.asarray(E.naive_allocation(d, bits, samples, T, FLOPS).energy_j)
  assert np.all(e0 <= naive * (1 + 1e-5))


def test_feasible_flag_exact_and_reason_codes():
  d, bits, samples, _ = random_problem(3)
  cyc = E.cycles_per_sample(FLOPS, d.flops_per_cycle) * samples
  tcmp = cyc / d.f_max_hz
  tmin = E.t_min(
    jnp.asarray(bits, jnp.float32),
    d.gain,
    d.bandwidth_hz,
    d.p_max_w,
    d.noise_psd_w_hz,
  )
  rng = np.random.default_rng(3)
  # Deadlines on both sides of c n / f_max, and exactly on the boundary.
  T = np.asarray(tcmp + tmin) * rng.choice([0.5, 0.999, 1.0, 1.001, 2.0], 256)
  T = np.where(rng.uniform(size=256) < 0.1, np.asarray(tcmp) * 0.9, T).astype(
    np.float32
  )
  expected = np.asarray(tcmp + tmin <= T)
  al = E.allocate(d, bits, samples, T, FLOPS)
  np.testing.assert_array_equal(np.asarray(al.feasible), expected)
  np.testing.assert_array_equal(
    np.asarray(E.feasible_mask(d, bits, samples, T, FLOPS)), expected
  )
  np.testing.assert_array_equal(
    np.asarray(E.naive_allocation(d, bits, samples, T, FLOPS).feasible),
    expected,
  )
  reason = np.where(expected, 0, np.where(np.asarray(tcmp) >= T, 1, 2))
  np.testing.assert_array_equal(np.asarray(al.reason), reason)
  assert set(reason) == {0, 1, 2}
  # Infeasible devices: finite f_max / p_max numbers.
  bad = ~expected
  np.testing.assert_array_equal(
    np.asarray(al.freq_hz)[bad], np.asarray(d.f_max_hz)[bad]
  )
  np.testing.assert_array_equal(
    np.asarray(al.power_w)[bad], np.asarray(d.p_max_w)[bad]
  )
  assert all(np.isfinite(np.asarray(v)).all() for v in jax.tree.leaves(al))


def test_vectorized_equals_per_device_and_vmap():
  d, bits, samples, T = random_problem(4)
  full = E.allocate(d, bits, samples, T, FLOPS)
  for i in range(8):
    one = E.allocate(
      jax.tree.map(lambda v: v[i : i + 1], d),
      bits[i : i + 1],
      samples[i],
      T[i],
      FLOPS,
    )
    chex.assert_trees_all_close(
      one, jax.tree.map(lambda v: v[i : i + 1], full), rtol=1e-5
    )
  # vmap over a leading batch of populations (e.g. rounds or sweeps).
  batched = jax.vmap(E.allocate, in_axes=(0, 0, None, None, None))(
    jax.tree.map(lambda v: jnp.stack([v, v]), d),
    jnp.stack([bits, bits]),
    samples,
    T,
    FLOPS,
  )
  chex.assert_trees_all_close(
    jax.tree.map(lambda v: v[1], batched), full, rtol=1e-6
  )


class AllocateJitTest(chex.TestCase):
  @chex.variants(with_jit=True, without_jit=True)
  def test_jit_matches_eager(self):
    d, bits, samples, T = random_problem(5)
    ref = E.allocate(d, bits, samples, T, FLOPS)
    got = self.variant(lambda *a: E.allocate(*a, FLOPS))(d, bits, samples, T)
    chex.assert_trees_all_close(got, ref, rtol=1e-5)

  def test_no_retrace_when_values_change(self):
    @jax.jit
    @chex.assert_max_traces(n=1)
    def step(d, bits, samples, T):
      return E.allocate(d, bits, samples, T, FLOPS).energy_j

    chex.clear_trace_counter()
    for seed in range(3):
      d, bits, samples, T = random_problem(10 + seed)
      step(
        d,
        jnp.asarray(bits, jnp.float32),
        jnp.asarray(samples, jnp.float32),
        jnp.asarray(T, jnp.float32),
      ).block_until_ready()


def test_float32_stability_sweep():
  gains = np.logspace(-20, 0, 21)
  payloads = np.concatenate(
    [[1.0, 100.0], 32 * D_PARAMS * np.arange(1, 33) / 32.0 + 64.0]
  )
  g, s = (v.ravel() for v in np.meshgrid(gains, payloads))
  n = g.size
  d = np_devices(np.random.default_rng(6), n).replace(
    gain=jnp.asarray(g, jnp.float32)
  )
  samples = 16.0
  t_fast = np.asarray(E.min_round_time(d, s, samples, FLOPS), np.float64)
  for T in [t_fast * (1 + 1e-4), t_fast * 1.2, t_fast * 10, np.full(n, 1e6)]:
    T = np.maximum(T, t_fast * (1 + 1e-4)).astype(np.float32)  # all feasible
    al = jax.jit(E.allocate)(d, s, samples, T, FLOPS)
    for name, v in al.__dict__.items():
      assert np.all(np.isfinite(np.asarray(v, np.float64))), name
    assert np.asarray(al.feasible).all()
    assert np.all(np.asarray(al.latency_s) <= T * (1 + 1e-5))
    assert np.all(np.asarray(al.energy_j) > 0)
    naive = np.asarray(E.naive_allocation(d, s, samples, T, FLOPS).energy_j)
    assert np.all(np.asarray(al.energy_j) <= naive * (1 + 1e-4))


def test_float32_agrees_with_float64():
  d, bits, samples, T = random_problem(7)
  e32 = np.asarray(E.allocate(d, bits, samples, T, FLOPS).energy_j, np.float64)
  with x64():
    d64 = jax.tree.map(
      lambda v: (
        jnp.asarray(np.asarray(v), jnp.float64)
        if np.asarray(v).dtype == np.float32
        else jnp.asarray(np.asarray(v))
      ),
      d,
    )
    e64 = np.asarray(
      E.allocate(
        d64, bits, samples, np.asarray(T, np.float32).astype(np.float64), FLOPS
      ).energy_j
    )
  np.testing.assert_allclose(e32, e64, rtol=1e-3)


@pytest.mark.parametrize(
  "field,value",
  [
    ("gain", float("nan")),
    ("gain", 0.0),
    ("bandwidth_hz", 0.0),
    ("bandwidth_hz", -1.0),
    ("p_max_w", 0.0),
    ("f_min_hz", 5e9),
    ("tau", -1.0),
  ],
)
def test_allocate_rejects_bad_devices(field, value):
  d = E.sample_devices(E.EnergyConfig(num_devices=4), jax.random.key(0))
  d = d.replace(**{field: getattr(d, field).at[1].set(value)})
  with pytest.raises(ValueError, match=field):
    E.allocate(d, 1e6, 16, 100.0, FLOPS)
  with pytest.raises(ValueError, match=field):
    E.naive_allocation(d, 1e6, 16, 100.0, FLOPS)


@pytest.mark.parametrize(
  "kw",
  [
    dict(deadline_s=0.0),
    dict(deadline_s=-1.0),
    dict(payload_bits=float("nan")),
    dict(num_samples=0),
  ],
)
def test_allocate_rejects_bad_scalars(kw):
  d = E.sample_devices(E.EnergyConfig(num_devices=4), jax.random.key(0))
  args = dict(
    payload_bits=1e6, num_samples=16, deadline_s=100.0, flops_per_sample=FLOPS
  )
  args.update(kw)
  with pytest.raises(ValueError, match=next(iter(kw))):
    E.allocate(d, **args)


# ----------------------------------------------------------------------------
# Deadline rules.


def test_deadline_rules():
  d = E.sample_devices(E.EnergyConfig(num_devices=200), jax.random.key(0))
  n_params, samples, flops = 1.3e6, 16.0, 1.2e9
  t = np.asarray(E.min_round_time(d, 32 * n_params, samples, flops), np.float64)
  rule = lambda *a, **k: float(
    E.deadline_for(d, n_params, samples, flops, *a, **k)
  )
  np.testing.assert_allclose(rule("fp32_feasible", 1.0), t.max(), rtol=1e-6)
  np.testing.assert_allclose(rule("median", 1.2), 1.2 * np.median(t), rtol=1e-6)
  np.testing.assert_allclose(
    rule("quantile", 2.0, 0.9), 2.0 * np.quantile(t, 0.9), rtol=1e-6
  )
  # fp32_feasible with factor 1: every device can deliver fp32 (the max one exactly).
  T = rule("fp32_feasible", 1.0)
  assert np.asarray(E.feasible_mask(d, 32 * n_params, samples, T, flops)).all()
  # Padded devices are ignored.
  present = np.arange(200) < 150
  sub = jax.tree.map(lambda v: v[:150], d)
  for r in E.DEADLINE_RULES:
    np.testing.assert_allclose(
      float(
        E.deadline_for(
          d, n_params, samples, flops, r, 1.5, 0.8, present=present
        )
      ),
      float(E.deadline_for(sub, n_params, samples, flops, r, 1.5, 0.8)),
      rtol=1e-6,
    )
  traced = jax.jit(
    lambda f: E.deadline_for(d, n_params, samples, flops, "quantile", f, 0.9)
  )
  np.testing.assert_allclose(
    float(traced(2.0)), rule("quantile", 2.0, 0.9), rtol=1e-6
  )


@pytest.mark.parametrize(
  "kw,match",
  [
    (dict(rule="max"), "fp32_feasible, median, quantile"),
    (dict(factor=0.0), "factor"),
    (dict(factor=float("nan")), "factor"),
    (dict(rule="quantile", quantile=1.5), "quantile"),
    (dict(quantile=0.0), "quantile"),
  ],
)
def test_deadline_rule_rejects(kw, match):
  d = E.sample_devices(E.EnergyConfig(num_devices=4), jax.random.key(0))
  with pytest.raises(ValueError, match=match):
    E.deadline_for(d, 1e6, 16.0, 1e9, **kw)


def test_deadline_rules_per_segment():
  """One T per cell equals deadline_for on that cell alone."""
  d = E.sample_devices(E.EnergyConfig(num_devices=60), jax.random.key(1))
  seg = np.repeat(
    np.arange(3), 20
  )  # equal sizes: the per-cell references share compiles
  rule_fn = jax.jit(
    lambda d, r, f, s=None: E.deadline_for(
      d,
      1e6,
      16.0,
      1e9,
      r,
      f,
      0.7,
      **({} if s is None else dict(segments=s, num_segments=3)),
    ),
    static_argnums=1,
  )
  for r in E.DEADLINE_RULES:
    got = np.asarray(rule_fn(d, r, jnp.asarray([1.0, 2.0, 3.0]), seg))
    for g in range(3):
      sub = jax.tree.map(lambda v: v[seg == g], d)
      np.testing.assert_allclose(
        got[g], float(rule_fn(sub, r, g + 1.0)), rtol=1e-6, err_msg=r
      )


# ----------------------------------------------------------------------------
# Property-based fuzzing (hypothesis): device populations with extreme values.


COUNTS = Counts()
_count = COUNTS.add


FLOPS_CHOICES = np.array([1.0, 8.0, 16.0, 32.0])


def _logu(lo, hi):
  """Log-uniform [lo, hi] draws of N_DEV values."""
  return st.lists(
    st.floats(math.log10(lo), math.log10(hi)), min_size=N_DEV, max_size=N_DEV
  ).map(lambda e: 10.0 ** np.asarray(e))


@st.composite
def _population(draw):
  gain = draw(_logu(1e-20, 1.0))
  f_min = draw(_logu(1e5, 1e9))
  f_ratio = draw(_logu(1.0001, 1e3))
  dt = np.float32
  a = lambda v: jnp.asarray(np.broadcast_to(v, (N_DEV,)), dt)
  d = E.Devices(
    distance_m=a(draw(_logu(10.0, 1e4))),
    shadowing_db=a(0.0),
    gain=a(gain),
    large_scale_gain=a(gain),
    bandwidth_hz=a(draw(_logu(1e3, 1e8))),
    p_max_w=a(draw(_logu(1e-3, 10.0))),
    f_min_hz=a(f_min),
    f_max_hz=a(f_min * f_ratio),
    tau=a(draw(_logu(1e-30, 1e-26))),
    flops_per_cycle=a(
      FLOPS_CHOICES[
        draw(st.lists(st.integers(0, 3), min_size=N_DEV, max_size=N_DEV))
      ]
    ),
    eps=a(0.01),
    bit_cap=jnp.full((N_DEV,), 32, jnp.int32),
    noise_psd_w_hz=a(draw(_logu(1e-23, 1e-17))),
  )
  bits = draw(_logu(1.0, 1.2e9)).astype(dt)
  samples = np.asarray(
    draw(st.lists(st.integers(1, 200), min_size=N_DEV, max_size=N_DEV)), dt
  )
  flops = np.asarray(10.0 ** draw(st.floats(6, 10)), dt)
  # Deadlines: absolute (log-uniform 1e-6..1e6 s) or a slack factor of the
  # fastest possible round (0.5..100, mostly feasible), clipped to 1e-6..1e6.
  absolute = draw(_logu(1e-6, 1e6))
  slack = draw(_logu(0.5, 100.0))
  use_abs = np.asarray(
    draw(st.lists(st.booleans(), min_size=N_DEV, max_size=N_DEV))
  )
  t_fast = np.asarray(E.min_round_time(d, bits, samples, flops), np.float64)
  deadline = np.where(use_abs, absolute, t_fast * slack)
  deadline = np.clip(deadline, 1e-6, 1e6).astype(dt)
  return d, bits, samples, deadline, flops


def _check_allocation(al, d, deadline, mask, naive):
  for name, v in al.__dict__.items():
    v = np.asarray(v)
    if v.dtype.kind == "f":
      assert np.all(np.isfinite(v)), (name, v)
  feas = np.asarray(al.feasible)
  np.testing.assert_array_equal(feas, np.asarray(mask))
  lat = np.asarray(al.latency_s, np.float64)
  T = np.asarray(deadline, np.float64)
  assert np.all(lat[feas] <= T[feas] * (1 + 1e-4)), (lat[feas], T[feas])
  f = np.asarray(al.freq_hz)
  fmin, fmax = np.asarray(d.f_min_hz), np.asarray(d.f_max_hz)
  # Exact box (the allocator clips after exp; see
  # test_allocate_frequency_box_exact).
  assert np.all((f >= fmin) & (f <= fmax)), (f, fmin, fmax)
  p, pmax = np.asarray(al.power_w), np.asarray(d.p_max_w)
  assert np.all((p > 0) & (p <= pmax)), (p, pmax)
  for name in ("t_comp_s", "t_comm_s", "e_comp_j"):
    assert np.all(np.asarray(getattr(al, name)) > 0), name
  assert np.all(np.asarray(al.e_comm_j) >= 0)
  if naive:
    np.testing.assert_array_equal(f, fmax)
    np.testing.assert_array_equal(p, pmax)


@settings(max_examples=60, **SETTINGS)
@given(_population())
def test_allocate_extreme_populations(problem):
  d, bits, samples, deadline, flops = problem
  _count("populations")
  mask = E.feasible_mask(d, bits, samples, deadline, flops)
  al = E.allocate(d, bits, samples, deadline, flops)
  _check_allocation(al, d, deadline, mask, naive=False)
  nv = E.naive_allocation(d, bits, samples, deadline, flops)
  _check_allocation(nv, d, deadline, mask, naive=True)
  # The optimum never costs more than f_max / p_max (same feasibility test).
  feas = np.asarray(al.feasible)
  e_opt = np.asarray(al.energy_j, np.float64)[feas]
  e_nv = np.asarray(nv.energy_j, np.float64)[feas]
  assert np.all(e_opt <= e_nv * (1 + 1e-3)), (e_opt, e_nv)
  _count("devices_feasible", int(feas.sum()))
  # The baseline policies on the same extremes: same checks, and
  # kkt <= deadline <= max, kkt <= split on every feasible device.
  pol = E.allocate_policies(
    d, bits, samples, deadline, flops, ("deadline", "split")
  )
  for i in range(2):
    _check_allocation(
      jax.tree.map(lambda v: v[i], pol), d, deadline, mask, naive=False
    )
  e_dl, e_sp = (np.asarray(pol.energy_j[i], np.float64)[feas] for i in range(2))
  assert np.all(e_opt <= e_dl * (1 + 1e-3)) and np.all(
    e_dl <= e_nv * (1 + 1e-6)
  )
  # split uploads in t = T - c n / f: within ~1e-7 T of the deadline that
  # difference is float32 rounding (E^com at such t is ill-conditioned), so
  # kkt <= split is only claimed with a relative slack above 1e-5.
  t_fast = np.asarray(E.min_round_time(d, bits, samples, flops), np.float64)[
    feas
  ]
  ok = np.asarray(deadline, np.float64)[feas] - t_fast > 1e-5 * t_fast
  assert np.all(e_opt[ok] <= e_sp[ok] * (1 + 1e-3)), (e_opt, e_sp)


def test_allocate_frequency_box_exact():
  a = lambda v: jnp.asarray(np.full((4,), v), jnp.float32)
  d = E.Devices(
    distance_m=a(10.0),
    shadowing_db=a(0.0),
    gain=a(1.0),
    large_scale_gain=a(1.0),
    bandwidth_hz=a(1e3),
    p_max_w=a(1.0),
    f_min_hz=a(1e5),
    f_max_hz=a(1e6),
    tau=a(1e-26),
    flops_per_cycle=a(1.0),
    eps=a(0.01),
    bit_cap=jnp.full((4,), 32, jnp.int32),
    noise_psd_w_hz=a(1e-17),
  )
  f32 = np.float32
  al = E.allocate(d, f32(1.0), f32(1.0), f32(100.0), f32(1e6))  # slack: f_min
  assert np.asarray(al.feasible).all()
  assert np.all(np.asarray(al.freq_hz) >= np.asarray(d.f_min_hz)), al.freq_hz


def test_print_counts():
  """Runs last in this module: prints and checks how much was fuzzed."""
  print("\nfuzz counts:", dict(sorted(COUNTS.items())))
  if "populations" in COUNTS:
    assert COUNTS["populations"] >= 50
