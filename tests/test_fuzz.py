"""Property-based fuzzing (hypothesis) of the library's boundaries.

* configs: random 1-3 key mutations of experiments/configs/test.py either
  validate (and then convert to EnergyConfig / RoundSpec without error) or
  raise ValueError naming a mutated key; never another exception type;
* device populations with extreme values: `allocate` / `naive_allocation`
  and the baseline policies (`allocate_policies`: deadline, split) are
  finite, meet the deadline, respect the box constraints and agree with
  `feasible_mask`, with kkt <= deadline <= max and kkt <= split; invalid
  populations raise ValueError naming the field;
* quantizers (min-max and QSGD, traced and codec) on adversarial float32
  tensors.

All examples are derandomized (fixed seed) and bounded; arrays use a few
fixed shapes so that jit compiles stay few. `pytest -s` prints the counts.
"""
from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from experiments.configs import test as test_config
from experiments.fl_sweep import settings as config_lib
from experiments.fl_sweep import schema_old as config_schema
from fedqjax import diffusion
from fedqjax import energy as E
from fedqjax import quantization as Q
from fedqjax.federated import spec as spec_lib

SETTINGS = dict(deadline=None, derandomize=True, database=None,
                suppress_health_check=list(HealthCheck))
COUNTS = {}


def _count(name, n=1):
  COUNTS[name] = COUNTS.get(name, 0) + n


# ----------------------------------------------------------------------------
# 1. Configs.

_BASE = test_config.get_config().to_dict()
_KEYS = sorted(config_schema.TYPES)
_STRINGS = sorted({"cpu", "paper", "test", "auto", "cifar10", "fashion_mnist",
                   "synthetic", "iid", "dirichlet", "shards", "float32",
                   "bfloat16", "minmax", "qsgd", "ddim", "ddpm",
                   *spec_lib.CLIENT_LOOPS, *spec_lib.OPTIMIZERS,
                   *spec_lib.TARGETS, *spec_lib.INFEASIBLE_POLICIES,
                   *spec_lib.BITS_SCHEMES, "naive", *E.ALLOCATIONS,
                   *E.DEADLINE_RULES})
_HUGE_INT = 10 ** 400  # a valid Python int that does not fit in a float


def _typo(key: str, draw) -> str:
  """A near-miss of an existing key (dropped, doubled or swapped letter)."""
  i = draw(st.integers(0, len(key) - 1))
  kind = draw(st.sampled_from(["drop", "double", "swap", "suffix"]))
  if kind == "drop" and key[i] != ".":
    out = key[:i] + key[i + 1:]
  elif kind == "double" and key[i] != ".":
    out = key[:i] + key[i] + key[i:]
  elif kind == "swap" and i + 1 < len(key) and "." not in key[i:i + 2]:
    out = key[:i] + key[i + 1] + key[i] + key[i + 2:]
  else:
    out = key + "_x"
  return out if out not in config_schema.TYPES else key + "_typo"


