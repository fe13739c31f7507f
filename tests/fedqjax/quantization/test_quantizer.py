"""Tests for fedqjax.quantization.quantizer (docs/model.md sec. 2): layout,
statistics, exact and extreme cases, tracing, the frozen reference of the
round's old code; property-based fuzzing (hypothesis) at the end.

Statistical tests use fixed seeds and Hoeffding bounds (no normal
approximation); each states its failure probability for a fresh seed.
"Bit for bit" compares float32 bit patterns (uint32 views). The fuzzing
examples are derandomized and bounded; `pytest -s` prints their counts.
"""

import functools
import itertools

import chex
import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import parameterized
from hypothesis import given, settings
from hypothesis import strategies as st

from fedqjax import quantization as Q
from tests.support import DEFAULT_XLA
from tests.support.fuzz import SETTINGS, Counts
from tests.support.quantization import (
  F32_MAX,
  F32_TINY,
  assert_bitwise,
  bound64,
  quantizer,
  template_quantizer,
  tensor,
)

N_KEYS = 20_000
METHODS = Q.METHODS
_X16 = np.asarray(jax.random.normal(jax.random.key(42), (16,)), np.float32)
_KEYS = jax.random.split(jax.random.key(7), N_KEYS)


def _hoeffding(width, n, delta):
  """t with P(|mean - E| >= t) <= delta for n i.i.d. draws in an interval of `width`."""
  return width * np.sqrt(np.log(2.0 / delta) / (2.0 * n))


@functools.partial(jax.jit, static_argnums=0)
def _many(q, flat, bits, keys):  # [N, d]: one draw per key, bits traced
  return jax.vmap(lambda k: q.quantize(flat, bits, k))(keys)


def _step_and_frac(x, bits, method):
  """Per entry grid step Δ and fraction f = x - floor(x), float64, one bucket."""
  s = 2.0**bits - 1
  v = x.astype(np.float64)
  if method == "minmax":
    step = (v.max() - v.min()) / s
    t = (v - v.min()) / step
  else:
    step = np.linalg.norm(v) / s
    t = np.abs(v) / step
  return np.full_like(v, step), t - np.floor(t)


# ----------------------------------------------------------------------------
# Frozen reference: the round's min-max quantizer and on-demand bits as they
# were before this package (fedqjax/federated/packed.py), written out plainly.
# The new code must equal it bit for bit in every context the round uses.


def _ref_mix(x):
  x = (x ^ (x >> 16)) * jnp.uint32(0x7FEB352D)
  x = (x ^ (x >> 15)) * jnp.uint32(0x846CA68B)
  return x ^ (x >> 16)


def _ref_s(bits):
  b = jnp.clip(bits, 1, 31).astype(jnp.uint32)
  return ((jnp.uint32(1) << b) - jnp.uint32(1)).astype(jnp.float32)


def _ref_quantize(flat, bits, key, sizes):
  seg = jnp.asarray(np.repeat(np.arange(len(sizes)), sizes))
  lo = jax.ops.segment_min(flat, seg, len(sizes))
  hi = jax.ops.segment_max(flat, seg, len(sizes))
  half = 0.5 * hi - 0.5 * lo
  lo_e, half_e, hi_e, s = lo[seg], half[seg], hi[seg], _ref_s(bits)
  safe = jnp.where(half_e > 0, half_e, 1.0)
  x = jnp.clip((0.5 * flat - 0.5 * lo_e) / safe, 0.0, 1.0) * s
  k = jax.random.bits(key, (2,), jnp.uint32)
  u = _ref_mix(_ref_mix(jnp.arange(flat.size, dtype=jnp.uint32) ^ k[0]) + k[1])
  u = (u >> 8).astype(jnp.float32) * jnp.float32(2.0**-24)
  fl = jnp.floor(x)
  q = fl + (u < x - fl).astype(jnp.float32)
  deq = jnp.where(q >= s, hi_e, 2.0 * (0.5 * lo_e + q * (half_e / s)))
  return jnp.where(bits >= 32, flat, jnp.where(half_e > 0, deq, flat))


