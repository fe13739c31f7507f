"""Tests for fedqjax.quantization (MODEL.md section 2).

Statistical tests use fixed seeds and Hoeffding bounds (no normal
approximation); each states its failure probability for a fresh seed.
"Bit for bit" compares float32 bit patterns (uint32 views).
"""
import dataclasses
import functools
import math

import chex
import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import parameterized

from fedqjax import quantization as Q
from fedqjax.quantization import codec as codec_lib

N_KEYS = 20_000
METHODS = Q.METHODS
_X16 = np.asarray(jax.random.normal(jax.random.key(42), (16,)), np.float32)
_KEYS = jax.random.split(jax.random.key(7), N_KEYS)


def _bits_of(x):
  return np.asarray(x, np.float32).view(np.uint32)


def _assert_bitwise(a, b):
  np.testing.assert_array_equal(_bits_of(a), _bits_of(b))


def _hoeffding(width, n, delta):
  """t with P(|mean - E| >= t) <= delta for n i.i.d. draws in an interval of `width`."""
  return width * np.sqrt(np.log(2.0 / delta) / (2.0 * n))


@functools.lru_cache(maxsize=None)
def _quantizer(method, n=16, bucket_size=None):
  return Q.make_quantizer(jax.ShapeDtypeStruct((n,), jnp.float32), method,
                          bucket_size)


@functools.partial(jax.jit, static_argnums=0)
def _many(q, flat, bits, keys):  # [N, d]: one draw per key, bits traced
  return jax.vmap(lambda k: q.quantize(flat, bits, k))(keys)


def _buckets64(x, bucket_size):
  v = np.asarray(x, np.float64).ravel()
  size = v.size if bucket_size is None else bucket_size
  return [v[i:i + size] for i in range(0, v.size, size)]


def _range(c, method):
  return c.max() - c.min() if method == "minmax" else np.linalg.norm(c)


def _bound64(x, b, method, bucket_size=None):
  """float64 sum_j n_j R_j^2 / (4 s^2); leaves of a tree or one vector."""
  if b >= 32:
    return 0.0
  chunks = [c for leaf in (x if isinstance(x, list) else [x])
            for c in _buckets64(leaf, bucket_size)]
  a = sum(c.size * _range(c, method) ** 2 for c in chunks)
  return a / (4.0 * (2.0**b - 1) ** 2)


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
  return {"conv": (r.normal(size=(3, 3, 2, 5)) * 0.01).astype(np.float32),
          "bias": r.normal(size=(7,)).astype(np.float32),
          "const": np.full((6,), 0.25, np.float32),  # a constant bucket
          "scalar": np.float32(r.normal()),  # a one-entry bucket
          "heavy": (r.standard_cauchy(41) * 1e-3).astype(np.float32)}


_REF_BITS = jnp.array([1, 3, 8, 24, 31, 32], jnp.int32)
_REF_EPS = jnp.array([1e-1, 1e-2, 1e-3, 1e-5, 1e-9, 0.0], jnp.float32)


class FrozenReferenceTest(parameterized.TestCase):
  """min-max quantize, bits_for and payload_bits equal the round's old code."""

  @parameterized.product(bucket_size=(None, 7), single=(False, True))
  def test_bit_for_bit_in_every_context(self, bucket_size, single):
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
      return jax.jit(lambda *xs: jax.lax.scan(body, 0, xs, unroll=True)[1])

    def lax_map(fn):  # client_loop="map"
      return jax.jit(lambda *xs: jax.lax.map(lambda a: fn(*a), xs))

    for wrap in (lambda f: jax.jit(jax.vmap(f)), scan, lax_map):
      _assert_bitwise(wrap(new)(batch, _REF_BITS, keys),
                      wrap(old)(batch, _REF_BITS, keys))
    for i in range(k):  # one client, jitted; eager runs the same program
      want = jax.jit(old)(trees[i], _REF_BITS[i], keys[i])
      _assert_bitwise(jax.jit(new)(trees[i], _REF_BITS[i], keys[i]), want)
      _assert_bitwise(new(trees[i], _REF_BITS[i], keys[i]), want)
    # On-demand bits (the sweep's energies depend on them) and payloads.
    bnew = lambda t, e: q.bits_for(q.pack(t), e, 2, 32)
    bold = lambda t, e: _ref_bits(q.pack(t), e, sizes, 2, 32)
    got = jax.jit(jax.vmap(bnew))(batch, _REF_EPS)
    np.testing.assert_array_equal(got, jax.jit(jax.vmap(bold))(batch, _REF_EPS))
    self.assertGreater(len(set(got.tolist())), 3)
    d, nb = q.num_entries, q.num_buckets
    want = np.where(_REF_BITS >= 32, np.float32(32) * np.float32(d),
                    np.float32(d) * _REF_BITS.astype(np.float32) + 64 * np.float32(nb))
    np.testing.assert_array_equal(q.payload_bits(_REF_BITS), want)


