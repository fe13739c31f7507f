"""Where the energy sweep's on-demand bit-widths come from.

On-demand bits (docs/model.md sec. 2) are the least b in [b_min, 32] with
  A / (4 (2^b - 1)^2) <= eps_k ||u||^2,   A = sum_j n_j R_j^2,
so a device's bits depend on its update u only through rho = A / ||u||^2
(R_j = hi_j - lo_j for min-max, ||v_j|| for QSGD). Given rho, the bits of
every device are `fedqjax.quantization.bits.ondemand_bits(rho, 1, eps_k,
b_min, 32)`: the quantizer package's own closed form, capped by the device's
bit cap as the round does. The sources differ in how rho is obtained:

gaussian (the default: no training, a stated model, seconds)
  Each bucket's entries are i.i.d. N(0, sigma^2) with the same sigma in every
  bucket. For n iid standard normals E[max] ~ z(n) = Phi^{-1}((n - 0.375) /
  (n + 0.25)) (Blom 1958; exact to ~1% for n >= 2), so E[R_j] = 2 sigma z(n_j)
  and, neglecting Var R_j (O(sigma^2 / ln n), ~2% of R^2 at n = 64),
  E[R_j^2] ~ 4 sigma^2 z(n_j)^2 (z(1) = 0: a single entry is sent exactly);
  ||u||^2 ~ d sigma^2. Hence, sigma cancelling,
    min-max: rho = 4 sum_j n_j z(n_j)^2 / d,
    QSGD:    rho = sum_j n_j (n_j sigma^2) / (d sigma^2) = sum_j n_j^2 / d,
  with n_j the quantizer's bucket sizes (`Quantizer.bucket_sizes`). Real
  updates are not Gaussian (Adam's first steps are nearly +-lr per entry,
  lighter-tailed; a few tensors dominate the norm), so this is a model of the
  bit-widths, not a measurement: `measured` checks it.
measured (slow: one real local update)
  u = the first client's update after I local Adam steps of the model from
  its initialization on the default data (Fashion-MNIST, as the CPU preset
  trains: I = 2, B = 8, lr 1e-3; "paper" sees it at 32x32x3), and
  rho = 4 error_bound(u, b=1) / ||u||^2 from the quantizer itself.
a path to a finished training sweep
  the bit-widths its on-demand devices actually chose, pooled over rounds,
  devices and seeds (`history.json` rows' "bits" lists); each simulated device
  draws one from that pool. The error-demand scale cannot apply to them.
"""

from __future__ import annotations

import glob
import json
import math
import os
import statistics
from typing import Any, List

import jax.numpy as jnp
import numpy as np

from experiments.energy_sweep import models
from fedqjax.quantization import bits as bits_lib
from fedqjax.typing import Array, ArrayLike

MEASURED_STEPS, MEASURED_BATCH, MEASURED_LR = 2, 8, 1e-3
MEASURED_CLIENT_SHARE = 600


def expected_max_normal(n: int) -> float:
  """Blom's approximation of E[max of n iid N(0, 1)]; 0 for n = 1."""
  if n <= 1:
    return 0.0
  return statistics.NormalDist().inv_cdf((n - 0.375) / (n + 0.25))


def gaussian_ratio(quantizer: Any) -> float:
  """rho = A / ||u||^2 of the Gaussian update model (module docstring)."""
  sizes = np.asarray(quantizer.bucket_sizes, np.int64)
  d = float(quantizer.num_entries)
  if quantizer.method == "qsgd":
    return float(np.sum(sizes.astype(np.float64) ** 2) / d)
  uniq, counts = np.unique(sizes, return_counts=True)
  z2 = np.array([expected_max_normal(int(n)) ** 2 for n in uniq])
  return float(4.0 * np.sum(counts * uniq * z2) / d)


def update_ratio(quantizer: Any, flat: ArrayLike) -> float:
  """rho = A / ||u||^2 of a real update, from the quantizer's error bound at
  b = 1."""
  flat = jnp.asarray(flat, jnp.float32)
  a = 4.0 * float(quantizer.error_bound(flat, 1))  # s = 1 at b = 1
  norm2 = float(np.sum(np.square(np.asarray(flat, np.float64))))
  if not (math.isfinite(a) and norm2 > 0):
    raise ValueError("bits_source=measured: the update is zero or not finite")
  return a / norm2


