"""DrJAX side of the peer benchmark: the same federated DDPM round written
with DrJAX's primitives (Rush et al., "FAX: Scalable and Differentiable
Federated Primitives in JAX", arXiv 2403.07128; PyPI `drjax`).

`drjax.broadcast` places the global parameters at the K clients,
`drjax.map_fn` runs each client's I local Adam steps (fedqjax's
`client_update`, the same U-Net and DDPM loss) and quantizes its update with
fedqjax's quantizer, and `drjax.reduce_weighted_mean` (weights n_k) averages
the dequantized updates; `drjax.reduce_mean` gives the round loss. Selection,
round and client keys, the EMA and the fixed 8-bit scheme are fedqjax's, so on
the same inputs the round computes fedqjax's FedAvg (every client uploads:
the runner checks that the scheme's deadline lets all of them through).

`map_fn` is `jax.vmap(fn, spmd_axis_name="clients")` with sharding
constraints when a mesh with a "clients" axis is given, a plain `jax.vmap`
otherwise. The client program's convolution form and local-step unroll are
`cfg.drjax_conv`: "auto" is what `fed.resolve_execution("vmap", backend)`
picks for a vmapped round (im2col, rolled local steps on CPU; XLA's
convolutions, unrolled on accelerators), "xla" is XLA's convolutions with
unrolled local steps everywhere (plain vmap).

  PYTHONPATH=. python -m benchmarks.peers.drjax_run '<BenchConfig json>'
(normally started by benchmarks/peers/__main__.py).
"""

from __future__ import annotations

import functools
import time

from benchmarks.peers import common

PLACEMENT = "clients"


def drjax_fedavg(spec, mesh=None):
  """The DrJAX program of one FedAvg round's client part for `spec`.

  Returns:
    fn(params, images [K, ...], counts [K], train_keys [K], quant_keys [K],
    bits) -> (new params, mean client loss).
  """
  import drjax  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top

  from fedqjax import federated as fed  # pylint: disable=g-import-not-at-top

  q = spec.quantizer

  @drjax.program(placements={PLACEMENT: spec.padded_clients})
  def fedavg(params, images, counts, train_keys, quant_keys, bits):
    def client(w, x, n, k_train, k_quant):
      w_k, loss = fed.client_update(w, x, n, k_train, spec=spec)
      u = q.pack(w_k) - q.pack(w)
      return q.quantize(u, bits, k_quant), loss

    w = drjax.broadcast(params, mesh=mesh)
    deq, loss = drjax.map_fn(
      client, (w, images, counts, train_keys, quant_keys), mesh=mesh
    )
    avg = drjax.reduce_weighted_mean(deq, counts.astype(jnp.float32))
    step = q.unpack(avg * spec.server_lr)
    new = jax.tree.map(jnp.add, params, step)
    return new, drjax.reduce_mean(loss)

  return fedavg


def round_step(state, data, devices, scheme, *, spec, mesh=None):
  """fedqjax's round with the client part in DrJAX: select (fedqjax), the
  DrJAX FedAvg, EMA (fedqjax). Every selected client uploads with
  `scheme.fixed_bits` bits (the fixed scheme under a generous deadline).

  Returns:
    (new state, {"loss": mean client loss}).
  """
  from fedqjax.federated import phases  # pylint: disable=g-import-not-at-top
  from fedqjax.federated.state import client_keys, round_keys  # pylint: disable=g-import-not-at-top

  keys = round_keys(state.rng, state.round)
  sel = phases.select(keys, data, devices, spec)
  new, loss = drjax_fedavg(spec, mesh)(
    state.params,
    sel.images,
    sel.counts,
    client_keys(keys["train"], sel.ids),
    client_keys(keys["quant"], sel.ids),
    scheme.fixed_bits,
  )
  ema = phases.update_ema(state.ema_params, new, state.round, spec)
  out = state.replace(params=new, ema_params=ema, round=state.round + 1)
  return out, {"loss": loss}