# ----------------------------------------------------------------------------
# Layout.


class LayoutTest(parameterized.TestCase):
  TREE = {"w": jnp.arange(24.0).reshape(2, 3, 4), "b": jnp.ones((5,), jnp.bfloat16),
          "e": jnp.zeros((0, 3)), "s": jnp.float32(2.5)}

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
    self.assertEqual(Q.make_quantizer(self.TREE).bucket_sizes.tolist(), [5, 1, 24])

  def test_shape_template_is_equal_and_hashable(self):
    spec = jax.tree.map(lambda x: jax.ShapeDtypeStruct(jnp.shape(x), x.dtype), self.TREE)
    a, b = Q.make_quantizer(self.TREE, "qsgd", 3), Q.make_quantizer(spec, "qsgd", 3)
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
      sizes.append([count(jax.make_jaxpr(f)(flat).jaxpr) for f in (
          lambda f: q.quantize(f, 3, key), lambda f: q.bits_for(f, 0.1),
          lambda f: q.error_bound(f, 3))])
    self.assertEqual(sizes[0], sizes[1])


# ----------------------------------------------------------------------------
# Statistics.


class UnbiasednessTest(parameterized.TestCase):

  @parameterized.product(method=METHODS, bits=(1, 2, 4, 8, 16))
  def test_mean_matches(self, method, bits):
    """2 methods x 5 widths x 16 entries = 160 Hoeffding tests at delta = 1e-8:
    P(any false failure) <= 1.6e-6 (union bound)."""
    q = np.asarray(_many(_quantizer(method), _X16, bits, _KEYS), np.float64)
    step, _ = _step_and_frac(_X16, bits, method)
    tol = _hoeffding(step, N_KEYS, 1e-8) + 4e-7 * np.abs(_X16).max()  # + f32
    err = np.abs(q.mean(0) - _X16)
    self.assertTrue(np.all(err <= tol), f"max err/tol {np.max(err / tol):.3f}")

  @parameterized.parameters(
      ("minmax", [1e30, -1e30, 0.3e30, 3.0, -3e38, 3e38]),
      ("qsgd", [1e38, -1e38, 2e37, 3.0, -5e37, 1e30]))
  def test_huge_values_unbiased(self, method, values):
    """Ranges / norms above 2^126 (1/range is a float32 denormal).
    Hoeffding, delta = 1e-8 per entry, 12 entries: failure prob <= 1.2e-7."""
    x = np.array(values, np.float32)
    q = np.asarray(_many(_quantizer(method, 6), x, 4, _KEYS), np.float64)
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
    q = np.asarray(_many(_quantizer(method), _X16, bits, _KEYS), np.float64)
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
    qz = _quantizer(method)
    q = np.asarray(_many(qz, _X16, bits, _KEYS), np.float64)
    step, f = _step_and_frac(_X16, bits, method)
    bound = float(qz.error_bound(_X16, bits))
    np.testing.assert_allclose(bound, _bound64(_X16, bits, method), rtol=1e-5)
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
    ints = np.random.default_rng(bits).permutation(np.arange(s + 1, dtype=np.float32))
    pow2 = (-1.0 + np.arange(s + 1) / 2.0**bits).astype(np.float32)  # Δ = 2^-b
    for x in (ints, pow2):
      q = np.asarray(_many(_quantizer("minmax", s + 1), x, bits, _KEYS[:64]))
      np.testing.assert_array_equal(q, np.broadcast_to(x, q.shape))

  @parameterized.product(method=METHODS, bits=(1, 16))
  def test_zeros_and_constants(self, method, bits):
    key = jax.random.key(0)
    q = _quantizer(method, 16, 5)
    zeros = np.zeros(16, np.float32)
    _assert_bitwise(q.quantize(zeros, bits, key), zeros)
    const = np.full(16, 7.25, np.float32)
    out = np.asarray(q.quantize(const, bits, key))
    if method == "minmax":  # hi == lo: sent exactly
      _assert_bitwise(out, const)
    else:  # QSGD: n equal entries sit at |v|/||v|| = 1/sqrt(n) of the norm
      self.assertTrue(np.all((out >= 0) & (out <= 7.25 * np.sqrt(5) * (1 + 1e-6))))

  @parameterized.parameters(*METHODS)
  def test_one_element_buckets_exact(self, method):
    x = np.array([-3.5, 2.0, 1e-3], np.float32)
    q = _quantizer(method, 3, 1)
    for bits in (1, 2, 8, 24):
      _assert_bitwise(q.quantize(x, bits, jax.random.key(bits)), x)

  @parameterized.product(method=METHODS, bits=(1, 8, 31))
  def test_huge_range_stays_finite(self, method, bits):
    x = np.array([1e30, -1e30, 0.25e30, 3.0, -3e38, 3e38], np.float32)
    for bs in (None, 2):
      q = _quantizer(method, 6, bs)
      out = np.asarray(q.quantize(x, bits, jax.random.key(1)))
      self.assertTrue(np.all(np.isfinite(out)), out)
      b = int(q.bits_for(x, 1e-3))
      self.assertTrue(1 <= b <= 32)
    out = np.asarray(_quantizer(method, 4).quantize(x[:4], bits, jax.random.key(1)))
    self.assertTrue(np.all(np.abs(out) <= 1e30 * (1 + 1e-6) * (1 if method == "minmax" else 2)))
    if method == "minmax":  # the endpoints are exact
      self.assertEqual((out[0], out[1]), (np.float32(1e30), np.float32(-1e30)))

  def test_qsgd_norm_saturates_finite(self):
    """||v|| > 3.4e38 is not a float32: the norm saturates (biased, finite)."""
    x = np.full(3, 3e38, np.float32)
    out = np.asarray(_quantizer("qsgd", 3).quantize(x, 1, jax.random.key(0)))
    self.assertTrue(np.all(np.isfinite(out)) and np.all(out >= 0))

  @parameterized.parameters(*METHODS)
  def test_bits32_identity(self, method):
    x = np.array([1e-40, -0.0, 3e38, 1.5, -2.0, 7.0], np.float32)
    _assert_bitwise(_quantizer(method, 6, 4).quantize(x, 32, jax.random.key(0)), x)

  def test_buckets_use_their_own_range(self):
    x = np.array([2.0, 2.0, 2.0, 2.0, 0.0, 1.0, 0.3, 0.7], np.float32)
    out = np.asarray(_quantizer("minmax", 8, 4).quantize(x, 1, jax.random.key(3)))
    np.testing.assert_array_equal(out[:4], 2.0)  # constant bucket
    self.assertTrue(set(out[4:].tolist()) <= {0.0, 1.0})