def _value_strategy(key: str):
  """Valid and invalid values for `key` (range, type, NaN/inf, huge, ...).

  Two input classes are covered by dedicated tests below instead: ints too
  large for a float, and a comma string for sweep.schemes.
  """
  types = config_schema.TYPES[key]
  if key in ("sweep.schemes", "sweep.allocations"):
    types = tuple(t for t in types if t is not str)
  base = _BASE
  for part in key.split("."):
    base = base[part]
  wrong = st.sampled_from([None, "abc", "", [1, 2], (), {"a": 1}, True, False,
                           1.5, -1, 0, 3, float("nan"), float("inf"),
                           -float("inf"), 10**30, -10**30])
  opts = [wrong]
  if str in types:
    opts += [st.sampled_from(_STRINGS), st.text(max_size=8),
             st.sampled_from(["fp32,ondemand", "fp32, naive", ",", "fixed"])]
  if bool in types:
    opts.append(st.booleans())
  if int in types and bool not in types:
    opts += [st.integers(-3, 40), st.integers(-2**40, 2**40),
             st.sampled_from([0, 1, 2, 8, 16, 28, 32, 1024, 1025, 2**31 - 1,
                              2**31, 100000, 100001, 10_000_000, 1_000_000])]
  if float in types:
    opts += [st.floats(allow_nan=True, allow_infinity=True),
             st.floats(-1.0, 2.0),
             st.floats(-300, 300).map(lambda e: 10.0 ** e),
             st.just(base * 0.5) if isinstance(base, float) else st.just(0.5),
             st.just(base * 2.0) if isinstance(base, float) else st.just(2.0)]
  if tuple in types or list in types:
    elem = st.one_of(st.integers(-2, 40), st.floats(allow_nan=True),
                     st.sampled_from(list(spec_lib.BITS_SCHEMES) + [10**30]),
                     st.floats(1e-4, 1e3))
    opts += [st.lists(elem, max_size=4).map(tuple),
             st.lists(st.sampled_from(spec_lib.BITS_SCHEMES + ("naive",)),
                      min_size=1, max_size=4).map(tuple),
             st.lists(st.sampled_from(E.ALLOCATIONS), min_size=1,
                      max_size=4).map(tuple),
             st.lists(st.integers(1, 4), min_size=1, max_size=3).map(tuple),
             st.lists(st.floats(1e-3, 64.0), min_size=1, max_size=4).map(tuple)]
  out = st.one_of(*opts)
  if key in ("sweep.schemes", "sweep.allocations"):
    out = out.filter(lambda v: not isinstance(v, str))
  return out


def _set(d: dict, key: str, value) -> None:
  *parents, leaf = key.split(".")
  for p in parents:
    d = d.setdefault(p, {}) if isinstance(d.get(p, {}), dict) else d[p]
  d[leaf] = value


@st.composite
def _mutated_config(draw):
  d = test_config.get_config().to_dict()
  n = draw(st.integers(1, 3))
  mutated = []
  for _ in range(n):
    key = draw(st.sampled_from(_KEYS))
    if draw(st.integers(0, 9)) == 0:  # unknown key (typo)
      key = _typo(key, draw)
      _set(d, key, draw(st.sampled_from([1, "x", 0.5])))
    else:
      _set(d, key, draw(_value_strategy(key)))
    mutated.append(key)
  return ml_collections.ConfigDict(d), mutated


# Cross-field errors that name these keys without their section prefix:
# "config.diffusion.beta_start must be < beta_end, ..." and EnergyConfig's
# "EnergyConfig.min_distance_m=10.0 is invalid; valid range: (0, radius_m=5)".
_LEAF_ONLY = {"diffusion.beta_end", "energy.radius_m"}


def _names_a_key(msg: str, keys) -> bool:
  """The message names one of the mutated keys (its full dotted name)."""
  return any(k in msg or (k in _LEAF_ONLY and k.rsplit(".", 1)[-1] in msg)
             for k in keys)


@settings(max_examples=400, **SETTINGS)
@given(_mutated_config())
def test_config_mutations_validate_or_value_error(cm):
  c, mutated = cm
  _count("configs")
  try:
    config_lib.validate_config(c)
  except ValueError as e:
    _count("configs_rejected")
    assert _names_a_key(str(e), mutated), (mutated, str(e))
    return
  # Accepted: the boundary conversions must succeed as well.
  _count("configs_accepted")
  config_lib.energy_config(c)
  unet = config_lib.unet_config(c, c.data.resolution or None)
  config_lib.round_spec(c, unet, None, 1e6)


def test_config_unmutated_validates():
  c = test_config.get_config()
  config_lib.validate_config(c)
  config_lib.round_spec(c, config_lib.unet_config(c, None), None, 1e6)


def test_config_radius_below_min_distance_names_radius():
  # Any radius_m > 0 has the right type; EnergyConfig needs radius_m > 10 m.
  with pytest.raises(ValueError, match="radius_m"):
    config_lib.validate_config(_config_with("energy.radius_m", 5.0))


def _config_with(key, value):
  d = test_config.get_config().to_dict()
  _set(d, key, value)
  return ml_collections.ConfigDict(d)


@pytest.mark.parametrize("key", ["energy.p_max_w", "energy.radius_m",
                                 "energy.tau_mean", "energy.f_max_hz",
                                 "energy.eps_choices"])