def _ref_bits(flat, eps, sizes, b_min, b_max):
  seg = jnp.asarray(np.repeat(np.arange(len(sizes)), sizes))
  lo = jax.ops.segment_min(flat, seg, len(sizes))
  hi = jax.ops.segment_max(flat, seg, len(sizes))
  c = jnp.max(jnp.abs(flat))
  inv = 1.0 / jnp.where(c > 0, c, 1.0)
  a = jnp.sum(jnp.asarray(sizes, jnp.float32) * jnp.square((hi - lo) * inv))
  u = jnp.sum(jnp.square(flat * inv))
  b = jnp.ceil(jnp.log2(1.0 + jnp.sqrt(a / jnp.maximum(4.0 * eps * u, 1e-37))))
  b = jnp.clip(jnp.where(jnp.isfinite(b), b, 32.0), 1, 32).astype(jnp.int32)
  meets = lambda bb: (a / (4.0 * _ref_s(bb) ** 2) <= eps * u) | (bb >= 32)
  b = jnp.where(meets(b - 1) & (b > 1), b - 1, b)
  b = jnp.where(meets(b), b, jnp.minimum(b + 1, 32))
  return jnp.clip(jnp.where(a == 0, 1, b), b_min, b_max).astype(jnp.int32)


def _ref_tree(i, single=False):
  r = np.random.default_rng(i)
  if single:
    return {"w": r.normal(size=(9, 13)).astype(np.float32)}
  return {
    "conv": (r.normal(size=(3, 3, 2, 5)) * 0.01).astype(np.float32),
    "bias": r.normal(size=(7,)).astype(np.float32),
    "const": np.full((6,), 0.25, np.float32),  # a constant bucket
    "scalar": np.float32(r.normal()),  # a one-entry bucket
    "heavy": (r.standard_cauchy(41) * 1e-3).astype(np.float32),
  }


_REF_BITS = jnp.array([1, 3, 8, 24, 31, 32], jnp.int32)
_REF_EPS = jnp.array([1e-1, 1e-2, 1e-3, 1e-5, 1e-9, 0.0], jnp.float32)


class FrozenReferenceTest(parameterized.TestCase):
  """min-max quantize, bits_for and payload_bits equal the round's old code
  (compiled as users compile them: XLA's default optimization level)."""

  @parameterized.product(bucket_size=(None, 7), single=(False, True))
  def test_bit_for_bit_in_every_context(self, bucket_size, single):
    jit = functools.partial(jax.jit, compiler_options=DEFAULT_XLA)
    k = len(_REF_BITS)
    trees = [_ref_tree(i, single) for i in range(k)]
    batch = jax.tree.map(lambda *x: np.stack(x), *trees)
    keys = jax.random.split(jax.random.key(2024), k)
    q = Q.make_quantizer(trees[0], "minmax", bucket_size)
    sizes = tuple(int(n) for n in q.bucket_sizes)
    new = lambda t, b, key: q.quantize(q.pack(t), b, key)
    old = lambda t, b, key: _ref_quantize(q.pack(t), b, key, sizes)

    def scan(fn):  # the round's CPU client loop: an unrolled scan
      body = lambda c, xs: (c, fn(*xs))
      return jit(lambda *xs: jax.lax.scan(body, 0, xs, unroll=True)[1])

    def lax_map(fn):  # client_loop="map"
      return jit(lambda *xs: jax.lax.map(lambda a: fn(*a), xs))

    for wrap in (lambda f: jit(jax.vmap(f)), scan, lax_map):
      assert_bitwise(
        wrap(new)(batch, _REF_BITS, keys), wrap(old)(batch, _REF_BITS, keys)
      )
    for i in range(k):  # one client, jitted (eager: the test below)
      args = trees[i], _REF_BITS[i], keys[i]
      assert_bitwise(jit(new)(*args), jit(old)(*args))
    # On-demand bits (the sweep's energies depend on them) and payloads.
    bnew = lambda t, e: q.bits_for(q.pack(t), e, 2, 32)
    bold = lambda t, e: _ref_bits(q.pack(t), e, sizes, 2, 32)
    got = jit(jax.vmap(bnew))(batch, _REF_EPS)
    np.testing.assert_array_equal(got, jit(jax.vmap(bold))(batch, _REF_EPS))
    self.assertGreater(len(set(got.tolist())), 3)
    d, nb = q.num_entries, q.num_buckets
    want = np.where(
      _REF_BITS >= 32,
      np.float32(32) * np.float32(d),
      np.float32(d) * _REF_BITS.astype(np.float32) + 64 * np.float32(nb),
    )
    np.testing.assert_array_equal(q.payload_bits(_REF_BITS), want)


