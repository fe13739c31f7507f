"""What every run of one seed shares: data, model, devices, deadline, spec.

`load_dataset` reads the data once per sweep; `build` partitions it and
draws the model initialization, the device population and the run key from
the seed (all traced data or host arrays: a new seed reuses the compiled
round), and fixes the held-out evaluation set (the same for every scheme,
round and seed).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from typing import Any, Callable, Dict, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from experiments.fl_sweep import channels
from experiments.fl_sweep.settings import Settings
from fedqjax import data as data_lib
from fedqjax import diffusion, energy, federated
from fedqjax import quantization as quant_lib
from fedqjax.federated import execution as execution_lib

log = logging.getLogger("fedqjax")
HELDOUT_SEED = 20240307  # fixed: the same held-out set for every seed


@dataclasses.dataclass
class Setup:
  """Everything shared by the runs of one seed (built once per seed)."""

  config: Settings
  dataset: str
  seed: int
  fed_data: federated.FedData
  test_images: np.ndarray  # uint8 [n, H, W, C] (reference for FID/KID)
  image_shape: tuple
  unet: diffusion.UNetConfig
  schedule: diffusion.NoiseSchedule
  spec: federated.RoundSpec
  devices: energy.Devices
  params: Any
  run_key: Any
  deadline_s: float
  deadline_rule: str
  devices_over_deadline: int  # devices whose fp32 upload cannot meet T
  flops_per_sample: float
  num_params: int
  heldout: Callable[[Any], float]  # params -> held-out denoising loss
  evaluator: Optional[Callable[..., Dict[str, Any]]] = None
  channel: Optional[channels.Trajectory] = None  # None: static channel
  memory: Any = None  # the round's RoundMemory (fedqjax.federated.memory)

  def round_devices(self, rnd: int) -> energy.Devices:
    """The devices round `rnd` (1-based) meets (`channels.round_devices`)."""
    return channels.round_devices(
      self.devices, self.channel, rnd, self.spec.mesh
    )


def resolve_dataset(config) -> str:
  """`auto` -> cifar10 when tfds has it prepared, a tarball is given or
  `data.download` lets tfds fetch it; else the installed Fashion-MNIST."""
  name = config.data.name
  if name != "auto":
    return name
  if (
    config.data.tarball
    or config.data.download
    or (data_lib.cifar10_available(config.data.data_dir or None))
  ):
    return "cifar10"
  log.warning("=" * 70)
  log.warning(
    "data.name=auto: CIFAR-10 is not available offline; using the "
    "installed Fashion-MNIST instead (recorded in the results)."
  )
  log.warning("=" * 70)
  return "fashion_mnist"


def load_dataset(config) -> Tuple[str, np.ndarray, np.ndarray, np.ndarray]:
  """(name, train uint8, train labels, test uint8) of the configured data."""
  name = resolve_dataset(config)
  opts: Dict[str, Any] = {}
  if name == "fashion_mnist" and config.data.data_dir:
    opts["data_dir"] = config.data.data_dir
  elif name == "cifar10":
    if config.data.tarball:
      opts["tarball"] = config.data.tarball
    else:
      opts["download"] = config.data.download
      if config.data.data_dir:
        opts["data_dir"] = config.data.data_dir
  elif name == "synthetic":
    opts = dict(
      num=max(config.data.max_train, 64),
      size=config.data.resolution or 32,
      channels=1,
      seed=config.seed,
    )
  try:
    x, y = data_lib.load(name, "train", **opts)
    if name == "synthetic":
      opts["num"] = max(config.data.num_test, 16)
    xt, _ = data_lib.load(name, "test", **opts)
  except data_lib.DataError as e:
    raise data_lib.DataError(
      f"{e} (config.data.name={name!r}; data_dir: --config.data.data_dir=DIR)"
    ) from None
  if config.data.max_train:
    x, y = x[: config.data.max_train], y[: config.data.max_train]
  return name, x, y, xt[: config.data.num_test]


def seed_keys(seed: int) -> Dict[str, Any]:
  """The seed's named streams: model init, device population, run."""
  k_init, k_dev, k_run = jax.random.split(jax.random.key(seed), 3)
  return dict(init=k_init, devices=k_dev, run=k_run)


