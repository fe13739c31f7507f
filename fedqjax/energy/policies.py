"""Allocation policies on the same uploads: the optimum and the baselines a reviewer asks for.

Every policy answers the same question for each device (arXiv 2403.04430
sec. 3-4, docs/model.md sec. 1 "Allocation"): which CPU frequency f in
[f_min, f_max] and transmit power p in (0, p_max] deliver the payload S by the
deadline T, c n / f + t^com <= T with t^com = S / r(p)? They differ only in
how much of the deadline's slack they turn into energy savings:

  kkt       the energy-optimal (f, p) (`allocator.allocate`, the paper's).
  deadline  p = p_max (so t^com = t^min) and the slowest CPU that still meets
            T: f = clip(c n / (T - t^min), f_min, f_max). The strongest simple
            baseline: it uses the slack on the CPU only.
  split     an equal split of T between computing and uploading: the CPU
            runs at f = clip(max(c n / (T / 2), c n / (T - t^min)), f_min,
            f_max), i.e. it finishes in T / 2 unless the upload needs more
            than T / 2 even at p_max (then f is raised so that exactly t^min
            is left) or f_min is faster; the device then uploads in all the
            time left, t^com = T - c n / f >= t^min, at the power that just
            delivers S in it, p = (N0 W / h)(2^{S / (t W)} - 1) <= p_max.
            Always feasible when the device is feasible at all.
  max       f = f_max, p = p_max (the worst case; `naive_allocation`).

Feasibility is the same for all of them (c n / f_max + t^min <= T,
`numerics.feasibility`), so they never change which devices upload, only the
energy. Infeasible devices get the f_max / p_max numbers and feasible=False in
every policy (as `allocate` does). Energies always come from the returned
(f, p, t^com) through `allocator.make_allocation` (E^cmp = tau c n f^2,
E^com = p t^com). `nu` is the deadline multiplier for kkt and 0 for the
baselines (they solve no optimization problem).

Since each baseline's (f, t^com) is feasible for the kkt problem,
E_kkt <= E_split and E_kkt <= E_deadline <= E_max per device.
"""

from __future__ import annotations

import functools
from typing import Optional, Sequence

import jax
import jax.numpy as jnp

from fedqjax.energy import model
from fedqjax.energy import numerics as nm
from fedqjax.energy.allocator import (
  Allocation,
  allocate,
  make_allocation,
  naive_allocation,
)
from fedqjax.energy.devices import Devices
from fedqjax.typing import ArrayLike

ALLOCATIONS = ("kkt", "deadline", "max", "split")


def check_policies(policies: Sequence[str]) -> tuple:
  """The policy names as a tuple; raises ValueError listing the valid names."""
  if isinstance(policies, str):
    policies = tuple(p.strip() for p in policies.split(",") if p.strip())
  policies = tuple(policies)
  bad = [p for p in policies if p not in ALLOCATIONS]
  if bad or not policies:
    raise ValueError(
      f"allocation policies {list(policies)!r} are invalid; valid: a non-empty "
      f"subset of {', '.join(ALLOCATIONS)}"
    )
  return policies


def deadline_allocation(d: Devices, pr: nm.Problem) -> Allocation:
  """p = p_max, t = t^min, the slowest f in [f_min, f_max] that meets T."""
  tiny = jnp.finfo(d.gain.dtype).tiny
  f = jnp.clip(
    pr.cycles / jnp.maximum(pr.deadline_s - pr.t_min_s, tiny),
    d.f_min_hz,
    d.f_max_hz,
  )
  freq = jnp.where(pr.feasible, f, d.f_max_hz)
  power = jnp.broadcast_to(d.p_max_w, freq.shape)
  return make_allocation(
    d,
    pr.cycles,
    freq,
    power,
    pr.t_min_s,
    jnp.zeros_like(freq),
    pr.feasible,
    pr.reason,
  )


def split_allocation(d: Devices, pr: nm.Problem) -> Allocation:
  """Equal split of T: compute in T / 2 (or faster), upload at the least power in the rest."""
  tiny = jnp.finfo(d.gain.dtype).tiny
  T, tmin, cycles = pr.deadline_s, pr.t_min_s, pr.cycles
  f_need = cycles / jnp.maximum(
    T - tmin, tiny
  )  # leaves exactly t^min for the upload
  f = jnp.clip(jnp.maximum(2.0 * cycles / T, f_need), d.f_min_hz, d.f_max_hz)
  freq = jnp.where(pr.feasible, f, d.f_max_hz)
  t_left = jnp.maximum(T - cycles / freq, tmin)  # >= t^min up to rounding
  t_comm = jnp.where(pr.feasible, t_left, tmin)
  p = model.power_of_time(
    t_comm, pr.payload_bits, d.gain, d.bandwidth_hz, d.noise_psd_w_hz
  )
  power = jnp.where(pr.feasible, jnp.minimum(p, d.p_max_w), d.p_max_w)
  return make_allocation(
    d, cycles, freq, power, t_comm, jnp.zeros_like(freq), pr.feasible, pr.reason
  )


def allocate_policies(
  devices: Devices,
  payload_bits: ArrayLike,
  num_samples: ArrayLike,
  deadline_s: ArrayLike,
  flops_per_sample: ArrayLike,
  policies: Sequence[str] = ALLOCATIONS,
  *,
  iters: Optional[int] = None,
) -> Allocation:
  """Every requested allocation policy on the same devices and payloads.

  Args:
    devices: Devices with [N] fields.
    payload_bits: S, upload size in bits (> 0), scalar or [N].
    num_samples: n = I B samples processed this round, scalar or [N].
    deadline_s: round deadline T, scalar or [N].
    flops_per_sample: training FLOPs per sample, scalar or [N].
    policies: names from ALLOCATIONS (static; a tuple or a comma string).
    iters: kkt bisection steps (static); default as `allocate`.

  Returns:
    Allocation with every field [P, N], P = len(policies), in that order.

  Raises:
    ValueError: unknown policy names, or concrete invalid inputs.
  """
  policies = check_policies(policies)
  nm.check_inputs(
    devices, payload_bits, num_samples, deadline_s, flops_per_sample
  )
  iters = nm.default_iters(devices.gain.dtype) if iters is None else int(iters)
  return _policies(
    devices,
    payload_bits,
    num_samples,
    deadline_s,
    flops_per_sample,
    policies,
    iters,
  )


@functools.partial(jax.jit, static_argnums=(5, 6))
def _policies(
  d, payload_bits, num_samples, deadline_s, flops_per_sample, policies, iters
):
  args = (payload_bits, num_samples, deadline_s, flops_per_sample)
  pr = nm.setup(d, *args)
  make = {
    "kkt": lambda: allocate(d, *args, iters=iters),
    "max": lambda: naive_allocation(d, *args),
    "deadline": lambda: deadline_allocation(d, pr),
    "split": lambda: split_allocation(d, pr),
  }
  outs = [make[name]() for name in policies]  # static unroll over P
  shape = pr.cycles.shape
  outs = [jax.tree.map(lambda v: jnp.broadcast_to(v, shape), o) for o in outs]
  return jax.tree.map(lambda *xs: jnp.stack(xs), *outs)