def test_config_huge_int_is_value_error(key):
  value = (_HUGE_INT,) if key.endswith("_choices") else _HUGE_INT
  with pytest.raises(ValueError, match=key.split(".")[-1]):
    config_lib.validate_config(_config_with(key, value))


def test_config_huge_deadline_rejected_at_validation():
  c = _config_with("energy.deadline_s", _HUGE_INT)
  try:
    config_lib.validate_config(c)
  except ValueError:
    return
  float(c.energy.deadline_s)  # what train.build does next


def test_config_schemes_comma_string():
  c = _config_with("sweep.schemes", "fp32,ondemand")
  config_lib.validate_config(c)
  assert tuple(c.sweep.schemes) == ("fp32", "ondemand")


# ----------------------------------------------------------------------------
# 2. Device populations.

N_DEV = 16  # one shape: allocate / naive compile once
FLOPS_CHOICES = np.array([1.0, 8.0, 16.0, 32.0])


def _logu(lo, hi):
  """Log-uniform [lo, hi] draws of N_DEV values."""
  return st.lists(st.floats(math.log10(lo), math.log10(hi)), min_size=N_DEV,
                  max_size=N_DEV).map(lambda e: 10.0 ** np.asarray(e))


@st.composite
def _population(draw):
  gain = draw(_logu(1e-20, 1.0))
  f_min = draw(_logu(1e5, 1e9))
  f_ratio = draw(_logu(1.0001, 1e3))
  dt = np.float32
  a = lambda v: jnp.asarray(np.broadcast_to(v, (N_DEV,)), dt)
  d = E.Devices(
      distance_m=a(draw(_logu(10.0, 1e4))), shadowing_db=a(0.0), gain=a(gain),
      large_scale_gain=a(gain), bandwidth_hz=a(draw(_logu(1e3, 1e8))),
      p_max_w=a(draw(_logu(1e-3, 10.0))), f_min_hz=a(f_min),
      f_max_hz=a(f_min * f_ratio), tau=a(draw(_logu(1e-30, 1e-26))),
      flops_per_cycle=a(FLOPS_CHOICES[draw(st.lists(
          st.integers(0, 3), min_size=N_DEV, max_size=N_DEV))]),
      eps=a(0.01), bit_cap=jnp.full((N_DEV,), 32, jnp.int32),
      noise_psd_w_hz=a(draw(_logu(1e-23, 1e-17))))
  bits = draw(_logu(1.0, 1.2e9)).astype(dt)
  samples = np.asarray(draw(st.lists(st.integers(1, 200), min_size=N_DEV,
                                     max_size=N_DEV)), dt)
  flops = np.asarray(10.0 ** draw(st.floats(6, 10)), dt)
  # Deadlines: absolute (log-uniform 1e-6..1e6 s) or a slack factor of the
  # fastest possible round (0.5..100, mostly feasible), clipped to 1e-6..1e6.
  absolute = draw(_logu(1e-6, 1e6))
  slack = draw(_logu(0.5, 100.0))
  use_abs = np.asarray(draw(st.lists(st.booleans(), min_size=N_DEV,
                                     max_size=N_DEV)))
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
  pol = E.allocate_policies(d, bits, samples, deadline, flops, ("deadline", "split"))
  for i in range(2):
    _check_allocation(jax.tree.map(lambda v: v[i], pol), d, deadline, mask, naive=False)
  e_dl, e_sp = (np.asarray(pol.energy_j[i], np.float64)[feas] for i in range(2))
  assert np.all(e_opt <= e_dl * (1 + 1e-3)) and np.all(e_dl <= e_nv * (1 + 1e-6))
  # split uploads in t = T - c n / f: within ~1e-7 T of the deadline that
  # difference is float32 rounding (E^com at such t is ill-conditioned), so
  # kkt <= split is only claimed with a relative slack above 1e-5.
  t_fast = np.asarray(E.min_round_time(d, bits, samples, flops), np.float64)[feas]
  ok = np.asarray(deadline, np.float64)[feas] - t_fast > 1e-5 * t_fast
  assert np.all(e_opt[ok] <= e_sp[ok] * (1 + 1e-3)), (e_opt, e_sp)


