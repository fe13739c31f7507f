"""Tests for fedqjax.federated.sharding: the round with the client axis
sharded over 8 forced CPU devices equals the 1-device round (a subprocess,
sharded_check.py; a file of its own so pytest-xdist can run it beside
test_round.py). Several processes (jax.distributed): tests/experiments/."""

from tests.support import ROOT, cli_env, run_cli

SCRIPT = ROOT / "tests" / "fedqjax" / "federated" / "sharded_check.py"


def test_sharded_over_8_cpu_devices_equals_single_device():
  out = run_cli([], program=(str(SCRIPT),), env=cli_env(devices=8), timeout=600)
  assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
  assert "SHARDED_OK devices=8" in out.stdout, out.stdout