@pytest.mark.xla_default
def test_eager_runs_the_jitted_program():
  """Op-by-op dispatch gives the jitted old code's bits in the frozen
  test's four contexts (eager dispatch compiles at the process's level:
  tests/conftest.py runs this at XLA's default level, in a process of its
  own, one for all four)."""
  keys = jax.random.split(jax.random.key(2024), len(_REF_BITS))
  for bucket_size, single in itertools.product((None, 7), (False, True)):
    trees = [_ref_tree(i, single) for i in range(len(_REF_BITS))]
    q = Q.make_quantizer(trees[0], "minmax", bucket_size)
    sizes = tuple(int(n) for n in q.bucket_sizes)
    old = jax.jit(lambda f, b, k, s=sizes: _ref_quantize(f, b, k, s))
    for i, tree in enumerate(trees):
      args = q.pack(tree), _REF_BITS[i], keys[i]
      assert_bitwise(q.quantize(*args), old(*args))


# ----------------------------------------------------------------------------
# Layout.


class LayoutTest(parameterized.TestCase):
  TREE = {
    "w": jnp.arange(24.0).reshape(2, 3, 4),
    "b": jnp.ones((5,), jnp.bfloat16),
    "e": jnp.zeros((0, 3)),
    "s": jnp.float32(2.5),
  }

  def test_pack_unpack_and_bucket_layout(self):
    q = Q.make_quantizer(self.TREE, bucket_size=4)
    # Leaves in tree order (b, e, s, w); empty leaves have no bucket.
    self.assertEqual((q.num_entries, q.num_buckets), (30, 2 + 1 + 6))
    self.assertEqual(q.bucket_sizes.tolist(), [4, 1, 1, 4, 4, 4, 4, 4, 4])
    flat = q.pack(self.TREE)
    chex.assert_shape(flat, (30,))
    self.assertEqual(flat.dtype, jnp.float32)
    back = q.unpack(flat)
    chex.assert_trees_all_equal_shapes_and_dtypes(back, self.TREE)
    chex.assert_trees_all_equal(back, self.TREE)
    self.assertEqual(
      Q.make_quantizer(self.TREE).bucket_sizes.tolist(), [5, 1, 24]
    )

  def test_shape_template_is_equal_and_hashable(self):
    spec = jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(jnp.shape(x), x.dtype), self.TREE
    )
    a, b = (
      Q.make_quantizer(self.TREE, "qsgd", 3),
      Q.make_quantizer(spec, "qsgd", 3),
    )
    self.assertEqual(a, b)
    self.assertEqual(hash(a), hash(b))
    self.assertNotEqual(a, Q.make_quantizer(spec, "minmax", 3))
    self.assertEqual((a.method, a.bucket_size), ("qsgd", 3))

  def test_pack_rejects_other_trees(self):
    q = Q.make_quantizer(self.TREE)
    with self.assertRaisesRegex(ValueError, "structure"):
      q.pack({"w": self.TREE["w"]})
    with self.assertRaisesRegex(ValueError, r"shape \(2, 4, 3\)"):
      q.pack({**self.TREE, "w": jnp.zeros((2, 4, 3))})
    with self.assertRaisesRegex(ValueError, r"shape \(30,\)"):
      q.unpack(jnp.zeros((29,)))

  @parameterized.parameters(*METHODS)
  def test_compile_size_independent_of_leaf_count(self, method):
    """quantize / bits_for / error_bound trace O(1) ops in the number of leaves."""

    def count(jaxpr):
      n = 0
      for eqn in jaxpr.eqns:
        n += 1
        for sub in jax.extend.core.jaxprs_in_params(eqn.params):
          n += count(sub)
      return n

    sizes = []
    for leaves in (3, 40):
      tree = [jax.ShapeDtypeStruct((5, 3), jnp.float32)] * leaves
      q = Q.make_quantizer(tree, method)
      flat = jnp.zeros((q.num_entries,))
      key = jax.random.key(0)
      sizes.append(
        [
          count(jax.make_jaxpr(f)(flat).jaxpr)
          for f in (
            lambda f: q.quantize(f, 3, key),
            lambda f: q.bits_for(f, 0.1),
            lambda f: q.error_bound(f, 3),
          )
        ]
      )
    self.assertEqual(sizes[0], sizes[1])


# ----------------------------------------------------------------------------
# Statistics.


