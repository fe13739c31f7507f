"""Subprocess (2 forced CPU devices): exports the accelerator programs for
cuda and tpu with jax.export and writes each StableHLO text to argv[1]/.

The round (vmap layout, bfloat16 U-Net, the client axis on a 2-device
mesh), the DDIM and DDPM samplers, the held-out loss and the Inception
forward; tests/fedqjax/test_export.py reads the texts."""

import dataclasses
import os
import sys

import jax
import jax.numpy as jnp

from fedqjax import diffusion
from fedqjax import federated as fed
from tests.support import federated as H

PLATFORMS = ("cuda", "tpu")
BF16 = dataclasses.replace(H.TINY, dtype="bfloat16")


def export(fn, *args) -> str:
  return jax.export.export(jax.jit(fn), platforms=PLATFORMS)(
    *args
  ).mlir_module()


def round_text() -> str:
  mesh = fed.client_mesh()
  spec = H.make_spec(n=4, k=2, loop="vmap", unet=BF16, mesh=mesh)
  spec = dataclasses.replace(spec, execution=fed.Execution("vmap", True, "xla"))
  state = fed.replicate(H.state(H.init_params(), spec), mesh)
  data = fed.shard_clients(H.make_data(4), mesh)
  devices = fed.replicate(H.make_devices(4), mesh)
  scheme = fed.replicate(fed.make_scheme("ondemand", deadline_s=1.0), mesh)
  return jax.export.export(fed.jit_round_step(spec), platforms=PLATFORMS)(
    state, data, devices, scheme
  ).mlir_module()


def diffusion_texts() -> dict:
  params = H.init_params()
  model = BF16.make()
  eps = diffusion.eps_fn_from_module(model)
  sched = diffusion.linear_schedule(50, 1e-4, 0.02)
  shape = (2, H.RES, H.RES, 1)
  key = jax.random.key(0)
  hset = diffusion.heldout_set(jnp.zeros((4,) + shape[1:]), 50, key, 4)
  return dict(
    ddim=export(
      lambda p, k: diffusion.ddim_sample(eps, p, sched, k, shape, num_steps=3),
      params,
      key,
    ),
    ddpm=export(
      lambda p, k: diffusion.ddpm_sample(eps, p, sched, k, shape), params, key
    ),
    heldout=export(
      lambda p, h: diffusion.heldout_loss(p, model.apply, h, sched, 2),
      params,
      hset,
    ),
  )


def inception_text() -> str:
  from fedqjax.metrics import inception, weights  # pylint: disable=g-import-not-at-top

  arrays, spec = inception.split_params(weights.load_inception_params())
  shapes = jax.tree.map(
    lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), arrays
  )
  x = jax.ShapeDtypeStruct((2, 299, 299, 3), jnp.float32)
  return export(
    lambda a, y: inception.inception_forward(a, y, spec=spec), shapes, x
  )


def main(out: str):
  assert jax.device_count() == 2, jax.devices()
  texts = dict(round=round_text(), **diffusion_texts())
  texts["inception"] = inception_text()
  for name, text in texts.items():
    with open(os.path.join(out, name + ".mlir"), "w") as f:
      f.write(text)
  print("EXPORT_OK", " ".join(sorted(texts)))


if __name__ == "__main__":
  main(sys.argv[1])
