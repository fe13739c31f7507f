"""Tests for fedqjax.quantization (MODEL.md section 2).

Statistical tests use fixed seeds and Hoeffding bounds (no normal
approximation); each states its failure probability for a fresh seed.
"""
import dataclasses
import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import parameterized

from fedqjax import quantization as Q

N_KEYS = 20_000
METHODS = ("minmax", "qsgd")


def _leaves(tree):
  return [np.asarray(x) for x in jax.tree_util.tree_leaves(tree)]


def _assert_equal(a, b):
  for x, y in zip(_leaves(a), _leaves(b), strict=True):
    np.testing.assert_array_equal(x, y)


def _hoeffding(width, n, delta):
  """Half-width t with P(|mean - E| >= t) <= delta for n i.i.d. draws in an interval of `width`."""
  return width * np.sqrt(np.log(2.0 / delta) / (2.0 * n))


# Shared compiled functions: bits are traced, so each compiles once per shape.
@jax.jit
def _many_keys_minmax(x, bits, keys):
  return jax.vmap(lambda k: Q.quantize_tree(x, bits, k))(keys)  # [N, ...]


@jax.jit
def _many_keys_qsgd(x, bits, keys):
  return jax.vmap(lambda k: Q.quantize_tree(x, bits, k, method="qsgd"))(keys)


@jax.jit
def _many_keys_minmax_threefry(x, bits, keys):
  return jax.vmap(lambda k: Q.quantize_tree(x, bits, k, rng="key"))(keys)


# quantize_tree compiled once per (shapes, method, bucket_size); bits stay traced.
_qt = jax.jit(Q.quantize_tree, static_argnames=("method", "bucket_size", "rng"))

_MANY = {"minmax": _many_keys_minmax, "qsgd": _many_keys_qsgd}
_X16 = np.asarray(jax.random.normal(jax.random.key(42), (16,)), np.float32)
_KEYS = jax.random.split(jax.random.key(7), N_KEYS)


def _grid_step(x, bits, method):
  """Per-entry level spacing Δ (float64)."""
  s = 2.0**bits - 1
  x = x.astype(np.float64)
  if method == "minmax":
    return np.full_like(x, (x.max() - x.min()) / s)
  return np.full_like(x, np.linalg.norm(x) / s)


def _frac(x, bits, method):
  s = 2.0**bits - 1
  x = x.astype(np.float64)
  if method == "minmax":
    t = (x - x.min()) / (x.max() - x.min()) * s
  else:
    t = np.abs(x) / np.linalg.norm(x) * s
  return t - np.floor(t)


class UnbiasednessTest(parameterized.TestCase):
  # 2 methods x 5 widths x 16 entries = 160 Hoeffding tests plus 5 threefry x 16;
  # each at delta = 1e-8, so P(any false failure) <= 2.4e-6 (union bound).
  DELTA = 1e-8

  @parameterized.product(method=METHODS, bits=(1, 2, 4, 8, 16))
  def test_mean_matches(self, method, bits):
    q = np.asarray(_MANY[method](_X16, bits, _KEYS), np.float64)  # [N, 16]
    step = _grid_step(_X16, bits, method)
    tol = _hoeffding(step, N_KEYS, self.DELTA) + 4e-7 * np.abs(_X16).max()  # + f32 rounding
    err = np.abs(q.mean(0) - _X16)
    self.assertTrue(np.all(err <= tol), f"max err/tol {np.max(err / tol):.3f}")

  @parameterized.parameters(1, 2, 4, 8, 16)
  def test_mean_matches_threefry_rng(self, bits):
    q = np.asarray(_many_keys_minmax_threefry(_X16, bits, _KEYS), np.float64)
    tol = _hoeffding(_grid_step(_X16, bits, "minmax"), N_KEYS, self.DELTA) + 4e-7 * np.abs(_X16).max()
    self.assertTrue(np.all(np.abs(q.mean(0) - _X16) <= tol))