def ondemand_bits(
  ratio: ArrayLike, eps: ArrayLike, b_min: int, bit_cap: ArrayLike
) -> Array:
  """Every device's on-demand bits from rho (traced): the quantizer's
  closed form, capped."""
  b = bits_lib.ondemand_bits(
    jnp.asarray(ratio, jnp.float32),
    jnp.float32(1.0),
    jnp.asarray(eps, jnp.float32),
    b_min,
    32,
  )
  return jnp.minimum(b, bit_cap).astype(jnp.int32)


def measured_ratio(
  model: str, quantizer: Any, seed: int = 0, data_dir: str = ""
) -> float:
  """rho from one real local update of `model` ("tiny" | "paper") at its
  initialization.

  Slow (compiles the U-Net's init and training step). Imports the data
  loaders and the diffusion trainer lazily: they are not needed otherwise.
  """
  # pylint: disable=g-import-not-at-top
  import jax

  from fedqjax import data as data_lib
  from fedqjax import diffusion

  # pylint: enable=g-import-not-at-top
  if model not in models.MODEL_PRESETS:
    raise ValueError(
      f"bits_source=measured needs a model in "
      f"{tuple(models.MODEL_PRESETS)}; got {model!r}"
    )
  _, shape, _ = models.MODEL_PRESETS[model]
  cfg = models.unet_config(model)
  opts = {"data_dir": data_dir} if data_dir else {}
  x, _ = data_lib.load("fashion_mnist", "train", **opts)
  images = data_lib.to_float(x[:MEASURED_CLIENT_SHARE], resolution=shape[0])
  if images.shape[-1] != shape[2]:
    images = np.repeat(images, shape[2], axis=-1)
  k_init, k_train = jax.random.split(jax.random.key(seed))
  init = diffusion.init_unet(cfg, k_init, shape)
  trained, _ = diffusion.train_centralized(
    cfg,
    images,
    steps=MEASURED_STEPS,
    batch_size=MEASURED_BATCH,
    lr=MEASURED_LR,
    key=k_train,
    init_params=init,
  )
  update = jax.tree.map(lambda a, b: a - b, trained, init)
  return update_ratio(quantizer, quantizer.pack(update))


def _history_files(path: str) -> List[str]:
  """A history.json, or a sweep workdir's `ondemand*/history.json` runs
  without an eps-scale suffix (every seed)."""
  if os.path.isdir(path):
    return sorted(
      f
      for f in glob.glob(os.path.join(path, "ondemand*", "history.json"))
      if "_eps" not in os.path.basename(os.path.dirname(f))
    )
  return [path] if os.path.isfile(path) else []


def history_bits(path: str) -> np.ndarray:
  """Pooled on-demand bit-widths of a finished training sweep (int32, 1-D).

  Args:
    path: a history.json, or a sweep workdir: its `ondemand*/history.json`
      runs without an eps-scale suffix (every seed) are pooled.

  Raises:
    ValueError: nothing readable, naming config.bits_source and the path.
  """
  pool = []
  for f in _history_files(path):
    try:
      with open(f) as fh:
        rows = json.load(fh)
    except (OSError, ValueError) as e:
      raise ValueError(
        f"config.bits_source={path!r}: {f} cannot be read ({e})"
      ) from None
    rows = rows if isinstance(rows, list) else []
    pool += [
      int(b) for r in rows if isinstance(r, dict) for b in r.get("bits", [])
    ]
  if not pool:
    raise ValueError(
      f"config.bits_source={path!r} is invalid; valid: gaussian | measured "
      "| a sweep workdir with ondemand*/history.json (or such a file) "
      "whose rows have 'bits' lists"
    )
  out = np.asarray(pool, np.int32)
  if out.min() < 1 or out.max() > 32:
    raise ValueError(f"config.bits_source={path!r}: bit-widths outside [1, 32]")
  return out