def test_allocate_frequency_box_exact():
  a = lambda v: jnp.asarray(np.full((4,), v), jnp.float32)
  d = E.Devices(
      distance_m=a(10.0), shadowing_db=a(0.0), gain=a(1.0),
      large_scale_gain=a(1.0), bandwidth_hz=a(1e3), p_max_w=a(1.0),
      f_min_hz=a(1e5), f_max_hz=a(1e6), tau=a(1e-26), flops_per_cycle=a(1.0),
      eps=a(0.01), bit_cap=jnp.full((4,), 32, jnp.int32),
      noise_psd_w_hz=a(1e-17))
  f32 = np.float32
  al = E.allocate(d, f32(1.0), f32(1.0), f32(100.0), f32(1e6))  # slack: f_min
  assert np.asarray(al.feasible).all()
  assert np.all(np.asarray(al.freq_hz) >= np.asarray(d.f_min_hz)), al.freq_hz


def _valid_population():
  rng = np.random.default_rng(0)
  a = lambda v: jnp.asarray(np.broadcast_to(v, (N_DEV,)), jnp.float32)
  g = 10.0 ** rng.uniform(-12, -7, N_DEV)
  return E.Devices(
      distance_m=a(100.0), shadowing_db=a(0.0), gain=a(g),
      large_scale_gain=a(g), bandwidth_hz=a(1e6), p_max_w=a(0.2),
      f_min_hz=a(1e8), f_max_hz=a(2e9), tau=a(1e-28), flops_per_cycle=a(8.0),
      eps=a(0.01), bit_cap=jnp.full((N_DEV,), 32, jnp.int32),
      noise_psd_w_hz=a(4e-21))


_POSITIVE_FIELDS = ("gain", "large_scale_gain", "bandwidth_hz", "p_max_w",
                    "f_min_hz", "f_max_hz", "tau", "flops_per_cycle", "eps",
                    "noise_psd_w_hz", "distance_m")


@settings(max_examples=60, **SETTINGS)
@given(st.sampled_from(_POSITIVE_FIELDS + ("shadowing_db", "f_order",
                                           "bit_cap")),
       st.integers(0, N_DEV - 1),
       st.sampled_from([float("nan"), float("inf"), -float("inf"), -1.0, 0.0,
                        -1e-30]))
def test_invalid_populations_raise_naming_field(field, index, bad):
  d = _valid_population()
  if field == "f_order":  # f_min > f_max at one device
    fmin = np.asarray(d.f_min_hz).copy()
    fmin[index] = 3e9
    d = d.replace(f_min_hz=jnp.asarray(fmin))
    expect = "f_min_hz"
  elif field == "bit_cap":
    cap = np.asarray(d.bit_cap).copy()
    cap[index] = 0 if bad <= 0 or not math.isfinite(bad) else 33
    d = d.replace(bit_cap=jnp.asarray(cap))
    expect = "bit_cap"
  else:
    if field == "shadowing_db" and math.isfinite(bad):
      bad = float("nan")  # any finite shadowing is valid
    v = np.asarray(getattr(d, field)).copy()
    v[index] = bad
    d = d.replace(**{field: jnp.asarray(v)})
    expect = field
  _count("populations_invalid")
  with pytest.raises(ValueError, match=expect):
    E.validate_devices(d)
  with pytest.raises(ValueError, match=expect):
    E.allocate(d, 1e6, 16.0, 1.0, 1e9)
  with pytest.raises(ValueError, match=expect):
    E.naive_allocation(d, 1e6, 16.0, 1.0, 1e9)