class VarianceTest(parameterized.TestCase):

  @parameterized.product(method=METHODS, bits=(2, 4))
  def test_per_entry_variance(self, method, bits):
    """Empirical variance / Δ² = p̂(1 - p̂) is within t + t² of f(1 - f) when |p̂ - f| <= t.

    Hoeffding at delta = 1e-8 per entry, 64 entries: failure prob <= 6.4e-7.
    """
    q = np.asarray(_MANY[method](_X16, bits, _KEYS), np.float64)
    step = _grid_step(_X16, bits, method)
    f = _frac(_X16, bits, method)
    emp = q.var(0) / step**2
    t = _hoeffding(1.0, N_KEYS, 1e-8)
    np.testing.assert_array_less(np.abs(emp - f * (1 - f)), t + t * t + 1e-4)

  @parameterized.parameters(1, 2, 4, 8)
  def test_total_error_meets_bound(self, bits):
    """Exact expected error Σ f(1-f)Δ² <= bound, and the empirical mean is within Hoeffding
    (range nΔ², delta = 1e-8 per case, 4 cases) of it."""
    q = np.asarray(_MANY["minmax"](_X16, bits, _KEYS), np.float64)
    step = _grid_step(_X16, bits, "minmax")
    f = _frac(_X16, bits, "minmax")
    bound = float(Q.error_bound(_X16, bits))
    expected = np.sum(f * (1 - f) * step**2)
    self.assertLessEqual(expected, bound * (1 + 1e-5))
    emp = np.mean(np.sum((q - _X16) ** 2, axis=1))
    t = _hoeffding(_X16.size * step[0] ** 2, N_KEYS, 1e-8)
    self.assertLessEqual(abs(emp - expected), t)
    self.assertLessEqual(emp, bound + t)


class ExactCasesTest(parameterized.TestCase):

  @parameterized.parameters(1, 2, 3, 4, 8)
  def test_on_grid_values_exact(self, bits):
    s = 2**bits - 1
    keys = _KEYS[:64]
    ints = np.random.default_rng(bits).permutation(np.arange(s + 1, dtype=np.float32))  # lo=0, Δ=1
    pow2 = (-1.0 + np.arange(s + 1) / 2.0**bits).astype(np.float32)  # Δ = 2^-b exactly
    for x in (ints, pow2):
      q = np.asarray(_many_keys_minmax(x, bits, keys))
      np.testing.assert_array_equal(q, np.broadcast_to(x, q.shape))

  @parameterized.product(method=METHODS, bits=(1, 16))
  def test_zeros_and_constants(self, method, bits):
    key = jax.random.key(0)
    zeros = jnp.zeros((3, 5))
    _assert_equal(_qt(zeros, bits, key, method=method), zeros)
    const = jnp.full((4, 4), 7.25)
    out = _qt(const, bits, key, method=method, bucket_size=5)
    if method == "minmax":  # hi == lo: sent exactly (QSGD constants are only unbiased)
      _assert_equal(out, const)

  @parameterized.parameters(*METHODS)
  def test_one_element(self, method):
    x = jnp.array([-3.5])
    for bits in (1, 2, 8, 24):
      out = _qt(x, bits, jax.random.key(bits), method=method)
      chex.assert_trees_all_close(out, x, rtol=0 if method == "minmax" else 2e-6)

  @parameterized.product(method=METHODS, bits=(1, 8, 31))
  def test_huge_range_stays_finite(self, method, bits):
    x = jnp.array([1e30, -1e30, 0.25e30, 3.0, -3e38, 3e38])
    for bs in (None, 2):
      out = np.asarray(_qt(x, bits, jax.random.key(1), method=method, bucket_size=bs))
      self.assertTrue(np.all(np.isfinite(out)), out)
    out = np.asarray(_qt(x[:4], bits, jax.random.key(1), method=method))
    self.assertTrue(np.all(np.abs(out) <= 1e30 * (1 + 1e-6) * (1 if method == "minmax" else 2)))
    if method == "minmax":
      self.assertEqual(out[0], np.float32(1e30))
      self.assertEqual(out[1], np.float32(-1e30))
    self.assertTrue(np.isfinite(float(Q.ondemand_bits(x, 1e-3, method=method))))

  def test_huge_range_unbiased(self):
    """Hoeffding, delta = 1e-8 per entry, 4 entries: failure prob <= 4e-8."""
    x = np.array([1e30, -1e30, 0.3e30, 3.0], np.float32)
    q = np.asarray(_many_keys_minmax(x, 4, _KEYS), np.float64)
    tol = _hoeffding(2e30 / 15, N_KEYS, 1e-8) + 1e24
    np.testing.assert_array_less(np.abs(q.mean(0) - x), tol)

  @parameterized.parameters(*METHODS)
  def test_bits32_identity(self, method):
    tree = {"a": jnp.array([1e-40, -0.0, 3e38, 1.5]), "b": jnp.arange(6.0).reshape(2, 3).astype(jnp.bfloat16)}
    _assert_equal(_qt(tree, 32, jax.random.key(0), method=method, bucket_size=3), tree)

  def test_shapes_dtypes_and_buckets(self):
    tree = {"w": jnp.ones((3, 3, 4, 5)), "b": jnp.zeros((7,), jnp.bfloat16), "e": jnp.zeros((0, 3))}
    out = _qt(tree, 3, jax.random.key(0), bucket_size=8)
    chex.assert_trees_all_equal_shapes_and_dtypes(out, tree)
    # Buckets: each bucket is quantized on its own range; constant buckets are exact.
    x = jnp.concatenate([jnp.full((4,), 2.0), jnp.array([0.0, 1.0, 0.3, 0.7])])
    out = jax.jit(Q.stochastic_quantize, static_argnames="bucket_size")(x, 1, jax.random.key(3), bucket_size=4)
    np.testing.assert_array_equal(np.asarray(out[:4]), 2.0)
    self.assertTrue(set(np.asarray(out[4:]).tolist()) <= {0.0, 1.0})


class TracingTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.parameters(("minmax", None), ("minmax", 7), ("qsgd", 7))
  def test_jit_and_eager_agree(self, method, bucket_size):
    tree = {"a": jax.random.normal(jax.random.key(0), (6, 9))}
    fn = self.variant(lambda t, b, k: Q.quantize_tree(t, b, k, method=method, bucket_size=bucket_size))
    ref = jax.jit(lambda t, b, k: Q.quantize_tree(t, b, k, method=method, bucket_size=bucket_size))
    for bits in (3, 32):
      out = fn(tree, bits, jax.random.key(bits))
      _assert_equal(out, ref(tree, bits, jax.random.key(bits)))

  @parameterized.parameters(("minmax", None), ("minmax", 5), ("qsgd", 5))
  def test_vmap_clients_equals_separate_calls(self, method, bucket_size):
    k_clients = 5
    trees = {"a": jax.random.normal(jax.random.key(1), (k_clients, 4, 6)),
             "b": jax.random.normal(jax.random.key(2), (k_clients, 13))}
    bits = jnp.array([1, 3, 8, 16, 32])
    keys = jax.random.split(jax.random.key(3), k_clients)
    fn = lambda t, b, k: Q.quantize_tree(t, b, k, method=method, bucket_size=bucket_size)
    batched = jax.jit(jax.vmap(fn))(trees, bits, keys)
    fn = jax.jit(fn)  # one client, bits traced: compiled once
    for i in range(k_clients):
      one = jax.tree_util.tree_map(lambda x: x[i], trees)
      _assert_equal(jax.tree_util.tree_map(lambda x: x[i], batched), fn(one, int(bits[i]), keys[i]))

  def test_changing_bits_does_not_retrace(self):
    @jax.jit
    @chex.assert_max_traces(n=1)
    def step(tree, bits, eps, key):
      q = Q.quantize_tree(tree, bits, key)
      return q, Q.ondemand_bits(tree, eps), Q.payload_bits(tree, bits)

    tree = {"a": jnp.ones((3, 4)) * jnp.arange(4.0)}
    for b in (1, 4, 8, 32, 17):  # arrays, as the round engine passes them
      step(tree, jnp.int32(b), jnp.float32(0.01 * b), jax.random.key(b))


