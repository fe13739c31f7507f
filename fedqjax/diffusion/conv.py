"""A 2-D convolution for the U-Net that XLA:CPU runs fast where the client
axis is vmapped or looped (`UNetConfig(conv_impl="im2col")`, a drop-in for
flax's Conv).

`im2col_conv` has the signature of `lax.conv_general_dilated` for what the
U-Net uses (NHWC inputs, HWIO kernels, strides, 'SAME' / 'VALID' / explicit
padding, no dilation, no feature groups) and computes the same function:
the kh*kw shifted views of the padded input concatenated on the channel axis
times the kernel as a [kh*kw*C, O] matrix. Costs kh*kw times the input's
memory. Parameters keep nn.Conv's names and shapes, so checkpoints are
interchangeable between "xla" and "im2col".

Why it exists (benchmarks/RESULTS.md, measured on 2 CPU cores): under `vmap`
with per-client weights XLA turns a convolution into a feature-grouped one,
which XLA:CPU runs several times slower than plain; inside a rolled loop
(`lax.map`, rolled `lax.scan`) XLA:CPU leaves JAX's gradient convolutions in
a slow form. im2col is a (batched) matmul in both: 8 clients' conv
gradients took 273 ms vmapped and 175 ms rolled against XLA's 941 and 2527
ms. Only forms that win a measured round remain ("Round throughput"):
im2col for rolled and vmapped client layouts (2.42 and 2.53 s/round), XLA's
own convolution unrolled (1.48 s/round). The custom-VJP "fwd_form"
(gradients as forward-form convolutions) never won a round (2.77 s) and was
removed; git history keeps it.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Optional, Sequence, Tuple, Union

import jax.numpy as jnp
from jax import lax

from fedqjax.typing import Array

Padding = Union[str, Sequence[Tuple[int, int]]]
_NHWC = ("NHWC", "HWIO", "NHWC")


def _is_one(v) -> bool:
  return v is None or all(int(d) == 1 for d in v)


def _check_supported(
  lhs,
  rhs,
  dimension_numbers,
  lhs_dilation,
  rhs_dilation,
  feature_group_count,
  batch_group_count,
) -> None:
  if lhs.ndim != 4 or rhs.ndim != 4:
    raise NotImplementedError(
      f"only 2-D convolutions are handled, got lhs {lhs.shape}, rhs {rhs.shape}"
    )
  if dimension_numbers is not None:
    want = lax.conv_dimension_numbers(lhs.shape, rhs.shape, _NHWC)
    got = lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
    if got != want:
      raise NotImplementedError(
        f"only NHWC/HWIO/NHWC is handled, got {dimension_numbers}"
      )
  if not (
    _is_one(lhs_dilation)
    and _is_one(rhs_dilation)
    and feature_group_count == 1
    and batch_group_count == 1
  ):
    raise NotImplementedError(
      "no dilation and no feature/batch groups are handled"
    )
  if rhs.shape[2] != lhs.shape[3]:
    raise ValueError(
      f"kernel input channels {rhs.shape[2]} != input channels {lhs.shape[3]}"
    )


def _explicit_pads(spatial, kernel, strides, padding):
  if isinstance(padding, str):
    pads = lax.padtype_to_pads(
      tuple(spatial), tuple(kernel), tuple(int(s) for s in strides), padding
    )
  else:
    pads = padding
  return tuple(tuple(int(q) for q in p) for p in pads)


def _patches(lhs, kernel, window_strides, padding):
  """The kh*kw shifted, strided views of the padded input on the channel axis.

  [B, H, W, C] -> [B, Ho, Wo, kh*kw*C], views in (i, j) row-major order.
  """
  b, h, w, c = lhs.shape
  kh, kw = kernel
  sh, sw = (int(s) for s in window_strides)
  pads = _explicit_pads((h, w), (kh, kw), (sh, sw), padding)
  x = lax.pad(
    lhs,
    jnp.zeros((), lhs.dtype),
    [
      (0, 0, 0),
      (pads[0][0], pads[0][1], 0),
      (pads[1][0], pads[1][1], 0),
      (0, 0, 0),
    ],
  )
  hp, wp = x.shape[1], x.shape[2]
  ho, wo = (hp - kh) // sh + 1, (wp - kw) // sw + 1
  cols = [
    lax.slice(
      x,
      (0, i, j, 0),
      (b, i + (ho - 1) * sh + 1, j + (wo - 1) * sw + 1, c),
      (1, sh, sw, 1),
    )
    for i in range(kh)
    for j in range(kw)
  ]
  return cols[0] if len(cols) == 1 else jnp.concatenate(cols, axis=-1)


def im2col_conv(
  lhs: Array,
  rhs: Array,
  window_strides: Sequence[int],
  padding: Padding,
  lhs_dilation: Optional[Sequence[int]] = None,
  rhs_dilation: Optional[Sequence[int]] = None,
  dimension_numbers: Any = None,
  feature_group_count: int = 1,
  batch_group_count: int = 1,
  precision: Any = None,
  preferred_element_type: Any = None,
) -> Array:
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
  _check_supported(
    lhs,
    rhs,
    dimension_numbers,
    lhs_dilation,
    rhs_dilation,
    feature_group_count,
    batch_group_count,
  )
  c = lhs.shape[3]
  kh, kw, _, c_out = rhs.shape
  patches = _patches(lhs, (kh, kw), window_strides, padding)
  return lax.dot_general(
    patches,
    rhs.reshape(kh * kw * c, c_out),
    (((3,), (0,)), ((), ())),
    precision=precision,
    preferred_element_type=preferred_element_type,
  )


CONV_IMPLS: Dict[str, Optional[Callable[..., Array]]] = {
  "xla": None,  # flax's default, lax.conv_general_dilated
  "im2col": im2col_conv,
}
