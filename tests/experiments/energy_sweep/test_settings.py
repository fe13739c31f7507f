"""The energy sweep's settings tree: defaults declared once, the config
file's presets, docs/usage.md's command lines, and rejections that name the
key path (parsed in process, through ml_collections' own flag parsing)."""

import dataclasses
import json

import pytest
from absl import flags
from ml_collections import config_flags

from experiments.common import settings as common
from experiments.configs import energy_sweep as config_mod
from experiments.energy_sweep import main, sweep
from experiments.energy_sweep import settings as settings_lib


def _command_line(*args):
  """The settings of `python -m experiments.energy_sweep <args>`."""
  fv = flags.FlagValues()
  config_flags.DEFINE_config_file(
    "config",
    main.DEFAULT_CONFIG,
    flag_values=fv,
    lock_config=True,
    sys_argv=["prog", *args],
  )
  fv(["prog", *args])
  return settings_lib.parse(fv.config)


def test_default_preset_is_the_tree():
  c = config_mod.get_config()
  assert c.to_dict() == common.to_config_dict(settings_lib.Settings()).to_dict()
  assert settings_lib.parse(c) == settings_lib.Settings()
  assert settings_lib.SweepSettings.from_dict(c) == settings_lib.Settings()


def test_small_preset():
  s = settings_lib.parse(config_mod.get_config("small"))
  assert s.num_seeds == 2 and s.base.model == "100000"
  assert s.axes.num_devices == (10, 100) and s.heatmap == (
    "deadline_factor",
    "eps_scale",
  )
  with pytest.raises(ValueError, match="valid: default, small"):
    config_mod.get_config("big")


def test_axes_iterate_as_pairs():
  s = settings_lib.Settings()
  names = [a for a, _ in s.axes]
  assert names == sorted(names) == list(settings_lib.AXES)
  assert s.axes[0][0] == "cycles_per_sample"
  none = dataclasses.replace(s.axes, fading=(), model=())
  assert "fading" not in dict(none) and len(none) == len(s.axes) - 2


@pytest.mark.parametrize(
  "args,check",
  [
    (
      ["--config.axes.num_devices=10,1000,100000"],
      lambda s: s.axes.num_devices == (10, 1000, 100000),
    ),
    (
      ["--config.deadline.reference=base"],
      lambda s: s.deadline.reference == "base",
    ),
    (
      ["--config.num_seeds=20", "--config.axes.deadline_factor=1,2,4,8"],
      lambda s: (
        s.num_seeds == 20 and s.axes.deadline_factor == (1.0, 2.0, 4.0, 8.0)
      ),
    ),
    (
      ["--config=experiments/configs/energy_sweep.py:small"],
      lambda s: s.num_seeds == 2,
    ),
    (
      ["--config.axes.model=tiny,1e6", "--config.base.model=1e5"],
      lambda s: s.axes.model == ("tiny", "1e6"),
    ),
    (
      ["--config.axes.model=1e8,1e9"],
      lambda s: s.axes.model == ("100000000.0", "1000000000.0"),
    ),
    (
      ["--config.heatmap=num_devices,p_max_w"],
      lambda s: s.heatmap == ("num_devices", "p_max_w"),
    ),
    (
      ["--config.heatmap=", "--config.axes.fading=()"],
      lambda s: s.heatmap == () and "fading" not in dict(s.axes),
    ),
    (
      ["--config.allocations=kkt,shared", "--config.devices.bit_caps=4,8"],
      lambda s: (
        s.allocations == ("kkt", "shared")
        and s.devices.energy_config().bit_caps == (4, 8)
      ),
    ),
  ],
)
def test_command_lines_parse(args, check):
  assert check(_command_line(*args))


def test_models_normalized_in_the_grid():
  s = _command_line(
    "--config=experiments/configs/energy_sweep.py:small",
    "--config.axes.model=1e4,100000.0,tiny",
    "--config.base.model=1e5",
  )
  grid = settings_lib.scenarios_of(s)
  assert grid["scenarios"][0].model == "100000"
  rows = [
    (v, grid["scenarios"][i].model)
    for a, v, _, _, i in grid["rows"]
    if a == "model"
  ]
  assert rows == [("10000", "10000"), ("100000", "100000"), ("tiny", "tiny")]
  assert [i for a, _, _, _, i in grid["rows"] if a == "model"][1] == 0


def _history(tmp_path):
  run = tmp_path / "sweep" / "ondemand"
  run.mkdir(parents=True)
  (run / "history.json").write_text(json.dumps([{"round": 1, "bits": [3, 4]}]))
  return str(tmp_path / "sweep")


def test_bits_source_history_command_line(tmp_path):
  path = _history(tmp_path)
  with pytest.raises(
    ValueError,
    match=r"config\.axes\.eps_scale=.*valid: "
    r"\(\) with a sweep's history",
  ):
    _command_line(f"--config.bits_source={path}")
  s = _command_line(
    "--config=experiments/configs/energy_sweep.py:small",
    f"--config.bits_source={path}",
    "--config.axes.eps_scale=()",
    "--config.heatmap=()",
  )
  assert sweep.prepare(s, log=lambda m: None).history.tolist() == [3, 4]


def _set(c, path, value):
  node = c
  for k in path[:-1]:
    node = node[k]
  node[path[-1]] = value


@pytest.mark.parametrize(
  "key,value,match",
  [
    (("base", "deadline_factor"), -1.0, "base.deadline_factor"),
    (("base", "num_devices"), 0, "base.num_devices"),
    (("base", "model"), "huge", "base.model"),
    (("axes", "p_max_w"), (0.1, -2.0), r"axes.p_max_w=\(0.1, -2.0\)"),
    (("deadline", "rule"), "mean", "deadline.rule"),
    (("quant", "b_min"), 40, "quant.b_min"),
    (("devices", "f_min_hz"), -1.0, "devices.f_min_hz"),
    (("allocations",), ("kkt", "opt"), "allocations"),
    (("heatmap",), "deadline_factor,nope", "heatmap"),
    (("heatmap",), ("deadline_factor",), "heatmap"),
    (("num_seeds",), 0, "num_seeds"),
    (("base", "f_max_hz"), 5e7, r"base.f_max_hz=.*\(config.devices.f_min_hz="),
    (
      ("axes", "f_max_hz"),
      (1e9, 5e7),
      r"axes.f_max_hz=.*config.devices.f_min_hz=",
    ),
    (("bits_source",), "", "bits_source"),
  ],
)
def test_settings_reject_naming_the_key(key, value, match):
  c = config_mod.get_config("small").to_dict()
  _set(c, key, value)
  with pytest.raises(ValueError, match=f"^config.{match}") as e:
    settings_lib.parse(c)
  assert "invalid; valid: " in str(e.value)


def test_measured_source_needs_preset_models():
  c = config_mod.get_config("small").to_dict()
  c["bits_source"] = "measured"
  with pytest.raises(ValueError) as e:
    settings_lib.parse(c)
  assert str(e.value) == (
    "config.base.model='100000' is invalid; valid: "
    "tiny | paper with config.bits_source=measured"
  )


def test_settings_unknown_key_did_you_mean():
  c = config_mod.get_config("small").to_dict()
  c["base"]["num_device"] = 5
  with pytest.raises(
    ValueError,
    match=r"config\.base\.num_device is not a "
    r"config key; did you mean config\.base\.num_devices\?",
  ):
    settings_lib.parse(c)