_ECFG_BAD = {
    "num_devices": [0, -1, 1.5, None],
    "radius_m": [0.0, -1.0, float("nan"), float("inf"), 5.0],
    "total_bandwidth_hz": [0.0, -20e6, float("nan"), float("inf")],
    "p_max_w": [0.0, -0.2, float("nan")],
    "f_min_hz": [0.0, -1.0, float("nan"), 3e9],  # 3e9 > f_max_hz
    "f_max_hz": [0.0, float("inf"), 1e7],  # 1e7 < f_min_hz
    "tau_mean": [0.0, -1e-28, float("nan")],
    "tau_spread": [1.0, -0.1, float("nan")],
    "shadowing_db": [-1.0, float("nan")],
    "noise_psd_dbm_hz": [float("nan"), float("inf")],
    "bandwidth_shares": [0, -3, 2.5],
    "flops_per_cycle_choices": [(), (0.0,), (8.0, float("nan")), (-1.0,)],
    "eps_choices": [(), (0.0,), (float("inf"),)],
    "bit_caps": [(), (0,), (33,), (4.5,)],
}


@settings(max_examples=60, **SETTINGS)
@given(st.sampled_from(sorted(_ECFG_BAD)).flatmap(
    lambda k: st.tuples(st.just(k), st.sampled_from(_ECFG_BAD[k]))))
def test_energy_config_rejects_invalid(kv):
  field, value = kv
  _count("energy_configs_invalid")
  with pytest.raises(ValueError) as ei:
    E.EnergyConfig(**{field: value})
  # radius_m below min_distance_m is reported on min_distance_m (with radius_m).
  assert field in str(ei.value), str(ei.value)


# ----------------------------------------------------------------------------
# 3. Quantizers.

SHAPES = [(7,), (3, 5), (64,)]
_F32_MAX = float(np.finfo(np.float32).max)
_TINY = float(np.finfo(np.float32).tiny)  # 2^-126, smallest normal
_elements = st.one_of(
    st.floats(width=32, allow_nan=True, allow_infinity=True,
              allow_subnormal=True),
    st.floats(-1.0, 1.0, width=32),
    st.sampled_from([0.0, -0.0, 1e-45, -1e-45, 1e-40, 1.17549435e-38,
                     _F32_MAX, -_F32_MAX, 1e38, -1e38, 3e38, 1.0, -1.0]))


@st.composite
def _tensor(draw, finite=False, shapes=tuple(SHAPES)):
  shape = draw(st.sampled_from(shapes))
  kind = draw(st.sampled_from(["random", "constant", "two", "random"]))
  elems = _elements if not finite else _elements.filter(math.isfinite)
  if kind == "constant":
    x = np.full(shape, draw(elems), np.float32)
  elif kind == "two":  # two values: a huge or a denormal range
    a, b = draw(elems), draw(elems)
    x = np.where(np.arange(math.prod(shape)).reshape(shape) % 2, a, b)
    x = x.astype(np.float32)
  else:
    x = draw(hnp.arrays(np.float32, shape, elements=elems))
  return x


def _buckets(x: np.ndarray, bucket_size):
  flat = x.reshape(-1)
  if bucket_size is None:
    return [slice(0, flat.size)]
  return [slice(i, min(i + bucket_size, flat.size))
          for i in range(0, flat.size, bucket_size)]


def _assert_in_bucket_range(x, out, bucket_size, what):
  out = np.asarray(out)
  assert out.shape == x.shape and out.dtype == np.float32, what
  assert np.all(np.isfinite(out)), (what, x, out)
  xf, of = x.reshape(-1), out.reshape(-1)
  for sl in _buckets(x, bucket_size):
    lo, hi = xf[sl].min(), xf[sl].max()
    # XLA:CPU flushes denormals to zero, so bounds within 2^-126 of 0 may come
    # out as 0 (see the denormal xfail tests below).
    ok = (of[sl] >= lo - _TINY) & (of[sl] <= hi + _TINY)
    assert np.all(ok), (what, sl, lo, hi, of[sl][~ok], xf[sl][~ok])


@functools.lru_cache(maxsize=None)
def _quantizer(template, method="minmax", bucket_size=None):
  """(quantizer, its jitted quantize) for nested tuples of shapes (cached)."""
  is_shape = lambda s: isinstance(s, tuple) and all(
      isinstance(n, int) for n in s)
  tree = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s, jnp.float32), template,
                      is_leaf=is_shape)
  q = Q.make_quantizer(tree, method, bucket_size)
  return q, jax.jit(q.quantize)