# ----------------------------------------------------------------------------
# On-demand bits.


class OnDemandBitsTest(parameterized.TestCase):

  @parameterized.product(method=METHODS, bucket_size=(None, 6))
  def test_least_bits_meeting_bound_brute_force(self, method, bucket_size):
    rng = np.random.default_rng(0)
    tree = {"a": rng.normal(size=(5, 8)).astype(np.float32),
            "b": rng.standard_cauchy(17).astype(np.float32)}
    q = Q.make_quantizer(tree, method, bucket_size)
    leaves = jax.tree.leaves(tree)
    norm2 = sum(float(np.sum(np.asarray(x, np.float64) ** 2)) for x in leaves)
    eps = np.exp(rng.uniform(np.log(1e-14), np.log(0.5), size=40)).astype(np.float32)
    b_min = 2
    flat = q.pack(tree)
    got = np.asarray(jax.jit(jax.vmap(lambda e: q.bits_for(flat, e, b_min)))(eps))
    for i, (e, b) in enumerate(zip(eps.astype(np.float64), got)):
      budget = e * norm2
      bounds = {bb: _bound64(leaves, bb, method, bucket_size) for bb in range(b_min, 33)}
      want = min(bb for bb in bounds if bounds[bb] <= budget)  # brute force
      if all(abs(v - budget) > 1e-5 * budget for v in bounds.values()):
        self.assertEqual(b, want, (e, bounds))  # no float32 rounding tie
      self.assertLessEqual(bounds[b], budget * (1 + 1e-5))
      if b > b_min:
        self.assertGreater(bounds[b - 1], budget * (1 - 1e-5))
      if i < 2:  # the eager call runs the same program
        self.assertEqual(b, int(q.bits_for(flat, e, b_min)))
    self.assertGreater(len(set(got.tolist())), 10)

  @parameterized.parameters(*METHODS)
  def test_edge_cases(self, method):
    q = _quantizer(method, 4)
    x = np.array([0.1, -2.0, 0.7, 3.0], np.float32)
    self.assertEqual(int(q.bits_for(np.zeros(4, np.float32), 0.1, 3)), 3)  # zero -> b_min
    if method == "minmax":  # constant -> b_min (QSGD constants are not exact)
      self.assertEqual(int(q.bits_for(np.full(4, 5.0, np.float32), 0.0, 2)), 2)
    self.assertEqual(int(q.bits_for(x, 0.0)), 32)  # no b < 32 meets eps = 0
    self.assertEqual(int(q.bits_for(x, 1e-30)), 32)
    self.assertEqual(int(q.bits_for(x, 1e-30, 1, 12)), 12)  # capped by b_max
    self.assertEqual(int(q.bits_for(x, 10.0, 5)), 5)  # floor b_min
    b = q.bits_for(x, 0.01)
    self.assertEqual(b.dtype, jnp.int32)
    budget = 0.01 * float(np.sum(x.astype(np.float64) ** 2))
    self.assertLessEqual(float(q.error_bound(x, b)), budget)
    self.assertGreater(float(q.error_bound(x, b - 1)), budget)
    self.assertEqual(float(q.error_bound(x, 32)), 0.0)
    np.testing.assert_allclose(float(q.error_bound(x, 3)), _bound64(x, 3, method), rtol=1e-5)