@functools.lru_cache(maxsize=8)
def _init_params(unet: diffusion.UNetConfig, seed: int, image_shape: tuple):
  """Initial U-Net variables, cached per process (the round never mutates
  them: the state copies them)."""
  return diffusion.init_unet(unet, seed_keys(seed)["init"], image_shape)


@functools.lru_cache(maxsize=8)
def _flops(unet: diffusion.UNetConfig, image_shape: tuple) -> float:
  # Lowered (unoptimized) HLO count: within 0.2-2% of the compiled count
  # (35.006 vs 35.078 GFLOPs for the paper model) at a fraction of the time.
  return float(
    diffusion.train_flops_per_image(unet, image_shape, compiled=False)
  )


def deadline(
  config, devices, num_params: int, flops: float
) -> Tuple[float, str, int]:
  """(T, its rule, devices whose fp32 minimal round time exceeds T)."""
  e = config.energy
  n = config.fed.local_steps * (e.samples_per_step or config.fed.batch_size)
  if e.deadline_s > 0:
    t, rule = float(e.deadline_s), "fixed"
  else:
    t = float(
      energy.deadline_for(
        devices,
        num_params,
        n,
        flops,
        rule=e.deadline_rule,
        factor=e.deadline_factor,
        quantile=e.deadline_quantile,
      )
    )
    rule = f"{e.deadline_factor:g} x {e.deadline_rule}"
  t_fp32 = np.asarray(
    energy.min_round_time(devices, 32.0 * num_params, n, flops)
  )
  return t, rule, int(np.sum(t_fp32 > t))


@functools.lru_cache(maxsize=8)
def schedule_of(d) -> diffusion.NoiseSchedule:
  """The sweep's one noise schedule (`Settings.diffusion`), built once."""
  return diffusion.linear_schedule(d.T, d.beta_start, d.beta_end)


@functools.lru_cache(maxsize=8)
def _heldout_fn(unet: diffusion.UNetConfig, d, batch_size: int):
  """One jitted held-out loss per model and schedule (shared by seeds)."""
  model, schedule = unet.make(), schedule_of(d)
  return jax.jit(
    lambda p, h: diffusion.heldout_loss(
      p, model.apply, h, schedule, batch_size=batch_size
    )
  )


def make_heldout(
  unet: diffusion.UNetConfig, test_float: np.ndarray, config: Settings
) -> Callable[[Any], float]:
  """params -> mean denoising loss on a fixed held-out set (deterministic:
  the first `eval.heldout_size` test images, (t, noise) from HELDOUT_SEED
  with t stratified over [0, T))."""
  n = min(config.eval.heldout_size, len(test_float))
  if not n:
    return lambda params: float("nan")
  hset = diffusion.heldout_set(
    jnp.asarray(test_float[:n]),
    config.diffusion.T,
    jax.random.key(HELDOUT_SEED),
    n,
  )
  batch = next(b for b in range(min(n, 64), 0, -1) if n % b == 0)
  fn = _heldout_fn(unet, config.diffusion, batch)
  return lambda params: float(fn(params, hset))


def round_spec(
  config: Settings,
  unet: diffusion.UNetConfig,
  quantizer,
  flops_per_sample: float,
  mesh=None,
  fits=None,
) -> federated.RoundSpec:
  """The round's static settings; `fed.client_loop` resolved here
  (`fits(layout)`: the memory check, `preflight.fits`)."""
  f, o, d = config.fed, config.optim, config.diffusion
  shards = federated.num_shards(mesh)
  execution = execution_lib.resolve_execution(
    f.client_loop,
    jax.default_backend(),
    federated.padded_clients(f.clients_per_round, mesh) // shards,
    fits=fits,
  )
  return federated.RoundSpec(
    unet=unet,
    quantizer=quantizer,
    num_clients=f.num_clients,
    clients_per_round=f.clients_per_round,
    local_steps=f.local_steps,
    batch_size=f.batch_size,
    samples_per_step=config.energy.samples_per_step,
    lr=o.lr,
    optimizer=o.optimizer,
    grad_clip=o.grad_clip,
    server_lr=f.server_lr,
    ema_decay=f.ema_decay,
    ema_warmup=f.ema_warmup,
    T=d.T,
    beta_start=d.beta_start,
    beta_end=d.beta_end,
    b_min=config.quant.b_min,
    target=config.quant.target,
    infeasible_policy=config.energy.infeasible_policy,
    flops_per_sample=float(flops_per_sample),
    allocations=config.sweep.plan()[1],
    execution=execution,
    # A time-varying channel brings its own fading (channels.py).
    rayleigh_fading=(
      config.energy.rayleigh_fading and config.channel.model == "static"
    ),
    mesh=mesh,
  )