@settings(max_examples=150, **SETTINGS)
@given(_tensor(), st.integers(1, 32), st.sampled_from([None, 4]),
       st.integers(0, 2**31 - 1))
def test_minmax_quantizers_stay_in_range_or_reject(x, bits, bucket_size, seed):
  """quantize and the codec: inside each bucket's [lo, hi], or ValueError."""
  _count("tensors")
  key = jax.random.key(seed)
  q, _ = _quantizer((x.shape,), "minmax", bucket_size)
  flat = x.reshape(-1)
  finite = bool(np.all(np.isfinite(x)))
  for name, fn in (
      ("quantize", lambda: q.quantize(flat, bits, key)),
      ("encode", lambda: Q.decode(q, Q.encode(q, flat, bits, key)))):
    if not finite:
      with pytest.raises(ValueError, match="NaN or inf"):
        fn()
      continue
    out = np.asarray(fn()).reshape(x.shape)
    _assert_in_bucket_range(x, out, bucket_size, name)
    if bits == 32:
      np.testing.assert_array_equal(out.view(np.uint32), x.view(np.uint32))


@settings(max_examples=100, **SETTINGS)
@given(_tensor(finite=True), st.integers(1, 32), st.sampled_from([None, 4]),
       st.integers(0, 2**31 - 1))
def test_qsgd_quantizer_finite_and_bounded(x, bits, bucket_size, seed):
  """|Q(v)_i| <= ||v|| of its bucket (saturated at 3.4e38), signs kept."""
  _count("tensors")
  q, _ = _quantizer((x.shape,), "qsgd", bucket_size)
  out = np.asarray(q.quantize(x.reshape(-1), bits, jax.random.key(seed)))
  assert np.all(np.isfinite(out)), (x, out)
  xf = x.astype(np.float64).reshape(-1)
  for sl in _buckets(x, bucket_size):
    v = xf[sl]
    m = np.abs(v).max()
    norm = min(m * np.sqrt(np.sum((v / m) ** 2)), _F32_MAX) if m > 0 else 0.0
    assert np.all(np.abs(out[sl].astype(np.float64)) <= norm * (1 + 1e-6)), (
        x, out)
  # Signs are kept (0 may come out for any entry).
  assert np.all(np.sign(out) * np.sign(xf) >= 0), (x, out)


@settings(max_examples=150, **SETTINGS)
@given(_tensor(finite=True), st.integers(1, 32), st.sampled_from([None, 4]),
       st.sampled_from(["minmax", "qsgd"]), st.integers(0, 2**31 - 1))
def test_jitted_quantizer_equals_eager(x, bits, bucket_size, method, seed):
  """Traced bits under jit: the same program as the eager call, bit for bit."""
  _count("tensors")
  key = jax.random.key(seed)
  q, jitted = _quantizer((x.shape,), method, bucket_size)
  out = np.asarray(jitted(jnp.asarray(x.reshape(-1)), jnp.int32(bits), key))
  eager = np.asarray(q.quantize(x.reshape(-1), bits, key))
  np.testing.assert_array_equal(out.view(np.uint32), eager.view(np.uint32))
  if method == "minmax":
    _assert_in_bucket_range(x, out.reshape(x.shape), bucket_size, "jit")


def _bound64(x: np.ndarray, b: int, bucket_size, method) -> float:
  """The variance bound in float64 (error_bound is float32 and may be inf)."""
  v = x.astype(np.float64).reshape(-1)
  size = v.size if bucket_size is None else bucket_size
  buckets = [v[i:i + size] for i in range(0, v.size, size)]
  if method == "minmax":
    r2 = [(u.max() - u.min()) ** 2 for u in buckets]
  else:
    r2 = [np.sum(u ** 2) for u in buckets]
  return sum(len(u) * r for u, r in zip(buckets, r2)) / (
      4.0 * (2.0 ** b - 1) ** 2)


@settings(max_examples=120, **SETTINGS)
@given(_tensor(finite=True),
       st.one_of(st.just(0.0), st.floats(-12, 1).map(lambda e: 10.0 ** e)),
       st.integers(1, 32), st.sampled_from([None, 4]),
       st.sampled_from(["minmax", "qsgd"]))
