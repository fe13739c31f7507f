"""2-D convolutions for the U-Net that XLA:CPU runs fast where the client
axis is vmapped or looped (`UNet(conv_impl=...)`, drop-ins for flax's Conv).

Both functions have the signature of `lax.conv_general_dilated` for what the
U-Net uses (NHWC inputs, HWIO kernels, strides, 'SAME' / 'VALID' / explicit
padding, no dilation, no feature groups) and compute the same function.
Parameters keep nn.Conv's names and shapes, so checkpoints are
interchangeable between the implementations.

- `fwd_form_conv` ("fwd_form"): XLA's convolution forward; gradients written
  as forward-form NHWC/HWIO convolutions. JAX's transpose rules emit gradient
  convolutions with other dimension labels, which XLA:CPU only rewrites into
  its fast form outside loops: inside a rolled `lax.scan` / `lax.map` body
  they ran 10-20x slower. With this form the convolutions cost the same in
  a rolled loop as unrolled, so clients (and local steps) can be rolled and
  compile time stops growing with K; the whole round rolled still measured
  ~1.9x slower than unrolled on 2 cores (see benchmarks/RESULTS.md).
- `im2col_conv` ("im2col"): the kh*kw shifted views of the padded input
  concatenated on the channel axis times the kernel as a [kh*kw*C, O] matrix.
  Under `vmap` with per-client weights XLA turns a convolution into a
  feature-grouped one, which XLA:CPU runs ~5x slower than plain; im2col turns
  into a batched matmul instead. Costs kh*kw times the input's memory.

Measurements: benchmarks/RESULTS.md.
"""
from __future__ import annotations

import functools
from typing import Any, Callable, Dict, Optional, Sequence, Tuple, Union

import jax
import jax.numpy as jnp
from jax import lax

from fedqjax.typing import Array

Padding = Union[str, Sequence[Tuple[int, int]]]
_NHWC = ("NHWC", "HWIO", "NHWC")


def _is_one(v) -> bool:
  return v is None or all(int(d) == 1 for d in v)


def _check_supported(lhs, rhs, dimension_numbers, lhs_dilation, rhs_dilation,
                     feature_group_count, batch_group_count) -> None:
  if lhs.ndim != 4 or rhs.ndim != 4:
    raise NotImplementedError(f"only 2-D convolutions are handled, got lhs "
                              f"{lhs.shape}, rhs {rhs.shape}")
  if dimension_numbers is not None:
    want = lax.conv_dimension_numbers(lhs.shape, rhs.shape, _NHWC)
    got = lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
    if got != want:
      raise NotImplementedError(f"only NHWC/HWIO/NHWC is handled, got "
                                f"{dimension_numbers}")
  if not (_is_one(lhs_dilation) and _is_one(rhs_dilation)
          and feature_group_count == 1 and batch_group_count == 1):
    raise NotImplementedError("no dilation and no feature/batch groups are "
                              "handled")
  if rhs.shape[2] != lhs.shape[3]:
    raise ValueError(f"kernel input channels {rhs.shape[2]} != input "
                     f"channels {lhs.shape[3]}")


def _explicit_pads(spatial, kernel, strides, padding):
  if isinstance(padding, str):
    pads = lax.padtype_to_pads(tuple(spatial), tuple(kernel),
                               tuple(int(s) for s in strides), padding)
  else:
    pads = padding
  return tuple(tuple(int(q) for q in p) for p in pads)


def im2col_conv(lhs: Array, rhs: Array, window_strides: Sequence[int],
                padding: Padding, lhs_dilation: Optional[Sequence[int]] = None,
                rhs_dilation: Optional[Sequence[int]] = None,
                dimension_numbers: Any = None, feature_group_count: int = 1,
                batch_group_count: int = 1, precision: Any = None,
                preferred_element_type: Any = None) -> Array:
  """`lax.conv_general_dilated` (NHWC, HWIO) as im2col + one dot_general.

  Args:
    lhs: [B, H, W, C] input.
    rhs: [kh, kw, C, O] kernel.
    window_strides: (sh, sw).
    padding: 'SAME', 'VALID' or ((top, bottom), (left, right)).
    dimension_numbers: None or NHWC/HWIO/NHWC (what flax's nn.Conv passes).
    Others as in lax; dilations and groups other than 1 are not supported.

  Returns:
    [B, Ho, Wo, O], equal to lax.conv_general_dilated up to float rounding.

  Raises:
    NotImplementedError: for layouts, dilations or groups it does not handle.
  """
  _check_supported(lhs, rhs, dimension_numbers, lhs_dilation, rhs_dilation,
                   feature_group_count, batch_group_count)
  b, h, w, c = lhs.shape
  kh, kw, _, c_out = rhs.shape
  sh, sw = (int(s) for s in window_strides)
  pads = _explicit_pads((h, w), (kh, kw), (sh, sw), padding)
  x = lax.pad(lhs, jnp.zeros((), lhs.dtype),
              [(0, 0, 0), (pads[0][0], pads[0][1], 0),
               (pads[1][0], pads[1][1], 0), (0, 0, 0)])
  hp, wp = x.shape[1], x.shape[2]
  ho, wo = (hp - kh) // sh + 1, (wp - kw) // sw + 1
  cols = [lax.slice(x, (0, i, j, 0),
                    (b, i + (ho - 1) * sh + 1, j + (wo - 1) * sw + 1, c),
                    (1, sh, sw, 1))
          for i in range(kh) for j in range(kw)]
  patches = cols[0] if len(cols) == 1 else jnp.concatenate(cols, axis=-1)
  return lax.dot_general(patches, rhs.reshape(kh * kw * c, c_out),
                         (((3,), (0,)), ((), ())), precision=precision,
                         preferred_element_type=preferred_element_type)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _conv_fwd_form(x: Array, w: Array, strides: Tuple[int, int],
                   pads: Tuple[Tuple[int, int], Tuple[int, int]],
                   precision: Any) -> Array:
  return lax.conv_general_dilated(x, w, strides, pads, dimension_numbers=_NHWC,
                                  precision=precision)