def _bound64(x_leaves, b, bucket_size=None):
  """float64 reference of Σ_j n_j (hi_j - lo_j)² / (4 s²)."""
  if b >= 32:
    return 0.0
  a = 0.0
  for x in x_leaves:
    v = np.asarray(x, np.float64).ravel()
    bs = v.size if bucket_size is None else bucket_size
    for i in range(0, v.size, bs):
      c = v[i:i + bs]
      a += c.size * (c.max() - c.min()) ** 2
  return a / (4.0 * (2.0**b - 1) ** 2)


class OnDemandBitsTest(parameterized.TestCase):

  @parameterized.parameters(None, 6)
  def test_least_bits_meeting_bound(self, bucket_size):
    rng = np.random.default_rng(0)
    tree = {"a": rng.normal(size=(5, 8)).astype(np.float32), "b": rng.standard_cauchy(17).astype(np.float32)}
    leaves = jax.tree_util.tree_leaves(tree)
    norm2 = sum(float(np.sum(np.asarray(x, np.float64) ** 2)) for x in leaves)
    eps = np.exp(rng.uniform(np.log(1e-14), np.log(0.5), size=40)).astype(np.float32)
    got = np.asarray(jax.jit(jax.vmap(lambda e: Q.ondemand_bits(tree, e, bucket_size=bucket_size)))(eps))
    for i, (e, b) in enumerate(zip(eps, got)):
      e = float(e)
      self.assertLessEqual(_bound64(leaves, b, bucket_size), e * norm2 * (1 + 1e-5))
      if b > 1:
        self.assertGreater(_bound64(leaves, b - 1, bucket_size), e * norm2 * (1 - 1e-5))
      if i < 2:  # eager agrees (op by op is slow, so only twice)
        self.assertEqual(b, int(Q.ondemand_bits(tree, e, bucket_size=bucket_size)))
    self.assertGreater(len(set(got.tolist())), 10)

  def test_edge_cases(self):
    x = jnp.array([0.1, -2.0, 0.7, 3.0])
    self.assertEqual(int(Q.ondemand_bits(jnp.zeros((4,)), 0.1, 3)), 3)  # zero tree -> b_min
    self.assertEqual(int(Q.ondemand_bits(jnp.full((4,), 5.0), 0.0, 2)), 2)  # constant -> b_min
    self.assertEqual(int(Q.ondemand_bits(x, 0.0)), 32)  # no b < 32 meets eps = 0
    self.assertEqual(int(Q.ondemand_bits(x, 1e-30)), 32)
    self.assertEqual(int(Q.ondemand_bits(x, 1e-30, 1, 12)), 12)  # capped by b_max
    self.assertEqual(int(Q.ondemand_bits(x, 10.0, 5)), 5)  # floor b_min
    b = Q.ondemand_bits(x, 0.01)
    self.assertEqual(b.dtype, jnp.int32)
    self.assertLessEqual(float(Q.error_bound(x, b)), 0.01 * float(jnp.sum(x * x)))
    self.assertGreater(float(Q.error_bound(x, b - 1)), 0.01 * float(jnp.sum(x * x)))
    self.assertEqual(float(Q.error_bound(x, 32)), 0.0)
    np.testing.assert_allclose(float(Q.error_bound(x, 3)), _bound64([x], 3), rtol=1e-5)

  def test_vmap_over_clients(self):
    xs = jax.random.normal(jax.random.key(0), (4, 30)) * jnp.array([[1.0], [1e-3], [1e3], [0.0]])
    eps = jnp.array([1e-2, 1e-4, 1e-6, 1e-2])
    got = jax.vmap(Q.ondemand_bits)(xs, eps)
    one = jax.jit(Q.ondemand_bits)
    want = [int(one(xs[i], eps[i])) for i in range(4)]
    self.assertEqual(got.tolist(), want)
    self.assertEqual(want[3], 1)


