"""Host-side byte codec of a quantized upload (docs/model.md sec. 2).

`encode` really packs the levels the traced quantizer draws into a bit stream
at b bits per entry (b + 1 for QSGD: the sign in the top bit), followed by the
per-bucket float32s (min-max: lo, hi; QSGD: the norm); `decode` unpacks them
and dequantizes with the same traced code as `Quantizer.quantize`, so
`decode(q, encode(q, flat, b, key))` equals `q.quantize(flat, b, key)` bit for
bit on the same backend. At 32 bits the stream is the raw float32 vector.

Payload bytes: header (`_HEADER`, 44 bytes: magic, version, method, bits,
bucket size, d, nb, level-stream length in bits, crc32 of the body) || level
stream padded to a byte || per-bucket float32s (little-endian). The measured
size `Payload.num_bits` (level bits + per-bucket floats, header excluded)
equals `Quantizer.payload_bits(b)`.
"""

from __future__ import annotations

import dataclasses
import functools
import struct
import zlib

import jax
import jax.numpy as jnp
import numpy as np

from fedqjax.quantization import quantizer as Qz
from fedqjax.quantization import validate as V
from fedqjax.typing import ArrayLike, PRNGKey

_MAGIC = b"FQJQ"
# magic, version, method, bits, reserved, bucket size (0 = None), d, nb,
# level-stream bits, crc32(body)
_HEADER = struct.Struct("<4sBBBBQQQQI")
_VERSION = 2
_CHUNK = 1 << 20  # entries per packing chunk (a multiple of 8: whole bytes)

_levels = jax.jit(Qz.levels, static_argnums=0)
_dequantize = jax.jit(
  functools.partial(Qz.dequantize, decoder=True), static_argnums=0
)


def pack_bits(values: np.ndarray, width: int) -> tuple[bytes, int]:
  """uint32 values [d] (< 2^width) MSB-first into a bit stream: (bytes, bits)."""
  parts = []
  for start in range(0, values.size, _CHUNK):
    c = (
      values[start : start + _CHUNK].astype(">u4").view(np.uint8).reshape(-1, 4)
    )
    bitmat = np.unpackbits(c, axis=1)[:, 32 - width :]  # [c, width]
    parts.append(np.packbits(bitmat.reshape(-1)).tobytes())
  return b"".join(parts), values.size * width


