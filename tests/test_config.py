"""Config validation: every field checked before anything compiles."""
import ml_collections
import pytest

from experiments.configs import cifar_sweep, test as test_config
from experiments.fl_sweep import settings as config_lib
from experiments.fl_sweep import schema_old as config_schema


@pytest.mark.parametrize("preset", ["cpu", "quality", "paper"])
def test_presets_are_valid(preset):
  config_lib.validate_config(cifar_sweep.get_config(preset))


def test_test_config_valid_and_every_key_in_schema():
  c = test_config.get_config()
  config_lib.validate_config(c)
  assert set(config_lib.flatten(c)) == set(config_schema.TYPES)


@pytest.mark.parametrize("key,value,match", [
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
])
def test_bad_values_name_key_and_range(key, value, match):
  # type_safe=False: programmatic users (and fuzzers) can put any type in.
  c = ml_collections.ConfigDict(test_config.get_config().to_dict(),
                                type_safe=False)
  node = c
  *path, last = key.split(".")
  for p in path:
    node = node[p]
  with c.unlocked():
    node[last] = value
  with pytest.raises(ValueError, match=match):
    config_lib.validate_config(c)


@pytest.mark.parametrize("key", sorted(config_schema.REMOVED_KEYS))
def test_removed_keys_name_the_new_one(key):
  c = test_config.get_config()
  section, name = key.split(".")
  with c.unlocked():
    c[section][name] = 1
  with pytest.raises(ValueError, match=r"removed.*fed\.client_loop"):
    config_lib.validate_config(c)


def test_core_messages_never_name_config_paths():
  """The core's settings name their own fields; the config layer maps."""
  import re
  import subprocess
  root = config_schema.__file__.rsplit("/fedqjax/", 1)[0]
  out = subprocess.run(
      ["grep", "-rnE", r"(fed|quant|energy|optim|model|eval|sweep)\.[a-z_]+=",
       "fedqjax/federated", "fedqjax/energy", "fedqjax/diffusion",
       "fedqjax/quantization"], cwd=root, capture_output=True, text=True)
  hits = [l for l in out.stdout.splitlines() if re.search(r"[\"']", l)]
  assert not hits, hits


def test_naive_alias_and_plan():
  c = test_config.get_config()
  c.sweep.schemes = ("fp32", "naive")
  c.sweep.allocations = ("kkt",)
  assert config_lib.sweep_plan(c) == (("fp32", "ondemand"), ("kkt", "max"))


def test_unknown_key_suggests_closest():
  c = test_config.get_config()
  with c.unlocked():
    c.fed.num_clientz = 3
  with pytest.raises(ValueError, match=r"fed\.num_clientz.*fed\.num_clients"):
    config_lib.validate_config(c)


def test_missing_key_reported():
  c = ml_collections.ConfigDict(test_config.get_config().to_dict())
  del c.eval["fid"]
  with pytest.raises(ValueError, match="missing.*eval.fid"):
    config_lib.validate_config(c)


def test_schemes_from_comma_string():
  c = ml_collections.ConfigDict(test_config.get_config().to_dict(),
                                type_safe=False)
  with c.unlocked():
    c.sweep.schemes = "fp32, ondemand"
  config_lib.validate_config(c)
  assert tuple(c.sweep.schemes) == ("fp32", "ondemand")


def test_core_imports_without_tensorflow():
  """The core must run where TensorFlow is absent (GPU boxes, TPU VMs)."""
  import os
  import subprocess
  import sys
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  code = ("import sys\n"
          "sys.modules['tensorflow'] = None  # any import of it now fails\n"
          "sys.modules['tensorflow_datasets'] = None\n"
          "import fedqjax.federated, fedqjax.energy, fedqjax.quantization\n"
          "import fedqjax.diffusion, fedqjax.metrics, fedqjax.data\n"
          "import experiments.fl_sweep.settings\n"
          "print('CORE_OK')\n")
  out = subprocess.run([sys.executable, "-c", code], cwd=root,
                       capture_output=True, text=True, timeout=300,
                       env=dict(os.environ, PYTHONPATH=root))
  assert "CORE_OK" in out.stdout, out.stderr[-2000:]
