"""Host-side argument checks of the quantizer (skipped for traced values).

Every check raises ValueError naming the argument, what is wrong and the valid
values. Inside `jax.jit` / `jax.vmap` the values are tracers and cannot be
inspected: traced bits are clipped to [1, 32] by the quantizer and non-finite
entries propagate (documented in `fedqjax.quantization`).
"""

from __future__ import annotations

import jax
import numpy as np

METHODS = ("minmax", "qsgd")
MAX_BITS = 32  # 32 = no quantization (raw float32)


def is_traced(x) -> bool:
  return isinstance(x, jax.core.Tracer)


def check_method(method) -> None:
  if method not in METHODS:
    raise ValueError(
      f"unknown quantization method {method!r}; valid values: "
      f"{', '.join(METHODS)}"
    )


def check_bucket_size(bucket_size) -> None:
  if bucket_size is None:
    return
  if (
    isinstance(bucket_size, (bool, np.bool_))
    or not isinstance(bucket_size, (int, np.integer))
    or bucket_size < 1
  ):
    raise ValueError(
      f"bucket_size must be None (one bucket per leaf) or a "
      f"positive int; got {bucket_size!r}"
    )


def validate_bits(
  bits, name: str = "bits", lo: int = 1, hi: int = MAX_BITS
) -> None:
  """Raises ValueError unless concrete `bits` (any shape) are integers in [lo, hi]."""
  if is_traced(bits):
    return
  arr = np.asarray(bits)
  msg = (
    f"{name} must be an integer in [{lo}, {hi}] (32 = unquantized "
    f"float32); got {bits!r}"
  )
  if arr.dtype == bool or arr.dtype == object:
    raise ValueError(msg)
  if np.issubdtype(arr.dtype, np.floating):
    if not np.all(np.isfinite(arr)) or np.any(arr != np.round(arr)):
      raise ValueError(msg)
  elif not np.issubdtype(arr.dtype, np.integer):
    raise ValueError(msg)
  if arr.size and (arr.min() < lo or arr.max() > hi):
    raise ValueError(msg)


def validate_eps(eps) -> None:
  """eps: a relative error budget, finite or inf, >= 0."""
  if is_traced(eps):
    return
  arr = np.asarray(eps, np.float64)
  if np.any(np.isnan(arr)) or np.any(arr < 0):
    raise ValueError(
      f"eps must be a non-negative relative error budget "
      f"(E||Q(u) - u||^2 <= eps ||u||^2); got {eps!r}"
    )


def validate_flat(flat, num_entries: int, name: str = "flat") -> None:
  """Shape [d] (checked for tracers too: shapes are static); finite if concrete."""
  shape = np.shape(flat)
  if shape != (num_entries,):
    raise ValueError(
      f"{name} must have shape ({num_entries},) (the packed "
      f"template); got {shape}"
    )
  if is_traced(flat):
    return
  arr = np.asarray(flat)
  if not np.issubdtype(arr.dtype, np.floating):
    raise ValueError(f"{name} has dtype {arr.dtype}; expected float32")
  bad = ~np.isfinite(arr)
  if np.any(bad):
    i = int(np.argmax(bad))
    raise ValueError(
      f"{name} contains NaN or inf (first at entry {i}: "
      f"{arr[i]}); quantization needs finite values in "
      f"[-3.4e38, 3.4e38]"
    )