class UnbiasednessTest(parameterized.TestCase):
  @parameterized.product(method=METHODS, bits=(1, 2, 4, 8, 16))
  def test_mean_matches(self, method, bits):
    """2 methods x 5 widths x 16 entries = 160 Hoeffding tests at delta = 1e-8:
    P(any false failure) <= 1.6e-6 (union bound)."""
    q = np.asarray(_many(quantizer(method), _X16, bits, _KEYS), np.float64)
    step, _ = _step_and_frac(_X16, bits, method)
    tol = _hoeffding(step, N_KEYS, 1e-8) + 4e-7 * np.abs(_X16).max()  # + f32
    err = np.abs(q.mean(0) - _X16)
    self.assertTrue(np.all(err <= tol), f"max err/tol {np.max(err / tol):.3f}")

  @parameterized.parameters(
    ("minmax", [1e30, -1e30, 0.3e30, 3.0, -3e38, 3e38]),
    ("qsgd", [1e38, -1e38, 2e37, 3.0, -5e37, 1e30]),
  )
  def test_huge_values_unbiased(self, method, values):
    """Ranges / norms above 2^126 (1/range is a float32 denormal).
    Hoeffding, delta = 1e-8 per entry, 12 entries: failure prob <= 1.2e-7."""
    x = np.array(values, np.float32)
    q = np.asarray(_many(quantizer(method, 6), x, 4, _KEYS), np.float64)
    self.assertTrue(np.all(np.isfinite(q)))
    step, _ = _step_and_frac(x, 4, method)
    tol = _hoeffding(step, N_KEYS, 1e-8) + 1e-6 * np.abs(x).max()
    np.testing.assert_array_less(np.abs(q.mean(0) - x), tol)


class VarianceTest(parameterized.TestCase):
  @parameterized.product(method=METHODS, bits=(2, 4))
  def test_per_entry_variance(self, method, bits):
    """Var / Δ² = p̂(1 - p̂) is within t + t² of f(1 - f) <= 1/4 when |p̂ - f| <= t.

    Hoeffding at delta = 1e-8 per entry, 64 entries: failure prob <= 6.4e-7.
    """
    q = np.asarray(_many(quantizer(method), _X16, bits, _KEYS), np.float64)
    step, f = _step_and_frac(_X16, bits, method)
    emp = q.var(0) / step**2
    t = _hoeffding(1.0, N_KEYS, 1e-8)
    np.testing.assert_array_less(np.abs(emp - f * (1 - f)), t + t * t + 1e-4)
    np.testing.assert_array_less(emp, 0.25 + t + t * t + 1e-4)

  @parameterized.product(method=METHODS, bits=(1, 2, 4, 8))
  def test_total_error_meets_bound(self, method, bits):
    """Exact expected error Σ f(1-f)Δ² <= error_bound, and the empirical mean
    squared error is within Hoeffding (range nΔ², delta = 1e-8 per case, 8
    cases: failure prob <= 8e-8) of it."""
    qz = quantizer(method)
    q = np.asarray(_many(qz, _X16, bits, _KEYS), np.float64)
    step, f = _step_and_frac(_X16, bits, method)
    bound = float(qz.error_bound(_X16, bits))
    np.testing.assert_allclose(bound, bound64(_X16, bits, method), rtol=1e-5)
    expected = np.sum(f * (1 - f) * step**2)
    self.assertLessEqual(expected, bound * (1 + 1e-5))
    emp = np.mean(np.sum((q - _X16) ** 2, axis=1))
    t = _hoeffding(_X16.size * step[0] ** 2, N_KEYS, 1e-8)
    self.assertLessEqual(abs(emp - expected), t)
    self.assertLessEqual(emp, bound + t)


# ----------------------------------------------------------------------------
# Exact and extreme cases.


