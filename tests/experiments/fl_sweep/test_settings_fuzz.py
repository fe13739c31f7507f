"""Property-based fuzzing (hypothesis) of the training experiment's config
layer (moved verbatim from tests/test_fuzz.py; the library's property-based
tests are under tests/fedqjax/):

* configs: random 1-3 key mutations of experiments/configs/test.py either
  validate (and then convert to EnergyConfig / RoundSpec without error) or
  raise ValueError naming a mutated key; never another exception type.

All examples are derandomized (fixed seed) and bounded. `pytest -s` prints the
counts.
"""

from __future__ import annotations

import ml_collections
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from experiments.common import settings as settings_lib
from experiments.configs import test as test_config
from experiments.fl_sweep import build
from experiments.fl_sweep import settings as fl_settings
from fedqjax import energy as E
from fedqjax.federated import execution
from fedqjax.federated import spec as spec_lib

SETTINGS = dict(
  deadline=None,
  derandomize=True,
  database=None,
  suppress_health_check=list(HealthCheck),
)
COUNTS = {}


def _count(name, n=1):
  COUNTS[name] = COUNTS.get(name, 0) + n


# ----------------------------------------------------------------------------
# 1. Configs.

_BASE = test_config.get_config().to_dict()
_PY_TYPES = {float: (int, float), int: (int,), str: (str,), bool: (bool,)}
_TYPES = {
  k: _PY_TYPES.get(tp, (tuple, list))
  for k, (tp, _) in settings_lib.leaves(fl_settings.Settings).items()
}
_KEYS = sorted(_TYPES)
_STRINGS = sorted(
  {
    "cpu",
    "paper",
    "test",
    "auto",
    "cifar10",
    "fashion_mnist",
    "synthetic",
    "iid",
    "dirichlet",
    "shards",
    "float32",
    "bfloat16",
    "minmax",
    "qsgd",
    "ddim",
    "ddpm",
    *execution.CLIENT_LOOPS,
    *spec_lib.OPTIMIZERS,
    *spec_lib.TARGETS,
    *spec_lib.INFEASIBLE_POLICIES,
    *spec_lib.BITS_SCHEMES,
    "naive",
    *E.ALLOCATIONS,
    *E.DEADLINE_RULES,
  }
)
_HUGE_INT = 10**400  # a valid Python int that does not fit in a float


def _typo(key: str, draw) -> str:
  """A near-miss of an existing key (dropped, doubled or swapped letter)."""
  i = draw(st.integers(0, len(key) - 1))
  kind = draw(st.sampled_from(["drop", "double", "swap", "suffix"]))
  if kind == "drop" and key[i] != ".":
    out = key[:i] + key[i + 1 :]
  elif kind == "double" and key[i] != ".":
    out = key[:i] + key[i] + key[i:]
  elif kind == "swap" and i + 1 < len(key) and "." not in key[i : i + 2]:
    out = key[:i] + key[i + 1] + key[i] + key[i + 2 :]
  else:
    out = key + "_x"
  return out if out not in _TYPES else key + "_typo"


