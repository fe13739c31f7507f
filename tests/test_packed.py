"""The round's packed quantizer matches the spec of MODEL.md section 2 and
the reference per-leaf quantizer / codec on sizes and bounds."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fedqjax import quantization
from fedqjax.federated import packed

TREE = {"a": jnp.linspace(-1.0, 2.0, 37).reshape(37),
        "b": {"w": jnp.asarray(np.random.default_rng(0).normal(
            size=(5, 7)).astype(np.float32)),
              "c": jnp.full((4,), 3.0)}}  # a constant bucket: sent exactly


@pytest.mark.parametrize("bucket", [None, 8])
def test_layout_and_payload_match_codec(bucket):
  lay = packed.layout_of(TREE, bucket)
  assert lay.num_entries == 37 + 35 + 4
  for b in (1, 2, 5, 8, 16, 32):
    enc = quantization.encode(TREE, b, jax.random.PRNGKey(0),
                              bucket_size=bucket)
    assert float(packed.payload_bits(jnp.int32(b), lay)) == enc.num_bits
    assert enc.num_bits == quantization.payload_bits_host(
        TREE, b, bucket_size=bucket)


@pytest.mark.parametrize("bits", [1, 2, 4, 8])
def test_unbiased_and_variance_bound(bits):
  """Mean over N = 20000 keys within 5 sigma of the input, per entry.

  Each entry's estimator has variance <= Delta^2/4; |mean - x| > 5 sigma has
  probability < 6e-7 per entry (Gaussian tail; N large), < 5e-5 for all 76
  entries (union bound), per bit-width.
  """
  lay = packed.layout_of(TREE)
  flat = packed.pack(TREE)
  n = 20000
  keys = jax.random.split(jax.random.PRNGKey(bits), n)
  q = jax.jit(jax.vmap(lambda k: packed.quantize(flat, jnp.int32(bits), k,
                                                 lay)))(keys)
  lo, hi = packed.bucket_range(flat, lay)
  seg = np.repeat(np.arange(lay.num_buckets), lay.bucket_sizes)
  delta = np.asarray((hi - lo) / (2 ** bits - 1))[seg]
  sigma = np.maximum(delta / 2 / np.sqrt(n), 1e-7)
  err = np.abs(np.asarray(q.mean(0)) - np.asarray(flat))
  assert np.all(err <= 5 * sigma + 1e-6), err.max()
  # Every sample lies on the grid and inside [lo, hi] of its bucket.
  qq = np.asarray(q[:50])
  assert np.all(qq >= np.asarray(lo)[seg] - 1e-6)
  assert np.all(qq <= np.asarray(hi)[seg] + 1e-6)
  # Mean squared error meets the bound (it is an expectation: 5% slack for
  # sampling error of the mean of 20000 draws; bound is loose already).
  mse = float(np.mean(np.sum((np.asarray(q) - np.asarray(flat)) ** 2, 1)))
  bound = float(packed.error_bound(flat, jnp.int32(bits), lay))
  assert mse <= 1.05 * bound
  const = packed.unpack(q[0], TREE)["b"]["c"]  # the constant bucket
  np.testing.assert_array_equal(np.asarray(const), 3.0)


def test_bits32_identity_and_vmapped_bits():
  lay = packed.layout_of(TREE)
  flat = packed.pack(TREE)
  out = packed.quantize(flat, jnp.int32(32), jax.random.PRNGKey(0), lay)
  np.testing.assert_array_equal(np.asarray(out), np.asarray(flat))
  bits = jnp.array([1, 8, 32])
  keys = jax.random.split(jax.random.PRNGKey(1), 3)
  v = jax.vmap(lambda b, k: packed.quantize(flat, b, k, lay))(bits, keys)
  for i in range(3):
    np.testing.assert_array_equal(
        np.asarray(v[i]), np.asarray(packed.quantize(flat, bits[i], keys[i],
                                                     lay)))
  back = packed.unpack(flat, TREE)
  jax.tree.map(np.testing.assert_array_equal, back, TREE)


@pytest.mark.parametrize("eps", [1e-1, 1e-2, 1e-3, 1e-5, 1e-9])
def test_ondemand_bits_least_meeting_budget(eps):
  lay = packed.layout_of(TREE)
  flat = packed.pack(TREE)
  b = int(packed.ondemand_bits(flat, jnp.float32(eps), lay))
  norm2 = float(jnp.sum(flat ** 2))
  bound = lambda bb: float(packed.error_bound(flat, jnp.int32(bb), lay))
  assert bound(b) <= eps * norm2 * (1 + 1e-6)
  if b > 1:
    assert bound(b - 1) > eps * norm2 * (1 - 1e-6)
  # The per-leaf reference agrees.
  assert b == int(quantization.ondemand_bits(TREE, eps))
