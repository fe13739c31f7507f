"""Host-side layout of the quantizer: a template's leaves, its buckets, checks.

Static helpers of `quantizer.Quantizer` and `make_quantizer` (Python and
NumPy on shapes; nothing here is traced): the treedef, shapes and dtypes of
a template, the bucket sizes n_j, and the structure, shape and bits checks
that raise ValueError before anything is computed.
"""

from __future__ import annotations

from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from fedqjax.quantization import validate as V
from fedqjax.typing import PyTree


def template_layout(template: PyTree) -> tuple[Any, tuple, tuple]:
  """(treedef, leaf shapes, leaf dtypes) of `template` (shapes only are read).

  Raises:
    ValueError: a non-float leaf.
  """
  with_path, treedef = jax.tree_util.tree_flatten_with_path(template)
  shapes, dtypes = [], []
  for path, leaf in with_path:
    dtype = jnp.dtype(
      leaf.dtype if hasattr(leaf, "dtype") else np.asarray(leaf).dtype
    )
    if not jnp.issubdtype(dtype, jnp.floating):
      raise ValueError(
        f"template{jax.tree_util.keystr(path)} has dtype "
        f"{dtype}; only floating-point leaves can be quantized"
      )
    shapes.append(tuple(int(n) for n in np.shape(leaf)))
    dtypes.append(dtype)
  return treedef, tuple(shapes), tuple(dtypes)


def bucket_sizes(
  leaf_sizes: Sequence[int], bucket_size: int | None
) -> np.ndarray:
  """n_j in flat order, int64 [nb] (read-only); empty leaves have none.

  One bucket per leaf (bucket_size None), or chunks of `bucket_size`
  entries within each leaf, the last one partial.
  """
  parts = []
  for n in leaf_sizes:
    if n == 0:
      continue
    if bucket_size is None:
      parts.append(np.array([n], np.int64))
    else:
      full, rest = divmod(n, bucket_size)
      parts.append(np.full((full,), bucket_size, np.int64))
      if rest:
        parts.append(np.array([rest], np.int64))
  out = np.concatenate(parts) if parts else np.zeros((0,), np.int64)
  out.flags.writeable = False
  return out


def check_leaves(
  leaves: Sequence[Any], treedef: Any, template_treedef: Any, shapes: tuple
) -> None:
  """Raises ValueError unless a tree's leaves and treedef match the template."""
  if treedef != template_treedef:
    raise ValueError(
      f"tree structure {treedef} does not match the "
      f"quantizer's template {template_treedef}"
    )
  for i, (x, shape) in enumerate(zip(leaves, shapes)):
    if np.shape(x) != shape:
      raise ValueError(
        f"leaf {i} has shape {np.shape(x)}; the template's is {shape}"
      )


def check_flat_shape(flat: Any, num_entries: int) -> None:
  """Raises ValueError unless `flat` has shape (num_entries,)."""
  if np.shape(flat) != (num_entries,):
    raise ValueError(
      f"flat must have shape ({num_entries},); got {np.shape(flat)}"
    )


def check_scalar_bits(bits: Any) -> None:
  """Raises ValueError unless concrete `bits` are one integer in [1, 32]."""
  V.validate_bits(bits)
  if np.ndim(bits) != 0:
    raise ValueError(
      f"bits must be a scalar (vmap over clients for one "
      f"width each); got shape {np.shape(bits)}"
    )