class ExactCasesTest(parameterized.TestCase):
  @parameterized.parameters(1, 2, 3, 4, 8)
  def test_on_grid_values_exact(self, bits):
    s = 2**bits - 1
    ints = np.random.default_rng(bits).permutation(
      np.arange(s + 1, dtype=np.float32)
    )
    pow2 = (-1.0 + np.arange(s + 1) / 2.0**bits).astype(np.float32)  # Δ = 2^-b
    for x in (ints, pow2):
      q = np.asarray(_many(quantizer("minmax", s + 1), x, bits, _KEYS[:64]))
      np.testing.assert_array_equal(q, np.broadcast_to(x, q.shape))

  @parameterized.product(method=METHODS, bits=(1, 16))
  def test_zeros_and_constants(self, method, bits):
    key = jax.random.key(0)
    q = quantizer(method, 16, 5)
    zeros = np.zeros(16, np.float32)
    assert_bitwise(q.quantize(zeros, bits, key), zeros)
    const = np.full(16, 7.25, np.float32)
    out = np.asarray(q.quantize(const, bits, key))
    if method == "minmax":  # hi == lo: sent exactly
      assert_bitwise(out, const)
    else:  # QSGD: n equal entries sit at |v|/||v|| = 1/sqrt(n) of the norm
      self.assertTrue(
        np.all((out >= 0) & (out <= 7.25 * np.sqrt(5) * (1 + 1e-6)))
      )

  @parameterized.parameters(*METHODS)
  def test_one_element_buckets_exact(self, method):
    x = np.array([-3.5, 2.0, 1e-3], np.float32)
    q = quantizer(method, 3, 1)
    for bits in (1, 2, 8, 24):
      assert_bitwise(q.quantize(x, bits, jax.random.key(bits)), x)

  @parameterized.product(method=METHODS, bits=(1, 8, 31))
  def test_huge_range_stays_finite(self, method, bits):
    x = np.array([1e30, -1e30, 0.25e30, 3.0, -3e38, 3e38], np.float32)
    for bs in (None, 2):
      q = quantizer(method, 6, bs)
      out = np.asarray(q.quantize(x, bits, jax.random.key(1)))
      self.assertTrue(np.all(np.isfinite(out)), out)
      b = int(q.bits_for(x, 1e-3))
      self.assertTrue(1 <= b <= 32)
    out = np.asarray(
      quantizer(method, 4).quantize(x[:4], bits, jax.random.key(1))
    )
    self.assertTrue(
      np.all(
        np.abs(out) <= 1e30 * (1 + 1e-6) * (1 if method == "minmax" else 2)
      )
    )
    if method == "minmax":  # the endpoints are exact
      self.assertEqual((out[0], out[1]), (np.float32(1e30), np.float32(-1e30)))

  def test_qsgd_norm_saturates_finite(self):
    """||v|| > 3.4e38 is not a float32: the norm saturates (biased, finite)."""
    x = np.full(3, 3e38, np.float32)
    out = np.asarray(quantizer("qsgd", 3).quantize(x, 1, jax.random.key(0)))
    self.assertTrue(np.all(np.isfinite(out)) and np.all(out >= 0))

  @parameterized.parameters(*METHODS)
  def test_bits32_identity(self, method):
    x = np.array([1e-40, -0.0, 3e38, 1.5, -2.0, 7.0], np.float32)
    assert_bitwise(
      quantizer(method, 6, 4).quantize(x, 32, jax.random.key(0)), x
    )

  def test_buckets_use_their_own_range(self):
    x = np.array([2.0, 2.0, 2.0, 2.0, 0.0, 1.0, 0.3, 0.7], np.float32)
    out = np.asarray(
      quantizer("minmax", 8, 4).quantize(x, 1, jax.random.key(3))
    )
    np.testing.assert_array_equal(out[:4], 2.0)  # constant bucket
    self.assertTrue(set(out[4:].tolist()) <= {0.0, 1.0})


# ----------------------------------------------------------------------------
# Tracing: jit, vmap over clients, compile once.