class PayloadBitsTest(parameterized.TestCase):

  def test_formula(self):
    tree = {"a": jnp.ones((10, 10)), "b": jnp.ones((7,))}
    self.assertEqual(int(Q.payload_bits(tree, 4)), 107 * 4 + 64 * 2)
    self.assertEqual(int(Q.payload_bits(tree, 4, bucket_size=8)), 107 * 4 + 64 * (13 + 1))
    self.assertEqual(int(Q.payload_bits(tree, 32)), 32 * 107)
    self.assertEqual(int(Q.payload_bits(tree, 4, method="qsgd")), 107 * 5 + 32 * 2)
    self.assertEqual(Q.payload_bits_host(tree, 4, bucket_size=8), 107 * 4 + 64 * 14)
    got = jax.jit(jax.vmap(lambda b: Q.payload_bits(tree, b)))(jnp.array([1, 8, 32]))
    self.assertEqual(got.dtype, jnp.int32)
    self.assertEqual(got.tolist(), [107 + 128, 107 * 8 + 128, 32 * 107])

  def test_int32_overflow_is_reported(self):
    big = jax.ShapeDtypeStruct((70_000_000,), jnp.float32)
    with self.assertRaisesRegex(ValueError, "float32"):
      Q.payload_bits(big, 8)
    self.assertEqual(Q.payload_bits_host(big, 32), 32 * 70_000_000)