# ----------------------------------------------------------------------------
# Payload size and codec.


class PayloadBitsTest(parameterized.TestCase):

  def test_formula(self):
    tree = {"a": jnp.ones((10, 10)), "b": jnp.ones((7,))}
    bits = jnp.array([[1, 4], [8, 32]])
    for method, bs, nb in (("minmax", None, 2), ("minmax", 8, 14), ("qsgd", None, 2)):
      q = Q.make_quantizer(tree, method, bs)
      got = q.payload_bits(bits)
      self.assertEqual((got.shape, got.dtype), ((2, 2), jnp.float32))
      per = (lambda b: 107 * b + 64 * nb) if method == "minmax" else (
          lambda b: 107 * (b + 1) + 32 * nb)
      self.assertEqual(got.tolist(), [[per(1), per(4)], [per(8), 32 * 107]])
      vm = jax.jit(jax.vmap(q.payload_bits))(jnp.array([1, 8, 32]))
      self.assertEqual(vm.tolist(), [per(1), per(8), 32 * 107])


_CODEC_TREE = {"conv": np.asarray(jax.random.normal(jax.random.key(5), (3, 3, 2, 4))),
               "bias": np.linspace(-1.0, 2.0, 13, dtype=np.float32),
               "const": np.full((2, 3), 0.5, np.float32),
               "huge": np.asarray(jax.random.normal(jax.random.key(6), (9,))) * 1e30,
               "tiny": np.array([1e-38, 0.0, 2e-38, 5e-39], np.float32)}


@functools.lru_cache(maxsize=None)
def _codec_quantizer(method, bucket_size):
  q = Q.make_quantizer(_CODEC_TREE, method, bucket_size)
  return q, jax.jit(q.quantize)