def unpack_bits(buf: bytes, d: int, width: int) -> np.ndarray:
  """Inverse of `pack_bits`: uint32 [d]."""
  raw = np.frombuffer(buf, np.uint8)
  out = np.empty((d,), np.uint32)
  for start in range(0, d, _CHUNK):
    c = min(_CHUNK, d - start)
    byte0 = start * width // 8
    bits = np.unpackbits(raw[byte0 : byte0 + -(-c * width // 8)])[: c * width]
    full = np.zeros((c, 32), np.uint8)
    full[:, 32 - width :] = bits.reshape(c, width)
    out[start : start + c] = np.packbits(full, axis=1).view(">u4").reshape(c)
  return out


def _width(method: str, bits: int) -> int:
  if bits >= V.MAX_BITS:
    return 32
  return bits if method == "minmax" else bits + 1


def _num_floats(method: str, bits: int, nb: int) -> int:
  if bits >= V.MAX_BITS:
    return 0
  return 2 * nb if method == "minmax" else nb


@dataclasses.dataclass(frozen=True)
class Payload:
  """An encoded upload: `data` = header || level stream || per-bucket floats."""

  data: bytes

  def header(self) -> tuple:
    """(magic, version, method, bits, 0, bucket, d, nb, level_bits, crc)."""
    if len(self.data) < _HEADER.size or self.data[:4] != _MAGIC:
      raise ValueError(
        "corrupted payload: missing or bad header (magic "
        f"{_MAGIC!r}, {_HEADER.size} bytes)"
      )
    return _HEADER.unpack_from(self.data)

  @property
  def bits(self) -> int:
    return self.header()[3]

  @property
  def level_bits(self) -> int:
    """Bits the packer wrote for the levels (before byte padding)."""
    return self.header()[8]

  @property
  def num_bits(self) -> int:
    """Measured size: level bits + 8 x per-bucket float bytes (no header)."""
    level_bits = self.level_bits
    body = len(self.data) - _HEADER.size
    return level_bits + 8 * (body - -(-level_bits // 8))


def encode(
  qz: Qz.Quantizer, flat: ArrayLike, bits: int, key: PRNGKey
) -> Payload:
  """Quantizes `flat` exactly like `qz.quantize(flat, bits, key)` and packs it.

  Args:
    qz: the quantizer (method, bucket layout).
    flat: concrete float32 [d], finite.
    bits: concrete int in [1, 32]; 32 stores the raw float32 vector.
    key: the PRNG key `quantize` would get.

  Returns:
    Payload; `decode(qz, payload)` reproduces `quantize`'s output exactly.

  Raises:
    ValueError: bits not an integer in [1, 32], flat of the wrong shape or
      not finite.
  """
  V.validate_flat(flat, qz.num_entries)
  V.validate_bits(bits)
  if np.ndim(bits) != 0:
    raise ValueError(f"bits must be a scalar; got shape {np.shape(bits)}")
  bits = int(bits)
  flat = np.asarray(flat, np.float32)
  d, nb = qz.num_entries, qz.num_buckets
  width = _width(qz.method, bits)
  if bits >= V.MAX_BITS:
    stream, level_bits = flat.astype("<f4").tobytes(), 32 * d
    floats = np.zeros((0,), np.float32)
  elif d == 0:
    stream, level_bits, floats = b"", 0, np.zeros((0,), np.float32)
  else:
    q, a, b = jax.device_get(
      _levels(qz, jnp.asarray(flat), jnp.int32(bits), key)
    )
    # q <= s = float32(2^b - 1), which is 2^b for b > 24: clip to b bits
    # (float32(2^b - 1) is s again on decode, the top level).
    lev = np.minimum(q.astype(np.uint32), np.uint32(2**bits - 1))
    if qz.method == "qsgd":
      lev |= a.astype(np.uint32) << np.uint32(bits)  # sign in the top bit
      floats = b  # [nb] norms
    else:
      floats = np.stack([a, b], axis=1).reshape(-1)  # [nb * 2] lo, hi
    stream, level_bits = pack_bits(lev, width)
  body = stream + floats.astype("<f4").tobytes()
  header = _HEADER.pack(
    _MAGIC,
    _VERSION,
    V.METHODS.index(qz.method),
    bits,
    0,
    qz.bucket_size or 0,
    d,
    nb,
    level_bits,
    zlib.crc32(body),
  )
  return Payload(header + body)


def decode(qz: Qz.Quantizer, payload: Payload) -> np.ndarray:
  """Unpacks a payload made by `encode(qz, ...)`: the dequantized float32 [d].

  Raises:
    ValueError: bad magic or version, header fields that do not match `qz`,
      a truncated or padded payload, or a crc32 mismatch.
  """
  data = payload.data
  _, version, m, bits, _, bsz, d, nb, level_bits, crc = payload.header()
  method = V.METHODS[m] if m < len(V.METHODS) else f"#{m}"
  want = (
    _VERSION,
    qz.method,
    qz.bucket_size or 0,
    qz.num_entries,
    qz.num_buckets,
  )
  if (version, method, bsz, d, nb) != want or not 1 <= bits <= V.MAX_BITS:
    raise ValueError(
      f"corrupted payload: header (version, method, bucket size, d, nb, "
      f"bits) = {(version, method, bsz, d, nb, bits)} does not match the "
      f"quantizer {want} with bits in [1, 32]"
    )
  width = _width(method, bits)
  stream_bytes = -(-d * width // 8)
  expect = _HEADER.size + stream_bytes + 4 * _num_floats(method, bits, nb)
  if level_bits != d * width or len(data) != expect:
    raise ValueError(
      f"truncated or corrupted payload: {len(data)} bytes and "
      f"{level_bits} level bits; expected {expect} bytes and "
      f"{d * width} level bits"
    )
  body = data[_HEADER.size :]
  if zlib.crc32(body) != crc:
    raise ValueError("corrupted payload: crc32 checksum mismatch")
  if bits >= V.MAX_BITS:
    return np.frombuffer(body, "<f4").astype(np.float32)
  if d == 0:
    return np.zeros((0,), np.float32)
  lev = unpack_bits(body[:stream_bytes], d, width)
  floats = np.frombuffer(body[stream_bytes:], "<f4").astype(np.float32)
  if method == "minmax":
    lohi = floats.reshape(nb, 2)
    args = (lev.astype(np.float32), lohi[:, 0], lohi[:, 1])
  else:
    mask = np.uint32(2**bits - 1)
    args = (
      (lev & mask).astype(np.float32),
      (lev >> np.uint32(bits)) > 0,
      floats,
    )
  return np.asarray(_dequantize(qz, *args, jnp.int32(bits)))
