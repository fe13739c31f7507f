"""Where the on-demand bits come from: the Gaussian model vs the quantizer,
rho of a real update, a finished sweep's history; the models."""

import json
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments.energy_sweep import bits_sources, models
from fedqjax import quantization as Q


def test_gaussian_model_matches_a_gaussian_update():
  """rho of the analytic model vs the quantizer on one Gaussian draw
  (tensors of 1 to 20000 entries). The sample rho concentrates (relative sd
  ~1% here), so a 10% band fails with negligible probability; bits then
  agree within one."""
  sizes = (1, 7, 64, 1000, 20000)
  template = [jax.ShapeDtypeStruct((s,), jnp.float32) for s in sizes]
  flat = jax.random.normal(jax.random.key(0), (sum(sizes),))
  for method in ("minmax", "qsgd"):
    q = Q.make_quantizer(template, method)
    model = bits_sources.gaussian_ratio(q)
    sample = bits_sources.update_ratio(q, flat)
    assert abs(model / sample - 1) < 0.1, (method, model, sample)
    eps = jnp.asarray([1e-4, 1e-3, 1e-2, 1e-1])
    b_model = bits_sources.ondemand_bits(model, eps, 1, 32)
    b_q = jnp.stack([q.bits_for(flat, e) for e in eps])
    assert np.all(np.abs(np.asarray(b_model) - np.asarray(b_q)) <= 1)


def test_update_ratio_reproduces_bits_for():
  """Bits from rho (the sweep's path) equal the quantizer's own bits_for."""
  template = {
    "a": jax.ShapeDtypeStruct((3, 50), jnp.float32),
    "b": jax.ShapeDtypeStruct((700,), jnp.float32),
  }
  q = Q.make_quantizer(template, "minmax", bucket_size=64)
  flat = jax.random.laplace(jax.random.key(1), (q.num_entries,)) * 1e-3
  rho = bits_sources.update_ratio(q, flat)
  eps = np.logspace(-6, 0, 25)
  got = np.asarray(bits_sources.ondemand_bits(rho, eps, 2, 32))
  want = np.asarray([q.bits_for(flat, float(e), 2) for e in eps])
  np.testing.assert_array_equal(got, want)
  assert len(set(want.tolist())) > 5


def test_history_source(tmp_path):
  for run, bits in (
    ("ondemand", [[3, 4], [5]]),
    ("ondemand_seed1", [[6]]),
    ("ondemand_eps0.5", [[30]]),
    ("fp32", [[32]]),
  ):
    os.makedirs(tmp_path / run)
    rows = [{"round": i + 1, "bits": b} for i, b in enumerate(bits)]
    (tmp_path / run / "history.json").write_text(
      json.dumps([{"round": 0}] + rows)
    )
  assert sorted(bits_sources.history_bits(str(tmp_path)).tolist()) == [
    3,
    4,
    5,
    6,
  ]
  assert bits_sources.history_bits(
    str(tmp_path / "ondemand_seed1" / "history.json")
  ).tolist() == [6]
  with pytest.raises(ValueError, match=r"^config\.bits_source=.*valid: "):
    bits_sources.history_bits(str(tmp_path / "missing"))
  (tmp_path / "ondemand" / "history.json").write_text("{not json")
  with pytest.raises(ValueError, match=r"^config\.bits_source=.*cannot be "):
    bits_sources.history_bits(str(tmp_path))


def test_model_names_and_synthetic_spec():
  assert models.model_name("tiny") == "tiny"
  assert models.model_name("1e5") == models.model_name(1e5) == "100000"
  for bad in ("huge", 1.5, 0, 2e10, True, None):
    with pytest.raises(ValueError, match=re.escape(models.VALID)):
      models.model_name(bad)
  spec = models.model_spec("300000")
  sizes = [x.shape[0] for x in spec.template]
  assert sizes == [models.SYNTHETIC_LEAF] * 2 + [300000 - 2 * 2**17]
  assert spec.num_params == 300000
  np.testing.assert_allclose(
    spec.flops_per_sample, 300000 * models.PAPER_FLOPS / models.PAPER_PARAMS
  )