class TracingTest(parameterized.TestCase):
  @parameterized.parameters(
    ("minmax", None), ("minmax", 5), ("qsgd", None), ("qsgd", 5)
  )
  def test_vmap_clients_equals_python_loop(self, method, bucket_size):
    """K clients with their own bits and keys, as the round lifts them.

    QSGD and all on-demand bits agree bit for bit. min-max levels agree, but
    XLA compiles the dequantization's divisions by s per program (a division,
    or a product with 1/s where s is a broadcast; FMA contraction), so values
    agree to float32 rounding: within 2^-21 of the bucket's magnitude.
    """
    k_clients = 5
    trees = {
      "a": jax.random.normal(jax.random.key(1), (k_clients, 4, 6)),
      "b": jax.random.normal(jax.random.key(2), (k_clients, 13)) * 1e-3,
    }
    one = lambda i: jax.tree.map(lambda x: x[i], trees)
    q = Q.make_quantizer(one(0), method, bucket_size)
    bits = jnp.array([1, 3, 8, 16, 32])
    eps = jnp.array([1e-1, 1e-2, 1e-3, 1e-4, 1e-6])
    keys = jax.random.split(jax.random.key(3), k_clients)
    fn = lambda t, b, key, e: (
      q.quantize(q.pack(t), b, key),
      q.bits_for(q.pack(t), e),
    )
    batched, bbits = jax.jit(jax.vmap(fn))(trees, bits, keys, eps)
    for i in range(k_clients):
      flat = q.pack(one(i))
      loop = q.quantize(flat, int(bits[i]), keys[i])
      self.assertEqual(int(bbits[i]), int(q.bits_for(flat, eps[i])))
      if method == "qsgd":
        assert_bitwise(batched[i], loop)
        continue
      seg = np.repeat(np.arange(q.num_buckets), q.bucket_sizes)
      mag = np.asarray(
        [
          np.abs(c).max()
          for c in np.split(np.asarray(flat), np.cumsum(q.bucket_sizes)[:-1])
        ]
      )[seg]
      np.testing.assert_array_less(
        np.abs(batched[i] - loop), 2.0**-21 * mag + 1e-30
      )

  def test_changing_bits_does_not_retrace(self):
    q = quantizer("minmax", 12)

    @jax.jit
    @chex.assert_max_traces(n=1)
    def step(flat, bits, eps, key):
      return (
        q.quantize(flat, bits, key),
        q.bits_for(flat, eps),
        q.payload_bits(bits),
      )

    flat = jnp.arange(12.0) % 4
    for b in (1, 4, 8, 32, 17):  # arrays, as the round engine passes them
      step(flat, jnp.int32(b), jnp.float32(0.01 * b), jax.random.key(b))

  def test_inside_jit_bits_are_clipped_and_nan_propagates(self):
    q = quantizer("minmax", 3)
    f = jax.jit(q.quantize)
    x = jnp.array([0.0, 0.3, 1.0])
    assert_bitwise(f(x, 40, jax.random.key(0)), x)  # clipped to 32: passthrough
    self.assertTrue(
      set(np.asarray(f(x, 0, jax.random.key(0))).tolist()) <= {0.0, 1.0}
    )
    self.assertTrue(
      np.isnan(
        np.asarray(f(jnp.array([0.0, jnp.nan, 1.0]), 4, jax.random.key(0)))
      ).any()
    )


# ----------------------------------------------------------------------------
# Property-based fuzzing (hypothesis) on adversarial float32 tensors.


COUNTS = Counts()
_count = COUNTS.add


def _buckets(x: np.ndarray, bucket_size):
  flat = x.reshape(-1)
  if bucket_size is None:
    return [slice(0, flat.size)]
  return [
    slice(i, min(i + bucket_size, flat.size))
    for i in range(0, flat.size, bucket_size)
  ]


def _assert_in_bucket_range(x, out, bucket_size, what):
  out = np.asarray(out)
  assert out.shape == x.shape and out.dtype == np.float32, what
  assert np.all(np.isfinite(out)), (what, x, out)
  xf, of = x.reshape(-1), out.reshape(-1)
  for sl in _buckets(x, bucket_size):
    lo, hi = xf[sl].min(), xf[sl].max()
    # XLA:CPU flushes denormals to zero, so bounds within 2^-126 of 0 may come
    # out as 0 (see the denormal xfail tests below).
    ok = (of[sl] >= lo - F32_TINY) & (of[sl] <= hi + F32_TINY)
    assert np.all(ok), (what, sl, lo, hi, of[sl][~ok], xf[sl][~ok])


@settings(max_examples=150, **SETTINGS)
@given(
  tensor(),
  st.integers(1, 32),
  st.sampled_from([None, 4]),
  st.integers(0, 2**31 - 1),
)
def test_minmax_quantizers_stay_in_range_or_reject(x, bits, bucket_size, seed):
  """quantize and the codec: inside each bucket's [lo, hi], or ValueError."""
  _count("tensors")
  key = jax.random.key(seed)
  q, _ = template_quantizer((x.shape,), "minmax", bucket_size)
  flat = x.reshape(-1)
  finite = bool(np.all(np.isfinite(x)))
  for name, fn in (
    ("quantize", lambda: q.quantize(flat, bits, key)),
    ("encode", lambda: Q.decode(q, Q.encode(q, flat, bits, key))),
  ):
    if not finite:
      with pytest.raises(ValueError, match="NaN or inf"):
        fn()
      continue
    out = np.asarray(fn()).reshape(x.shape)
    _assert_in_bucket_range(x, out, bucket_size, name)
    if bits == 32:
      np.testing.assert_array_equal(out.view(np.uint32), x.view(np.uint32))