def client_mesh(config):
  """`fed.mesh`: "auto" shards the client axis over every device of every
  process when there is more than one; "none" (or one device): no mesh."""
  if config.fed.mesh == "none" or jax.device_count() == 1:
    return None
  return federated.client_mesh()


def place_data(data: federated.FedData, mesh) -> federated.FedData:
  """Client data on device: sharded over the mesh's client axis when N
  divides evenly, else replicated (the round gathers its participants and
  shards them itself)."""
  if mesh is None:
    return jax.tree.map(jnp.asarray, data)
  if data.counts.shape[0] % federated.num_shards(mesh) == 0:
    return federated.shard_clients(data, mesh)
  return federated.replicate(data, mesh)


def place(setup: "Setup", tree):
  """Replicates server-side pytrees (state, scheme) over the mesh, if any."""
  mesh = setup.spec.mesh
  return tree if mesh is None else federated.replicate(tree, mesh)


def _partition(config: Settings, xf, y, seed: int):
  """The seed's split of the training images over the N clients."""
  try:
    return data_lib.partition(
      xf,
      y,
      config.fed.num_clients,
      config.data.partition,
      seed=seed,
      alpha=config.data.dirichlet_alpha,
      labels_per_client=config.data.labels_per_client,
    )
  except ValueError as e:  # num_clients is the key fed.num_clients
    where = "fed" if str(e).startswith("num_clients=") else "data"
    raise ValueError(f"config.{where}.{e}") from None


def build(config: Settings, dataset, seed: int, workdir: str) -> Setup:
  """Partitions the data and builds model, devices, deadline and spec."""
  from experiments.fl_sweep import evaluate as evaluation  # pylint: disable=g-import-not-at-top
  from experiments.fl_sweep import preflight  # pylint: disable=g-import-not-at-top

  name, x, y, xt = dataset
  res = config.data.resolution or x.shape[1]  # 0 = native size
  xf = data_lib.to_float(x, resolution=res)
  cd = _partition(config, xf, y, seed)
  test_f = data_lib.to_float(xt, resolution=res)
  image_shape = tuple(xf.shape[1:])
  unet = config.model.unet(res)
  unet.check_image_shape(image_shape)
  keys = seed_keys(seed)
  params = _init_params(unet, seed, image_shape)
  num_params = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(params))
  flops = _flops(unet, image_shape)
  devices = energy.validate_devices(
    energy.sample_devices(
      config.energy.devices(
        config.fed.num_clients, config.fed.clients_per_round
      ),
      keys["devices"],
      flops_per_sample=flops,
    )
  )
  t, rule, over = deadline(config, devices, num_params, flops)
  quantizer = quant_lib.make_quantizer(
    params,
    method=config.quant.method,
    bucket_size=config.quant.bucket_size or None,
  )
  mesh = client_mesh(config)
  shards = federated.num_shards(mesh)
  spec = round_spec(
    config,
    unet,
    quantizer,
    flops,
    mesh=mesh,
    fits=preflight.fits(config, image_shape, shards),
  )
  mem = preflight.round_estimate(
    config, image_shape, spec.execution.layout, shards
  )
  setup = Setup(
    config=config,
    dataset=name,
    seed=seed,
    fed_data=place_data(
      federated.FedData(images=cd.images, counts=cd.counts), mesh
    ),
    test_images=data_lib.to_uint8(test_f),
    image_shape=image_shape,
    unet=unet,
    schedule=schedule_of(config.diffusion),
    spec=spec,
    devices=devices if mesh is None else federated.replicate(devices, mesh),
    params=params,
    run_key=keys["run"],
    deadline_s=t,
    deadline_rule=rule,
    devices_over_deadline=over,
    flops_per_sample=flops,
    num_params=num_params,
    heldout=make_heldout(unet, test_f, config),
    channel=channels.trajectory(config, devices, keys["devices"], t),
    memory=mem,
  )
  setup.evaluator = evaluation.Evaluator(setup, workdir)
  return setup
