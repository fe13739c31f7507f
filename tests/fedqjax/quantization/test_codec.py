"""Tests for fedqjax.quantization.codec: encode / decode equal the traced
quantizer bit for bit, measured sizes equal payload_bits, corrupted payloads
raise; property-based fuzzing (hypothesis, derandomized; `pytest -s` prints
the counts) at the end."""

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from absl.testing import parameterized
from hypothesis import given, settings
from hypothesis import strategies as st

from fedqjax import quantization as Q
from fedqjax.quantization import codec as codec_lib
from tests.support.fuzz import SETTINGS, Counts
from tests.support.quantization import (
  assert_bitwise,
  template_quantizer,
  tensor,
)

_CODEC_TREE = {
  "conv": np.asarray(jax.random.normal(jax.random.key(5), (3, 3, 2, 4))),
  "bias": np.linspace(-1.0, 2.0, 13, dtype=np.float32),
  "const": np.full((2, 3), 0.5, np.float32),
  "huge": np.asarray(jax.random.normal(jax.random.key(6), (9,))) * 1e30,
  "tiny": np.array([1e-38, 0.0, 2e-38, 5e-39], np.float32),
}


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
    assert_bitwise(out, jitted(flat, bits, key))
    assert_bitwise(out, q.quantize(flat, bits, key))  # eager
    self.assertEqual(payload.num_bits, float(q.payload_bits(bits)))
    body = len(payload.data) - codec_lib._HEADER.size
    self.assertEqual(
      body,
      math.ceil(payload.level_bits / 8)
      + (payload.num_bits - payload.level_bits) // 8,
    )
    self.assertEqual(payload.bits, bits)

  @parameterized.product(
    bits=tuple(range(1, 17)) + (24, 25, 31, 32), bucket_size=(None, 5)
  )
  def test_minmax_exact_roundtrip(self, bits, bucket_size):
    self._roundtrip(bits, bucket_size, "minmax")

  @parameterized.product(
    bits=(1, 2, 7, 16, 24, 25, 31, 32), bucket_size=(None, 5)
  )
  def test_qsgd_exact_roundtrip(self, bits, bucket_size):
    self._roundtrip(bits, bucket_size, "qsgd")

  def test_pack_bits_many_chunks(self):
    rng = np.random.default_rng(0)
    for width in (1, 13, 32):
      vals = rng.integers(
        0, 2**width, size=(1 << 20) + 77, dtype=np.uint64
      ).astype(np.uint32)
      buf, nbits = codec_lib.pack_bits(vals, width)
      self.assertEqual(
        (len(buf), nbits), (math.ceil(vals.size * width / 8), vals.size * width)
      )
      np.testing.assert_array_equal(
        codec_lib.unpack_bits(buf, vals.size, width), vals
      )

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
    for other in (
      _codec_quantizer("minmax", None)[0],
      _codec_quantizer("qsgd", 5)[0],
    ):
      with self.assertRaisesRegex(ValueError, "does not match the quantizer"):
        Q.decode(other, payload)
    data = bytearray(payload.data)
    data[6] = 40  # the bits field
    with self.assertRaisesRegex(ValueError, r"bits in \[1, 32\]"):
      Q.decode(q, bad(bytes(data)))


# ----------------------------------------------------------------------------
# Property-based fuzzing (hypothesis) on adversarial float32 tensors.


COUNTS = Counts()
_count = COUNTS.add


@settings(max_examples=80, **SETTINGS)
@given(
  tensor(finite=True),
  tensor(finite=True, shapes=((7,),)),
  st.integers(1, 32),
  st.sampled_from([None, 4]),
  st.sampled_from(["minmax", "qsgd"]),
  st.integers(0, 2**31 - 1),
)
def test_codec_roundtrip_equals_quantize(x, y, bits, bucket_size, method, seed):
  """decode(encode) == quantize bit for bit; measured size == payload_bits."""
  _count("tensors", 2)
  tree = (x, (y,))
  key = jax.random.key(seed)
  q, jitted = template_quantizer((x.shape, (y.shape,)), method, bucket_size)
  flat = q.pack(tree)
  payload = Q.encode(q, flat, bits, key)
  assert payload.num_bits == float(q.payload_bits(bits))
  got = Q.decode(q, payload)
  want = np.asarray(jitted(flat, jnp.int32(bits), key))
  assert np.all(np.isfinite(got))
  np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32))


def test_print_counts():
  """Runs last in this module: prints and checks how much was fuzzed."""
  print("\nfuzz counts:", dict(sorted(COUNTS.items())))
  if "tensors" in COUNTS:  # the old fuzz module's 400 of 680 tensors, pro rata
    assert COUNTS["tensors"] >= 94