class CodecTest(parameterized.TestCase):

  def _roundtrip(self, bits, bucket_size, method):
    q, jitted = _codec_quantizer(method, bucket_size)
    flat = np.asarray(q.pack(_CODEC_TREE))
    key = jax.random.key(bits)
    payload = Q.encode(q, flat, bits, key)
    out = Q.decode(q, payload)
    self.assertEqual((out.shape, out.dtype), ((q.num_entries,), np.float32))
    _assert_bitwise(out, jitted(flat, bits, key))
    _assert_bitwise(out, q.quantize(flat, bits, key))  # eager
    self.assertEqual(payload.num_bits, float(q.payload_bits(bits)))
    body = len(payload.data) - codec_lib._HEADER.size
    self.assertEqual(body, math.ceil(payload.level_bits / 8)
                     + (payload.num_bits - payload.level_bits) // 8)
    self.assertEqual(payload.bits, bits)

  @parameterized.product(bits=tuple(range(1, 17)) + (24, 25, 31, 32),
                         bucket_size=(None, 5))
  def test_minmax_exact_roundtrip(self, bits, bucket_size):
    self._roundtrip(bits, bucket_size, "minmax")

  @parameterized.product(bits=(1, 2, 7, 16, 24, 25, 31, 32), bucket_size=(None, 5))
  def test_qsgd_exact_roundtrip(self, bits, bucket_size):
    self._roundtrip(bits, bucket_size, "qsgd")

  def test_pack_bits_many_chunks(self):
    rng = np.random.default_rng(0)
    for width in (1, 13, 32):
      vals = rng.integers(0, 2**width, size=(1 << 20) + 77, dtype=np.uint64).astype(np.uint32)
      buf, nbits = codec_lib.pack_bits(vals, width)
      self.assertEqual((len(buf), nbits), (math.ceil(vals.size * width / 8), vals.size * width))
      np.testing.assert_array_equal(codec_lib.unpack_bits(buf, vals.size, width), vals)

  def test_truncated_or_corrupted_raises(self):
    q, _ = _codec_quantizer("minmax", 5)
    payload = Q.encode(q, q.pack(_CODEC_TREE), 5, jax.random.key(0))
    bad = lambda data: dataclasses.replace(payload, data=data)
    with self.assertRaisesRegex(ValueError, "truncated"):
      Q.decode(q, bad(payload.data[:-3]))
    with self.assertRaisesRegex(ValueError, "truncated"):
      Q.decode(q, bad(payload.data + b"\0"))
    data = bytearray(payload.data)
    data[codec_lib._HEADER.size + 7] ^= 0x10
    with self.assertRaisesRegex(ValueError, "checksum"):
      Q.decode(q, bad(bytes(data)))
    with self.assertRaisesRegex(ValueError, "header"):
      Q.decode(q, bad(b"XXXX" + payload.data[4:]))
    with self.assertRaisesRegex(ValueError, "header"):
      Q.decode(q, bad(payload.data[:10]))
    for other in (_codec_quantizer("minmax", None)[0], _codec_quantizer("qsgd", 5)[0]):
      with self.assertRaisesRegex(ValueError, "does not match the quantizer"):
        Q.decode(other, payload)
    data = bytearray(payload.data)
    data[6] = 40  # the bits field
    with self.assertRaisesRegex(ValueError, r"bits in \[1, 32\]"):
      Q.decode(q, bad(bytes(data)))


# ----------------------------------------------------------------------------
# Tracing: jit, vmap over clients, compile once.


class TracingTest(parameterized.TestCase):

  @parameterized.parameters(("minmax", None), ("minmax", 5), ("qsgd", None), ("qsgd", 5))
  def test_vmap_clients_equals_python_loop(self, method, bucket_size):
    """K clients with their own bits and keys, as the round lifts them.

    QSGD and all on-demand bits agree bit for bit. min-max levels agree, but
    XLA compiles the dequantization's divisions by s per program (a division,
    or a product with 1/s where s is a broadcast; FMA contraction), so values
    agree to float32 rounding: within 2^-21 of the bucket's magnitude.
    """
    k_clients = 5
    trees = {"a": jax.random.normal(jax.random.key(1), (k_clients, 4, 6)),
             "b": jax.random.normal(jax.random.key(2), (k_clients, 13)) * 1e-3}
    one = lambda i: jax.tree.map(lambda x: x[i], trees)
    q = Q.make_quantizer(one(0), method, bucket_size)
    bits = jnp.array([1, 3, 8, 16, 32])
    eps = jnp.array([1e-1, 1e-2, 1e-3, 1e-4, 1e-6])
    keys = jax.random.split(jax.random.key(3), k_clients)
    fn = lambda t, b, key, e: (q.quantize(q.pack(t), b, key), q.bits_for(q.pack(t), e))
    batched, bbits = jax.jit(jax.vmap(fn))(trees, bits, keys, eps)
    for i in range(k_clients):
      flat = q.pack(one(i))
      loop = q.quantize(flat, int(bits[i]), keys[i])
      self.assertEqual(int(bbits[i]), int(q.bits_for(flat, eps[i])))
      if method == "qsgd":
        _assert_bitwise(batched[i], loop)
        continue
      seg = np.repeat(np.arange(q.num_buckets), q.bucket_sizes)
      mag = np.asarray([np.abs(c).max() for c in np.split(
          np.asarray(flat), np.cumsum(q.bucket_sizes)[:-1])])[seg]
      np.testing.assert_array_less(np.abs(batched[i] - loop), 2.0**-21 * mag + 1e-30)

  def test_changing_bits_does_not_retrace(self):
    q = _quantizer("minmax", 12)

    @jax.jit
    @chex.assert_max_traces(n=1)
    def step(flat, bits, eps, key):
      return q.quantize(flat, bits, key), q.bits_for(flat, eps), q.payload_bits(bits)

    flat = jnp.arange(12.0) % 4
    for b in (1, 4, 8, 32, 17):  # arrays, as the round engine passes them
      step(flat, jnp.int32(b), jnp.float32(0.01 * b), jax.random.key(b))

  def test_inside_jit_bits_are_clipped_and_nan_propagates(self):
    q = _quantizer("minmax", 3)
    f = jax.jit(q.quantize)
    x = jnp.array([0.0, 0.3, 1.0])
    _assert_bitwise(f(x, 40, jax.random.key(0)), x)  # clipped to 32: passthrough
    self.assertTrue(set(np.asarray(f(x, 0, jax.random.key(0))).tolist()) <= {0.0, 1.0})
    self.assertTrue(np.isnan(np.asarray(f(jnp.array([0.0, jnp.nan, 1.0]), 4,
                                          jax.random.key(0)))).any())


# ----------------------------------------------------------------------------
# Validation.


class ValidationTest(parameterized.TestCase):

  @parameterized.parameters(0, 33, -1, 2.5, True, ([4, 40],), np.nan)
  def test_bad_bits(self, bits):
    q = _quantizer("minmax", 3)
    with self.assertRaisesRegex(ValueError, r"bits must be an integer in \[1, 32\]"):
      q.quantize(jnp.ones(3), bits, jax.random.key(0))
    with self.assertRaisesRegex(ValueError, r"bits must be an integer in \[1, 32\]"):
      Q.encode(q, jnp.ones(3), bits, jax.random.key(0))
    with self.assertRaisesRegex(ValueError, r"bits must be an integer in \[1, 32\]"):
      q.payload_bits(bits)

  def test_bad_inputs(self):
    key = jax.random.key(0)
    q = _quantizer("qsgd", 3)
    with self.assertRaisesRegex(ValueError, r"NaN or inf \(first at entry 1"):
      q.quantize(jnp.array([1.0, jnp.nan, 0.0]), 4, key)
    with self.assertRaisesRegex(ValueError, "NaN or inf"):
      Q.encode(q, np.array([1.0, np.inf, 0.0], np.float32), 4, key)
    with self.assertRaisesRegex(ValueError, "NaN or inf"):
      q.bits_for(jnp.array([1.0, jnp.inf, 0.0]), 0.1)
    with self.assertRaisesRegex(ValueError, r"shape \(3,\)"):
      q.quantize(jnp.ones((4,)), 4, key)
    with self.assertRaisesRegex(ValueError, "scalar"):
      q.quantize(jnp.ones(3), jnp.array([4, 5]), key)
    with self.assertRaisesRegex(ValueError, "eps must be a non-negative"):
      q.bits_for(jnp.ones(3), -0.1)
    with self.assertRaisesRegex(ValueError, r"b_min must be an integer in \[1, 32\]"):
      q.bits_for(jnp.ones(3), 0.1, 0)
    with self.assertRaisesRegex(ValueError, r"b_max must be an integer in \[1, 32\]"):
      q.bits_for(jnp.ones(3), 0.1, 1, 33)

  def test_bad_settings(self):
    tree = {"w": jnp.ones(3)}
    with self.assertRaisesRegex(ValueError, "valid values: minmax, qsgd"):
      Q.make_quantizer(tree, "topk")
    for bs in (0, -1, 2.5, True, "8"):
      with self.assertRaisesRegex(ValueError, "bucket_size must be None .* or a positive int"):
        Q.make_quantizer(tree, bucket_size=bs)
    with self.assertRaisesRegex(ValueError, r"template\['w'\] has dtype int32"):
      Q.make_quantizer({"w": jnp.arange(3)})
    self.assertEqual(Q.METHODS, ("minmax", "qsgd"))


if __name__ == "__main__":
  pytest.main([__file__])
