"""The training sweep's settings tree: every key checked before anything
compiles, named by its key path."""

import dataclasses
import subprocess

import ml_collections
import pytest

from experiments.common import settings as settings_lib
from experiments.configs import cifar_sweep
from experiments.configs import test as test_config
from experiments.fl_sweep import settings
from tests.support import ROOT, run_cli


@pytest.mark.parametrize("preset", ["cpu", "quality", "paper"])
def test_presets_are_valid(preset):
  s = settings.parse(cifar_sweep.get_config(preset))
  assert s.preset == preset


def test_config_file_is_the_tree():
  """The config file's keys are the tree's leaves; its defaults the tree's."""
  c = cifar_sweep.get_config("cpu")
  assert settings_lib.flatten(c) == settings_lib.flatten(settings.Settings())
  assert set(settings_lib.flatten(test_config.get_config())) == set(
    settings_lib.leaves(settings.Settings)
  )
  s = settings.parse(test_config.get_config())
  assert dataclasses.is_dataclass(s) and s.fed.num_clients == 4
  with pytest.raises(dataclasses.FrozenInstanceError):
    s.fed.num_clients = 5  # pylint: disable=assigning-non-slot


def _parse(**overrides):
  c = ml_collections.ConfigDict(
    test_config.get_config().to_dict(), type_safe=False
  )
  with c.unlocked():
    for key, value in overrides.items():
      *path, last = key.split(".")
      node = c
      for p in path:
        node = node[p]
      node[last] = value
  return settings.parse(c)


@pytest.mark.parametrize(
  "key,value,match",
  [
    ("fed.num_clients", 0, r"fed\.num_clients=0.*valid"),
    ("fed.clients_per_round", 99, r"clients_per_round"),
    ("fed.ema_decay", 1.0, r"ema_decay=1\.0.*\[0, 1\)"),
    ("optim.lr", float("nan"), r"optim\.lr=nan"),
    ("optim.optimizer", "adamw", r"optimizer.*adam"),
    ("quant.fixed_bits", 33, r"fixed_bits=33.*\[1, 32\]"),
    ("quant.b_min", 0, r"b_min"),
    ("energy.p_max_w", -0.2, r"p_max_w=-0\.2"),
    ("energy.f_min_hz", 3e9, r"f_min_hz"),
    ("energy.total_bandwidth_hz", 0.0, r"total_bandwidth_hz"),
    ("energy.eps_choices", (0.1, -1.0), r"eps_choices"),
    ("diffusion.beta_end", 1e-5, r"diffusion\.beta_start=.*beta_end"),
    ("eval.ddim_steps", 5000, r"ddim_steps=5000"),
    ("eval.vlb_t_stride", 50, r"vlb_t_stride=50.*1\.\.diffusion\.T-1=49"),
    ("eval.vlb_size", 33, r"vlb_size=33.*data\.num_test=32"),
    ("model.num_groups", 3, r"config\.model\.num_groups=3"),
    ("model.ch", 0, r"config\.model\.ch=0"),
    ("data.resolution", 20, r"resolution=20"),
    ("fed.client_loop", "threads", r"fed\.client_loop='threads'.*unrolled"),
    ("sweep.allocations", ("kkt", "cheap"), r"sweep\.allocations"),
    ("sweep.seeds", (0, -1), r"sweep\.seeds"),
    ("sweep.eps_scales", (1.0, 0.0), r"sweep\.eps_scales"),
    ("energy.deadline_rule", "mean", r"deadline_rule.*fp32_feasible"),
    ("energy.deadline_quantile", 1.5, r"deadline_quantile=1\.5"),
    ("energy.tau_spread", 1.0, r"config\.energy\.tau_spread=1\.0"),
    ("fed.local_steps", 0, r"config\.fed\.local_steps=0.*>= 1"),
    ("quant.target", "delta", r"config\.quant\.target='delta'"),
    ("data.dirichlet_alpha", 0.0, r"dirichlet_alpha"),
    ("sweep.schemes", ("fp32", "int4"), r"sweep\.schemes"),
    ("fed.local_steps", 2.5, r"local_steps=2\.5"),
    ("energy.rayleigh_fading", 1, r"rayleigh_fading"),
  ],
)
def test_bad_values_name_key_and_range(key, value, match):
  # type_safe=False: programmatic users (and fuzzers) can put any type in.
  with pytest.raises(ValueError, match=match):
    _parse(**{key: value})