class CodecTest(parameterized.TestCase):
  TREE = {"conv": jax.random.normal(jax.random.key(5), (3, 3, 2, 4)),
          "bias": jnp.linspace(-1.0, 2.0, 13),
          "const": jnp.full((2, 3), 0.5),
          "half": (jax.random.normal(jax.random.key(6), (9,)) * 1e30).astype(jnp.float32)}

  def _roundtrip(self, bits, bucket_size, method):
    key = jax.random.key(bits)
    payload = Q.encode(self.TREE, bits, key, bucket_size=bucket_size, method=method)
    out = Q.decode(payload)
    ref = _qt(self.TREE, bits, key, bucket_size=bucket_size, method=method)
    _assert_equal(out, ref)
    want = Q.payload_bits_host(self.TREE, bits, bucket_size=bucket_size, method=method)
    self.assertEqual(payload.num_bits, want)
    self.assertEqual(int(Q.payload_bits(self.TREE, bits, bucket_size=bucket_size, method=method)), want)
    body = len(payload.data) - Q._HEADER.size
    self.assertEqual(body, math.ceil(payload.level_bits / 8) + (want - payload.level_bits) // 8)
    return payload

  @parameterized.product(bits=tuple(range(1, 17)) + (24, 31, 32), bucket_size=(None, 5))
  def test_minmax_exact_roundtrip(self, bits, bucket_size):
    self._roundtrip(bits, bucket_size, "minmax")

  @parameterized.product(bits=(1, 2, 7, 16, 31, 32), bucket_size=(None, 5))
  def test_qsgd_exact_roundtrip(self, bits, bucket_size):
    self._roundtrip(bits, bucket_size, "qsgd")

  def test_pack_unpack_many_chunks(self):
    rng = np.random.default_rng(0)
    for width in (1, 3, 13, 32):
      vals = rng.integers(0, 2**width, size=(1 << 20) + 77, dtype=np.uint64).astype(np.uint32)
      buf, nbits = Q._pack(vals, width)
      self.assertEqual((len(buf), nbits), (math.ceil(vals.size * width / 8), vals.size * width))
      np.testing.assert_array_equal(Q._unpack(buf, vals.size, width), vals)

  def test_truncated_or_corrupted_raises(self):
    payload = Q.encode(self.TREE, 5, jax.random.key(0), bucket_size=4)
    with self.assertRaisesRegex(ValueError, "truncated"):
      Q.decode(dataclasses.replace(payload, data=payload.data[:-3]))
    data = bytearray(payload.data)
    data[Q._HEADER.size + 7] ^= 0x10
    with self.assertRaisesRegex(ValueError, "checksum"):
      Q.decode(dataclasses.replace(payload, data=bytes(data)))
    with self.assertRaisesRegex(ValueError, "header"):
      Q.decode(dataclasses.replace(payload, data=b"XXXX" + payload.data[4:]))
    with self.assertRaisesRegex(ValueError, "header"):
      Q.decode(dataclasses.replace(payload, data=payload.data[:10]))
    with self.assertRaisesRegex(ValueError, "metadata"):
      Q.decode(dataclasses.replace(payload, bits=6))


class FactoryAndValidationTest(parameterized.TestCase):

  def test_factory(self):
    tree = {"a": jnp.arange(12.0).reshape(3, 4)}
    qz = Q.make_quantizer("qsgd", bucket_size=4)
    self.assertEqual((qz.method, qz.bucket_size), ("qsgd", 4))
    key = jax.random.key(0)
    _assert_equal(qz.quantize(tree, 3, key), Q.quantize_tree(tree, 3, key, method="qsgd", bucket_size=4))
    self.assertEqual(int(qz.payload_bits(tree, 3)), 12 * 4 + 32 * 3)
    self.assertGreaterEqual(int(qz.bits_for(tree, 1e-3)), 1)
    self.assertGreater(float(qz.error_bound(tree, 2)), 0.0)
    hash(qz)  # static-argument friendly
    with self.assertRaisesRegex(ValueError, "minmax, qsgd"):
      Q.make_quantizer("topk")

  @parameterized.parameters(0, 33, -1, 2.5, True, ([4, 40],))
  def test_bad_bits(self, bits):
    with self.assertRaisesRegex(ValueError, r"bits must be an integer in \[1, 32\]"):
      Q.stochastic_quantize(jnp.ones(3), bits, jax.random.key(0))

  def test_bad_inputs(self):
    key = jax.random.key(0)
    with self.assertRaisesRegex(ValueError, "dtype int32"):
      Q.quantize_tree({"w": jnp.arange(3)}, 4, key)
    with self.assertRaisesRegex(ValueError, r"x contains NaN"):
      Q.qsgd_quantize(jnp.array([1.0, jnp.nan]), 4, key)
    with self.assertRaisesRegex(ValueError, r"tree\['w'\] contains NaN or inf"):
      Q.encode({"w": jnp.array([1.0, jnp.inf])}, 4, key)
    with self.assertRaisesRegex(ValueError, "eps"):
      Q.ondemand_bits(jnp.ones(3), -0.1)
    with self.assertRaisesRegex(ValueError, "b_min"):
      Q.ondemand_bits(jnp.ones(3), 0.1, 0)
    with self.assertRaisesRegex(ValueError, "bucket_size"):
      Q.quantize_tree(jnp.ones(3), 4, key, bucket_size=0)
    with self.assertRaisesRegex(ValueError, "valid names"):
      Q.quantize_tree(jnp.ones(3), 4, key, method="foo")

  def test_inside_jit_bits_are_clipped_and_nan_propagates(self):
    f = jax.jit(Q.stochastic_quantize)
    x = jnp.array([0.0, 0.3, 1.0])
    _assert_equal(f(x, 40, jax.random.key(0)), x)  # clipped to 32: passthrough
    self.assertTrue(set(np.asarray(f(x, 0, jax.random.key(0))).tolist()) <= {0.0, 1.0})  # clipped to 1
    self.assertTrue(np.isnan(np.asarray(f(jnp.array([0.0, jnp.nan]), 4, jax.random.key(0)))).any())


if __name__ == "__main__":
  pytest.main([__file__])