@example(x=np.array([0.0] * 6 + [4.183328e19], np.float32), eps=1.0,
         b_min=1, bucket_size=None, method="minmax")  # float32 bound overflows
def test_ondemand_bits_in_range(x, eps, b_min, bucket_size, method):
  """b in [b_min, 32], meets the float64 bound when < 32, jit == eager."""
  _count("tensors")
  q, _ = _quantizer((x.shape,), method, bucket_size)
  flat = x.reshape(-1)
  b = int(q.bits_for(flat, eps, b_min))
  assert b_min <= b <= 32, (b, b_min, eps, x)
  if eps > 0 and b < 32:  # the chosen width meets the bound
    norm2 = float(np.sum(x.astype(np.float64) ** 2))
    bound = _bound64(x, b, bucket_size, method)
    assert bound <= eps * norm2 * (1 + 1e-4) or b == b_min, (b, bound, norm2)
  bj = int(jax.jit(q.bits_for)(jnp.asarray(flat), jnp.float32(eps),
                               jnp.int32(b_min)))
  assert bj == b, (bj, b)


@settings(max_examples=80, **SETTINGS)
@given(_tensor(finite=True), _tensor(finite=True, shapes=((7,),)),
       st.integers(1, 32), st.sampled_from([None, 4]),
       st.sampled_from(["minmax", "qsgd"]), st.integers(0, 2**31 - 1))
def test_codec_roundtrip_equals_quantize(x, y, bits, bucket_size, method, seed):
  """decode(encode) == quantize bit for bit; measured size == payload_bits."""
  _count("tensors", 2)
  tree = (x, (y,))
  key = jax.random.key(seed)
  q, jitted = _quantizer((x.shape, (y.shape,)), method, bucket_size)
  flat = q.pack(tree)
  payload = Q.encode(q, flat, bits, key)
  assert payload.num_bits == float(q.payload_bits(bits))
  got = Q.decode(q, payload)
  want = np.asarray(jitted(flat, jnp.int32(bits), key))
  assert np.all(np.isfinite(got))
  np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32))


@pytest.mark.xfail(strict=True, reason=(
    "fedqjax/quantization/quantizer.py: a constant bucket of denormals "
    "(1e-45) comes back as 0.0 for bits < 32 (XLA:CPU flushes denormals to "
    "zero), outside the bucket range [1e-45, 1e-45]; documented: outputs may "
    "leave a bucket's range by < 2^-126"))
@pytest.mark.parametrize("method", ["minmax", "qsgd"])
def test_quantize_denormal_constant_bucket(method):
  x = np.full((7,), 1e-45, np.float32)
  q, _ = _quantizer((x.shape,), method)
  out = np.asarray(q.quantize(x, 8, jax.random.key(0)))
  np.testing.assert_array_equal(out, x)


@pytest.mark.xfail(strict=True, reason=(
    "fedqjax/quantization/quantizer.py _minmax_dequant (the round's formula "
    "since the packed quantizer): Q = 2*(0.5*lo + q*(half/s)); 0.5*lo is "
    "denormal for lo = 2^-126 and XLA:CPU flushes it to 0, so level 0 "
    "dequantizes to 0.0 < lo (out of the bucket range by < 2^-126)"))
def test_minmax_smallest_normal_lower_bound():
  x = np.tile(np.array([_TINY, 1.0], np.float32), 4)[:7]
  q, _ = _quantizer((x.shape,), "minmax")
  out = q.quantize(x, 1, jax.random.key(0))
  assert np.asarray(out).min() >= _TINY, out


def test_print_counts():
  """Runs last in this module: prints and checks how much was fuzzed."""
  print("\nfuzz counts:", dict(sorted(COUNTS.items())))
  if "configs" in COUNTS:
    assert COUNTS["configs"] >= 300
    assert COUNTS["configs_accepted"] >= 20
    assert COUNTS["configs_rejected"] >= 100
  if "populations" in COUNTS:
    assert COUNTS["populations"] >= 50
  if "tensors" in COUNTS:
    assert COUNTS["tensors"] >= 400
