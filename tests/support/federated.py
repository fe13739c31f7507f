"""Shared tiny setup for the federated round tests (imported by tests and by
the subprocess tests/fedqjax/federated/sharded_check.py)."""

import jax
import jax.numpy as jnp
import numpy as np

from fedqjax import energy
from fedqjax import federated as fed
from fedqjax import quantization as Q
from fedqjax.diffusion import UNetConfig

RES = 8
# One level, 8 channels: the smallest real UNet (resblocks, GroupNorm, time
# embedding); XLA:CPU compiles its round in ~30 s instead of minutes.
TINY = UNetConfig(
  ch=8,
  ch_mult=(1,),
  num_res_blocks=1,
  attn_resolutions=(),
  dropout=0.0,
  num_groups=4,
)

# One spec per client layout (3 round compiles), K < N throughout.
LAYOUTS = {
  "vmap_k3": dict(n=8, k=3, loop="vmap"),
  "unrolled_k3": dict(n=8, k=3, loop="unrolled"),
  "map_k2": dict(n=8, k=2, loop="map"),
}


def init_params(seed=0):
  return TINY.make().init(
    {"params": jax.random.PRNGKey(seed)},
    jnp.zeros((1, RES, RES, 1)),
    jnp.zeros((1,), jnp.int32),
    train=False,
  )


def make_spec(n=4, k=3, loop="vmap", method="minmax", bucket_size=None, **kw):
  """A RoundSpec for the tiny model; `loop` resolved for the CPU backend."""
  shards = 1 if kw.get("mesh") is None else int(kw["mesh"].shape["clients"])
  base = dict(
    unet=TINY,
    num_clients=n,
    clients_per_round=k,
    local_steps=1,
    batch_size=4,
    T=50,
    lr=1e-3,
    flops_per_sample=2e7,
    ema_decay=0.9,
    allocations=("kkt", "deadline", "max"),
    quantizer=Q.make_quantizer(
      init_params(), method=method, bucket_size=bucket_size
    ),
    execution=fed.resolve_execution(loop, "cpu", -(-k // shards)),
  )
  base.update(kw)
  return fed.RoundSpec(**base)


def make_data(n=4, n_max=12, seed=0):
  rng = np.random.default_rng(seed)
  yy, xx = np.mgrid[0:RES, 0:RES] / RES
  base = np.sin(2 * np.pi * (xx + yy))[None, None, :, :, None]
  imgs = np.clip(
    base + 0.1 * rng.standard_normal((n, n_max, RES, RES, 1)), -1, 1
  ).astype(np.float32)
  counts = rng.integers(3, n_max + 1, n).astype(np.int32)
  return fed.FedData(images=jnp.asarray(imgs), counts=jnp.asarray(counts))


def make_devices(n=4, seed=1, **kw):
  cfg = energy.EnergyConfig(num_devices=n, **kw)
  return energy.sample_devices(cfg, jax.random.PRNGKey(seed))


def generous_deadline(devices, spec, params):
  """50 x the slowest device's fp32 minimal round time: nobody misses it."""
  d = sum(x.size for x in jax.tree.leaves(params))
  return float(
    50.0
    * np.max(
      energy.min_round_time(
        devices, 32.0 * d, spec.samples_per_round, spec.flops_per_sample
      )
    )
  )


def state(params, spec, seed=7):
  return fed.init_server_state(
    params, jax.random.PRNGKey(seed), len(spec.allocations)
  )
