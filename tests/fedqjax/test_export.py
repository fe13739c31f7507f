"""Accelerator readiness without an accelerator: the round (vmap layout,
bfloat16, a 2-device mesh), the DDIM / DDPM samplers, the held-out loss and
the Inception forward export for cuda and tpu (`jax.export`, lowered in a
subprocess on 2 forced CPU devices: export_check.py), and the exported
StableHLO has no host callback, no custom call outside the sharding ones
(jax.export itself refuses targets without a stability guarantee, e.g. the
CPU-only LAPACK ones) and no float64."""

import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest

from tests import support

PROGRAMS = ("round", "ddim", "ddpm", "heldout", "inception")
# Sharding annotations (GSPMD / Shardy) are the only custom calls allowed.
ALLOWED_CALLS = {"Sharding", "SPMDFullToShardShape", "SPMDShardToFullShape"}


@pytest.fixture(scope="module")
def texts(tmp_path_factory):
  out = tmp_path_factory.mktemp("export")
  proc = subprocess.run(
    [sys.executable, "tests/fedqjax/export_check.py", str(out)],
    cwd=support.ROOT,
    env=support.cli_env(devices=2),
    capture_output=True,
    text=True,
    timeout=1200,
  )
  assert "EXPORT_OK" in proc.stdout, proc.stdout[-2000:] + proc.stderr[-4000:]
  return {p: (out / f"{p}.mlir").read_text() for p in PROGRAMS}


def problems(text: str) -> list:
  """What would not run (or not as on CPU) on an accelerator."""
  found = []
  calls = set(re.findall(r"custom_call\s*@([\w.]+)", text))
  calls |= set(re.findall(r'call_target_name\s*=\s*"([\w.]+)"', text))
  if calls - ALLOWED_CALLS:
    found.append(f"custom calls {sorted(calls - ALLOWED_CALLS)}")
  if re.search(r"callback", text, re.I):
    found.append("host callback")
  if re.search(r"\bf64\b|xf64>|<f64>", text):
    found.append("float64")
  return found


@pytest.mark.parametrize("program", PROGRAMS)
def test_exports_for_cuda_and_tpu(texts, program):
  text = texts[program]
  assert problems(text) == []
  # One module for both platforms: the lowering picks one by index.
  assert "platform_index" in text


def test_round_is_bfloat16_on_a_2_device_mesh(texts):
  text = texts["round"]
  assert "num_partitions = 2" in text
  assert "sdy.sharding_constraint" in text or "@Sharding" in text
  assert "bf16" in text


def test_problems_finds_float64():
  # The check itself: a float64 program is flagged (x64 on for one trace).
  with jax.enable_x64(True):
    f = jax.jit(lambda x: x * 2.0)
    text = jax.export.export(f, platforms=("cuda", "tpu"))(
      jnp.zeros((3,), jnp.float64)
    ).mlir_module()
  assert problems(text) == ["float64"]
  assert problems("stablehlo.custom_call @lapack_sgesdd_ffi(%0)") == [
    "custom calls ['lapack_sgesdd_ffi']"
  ]
