"""Shared setup for the quantization tests: bit-pattern comparisons, cached
quantizers, the float64 variance bound and the hypothesis strategy of
adversarial float32 tensors.

"Bit for bit" compares float32 bit patterns (uint32 views).
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from fedqjax import quantization as Q


def bits_of(x):
  return np.asarray(x, np.float32).view(np.uint32)


def assert_bitwise(a, b):
  np.testing.assert_array_equal(bits_of(a), bits_of(b))


@functools.lru_cache(maxsize=None)
def quantizer(method, n=16, bucket_size=None):
  """The quantizer of one float32 vector of n entries (cached)."""
  return Q.make_quantizer(
    jax.ShapeDtypeStruct((n,), jnp.float32), method, bucket_size
  )


@functools.lru_cache(maxsize=None)
def template_quantizer(template, method="minmax", bucket_size=None):
  """(quantizer, its jitted quantize) for nested tuples of shapes (cached)."""
  is_shape = lambda s: (
    isinstance(s, tuple) and all(isinstance(n, int) for n in s)
  )
  tree = jax.tree.map(
    lambda s: jax.ShapeDtypeStruct(s, jnp.float32), template, is_leaf=is_shape
  )
  q = Q.make_quantizer(tree, method, bucket_size)
  return q, jax.jit(q.quantize)


def _buckets64(x, bucket_size):
  v = np.asarray(x, np.float64).ravel()
  size = v.size if bucket_size is None else bucket_size
  return [v[i : i + size] for i in range(0, v.size, size)]


def _range(c, method):
  return c.max() - c.min() if method == "minmax" else np.linalg.norm(c)


def bound64(x, b, method, bucket_size=None):
  """float64 sum_j n_j R_j^2 / (4 s^2); leaves of a tree or one vector.

  The variance bound in float64 (error_bound is float32 and may be inf).
  """
  if b >= 32:
    return 0.0
  chunks = [
    c
    for leaf in (x if isinstance(x, list) else [x])
    for c in _buckets64(leaf, bucket_size)
  ]
  a = sum(c.size * _range(c, method) ** 2 for c in chunks)
  return a / (4.0 * (2.0**b - 1) ** 2)


# ----------------------------------------------------------------------------
# Adversarial float32 tensors (hypothesis). Arrays use a few fixed shapes so
# that jit compiles stay few.

SHAPES = [(7,), (3, 5), (64,)]
F32_MAX = float(np.finfo(np.float32).max)
F32_TINY = float(np.finfo(np.float32).tiny)  # 2^-126, smallest normal
ELEMENTS = st.one_of(
  st.floats(
    width=32, allow_nan=True, allow_infinity=True, allow_subnormal=True
  ),
  st.floats(-1.0, 1.0, width=32),
  st.sampled_from(
    [
      0.0,
      -0.0,
      1e-45,
      -1e-45,
      1e-40,
      1.17549435e-38,
      F32_MAX,
      -F32_MAX,
      1e38,
      -1e38,
      3e38,
      1.0,
      -1.0,
    ]
  ),
)


@st.composite
def tensor(draw, finite=False, shapes=tuple(SHAPES)):
  shape = draw(st.sampled_from(shapes))
  kind = draw(st.sampled_from(["random", "constant", "two", "random"]))
  elems = ELEMENTS if not finite else ELEMENTS.filter(math.isfinite)
  if kind == "constant":
    x = np.full(shape, draw(elems), np.float32)
  elif kind == "two":  # two values: a huge or a denormal range
    a, b = draw(elems), draw(elems)
    x = np.where(np.arange(math.prod(shape)).reshape(shape) % 2, a, b)
    x = x.astype(np.float32)
  else:
    x = draw(hnp.arrays(np.float32, shape, elements=elems))
  return x