@pytest.mark.parametrize("key", sorted(settings.REMOVED))
def test_removed_keys_name_the_new_one(key):
  with pytest.raises(ValueError, match=r"removed.*fed\.client_loop"):
    _parse(**{key: 1})


def test_library_never_names_config_paths():
  """The library's settings name their own fields; the parser adds paths."""
  out = subprocess.run(
    [
      "grep",
      "-rnE",
      r"(fed|quant|energy|optim|model|eval|sweep|axes|"
      r"deadline)\.[a-z_]+=|config\.",
      "fedqjax/",
    ],
    cwd=ROOT,
    capture_output=True,
    text=True,
  )
  hits = [ln for ln in out.stdout.splitlines() if '"' in ln or "'" in ln]
  assert not hits, hits


def test_library_takes_no_config_files_or_workdirs():
  """fedqjax/ is the library: no ConfigDict, absl, matplotlib, workdir."""
  out = subprocess.run(
    [
      "grep",
      "-rnE",
      r"ml_collections|ConfigDict|absl|matplotlib|open\(|workdir",
      "fedqjax/",
      "--include=*.py",
    ],
    cwd=ROOT,
    capture_output=True,
    text=True,
  )
  assert not out.stdout, out.stdout


def test_naive_alias_and_plan():
  s = _parse(
    **{"sweep.schemes": ("fp32", "naive"), "sweep.allocations": ("kkt",)}
  )
  assert s.sweep.plan() == (("fp32", "ondemand"), ("kkt", "max"))


def test_unknown_key_suggests_closest():
  with pytest.raises(ValueError, match=r"fed\.num_clientz.*fed\.num_clients"):
    _parse(**{"fed.num_clientz": 3})


def test_missing_key_takes_its_default():
  c = ml_collections.ConfigDict(test_config.get_config().to_dict())
  del c.eval["fid"]
  del c["fed"]
  s = settings.parse(c)
  assert s.eval.fid is settings.Eval().fid and s.fed == settings.Fed()


def test_schemes_from_comma_string():
  s = _parse(**{"sweep.schemes": "fp32, ondemand"})
  assert s.sweep.schemes == ("fp32", "ondemand")
  s = _parse(**{"sweep.schemes": ("fp32,ondemand",)})  # config_flags' form
  assert s.sweep.schemes == ("fp32", "ondemand")


def test_ints_become_floats_and_tuples_stay_tuples():
  s = _parse(**{"optim.lr": 1, "energy.eps_choices": [1, 0.5]})
  assert s.optim.lr == 1.0 and isinstance(s.optim.lr, float)
  assert s.energy.eps_choices == (1.0, 0.5)


def test_core_imports_without_tensorflow():
  """The core must run where TensorFlow is absent (GPU boxes, TPU VMs)."""
  code = (
    "import sys\n"
    "sys.modules['tensorflow'] = None  # any import of it now fails\n"
    "sys.modules['tensorflow_datasets'] = None\n"
    "import fedqjax.federated, fedqjax.energy, fedqjax.quantization\n"
    "import fedqjax.diffusion, fedqjax.metrics, fedqjax.data\n"
    "import fedqjax.testing.reference_round\n"
    "import experiments.fl_sweep.settings\n"
    "print('CORE_OK')\n"
  )
  out = run_cli(["-c", code], program=(), timeout=300)
  assert "CORE_OK" in out.stdout, out.stderr[-2000:]