@settings(max_examples=100, **SETTINGS)
@given(
  tensor(finite=True),
  st.integers(1, 32),
  st.sampled_from([None, 4]),
  st.integers(0, 2**31 - 1),
)
def test_qsgd_quantizer_finite_and_bounded(x, bits, bucket_size, seed):
  """|Q(v)_i| <= ||v|| of its bucket (saturated at 3.4e38), signs kept."""
  _count("tensors")
  q, _ = template_quantizer((x.shape,), "qsgd", bucket_size)
  out = np.asarray(q.quantize(x.reshape(-1), bits, jax.random.key(seed)))
  assert np.all(np.isfinite(out)), (x, out)
  xf = x.astype(np.float64).reshape(-1)
  for sl in _buckets(x, bucket_size):
    v = xf[sl]
    m = np.abs(v).max()
    norm = min(m * np.sqrt(np.sum((v / m) ** 2)), F32_MAX) if m > 0 else 0.0
    assert np.all(np.abs(out[sl].astype(np.float64)) <= norm * (1 + 1e-6)), (
      x,
      out,
    )
  # Signs are kept (0 may come out for any entry).
  assert np.all(np.sign(out) * np.sign(xf) >= 0), (x, out)


@settings(max_examples=150, **SETTINGS)
@given(
  tensor(finite=True),
  st.integers(1, 32),
  st.sampled_from([None, 4]),
  st.sampled_from(["minmax", "qsgd"]),
  st.integers(0, 2**31 - 1),
)
def test_jitted_quantizer_equals_eager(x, bits, bucket_size, method, seed):
  """Traced bits under jit: the same program as the eager call, bit for bit."""
  _count("tensors")
  key = jax.random.key(seed)
  q, jitted = template_quantizer((x.shape,), method, bucket_size)
  out = np.asarray(jitted(jnp.asarray(x.reshape(-1)), jnp.int32(bits), key))
  eager = np.asarray(q.quantize(x.reshape(-1), bits, key))
  np.testing.assert_array_equal(out.view(np.uint32), eager.view(np.uint32))
  if method == "minmax":
    _assert_in_bucket_range(x, out.reshape(x.shape), bucket_size, "jit")


@pytest.mark.xfail(
  strict=True,
  reason=(
    "fedqjax/quantization/quantizer.py: a constant bucket of denormals "
    "(1e-45) comes back as 0.0 for bits < 32 (XLA:CPU flushes denormals to "
    "zero), outside the bucket range [1e-45, 1e-45]; documented: outputs may "
    "leave a bucket's range by < 2^-126"
  ),
)
@pytest.mark.parametrize("method", ["minmax", "qsgd"])
def test_quantize_denormal_constant_bucket(method):
  x = np.full((7,), 1e-45, np.float32)
  q, _ = template_quantizer((x.shape,), method)
  out = np.asarray(q.quantize(x, 8, jax.random.key(0)))
  np.testing.assert_array_equal(out, x)


@pytest.mark.xfail(
  strict=True,
  reason=(
    "fedqjax/quantization/quantizer.py _minmax_dequant (the round's formula "
    "since the packed quantizer): Q = 2*(0.5*lo + q*(half/s)); 0.5*lo is "
    "denormal for lo = 2^-126 and XLA:CPU flushes it to 0, so level 0 "
    "dequantizes to 0.0 < lo (out of the bucket range by < 2^-126)"
  ),
)
def test_minmax_smallest_normal_lower_bound():
  x = np.tile(np.array([F32_TINY, 1.0], np.float32), 4)[:7]
  q, _ = template_quantizer((x.shape,), "minmax")
  out = q.quantize(x, 1, jax.random.key(0))
  assert np.asarray(out).min() >= F32_TINY, out


def test_print_counts():
  """Runs last in this module: prints and checks how much was fuzzed."""
  print("\nfuzz counts:", dict(sorted(COUNTS.items())))
  if "tensors" in COUNTS:  # the old fuzz module's 400 of 680 tensors, pro rata
    assert COUNTS["tensors"] >= 235


if __name__ == "__main__":
  pytest.main([__file__])
