"""Tests for fedqjax.quantization.bits: on-demand bit widths (the least b
whose variance bound meets eps ||u||^2) and payload sizes, through the
Quantizer methods bits_for / error_bound / payload_bits; property-based
fuzzing (hypothesis, derandomized; `pytest -s` prints the counts) at the end.
"""

import jax
import jax.numpy as jnp
import numpy as np
from absl.testing import parameterized
from hypothesis import example, given, settings
from hypothesis import strategies as st

from fedqjax import quantization as Q
from tests.support.fuzz import SETTINGS, Counts
from tests.support.quantization import (
  bound64,
  quantizer,
  template_quantizer,
  tensor,
)

METHODS = Q.METHODS


# ----------------------------------------------------------------------------
# On-demand bits.


class OnDemandBitsTest(parameterized.TestCase):
  @parameterized.product(method=METHODS, bucket_size=(None, 6))
  def test_least_bits_meeting_bound_brute_force(self, method, bucket_size):
    rng = np.random.default_rng(0)
    tree = {
      "a": rng.normal(size=(5, 8)).astype(np.float32),
      "b": rng.standard_cauchy(17).astype(np.float32),
    }
    q = Q.make_quantizer(tree, method, bucket_size)
    leaves = jax.tree.leaves(tree)
    norm2 = sum(float(np.sum(np.asarray(x, np.float64) ** 2)) for x in leaves)
    eps = np.exp(rng.uniform(np.log(1e-14), np.log(0.5), size=40)).astype(
      np.float32
    )
    b_min = 2
    flat = q.pack(tree)
    got = np.asarray(
      jax.jit(jax.vmap(lambda e: q.bits_for(flat, e, b_min)))(eps)
    )
    for i, (e, b) in enumerate(zip(eps.astype(np.float64), got)):
      budget = e * norm2
      bounds = {
        bb: bound64(leaves, bb, method, bucket_size) for bb in range(b_min, 33)
      }
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
    q = quantizer(method, 4)
    x = np.array([0.1, -2.0, 0.7, 3.0], np.float32)
    self.assertEqual(
      int(q.bits_for(np.zeros(4, np.float32), 0.1, 3)), 3
    )  # zero -> b_min
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
    np.testing.assert_allclose(
      float(q.error_bound(x, 3)), bound64(x, 3, method), rtol=1e-5
    )


# ----------------------------------------------------------------------------
# Payload size.


class PayloadBitsTest(parameterized.TestCase):
  def test_formula(self):
    tree = {"a": jnp.ones((10, 10)), "b": jnp.ones((7,))}
    bits = jnp.array([[1, 4], [8, 32]])
    for method, bs, nb in (
      ("minmax", None, 2),
      ("minmax", 8, 14),
      ("qsgd", None, 2),
    ):
      q = Q.make_quantizer(tree, method, bs)
      got = q.payload_bits(bits)
      self.assertEqual((got.shape, got.dtype), ((2, 2), jnp.float32))
      per = (
        (lambda b: 107 * b + 64 * nb)
        if method == "minmax"
        else (lambda b: 107 * (b + 1) + 32 * nb)
      )
      self.assertEqual(got.tolist(), [[per(1), per(4)], [per(8), 32 * 107]])
      vm = jax.jit(jax.vmap(q.payload_bits))(jnp.array([1, 8, 32]))
      self.assertEqual(vm.tolist(), [per(1), per(8), 32 * 107])


# ----------------------------------------------------------------------------
# Property-based fuzzing (hypothesis) on adversarial float32 tensors.


COUNTS = Counts()
_count = COUNTS.add


@settings(max_examples=120, **SETTINGS)
@given(
  tensor(finite=True),
  st.one_of(st.just(0.0), st.floats(-12, 1).map(lambda e: 10.0**e)),
  st.integers(1, 32),
  st.sampled_from([None, 4]),
  st.sampled_from(["minmax", "qsgd"]),
)
@example(
  x=np.array([0.0] * 6 + [4.183328e19], np.float32),
  eps=1.0,
  b_min=1,
  bucket_size=None,
  method="minmax",
)  # float32 bound overflows
def test_ondemand_bits_in_range(x, eps, b_min, bucket_size, method):
  """b in [b_min, 32], meets the float64 bound when < 32, jit == eager."""
  _count("tensors")
  q, _ = template_quantizer((x.shape,), method, bucket_size)
  flat = x.reshape(-1)
  b = int(q.bits_for(flat, eps, b_min))
  assert b_min <= b <= 32, (b, b_min, eps, x)
  if eps > 0 and b < 32:  # the chosen width meets the bound
    norm2 = float(np.sum(x.astype(np.float64) ** 2))
    bound = bound64(x, b, method, bucket_size)
    assert bound <= eps * norm2 * (1 + 1e-4) or b == b_min, (b, bound, norm2)
  bj = int(
    jax.jit(q.bits_for)(jnp.asarray(flat), jnp.float32(eps), jnp.int32(b_min))
  )
  assert bj == b, (bj, b)


def test_print_counts():
  """Runs last in this module: prints and checks how much was fuzzed."""
  print("\nfuzz counts:", dict(sorted(COUNTS.items())))
  if "tensors" in COUNTS:  # the old fuzz module's 400 of 680 tensors, pro rata
    assert COUNTS["tensors"] >= 70
