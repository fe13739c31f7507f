"""Tests for fedqjax.quantization.validate: bad bits, inputs and settings
raise ValueError naming what is wrong."""

import jax
import jax.numpy as jnp
import numpy as np
from absl.testing import parameterized

from fedqjax import quantization as Q
from tests.support.quantization import quantizer


class ValidationTest(parameterized.TestCase):
  @parameterized.parameters(0, 33, -1, 2.5, True, ([4, 40],), np.nan)
  def test_bad_bits(self, bits):
    q = quantizer("minmax", 3)
    with self.assertRaisesRegex(
      ValueError, r"bits must be an integer in \[1, 32\]"
    ):
      q.quantize(jnp.ones(3), bits, jax.random.key(0))
    with self.assertRaisesRegex(
      ValueError, r"bits must be an integer in \[1, 32\]"
    ):
      Q.encode(q, jnp.ones(3), bits, jax.random.key(0))
    with self.assertRaisesRegex(
      ValueError, r"bits must be an integer in \[1, 32\]"
    ):
      q.payload_bits(bits)

  def test_bad_inputs(self):
    key = jax.random.key(0)
    q = quantizer("qsgd", 3)
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
    with self.assertRaisesRegex(
      ValueError, r"b_min must be an integer in \[1, 32\]"
    ):
      q.bits_for(jnp.ones(3), 0.1, 0)
    with self.assertRaisesRegex(
      ValueError, r"b_max must be an integer in \[1, 32\]"
    ):
      q.bits_for(jnp.ones(3), 0.1, 1, 33)

  def test_bad_settings(self):
    tree = {"w": jnp.ones(3)}
    with self.assertRaisesRegex(ValueError, "valid values: minmax, qsgd"):
      Q.make_quantizer(tree, "topk")
    for bs in (0, -1, 2.5, True, "8"):
      with self.assertRaisesRegex(
        ValueError, "bucket_size must be None .* or a positive int"
      ):
        Q.make_quantizer(tree, bucket_size=bs)
    with self.assertRaisesRegex(ValueError, r"template\['w'\] has dtype int32"):
      Q.make_quantizer({"w": jnp.arange(3)})
    self.assertEqual(Q.METHODS, ("minmax", "qsgd"))
