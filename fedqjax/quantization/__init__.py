"""Unbiased stochastic quantization of client uploads, on-demand bits, codec.

docs/model.md sec. 2 of fedqjax ("On-demand Quantization for Green Federated
Generative Diffusion in Mobile Edge Networks", https://arxiv.org/abs/2403.04430):
min-max stochastic quantization, and QSGD (Alistarh et al. 2017,
https://arxiv.org/abs/1610.02132) beside it, on the update pytree raveled into
one flat float32 vector with static bucket segments.

    q = make_quantizer(template, method="minmax", bucket_size=None)
    flat = q.pack(update)                    # float32 [d]
    b = q.bits_for(flat, eps, b_min)         # on-demand bits (traced)
    deq = q.unpack(q.quantize(flat, b, key)) # dequantized Q_b(update)
    q.payload_bits(b)                        # S(b) in bits
    payload = encode(q, flat, b, key)        # the bytes a device sends
    decode(q, payload)                       # == q.quantize(flat, b, key)

Modules: `quantizer` (layout, quantize; conventions: bits 32 = raw, random
stream = counter hash keyed by 64 bits of the key, numerics), `bits` (error
bound, on-demand bit-width, payload size), `codec` (bytes), `layout` (a
template's leaves and buckets, tree and shape checks), `validate` (host-side
argument checks).
"""

from fedqjax.quantization.codec import Payload, decode, encode
from fedqjax.quantization.quantizer import (
  Quantizer,
  make_quantizer,
  mix32,
  uniform_hash,
)
from fedqjax.quantization.validate import MAX_BITS, METHODS, validate_bits

__all__ = [
  "MAX_BITS",
  "METHODS",
  "Payload",
  "Quantizer",
  "decode",
  "encode",
  "make_quantizer",
  "mix32",
  "uniform_hash",
  "validate_bits",
]
