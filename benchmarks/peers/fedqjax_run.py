"""fedqjax side of the peer benchmark: `jit_round_step` (all K clients in one
compiled round) and, for context, `round_step_reference` (fedqjax's own
Python loop over clients calling jitted per-client pieces).

Same config as the peers: tiny/paper U-Net in float32, K clients all taking
part, I local Adam steps of batch B, 8-bit stochastic quantization of each
update ("fixed" scheme, generous deadline so every client uploads). The
client layout, local-step unroll and convolution form are what
`fed.resolve_execution(cfg.fedqjax_client_loop, backend, K)` decides (they
are reported with the result).
Compile time is measured separately (`lower().compile()`); the timed rounds
run after one warm-up round.

  PYTHONPATH=. python -m benchmarks.peers.fedqjax_run '<BenchConfig json>'
(normally started by benchmarks/peers/__main__.py).
"""

from __future__ import annotations

import os
import time

from benchmarks.peers import common


def _setup(cfg: common.BenchConfig):
  import jax
  import jax.numpy as jnp

  from fedqjax import diffusion, energy
  from fedqjax import federated as fed
  from fedqjax import quantization as Q

  unet = diffusion.UNetConfig(**common.model_kwargs(cfg.model))
  params = diffusion.init_unet(
    unet, jax.random.PRNGKey(cfg.seed), (cfg.res, cfg.res, cfg.channels)
  )
  execution = fed.resolve_execution(
    cfg.fedqjax_client_loop, jax.default_backend(), cfg.clients
  )
  spec = fed.RoundSpec(
    unet=unet,
    quantizer=Q.make_quantizer(params, "minmax"),
    num_clients=cfg.clients,
    clients_per_round=cfg.clients,
    local_steps=cfg.local_steps,
    batch_size=cfg.batch,
    lr=cfg.lr,
    T=cfg.T,
    ema_decay=0.999,
    flops_per_sample=1e9,
    execution=execution,
  )
  imgs, counts = common.make_client_data(cfg)
  data = fed.FedData(images=jnp.asarray(imgs), counts=jnp.asarray(counts))
  devices = energy.sample_devices(
    energy.EnergyConfig(num_devices=cfg.clients),
    jax.random.PRNGKey(cfg.seed + 1),
  )
  d = sum(x.size for x in jax.tree.leaves(params))
  deadline = float(
    energy.deadline_for(
      devices, d, spec.samples_per_round, spec.flops_per_sample, "median", 50.0
    )
  )
  scheme = fed.make_scheme("fixed", deadline_s=deadline, fixed_bits=cfg.bits)
  return spec, params, data, devices, scheme, d


def time_rounds(step, state, rounds: int, first_hook=None) -> dict:
  """One warm-up round, then `rounds` timed rounds of `step(state) ->
  (state, metrics)` (a compiled round; state donated). `first_hook(state)`
  sees the state after the warm-up round, before it is donated."""
  import jax

  t0 = time.perf_counter()
  state, m = step(state)
  jax.block_until_ready(state)
  first = time.perf_counter() - t0
  if first_hook is not None:
    first_hook(state)
  losses, times, cpu = [float(m["loss"])], [], []
  for _ in range(rounds):
    t0, c0 = time.perf_counter(), time.process_time()
    state, m = step(state)
    jax.block_until_ready(state)
    times.append(time.perf_counter() - t0)
    cpu.append(time.process_time() - c0)
    losses.append(float(m["loss"]))
  return dict(
    first_round_s=first,
    losses=losses,
    last_metrics=m,
    **common.summarize(times),
  )


def dump_hook(cfg: common.BenchConfig, spec, name: str):
  """A `first_hook` saving the flat params after the warm-up round as
  `<dump_dir>/<name>_k<K>_round1.npy` (None without a dump_dir)."""
  if not cfg.dump_dir:
    return None
  import numpy as np

  path = os.path.join(cfg.dump_dir, f"{name}_k{cfg.clients}_round1.npy")
  return lambda s: np.save(path, np.asarray(spec.quantizer.pack(s.params)))


def _time_compiled(cfg, spec, params, data, devices, scheme, key) -> dict:
  """The compiled round (all K clients in one XLA program): compile time,
  one warm-up round, then `cfg.rounds` timed rounds."""
  import numpy as np

  from fedqjax import federated as fed

  state = fed.init_server_state(params, key)
  t0 = time.perf_counter()
  compiled = (
    fed.jit_round_step(spec).lower(state, data, devices, scheme).compile()
  )
  compile_s = time.perf_counter() - t0
  out = time_rounds(
    lambda s: compiled(s, data, devices, scheme),
    state,
    cfg.rounds,
    dump_hook(cfg, spec, "fedqjax"),
  )
  m = out.pop("last_metrics")
  return dict(
    compile_s=compile_s,
    uploaded_clients=int(m["num_uploaded"]),
    bits=np.asarray(m["client_bits"]).tolist(),
    **out,
  )


def _time_reference(cfg, spec, params, data, devices, scheme, key) -> dict:
  """fedqjax's own sequential reference loop (context): first round, which
  includes compiling the per-client pieces, then up to 2 timed rounds."""
  import jax

  from fedqjax import federated as fed
  from fedqjax.testing.reference_round import round_step_reference  # pylint: disable=g-import-not-at-top

  ref_rounds = max(1, min(cfg.rounds, 2))
  state = fed.init_server_state(params, key)
  t0 = time.perf_counter()
  state, _ = round_step_reference(state, data, devices, scheme, spec=spec)
  jax.block_until_ready(state)
  ref_first = (
    time.perf_counter() - t0
  )  # includes compiling the per-client pieces
  ref_times = []
  for _ in range(ref_rounds):
    t0 = time.perf_counter()
    state, _ = round_step_reference(state, data, devices, scheme, spec=spec)
    jax.block_until_ready(state)
    ref_times.append(time.perf_counter() - t0)
  ref = common.summarize(ref_times)
  return dict(first_round_s=ref_first, **ref)


def run(cfg: common.BenchConfig) -> dict:
  import jax

  spec, params, data, devices, scheme, d = _setup(cfg)
  key = jax.random.PRNGKey(cfg.seed + 2)
  inputs = (spec, params, data, devices, scheme, key)
  timed = _time_compiled(cfg, *inputs)
  ex = spec.execution
  out = dict(
    peer="fedqjax",
    version=jax.__version__,
    client_loop=cfg.fedqjax_client_loop,
    mode=ex.layout,
    conv_impl=ex.conv_impl,
    local_unroll="full" if ex.local_unroll is True else ex.local_unroll,
    num_params=int(d),
    **timed,
  )
  if not cfg.skip_reference:
    out["reference"] = _time_reference(cfg, *inputs)
  return out


if __name__ == "__main__":
  common.runner_main(run)
