"""The per-device memory model (fedqjax.federated.memory) against XLA's
buffer assignment of the compiled round, the capacity of known devices and
the vmap -> map fallback on every accelerator backend."""

import dataclasses
import types

import jax
import jax.numpy as jnp
import pytest

from fedqjax import federated as fed
from fedqjax.federated import memory
from tests.support import federated as S


@pytest.mark.parametrize(
  "kind, gb",
  [
    ("TPU v5 lite", 16),
    ("TPU v6 lite", 32),
    ("Tesla T4", 15),
    ("NVIDIA A100-SXM4-40GB", 40),
    ("NVIDIA A100-SXM4-80GB", 80),
    ("NVIDIA A100 80GB PCIe", 80),
    ("NVIDIA H100 80GB HBM3", 80),
  ],
)
def test_known_capacity(kind, gb):
  assert memory.known_capacity(kind) == gb * memory.GB


def _device(platform, kind, stats):
  return types.SimpleNamespace(
    platform=platform, device_kind=kind, memory_stats=lambda: stats
  )


def test_capacity_prefers_the_backend_then_the_table(monkeypatch):
  monkeypatch.delenv(memory.ENV_BYTES, raising=False)
  gpu = _device("gpu", "Tesla T4", {"bytes_limit": 14_000_000_000})
  assert memory.device_capacity(gpu) == 14_000_000_000
  tpu = _device("tpu", "TPU v5 lite", None)  # no memory_stats
  assert memory.device_capacity(tpu) == 16 * memory.GB
  assert memory.device_capacity(_device("tpu", "TPU v99", None)) is None
  monkeypatch.setenv(memory.ENV_BYTES, "2.5")
  assert memory.device_capacity(gpu) == 2.5 * memory.GB


@pytest.mark.parametrize("backend", ["gpu", "tpu", "rocm"])
def test_auto_falls_back_to_map_on_every_accelerator(backend):
  r = fed.resolve_execution
  assert r("auto", backend, 10, fits=lambda lay: lay == "map").layout == "map"
  assert r("auto", backend, 10, fits=lambda lay: True).layout == "vmap"
  assert r("auto", backend, 10).layout == "vmap"
  assert r("vmap", backend, 10, fits=lambda lay: False).layout == "vmap"


def test_fit_layout():
  est = {
    "vmap": memory.round_bytes("vmap", 10, 10**9, 10**8, 0),
    "map": memory.round_bytes("map", 10, 10**9, 10**8, 0),
  }
  assert est["vmap"].total > est["map"].total
  pick = lambda cap: memory.fit_layout("vmap", est.__getitem__, cap).layout
  assert pick(None) == "vmap"
  assert pick(2 * est["vmap"].total) == "vmap"
  assert pick(est["vmap"].total) == "map"  # over HEADROOM x capacity


def test_forward_bytes_counts_live_values():
  # x, sin(x) and cos(x) are live together: 3 x 4 kB; then x dies.
  f = lambda x: jnp.sin(x) + jnp.cos(x)
  x = jax.ShapeDtypeStruct((1000,), jnp.float32)
  assert memory.forward_bytes(f, x) == 12_000


@pytest.mark.parametrize("layout, k", [("vmap", 3), ("map", 3)])
def test_round_model_bounds_xla(layout, k):
  """XLA:CPU's arguments + temporaries of the compiled tiny round (the
  accelerator form: XLA's convolutions, unrolled local steps) <= the model
  <= 2 x XLA's: the stated error (a conservative estimate). A model
  counting K clients' activations for map, or ALPHA halved, fails it."""
  spec = S.make_spec(n=8, k=k, loop=layout)
  spec = dataclasses.replace(spec, execution=fed.Execution(layout, True, "xla"))
  state = fed.init_server_state(S.init_params(), jax.random.key(0), 3)
  data, devices = S.make_data(8), S.make_devices(8, bandwidth_shares=k)
  scheme = fed.make_scheme("ondemand", deadline_s=1.0)
  compiled = (
    fed.jit_round_step(spec).lower(state, data, devices, scheme).compile()
  )
  ma = compiled.memory_analysis()
  xla = ma.argument_size_in_bytes + ma.temp_size_in_bytes
  shape = (S.RES, S.RES, 1)
  p = memory.tree_bytes(memory.param_shapes(S.TINY, shape))
  r = memory.step_residual_bytes(S.TINY, shape, spec.batch_size)
  args = memory.tree_bytes((state, data, devices, scheme))
  est = memory.round_bytes(layout, k, r, p, args).total
  assert xla <= est <= 2 * xla, (est, xla)