@functools.lru_cache(maxsize=None)
def jit_round_step(spec, mesh=None):
  """The jitted DrJAX round for `spec` (state donated); cached per spec."""
  import jax  # pylint: disable=g-import-not-at-top

  fn = functools.partial(round_step, spec=spec, mesh=mesh)
  return jax.jit(fn, donate_argnums=0)


def drjax_execution(conv: str, backend: str, clients: int):
  """The client program's Execution under DrJAX's vmap (see module doc)."""
  from fedqjax import federated as fed  # pylint: disable=g-import-not-at-top

  if conv == "xla":
    return fed.Execution(layout="vmap", local_unroll=True, conv_impl="xla")
  if conv == "auto":
    return fed.resolve_execution("vmap", backend, clients)
  raise ValueError(f"drjax_conv={conv!r} is invalid; valid: auto, xla")


def tag(cfg: common.BenchConfig) -> str:
  """The runner's name in the table and dump files: drjax[_xla][_mesh<n>]."""
  name = "drjax" + ("_xla" if cfg.drjax_conv == "xla" else "")
  return name + (f"_mesh{cfg.drjax_mesh}" if cfg.drjax_mesh > 1 else "")


def _mesh(cfg: common.BenchConfig):
  """A 1-D "clients" mesh over the first `cfg.drjax_mesh` devices, or None."""
  if cfg.drjax_mesh <= 1:
    return None
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top

  devs = jax.devices()[: cfg.drjax_mesh]
  if len(devs) < cfg.drjax_mesh or cfg.clients % cfg.drjax_mesh:
    raise ValueError(
      f"drjax_mesh={cfg.drjax_mesh}: needs that many devices "
      f"(have {len(jax.devices())}) and clients divisible by it"
    )
  return jax.sharding.Mesh(np.asarray(devs), (PLACEMENT,))


def run(cfg: common.BenchConfig) -> dict:
  import dataclasses  # pylint: disable=g-import-not-at-top

  import drjax  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top

  from benchmarks.peers import fedqjax_run  # pylint: disable=g-import-not-at-top
  from fedqjax import federated as fed  # pylint: disable=g-import-not-at-top

  spec, params, data, devices, scheme, d = fedqjax_run._setup(cfg)  # pylint: disable=protected-access
  ex = drjax_execution(cfg.drjax_conv, jax.default_backend(), cfg.clients)
  spec = dataclasses.replace(spec, execution=ex)
  _check_all_upload(spec, devices, scheme)
  mesh = _mesh(cfg)
  state = fed.init_server_state(params, jax.random.PRNGKey(cfg.seed + 2))
  t0 = time.perf_counter()
  compiled = jit_round_step(spec, mesh).lower(state, data, devices, scheme)
  compiled = compiled.compile()
  compile_s = time.perf_counter() - t0
  timed = fedqjax_run.time_rounds(
    lambda s: compiled(s, data, devices, scheme),
    state,
    cfg.rounds,
    fedqjax_run.dump_hook(cfg, spec, tag(cfg)),
  )
  timed.pop("last_metrics")
  return dict(
    peer=tag(cfg),
    version=drjax.__version__,
    conv_impl=ex.conv_impl,
    local_unroll="full" if ex.local_unroll is True else ex.local_unroll,
    mesh_devices=max(1, cfg.drjax_mesh),
    num_devices=len(jax.devices()),
    num_params=int(d),
    compile_s=compile_s,
    **timed,
  )


def _check_all_upload(spec, devices, scheme) -> None:
  """The DrJAX round averages every selected client: fedqjax must upload
  them all under this scheme (fixed bits, deadline), or the rounds differ."""
  import numpy as np  # pylint: disable=g-import-not-at-top

  from fedqjax.federated import phases  # pylint: disable=g-import-not-at-top

  if spec.padded_clients != spec.clients_per_round:
    raise ValueError("the DrJAX round takes no padded client slots")
  ok = phases.feasible_bits(devices, scheme, spec)
  bits = int(scheme.fixed_bits)
  if not np.all(np.asarray(ok)[:, bits - 1]):
    raise ValueError(
      "deadline too short for every client to upload: the DrJAX round "
      "would average clients fedqjax drops"
    )


if __name__ == "__main__":
  common.runner_main(run)