def _conv_fwd_form_fwd(x, w, strides, pads, precision):
  return _conv_fwd_form(x, w, strides, pads, precision), (x, w)


def _conv_fwd_form_bwd(strides, pads, precision, res, dy):
  x, w = res
  kh, kw = w.shape[:2]
  pdx = tuple((k - 1 - lo, k - 1 - hi) for k, (lo, hi) in zip((kh, kw), pads))
  if tuple(strides) != (1, 1) or min(min(p) for p in pdx) < 0:
    # Strided (the U-Net's downsampling) or unusual padding: the transpose of
    # the im2col form (slices -> pads and adds; one matmul per gradient).
    _, vjp = jax.vjp(lambda a, b: im2col_conv(a, b, strides, pads,
                                              precision=precision), x, w)
    return vjp(dy)
  # dL/dx: full correlation of dy with the flipped kernel, in/out swapped.
  w_t = jnp.flip(w, (0, 1)).transpose(0, 1, 3, 2)  # [kh, kw, O, C]
  dx = lax.conv_general_dilated(dy, w_t, (1, 1), pdx, dimension_numbers=_NHWC,
                                precision=precision)
  # dL/dw: the input's channels as the batch, the batch as the contracted
  # feature axis, dy as a (Ho x Wo) kernel: [C, kh, kw, O].
  xp = jnp.pad(x, ((0, 0), pads[0], pads[1], (0, 0)))
  dw = lax.conv_general_dilated(xp.transpose(3, 1, 2, 0),
                                dy.transpose(1, 2, 0, 3), (1, 1), "VALID",
                                dimension_numbers=_NHWC, precision=precision)
  return dx.astype(x.dtype), dw.transpose(1, 2, 0, 3).astype(w.dtype)


_conv_fwd_form.defvjp(_conv_fwd_form_fwd, _conv_fwd_form_bwd)


def fwd_form_conv(lhs: Array, rhs: Array, window_strides: Sequence[int],
                  padding: Padding, lhs_dilation: Optional[Sequence[int]] = None,
                  rhs_dilation: Optional[Sequence[int]] = None,
                  dimension_numbers: Any = None, feature_group_count: int = 1,
                  batch_group_count: int = 1, precision: Any = None,
                  preferred_element_type: Any = None) -> Array:
  """`lax.conv_general_dilated` whose gradients are forward-form convolutions.

  The forward pass is XLA's convolution. The backward pass computes dL/dx and
  dL/dw (stride 1) as NHWC/HWIO convolutions on explicitly transposed
  operands, the form XLA:CPU hands to its fast (Eigen) kernels. JAX's own
  transpose rules emit gradient convolutions with other dimension labels;
  XLA:CPU rewrites those into the fast form only outside loops, so inside a
  rolled `lax.scan` / `lax.map` body (local steps, clients one at a time)
  they ran 10-20x slower (benchmarks/RESULTS.md). Same values as lax's
  gradients (tested). Strided convolutions take the im2col transpose.
  Arguments as `im2col_conv`.
  """
  _check_supported(lhs, rhs, dimension_numbers, lhs_dilation, rhs_dilation,
                   feature_group_count, batch_group_count)
  if preferred_element_type is not None:
    raise NotImplementedError("fwd_form_conv: preferred_element_type")
  pads = _explicit_pads(lhs.shape[1:3], rhs.shape[:2], window_strides, padding)
  return _conv_fwd_form(lhs, rhs, tuple(int(s) for s in window_strides), pads,
                        precision)


CONV_IMPLS: Dict[str, Optional[Callable[..., Array]]] = {
    "xla": None,  # flax's default, lax.conv_general_dilated
    "im2col": im2col_conv,
    "fwd_form": fwd_form_conv,
}