def _value_strategy(key: str):
  """Valid and invalid values for `key` (range, type, NaN/inf, huge, ...).

  Two input classes are covered by dedicated tests below instead: ints too
  large for a float, and a comma string for sweep.schemes.
  """
  types = _TYPES[key]
  if key in ("sweep.schemes", "sweep.allocations"):
    types = tuple(t for t in types if t is not str)
  base = _BASE
  for part in key.split("."):
    base = base[part]
  wrong = st.sampled_from(
    [
      None,
      "abc",
      "",
      [1, 2],
      (),
      {"a": 1},
      True,
      False,
      1.5,
      -1,
      0,
      3,
      float("nan"),
      float("inf"),
      -float("inf"),
      10**30,
      -(10**30),
    ]
  )
  opts = [wrong]
  if str in types:
    opts += [
      st.sampled_from(_STRINGS),
      st.text(max_size=8),
      st.sampled_from(["fp32,ondemand", "fp32, naive", ",", "fixed"]),
    ]
  if bool in types:
    opts.append(st.booleans())
  if int in types and bool not in types:
    opts += [
      st.integers(-3, 40),
      st.integers(-(2**40), 2**40),
      st.sampled_from(
        [
          0,
          1,
          2,
          8,
          16,
          28,
          32,
          1024,
          1025,
          2**31 - 1,
          2**31,
          100000,
          100001,
          10_000_000,
          1_000_000,
        ]
      ),
    ]
  if float in types:
    opts += [
      st.floats(allow_nan=True, allow_infinity=True),
      st.floats(-1.0, 2.0),
      st.floats(-300, 300).map(lambda e: 10.0**e),
      st.just(base * 0.5) if isinstance(base, float) else st.just(0.5),
      st.just(base * 2.0) if isinstance(base, float) else st.just(2.0),
    ]
  if tuple in types or list in types:
    elem = st.one_of(
      st.integers(-2, 40),
      st.floats(allow_nan=True),
      st.sampled_from(list(spec_lib.BITS_SCHEMES) + [10**30]),
      st.floats(1e-4, 1e3),
    )
    opts += [
      st.lists(elem, max_size=4).map(tuple),
      st.lists(
        st.sampled_from(spec_lib.BITS_SCHEMES + ("naive",)),
        min_size=1,
        max_size=4,
      ).map(tuple),
      st.lists(st.sampled_from(E.ALLOCATIONS), min_size=1, max_size=4).map(
        tuple
      ),
      st.lists(st.integers(1, 4), min_size=1, max_size=3).map(tuple),
      st.lists(st.floats(1e-3, 64.0), min_size=1, max_size=4).map(tuple),
    ]
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
  return any(
    k in msg or (k in _LEAF_ONLY and k.rsplit(".", 1)[-1] in msg) for k in keys
  )


@settings(max_examples=400, **SETTINGS)
@given(_mutated_config())
def test_config_mutations_validate_or_value_error(cm):
  c, mutated = cm
  _count("configs")
  try:
    s = fl_settings.parse(c)
  except ValueError as e:
    _count("configs_rejected")
    assert _names_a_key(str(e), mutated), (mutated, str(e))
    return
  # Accepted: building the library's settings must succeed as well.
  _count("configs_accepted")
  _library_settings(s)


def _library_settings(s):
  s.energy.devices(s.fed.num_clients, s.fed.clients_per_round)
  unet = s.model.unet(s.data.resolution or None)
  build.round_spec(s, unet, None, 1e6)


def test_config_unmutated_validates():
  _library_settings(fl_settings.parse(test_config.get_config()))


def test_config_radius_below_min_distance_names_radius():
  # Any radius_m > 0 has the right type; EnergyConfig needs radius_m > 10 m.
  with pytest.raises(ValueError, match="radius_m"):
    fl_settings.parse(_config_with("energy.radius_m", 5.0))


def _config_with(key, value):
  d = test_config.get_config().to_dict()
  _set(d, key, value)
  return ml_collections.ConfigDict(d)


@pytest.mark.parametrize(
  "key",
  [
    "energy.p_max_w",
    "energy.radius_m",
    "energy.tau_mean",
    "energy.f_max_hz",
    "energy.eps_choices",
  ],
)
def test_config_huge_int_is_value_error(key):
  value = (_HUGE_INT,) if key.endswith("_choices") else _HUGE_INT
  with pytest.raises(ValueError, match=key.split(".")[-1]):
    fl_settings.parse(_config_with(key, value))


def test_config_huge_deadline_rejected_at_validation():
  c = _config_with("energy.deadline_s", _HUGE_INT)
  try:
    s = fl_settings.parse(c)
  except ValueError:
    return
  float(s.energy.deadline_s)  # what build.deadline does next


def test_config_schemes_comma_string():
  c = _config_with("sweep.schemes", "fp32,ondemand")
  assert fl_settings.parse(c).sweep.schemes == ("fp32", "ondemand")


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
